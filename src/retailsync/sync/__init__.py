"""Channel sync: replicas (POS terminals, apps, admin tools) exchange CRDT deltas with the
server, merged by the per-field policies in ``policies.py``; see ``exchange.py``."""
