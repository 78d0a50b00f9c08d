"""Caches in front of the database: L1 in each worker, L2 in Redis, both refusing to go back
in time (see ``entry``). The read path is ``tiers.TieredCache``."""
