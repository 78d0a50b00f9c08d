"""Writing a conflict's decided value back, to the row and to the replicated register.

A decision (a reconciliation rule's, or an admin's) is a new write by the server: stamped
after everything the register has seen (LWW) or superseding every value it has seen
(multi-value), so it reaches every replica at its next sync and wins there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retailsync.conflicts.ledger import Conflict
from retailsync.conflicts.reconcile import Applier
from retailsync.crdt import HLC, LWWRegister
from retailsync.db.database import Connection
from retailsync.sync import store
from retailsync.sync.policies import ObjectName, parse_object_key
from retailsync.sync.sources import SOURCES


def _object(conflict: Conflict) -> ObjectName:
    return parse_object_key(f"{conflict.entity}.{conflict.field}:{conflict.entity_key}")


def appliers(hlc: HLC) -> Mapping[tuple[str, str], Applier]:
    """The appliers of every field whose conflicts wait for a decision (reconciliation or
    manual tier); LWW decisions are stamped by ``hlc``."""

    async def apply_lww(conn: Connection, conflict: Conflict, value: Any) -> None:
        name = _object(conflict)
        stored = await store.load(conn, name)
        register: LWWRegister[Any] = stored.state
        stamp = hlc.now() if register.entry is None else hlc.observe(register.entry.stamp)
        register.assign(value, stamp, next(iter(register.region_priority)))
        stored.source_version = await SOURCES[name.policy.name].write(conn, name.parts, value)
        await store.save(conn, name.key, stored)

    async def apply_mv(conn: Connection, conflict: Conflict, value: Any) -> None:
        name = _object(conflict)
        stored = await store.load(conn, name)
        stored.state.assign(value)
        stored.source_version = await SOURCES[name.policy.name].write(conn, name.parts, value)
        await store.save(conn, name.key, stored)

    return {
        ("price", "amount_minor"): apply_lww,
        ("product", "attributes"): apply_mv,
    }
