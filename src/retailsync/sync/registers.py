"""Merging synced registers (prices, product fields) with the system of record.

The server's register for a field absorbs, in order:

1. a change made through the plain API since the register last agreed with the row: for an
   LWW field, a write stamped with the row's ``updated_at``; for a multi-value field, an
   assign by the server, which supersedes every value it has seen;
2. the replica's state: an LWW loser or a new set of concurrent values is a conflict, recorded
   in the ledger at the field's tier;
3. and then, if the register's value is no longer the row's, the row is written: the API reads
   what replicas agreed on.

A multi-value field in conflict leaves the row as it was until the conflict is resolved.
"""

from __future__ import annotations

from typing import Any

from retailsync.conflicts import ledger
from retailsync.conflicts.ledger import ConflictKind, ConflictReport, ConflictVersion
from retailsync.crdt import HLC, LWWConflict, LWWEntry, LWWRegister, MVRegister, Stamp
from retailsync.db.database import Connection
from retailsync.errors import RequestInvalid
from retailsync.sync import store
from retailsync.sync.policies import ObjectName
from retailsync.sync.sources import SOURCES, Source
from retailsync.sync.store import SERVER_REPLICA


def stamp_text(stamp: Stamp) -> str:
    return f"{stamp.wall_ms}.{stamp.logical}@{stamp.node}"


def blank_lww(name: ObjectName) -> LWWRegister[Any]:
    blank = name.blank(SERVER_REPLICA)
    assert isinstance(blank, LWWRegister)
    return blank


def check_value(name: ObjectName, field: str, value: Any) -> None:
    source = SOURCES[name.policy.name]
    if not source.accepts(value):
        raise RequestInvalid(field, f"{name.key} holds {value!r}; expected {source.expects}")


def _version(entry: LWWEntry[Any]) -> ConflictVersion:
    return ConflictVersion(entry.value, entry.region, stamp_text(entry.stamp))


async def merge_lww(
    conn: Connection, hlc: HLC, name: ObjectName, incoming: LWWRegister[Any]
) -> tuple[LWWRegister[Any], list[int]]:
    """Merge a replica's LWW register; return the server's and the conflicts recorded."""
    source = SOURCES[name.policy.name]
    stored = await store.load(conn, name)
    register: LWWRegister[Any] = stored.state
    row = await source.read(conn, name.parts)
    writes = [incoming]
    if row is not None and row.version != stored.source_version:
        # A write through the plain API since the last sync, stamped when it was made.
        api_write = blank_lww(name)
        region = next(iter(api_write.region_priority))
        api_write.assign(row.value, Stamp(row.updated_ms, 0, SERVER_REPLICA), region)
        writes.insert(0, api_write)
    if incoming.entry is not None:
        hlc.observe(incoming.entry.stamp)
    recorded: list[int] = []
    for write in writes:
        conflict = register.merge_reporting(write)
        if conflict is not None:
            recorded += await _record_lww(conn, name, conflict)
    stored.source_version = await _agree(conn, source, name, register.value, row)
    await store.save(conn, name.key, stored)
    return register, recorded


async def _record_lww(conn: Connection, name: ObjectName, conflict: LWWConflict[Any]) -> list[int]:
    report = ConflictReport(
        name.policy.entity,
        name.entity_key,
        name.policy.field,
        name.policy.merge,
        ConflictKind.LWW_LOSER,
        [_version(conflict.winner), _version(conflict.loser)],
        chosen=0,
    )
    return await record_conflict(conn, name, report)


async def record_conflict(conn: Connection, name: ObjectName, report: ConflictReport) -> list[int]:
    """Record a conflict; [] when the ledger already holds it."""
    recorded = await ledger.record(conn, report, name.policy.tier)
    return [] if recorded is None else [recorded.id]


async def merge_mv(
    conn: Connection, name: ObjectName, incoming: MVRegister[Any]
) -> tuple[MVRegister[Any], list[int]]:
    """Merge a replica's multi-value register; a new conflict goes to the ledger."""
    source = SOURCES[name.policy.name]
    stored = await store.load(conn, name)
    register: MVRegister[Any] = stored.state
    row = await source.read(conn, name.parts)
    if row is not None and row.version != stored.source_version:
        register.assign(row.value)
    before = register.value
    register.merge(incoming)
    recorded: list[int] = []
    if register.is_conflicted:
        if register.value != before:
            report = ConflictReport(
                name.policy.entity,
                name.entity_key,
                name.policy.field,
                name.policy.merge,
                ConflictKind.CONCURRENT_VALUES,
                [
                    ConflictVersion(value, ",".join(sorted(origins)))
                    for value, origins in sorted(register.origins().items())
                ],
            )
            recorded = await record_conflict(conn, name, report)
        stored.source_version = None if row is None else row.version
    else:
        (value,) = register.value or {None}
        stored.source_version = await _agree(conn, source, name, value, row)
    await store.save(conn, name.key, stored)
    return register, recorded


async def _agree(
    conn: Connection, source: Source, name: ObjectName, value: Any, row: Any
) -> int | None:
    """Write ``value`` to the row unless it already holds it; return the row's version."""
    if value is None:
        return None if row is None else int(row.version)
    if row is not None and row.value == value:
        return int(row.version)
    return await source.write(conn, name.parts, value)
