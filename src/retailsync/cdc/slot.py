"""The publication and the replication slot a capture source reads, and the slot's health.

The publication names exactly the captured tables (it is reset to them at every start, so the
configuration is the truth). Each table must have a key: its primary key, or the key columns
the configuration names together with REPLICA IDENTITY FULL, so that an update or delete can
always be keyed. A slot whose WAL the server has removed (``wal_status = 'lost'``) can never
be read again: the capture reports it loudly and starts over from a new slot and a snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from retailsync.db.database import Connection
from retailsync.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SlotStatus:
    exists: bool
    wal_status: str | None  # reserved, extended, unreserved, lost (PostgreSQL 13+)
    confirmed_lsn: int
    retained_bytes: int  # WAL the server keeps for this slot

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


async def key_columns(conn: Connection, table: str) -> list[str]:
    """The primary key columns of ``table`` ("schema.table"), in key order."""
    rows = await conn.fetch(
        "SELECT a.attname FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = $1::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        table,
    )
    return [row["attname"] for row in rows]


async def check_table(
    conn: Connection, table: str, configured_key: Sequence[str] | None, setting: str
) -> list[str]:
    """Refuse a table that does not exist or cannot be keyed; return its key columns."""
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        raise ConfigError(setting, table, "no such table")
    primary = await key_columns(conn, table)
    if configured_key:
        columns = {
            row["attname"]
            for row in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
                "AND attnum > 0 AND NOT attisdropped",
                table,
            )
        }
        missing = [column for column in configured_key if column not in columns]
        if missing:
            raise ConfigError(setting, table, f"has no columns {missing}")
        identity = await conn.fetchval(
            "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", table
        )
        if list(configured_key) != primary and identity != "f":
            raise ConfigError(
                setting,
                table,
                "a key other than the primary key needs REPLICA IDENTITY FULL "
                f"(ALTER TABLE {table} REPLICA IDENTITY FULL) so deletes carry it",
            )
        return list(configured_key)
    if not primary:
        raise ConfigError(
            setting, table, "has no primary key; name its key columns in the configuration"
        )
    return primary


async def ensure_publication(conn: Connection, name: str, tables: Sequence[str]) -> None:
    """Create the publication, or reset it to exactly ``tables``."""
    listed = ", ".join(quote_table(table) for table in tables)
    exists = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", name
    )
    verb = (
        f"ALTER PUBLICATION {quote_ident(name)} SET TABLE"
        if exists
        else (f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE")
    )
    await conn.execute(f"{verb} {listed}")


async def ensure_slot(conn: Connection, slot: str) -> bool:
    """Create the pgoutput slot if missing; return True if it was created."""
    plugin = await conn.fetchval(
        "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1", slot
    )
    if plugin is not None:
        if plugin != "pgoutput":
            raise ConfigError("RETAILSYNC_CDC_SLOT", slot, f"is a {plugin} slot, not pgoutput")
        return False
    await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
    return True


async def drop_slot(conn: Connection, slot: str, *, within: float = 10.0) -> None:
    """Drop the slot if it exists, once no walsender holds it: a reader that has just
    disconnected leaves it active until the server notices, and dropping an active slot
    fails."""
    deadline = time.monotonic() + within
    query = "SELECT active FROM pg_replication_slots WHERE slot_name = $1"
    while await conn.fetchval(query, slot) and time.monotonic() < deadline:  # noqa: ASYNC110 - server state, no event to wait on
        await asyncio.sleep(0.05)
    await conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )


async def slot_status(conn: Connection, slot: str) -> SlotStatus:
    row = await conn.fetchrow(
        "SELECT wal_status, confirmed_flush_lsn::text AS confirmed, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained "
        "FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )
    if row is None:
        return SlotStatus(False, None, 0, 0)
    confirmed = lsn_int(row["confirmed"]) if row["confirmed"] else 0
    return SlotStatus(True, row["wal_status"], confirmed, int(row["retained"] or 0))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    schema, _, name = table.rpartition(".")
    return f"{quote_ident(schema or 'public')}.{quote_ident(name)}"
