"""One sync of one replica: merge what it sent, allot stock it asked for, answer with the
server's state of every object it named.

The whole exchange is one transaction. Everything the request carries is checked first
(names, scopes, payloads, authorship) so that a bad object is refused before anything is
merged, and any refusal later rolls the whole exchange back: a sync applies entirely or not
at all, and a replica that retries (with the same Idempotency-Key, or simply again, since
merging is idempotent) cannot apply anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from retailsync.access import Principal
from retailsync.conflicts.ledger import ConflictKind, ConflictReport, ConflictVersion
from retailsync.crdt import (
    HLC,
    BoundedCounter,
    Crdt,
    CrdtError,
    LWWRegister,
    MVRegister,
    decode_as,
    encode,
)
from retailsync.db.database import Connection
from retailsync.errors import Refused, RequestInvalid
from retailsync.sync import registers, store
from retailsync.sync.policies import ObjectName, parse_object_key
from retailsync.sync.stock import merge_stock


@dataclass(frozen=True, slots=True)
class SentObject:
    key: str
    state: bytes | None  # None: the replica only wants the server's state


@dataclass(frozen=True, slots=True)
class Refusal:
    """A decrement the replica refused itself (a sale beyond its allotment), for the ledger."""

    key: str
    requested: int
    available: int
    at: str  # the replica's own name for the event (its HLC stamp), so a resend is one record


@dataclass(slots=True)
class Outcome:
    states: dict[str, bytes] = field(default_factory=dict)
    granted: dict[str, int] = field(default_factory=dict)
    conflicts: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Checked:
    name: ObjectName
    incoming: Any  # the decoded CRDT, or None for an object only named (to allot, to read)


async def claim_replica(conn: Connection, replica: str, key_id: UUID) -> None:
    """Bind ``replica`` to the API key that syncs it first; refuse any other key after."""
    if replica == store.SERVER_REPLICA:
        raise RequestInvalid("replica", f"{replica!r} is the server's own replica id")
    owner = await conn.fetchval(
        "INSERT INTO sync_replicas (replica, key_id) VALUES ($1, $2) "
        "ON CONFLICT (replica) DO UPDATE SET replica = EXCLUDED.replica RETURNING key_id",
        replica,
        key_id,
    )
    if owner != key_id:
        raise Refused("replica-taken", f"replica {replica} syncs with another API key")


def _check(
    principal: Principal, replica: str, where: str, key: str, state: bytes | None
) -> _Checked:
    """Parse, authorise and decode one object named at ``where`` in the request."""
    try:
        name = parse_object_key(key)
    except RequestInvalid as exc:
        raise RequestInvalid(f"{where}.key", exc.detail.removeprefix("key: ")) from None
    principal.require(name.policy.scope)
    if state is None:
        return _Checked(name, None)
    try:
        incoming: Crdt = decode_as(state, name.policy.crdt)
    except CrdtError as exc:
        raise RequestInvalid(f"{where}.state", str(exc)) from None
    if incoming.replica != replica:
        raise RequestInvalid(
            f"{where}.state", f"is the state of replica {incoming.replica!r}, not of {replica!r}"
        )
    if isinstance(incoming, LWWRegister) and incoming.value is not None:
        registers.check_value(name, f"{where}.state", incoming.value)
    if isinstance(incoming, MVRegister):
        for value in incoming.value:
            registers.check_value(name, f"{where}.state", value)
    return _Checked(name, incoming)


async def exchange(
    conn: Connection,
    hlc: HLC,
    principal: Principal,
    replica: str,
    objects: Sequence[SentObject],
    allot: dict[str, int],
    refusals: Sequence[Refusal],
) -> Outcome:
    """Run one sync in the caller's transaction (see the module docstring)."""
    checked = [
        _check(principal, replica, f"objects[{i}]", o.key, o.state) for i, o in enumerate(objects)
    ]
    named = {c.name.key for c in checked}
    if len(named) < len(checked):
        raise RequestInvalid("objects", "an object key appears twice")
    stock_keys = [(f"allot[{i}]", key) for i, key in enumerate(allot)]
    stock_keys += [(f"refused[{i}]", r.key) for i, r in enumerate(refusals)]
    for where, key in stock_keys:
        found = _check(principal, replica, where, key, None)
        if found.name.policy.name != "stock.units":
            raise RequestInvalid(f"{where}.key", f"{key!r} is not a stock.units object")
        if where.startswith("allot") and key not in named:
            checked.append(found)
            named.add(key)
    await claim_replica(conn, replica, principal.key_id)
    outcome = Outcome()
    # One order for every sync, so two syncs locking the same objects cannot deadlock.
    for item in sorted(checked, key=lambda c: c.name.key):
        key = item.name.key
        try:
            state, conflicts, granted = await _merge(conn, hlc, replica, item, allot.get(key, 0))
        except CrdtError as exc:  # a clock too far ahead, a cart of another quantity rule
            raise RequestInvalid(f"objects {key}", str(exc)) from None
        outcome.states[key] = encode(state)
        outcome.conflicts += conflicts
        if key in allot:
            outcome.granted[key] = granted
    for refusal in refusals:
        outcome.conflicts += await _record_refusal(conn, replica, refusal)
    return outcome


async def _merge(
    conn: Connection, hlc: HLC, replica: str, item: _Checked, allot: int
) -> tuple[Crdt, list[int], int]:
    """Merge one object by its policy; return the server's state, conflicts and units allotted."""
    name, incoming = item.name, item.incoming
    blank = name.blank(replica)
    if isinstance(blank, LWWRegister):
        register, conflicts = await registers.merge_lww(conn, hlc, name, incoming or blank)
        return register, conflicts, 0
    if isinstance(blank, MVRegister):
        values, conflicts = await registers.merge_mv(conn, name, incoming or blank)
        return values, conflicts, 0
    if isinstance(blank, BoundedCounter):
        counter, granted = await merge_stock(conn, name, replica, incoming, allot)
        return counter, [], granted
    # Carts and wishlists: nothing in the system of record to agree with, and no conflicts
    # (concurrent adds all stay; a cart's price snapshots are re-confirmed at checkout).
    stored = await store.load(conn, name)
    if incoming is not None:
        stored.state.merge(incoming)
        await store.save(conn, name.key, stored)
    return stored.state, [], 0


async def _record_refusal(conn: Connection, replica: str, refusal: Refusal) -> list[int]:
    name = parse_object_key(refusal.key)
    report = ConflictReport(
        name.policy.entity,
        name.entity_key,
        name.policy.field,
        name.policy.merge,
        ConflictKind.REFUSED_DECREMENT,
        [
            ConflictVersion({"requested": refusal.requested}, replica, refusal.at),
            ConflictVersion({"rights": refusal.available}, replica, refusal.at),
        ],
        note="refused at the replica: beyond its allotment",
    )
    return await registers.record_conflict(conn, name, report)
