"""Table snapshots interleaved with the stream, by watermarks (DBLog, Netflix 2019).

A table is read in key order, one chunk at a time, while the capture keeps streaming. For each
chunk the snapshotter commits a *low* watermark (a transactional logical message), selects the
chunk, and commits a *high* watermark. In the stream, every change to the table between the
two watermarks is newer than, or as new as, what the select saw: those keys are dropped from
the chunk, and the rest are emitted as ``snapshot`` events in the high watermark's transaction.
So the snapshot never goes back in time, needs no lock and no long transaction, and each chunk
is its own small unit of work.

Progress (the last key of the last chunk the log durably accepted) is kept in
``cdc_snapshots``; after a crash a snapshot resumes from there. A chunk in flight at the crash
is read again: its rows may then appear twice, with different ids; being full rows of current
state, applying them twice is harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from retailsync.cdc import slot as slots
from retailsync.cdc.tables import SETTING as TABLES_SETTING
from retailsync.cdc.tables import CapturedTable
from retailsync.db.database import Database
from retailsync.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

LOW = "retailsync.snapshot.low"
HIGH = "retailsync.snapshot.high"
_CHUNK_ROWS = 2000
_IDLE_SECONDS = 1.0
_CHUNK_TIMEOUT = 60.0  # a chunk not delivered by then (the stream restarted) is read again


@dataclass(slots=True)
class Window:
    """One chunk between its watermarks."""

    table: str
    key_columns: tuple[str, ...]
    rows: list[dict[str, Any]] | None = None  # set once selected, before the high watermark
    seen: set[tuple[Any, ...]] = field(default_factory=set)  # keys changed inside the window
    open: bool = False
    delivered: asyncio.Event = field(default_factory=asyncio.Event)


class Windows:
    """Chunks in flight, shared by the snapshotter (which fills them) and the assembler (which
    sees the watermarks and the changes in the stream)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Window] = {}

    def add(self, chunk: str, window: Window) -> None:
        self._by_id[chunk] = window

    def discard(self, chunk: str) -> None:
        self._by_id.pop(chunk, None)

    def low(self, chunk: str) -> None:
        window = self._by_id.get(chunk)
        if window is not None:
            window.open = True

    def changed(self, table: str, key: Mapping[str, Any]) -> None:
        """A change to ``table`` committed (in stream order) while windows may be open."""
        for window in self._by_id.values():
            if window.open and window.table == table:
                window.seen.add(_key(key, window.key_columns))

    def high(self, chunk: str) -> tuple[Window | None, list[dict[str, Any]]]:
        """Close the chunk's window; return it and its rows that the stream did not change.
        A chunk not in flight here (a replayed watermark after a restart) yields nothing."""
        window = self._by_id.get(chunk)
        if window is None or window.rows is None or not window.open:
            return None, []
        window.open = False
        kept = [row for row in window.rows if _key(row, window.key_columns) not in window.seen]
        return window, kept


def _key(values: Mapping[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...]:
    """A key comparable between a decoded change (Python values) and a selected row (JSON
    values): ints and text as they are, anything else (uuid, timestamp) as its text."""
    return tuple(
        v if isinstance(v, int | str) or v is None else str(v)
        for v in (values.get(c) for c in columns)
    )


async def request(db: Database, source: str, tables: Sequence[str]) -> None:
    """Ask the capture of ``source`` to snapshot ``tables`` (again, from the start)."""
    async with db.transaction() as conn:
        for table in tables:
            await conn.execute(
                "INSERT INTO cdc_snapshots (source, table_name) VALUES ($1, $2) "
                "ON CONFLICT (source, table_name) DO UPDATE "
                "SET last_key = NULL, rows_emitted = 0, done = false",
                source,
                table,
            )


class Snapshotter:
    def __init__(
        self, db: Database, source: str, tables: Mapping[str, CapturedTable], windows: Windows
    ) -> None:
        self._db = db
        self._source = source
        self._tables = tables
        self._windows = windows

    async def run(self) -> None:
        """Take requested snapshots one chunk at a time, until cancelled."""
        while True:
            try:
                pending = await self._db.fetchrow(
                    "SELECT table_name, last_key FROM cdc_snapshots "
                    "WHERE source = $1 AND NOT done ORDER BY created_at LIMIT 1",
                    self._source,
                )
                if pending is None:
                    await asyncio.sleep(_IDLE_SECONDS)
                    continue
                await self._next(pending["table_name"], pending["last_key"])
            except (DatabaseUnavailable, asyncpg.InterfaceError) as exc:
                log.warning("snapshots paused: %s", exc)  # the capture retries the database
                await asyncio.sleep(_IDLE_SECONDS)

    async def _next(self, name: str, last_key: list[Any] | None) -> None:
        try:
            await self._chunk(name, last_key)
        except ConfigError as exc:  # the table cannot be read as asked: say so, skip it
            log.error("snapshot of %s abandoned: %s", name, exc)
            await self._db.execute(
                "UPDATE cdc_snapshots SET done = true WHERE source = $1 AND table_name = $2",
                self._source,
                name,
            )

    async def _chunk(self, name: str, last_key: list[Any] | None) -> None:
        table = self._tables.get(name)
        if table is None:
            raise ConfigError(TABLES_SETTING, name, "a snapshot was asked of a table not captured")
        async with self._db.connection() as conn:
            key = tuple(await slots.check_table(conn, name, table.key, TABLES_SETTING))
        chunk = uuid.uuid4().hex
        window = Window(name, key)
        self._windows.add(chunk, window)
        try:
            await self._watermark(LOW, chunk)
            window.rows = await self._select(name, key, last_key)
            await self._watermark(HIGH, chunk)
            async with asyncio.timeout(_CHUNK_TIMEOUT):  # not wait_for: see chores.wait_set
                await window.delivered.wait()
        except TimeoutError:
            log.warning("snapshot chunk of %s not delivered in time; reading it again", name)
            return
        finally:
            self._windows.discard(chunk)
        rows = window.rows
        next_key = [rows[-1][c] for c in key] if rows else last_key
        await self._db.execute(
            "UPDATE cdc_snapshots SET last_key = $3, rows_emitted = rows_emitted + $4, "
            "done = $5 WHERE source = $1 AND table_name = $2",
            self._source,
            name,
            next_key,
            len(rows),
            len(rows) < _CHUNK_ROWS,
        )

    async def _watermark(self, prefix: str, chunk: str) -> None:
        await self._db.execute("SELECT pg_logical_emit_message(true, $1, $2)", prefix, chunk)

    async def _select(
        self, name: str, key: tuple[str, ...], last_key: list[Any] | None
    ) -> list[dict[str, Any]]:
        """The next chunk in key order, rows as JSON values (as events carry them)."""
        columns = ", ".join(slots.quote_ident(c) for c in key)
        after = ""
        args: list[Any] = []
        if last_key is not None:
            types = [await self._type(name, column) for column in key]
            placeholders = ", ".join(
                f"(${i + 1}::jsonb #>> '{{}}')::{type_name}" for i, type_name in enumerate(types)
            )
            after = f"WHERE ({columns}) > ({placeholders})"
            args = list(last_key)  # the jsonb codec encodes each value
        rows = await self._db.fetch(
            f"SELECT row_to_json(t)::text AS row FROM {slots.quote_table(name)} t {after} "
            f"ORDER BY {columns} LIMIT {_CHUNK_ROWS}",
            *args,
        )
        return [json.loads(row["row"]) for row in rows]

    async def _type(self, table: str, column: str) -> str:
        type_name: str = await self._db.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attname = $2",
            table,
            column,
        )
        return type_name
