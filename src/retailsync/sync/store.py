"""The server's replica of each synced object, in ``crdt_objects``.

Every read for a merge locks the row, so two syncs of one object (two workers, two terminals)
merge one after the other and the server's own writes to it (an allotment, a decision) are
made by a single writer, as a replica's must be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retailsync.crdt import decode_as, encode
from retailsync.db.database import Connection
from retailsync.sync.policies import ObjectName

SERVER_REPLICA = "server"  # the replica id the server writes under, in every object


@dataclass(slots=True)
class Stored:
    """An object as loaded: its state, and the system-of-record row version it last agreed
    with (None: it never has)."""

    state: Any
    source_version: int | None


async def load(conn: Connection, name: ObjectName) -> Stored:
    """The server's state of ``key``, locked until the transaction ends; ``blank`` if new.

    A new object's row is created first (blank) and then locked, so two first syncs of one
    object queue on the row instead of both inserting and one overwriting the other.
    """
    await conn.execute(
        "INSERT INTO crdt_objects (key, policy, state) VALUES ($1, $2, $3) "
        "ON CONFLICT (key) DO NOTHING",
        name.key,
        name.policy.name,
        encode(name.blank(SERVER_REPLICA)),
    )
    row = await conn.fetchrow(
        "SELECT state, source_version FROM crdt_objects WHERE key = $1 FOR UPDATE", name.key
    )
    assert row is not None
    return Stored(decode_as(bytes(row["state"]), name.policy.crdt), row["source_version"])


async def save(conn: Connection, key: str, stored: Stored) -> None:
    await conn.execute(
        "UPDATE crdt_objects SET state = $2, source_version = $3 WHERE key = $1",
        key,
        encode(stored.state),
        stored.source_version,
    )
