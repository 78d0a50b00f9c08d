"""The event log in PostgreSQL tables (migration 0003): the default, next to the app's data.

Offsets are a bigint identity. Appends hold a transaction-level advisory lock, so offsets are
committed in the order they are handed out and "everything after offset N" never misses a late
commit below N. Appends end with NOTIFY in their transaction; waiting consumers LISTEN, so an
idle ``fetch`` costs one query per timeout rather than a hard poll.

Consumer groups lease offsets. A group's ``cursor`` is the highest offset ever handed out;
``event_log_deliveries`` holds the offsets handed out and not yet acked, each with a lease.
``fetch`` locks the group's row for the length of one short transaction (never while the
worker handles the events), takes back expired leases first and then new events above the
cursor, so workers of one group never hold the same delivery at once. ``ack`` deletes the
lease row and touches nothing shared, so acks from many workers do not queue on each other.

Append and fetch are one round trip each: their statements are SQL functions (migration 0012).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

import asyncpg

from retailsync.cdc.events import ChangeEvent, decode_event, encode_event
from retailsync.chores import wait_set
from retailsync.db.database import Connection, Database
from retailsync.errors import DatabaseUnavailable
from retailsync.eventlog.base import (
    DeadLetter,
    Delivery,
    EventLogUnavailable,
    Lag,
    LogRecord,
    check_consumer_args,
)

_CHANNEL = "retailsync_event_log"
_APPEND_LOCK = 0x6576_656E_746C_6F67  # "eventlog": serialises appends, see the module docstring
_TIMEOUT_ERROR = "not acknowledged within ack_wait"

_DEAD_NACKED = """
WITH dead AS (
    DELETE FROM event_log_deliveries
    WHERE group_name = $1 AND seq = $2 AND deliveries = $3 AND deliveries >= $4
    RETURNING seq, deliveries
)
INSERT INTO event_log_dead_letters (group_name, seq, body, error, deliveries)
SELECT $1, dead.seq, e.body, $5, dead.deliveries FROM dead JOIN event_log e USING (seq)
"""

# Events unacked = in flight + never delivered; age from the oldest of either.
_LAG = """
WITH flight AS (SELECT count(*) AS n, min(seq) AS first FROM event_log_deliveries
                WHERE group_name = $1),
     ahead AS (SELECT count(*) AS n, min(seq) AS first FROM event_log
               WHERE seq > COALESCE((SELECT cursor FROM event_log_groups WHERE name = $1), 0))
SELECT flight.n + ahead.n AS events,
       COALESCE(EXTRACT(epoch FROM clock_timestamp() - (
           SELECT appended_at FROM event_log WHERE seq = LEAST(flight.first, ahead.first)
       ))::float8, 0.0) AS seconds
FROM flight, ahead
"""

# The highest offset every group is done with (no groups: the whole log).
_TRIM = """
WITH done AS (
    SELECT COALESCE(
        (SELECT min(LEAST(g.cursor, (SELECT min(d.seq) - 1 FROM event_log_deliveries d
                                     WHERE d.group_name = g.name)))
         FROM event_log_groups g),
        (SELECT max(seq) FROM event_log)) AS seq
)
DELETE FROM event_log
WHERE seq <= (SELECT seq FROM done)
  AND (($1::interval IS NULL AND $2::bigint IS NULL)
       OR appended_at < clock_timestamp() - $1::interval
       OR ($2 IS NOT NULL
           AND seq <= (SELECT seq FROM event_log ORDER BY seq DESC OFFSET $2 LIMIT 1)))
"""


class PostgresEventLog:
    """The log in the tables of migration 0003, reached through a ``Database`` pool."""

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self._db = db
        self._owns_db = owns_db  # opened from its own URL: close the pool with the log
        self._listening: AsyncExitStack | None = None
        self._listen_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._listen_lost = False

    @asynccontextmanager
    async def _transaction(self, *, explicit: bool = True) -> AsyncIterator[Connection]:
        """A transaction (``explicit=False``: each statement its own) whose loss of connection
        surfaces as the log being unavailable, the error every backend raises for it."""
        try:
            async with self._db.transaction() if explicit else self._db.connection() as conn:
                yield conn
        except DatabaseUnavailable as exc:
            raise EventLogUnavailable(f"event log: {exc}") from exc

    async def append(self, events: Sequence[ChangeEvent]) -> None:
        if not events:
            return
        async with self._transaction(explicit=False) as conn:
            await conn.execute(
                "SELECT event_log_append($1, $2, $3, $4, $5)",
                [e.id for e in events],
                [e.source for e in events],
                [encode_event(e).decode() for e in events],
                _APPEND_LOCK,
                _CHANNEL,
            )

    async def read(self, after_offset: int = 0, limit: int = 100) -> list[LogRecord]:
        # One statement, so no BEGIN and COMMIT: each worker's cache tail reads at least every
        # 50 ms (and at each NOTIFY), and the two extra round trips were most of a read's cost.
        async with self._transaction(explicit=False) as conn:
            rows = await conn.fetch(
                "SELECT seq, body FROM event_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                after_offset,
                limit,
            )
        return [LogRecord(row["seq"], decode_event(row["body"].encode())) for row in rows]

    async def head(self) -> int:
        async with self._transaction(explicit=False) as conn:
            head: int = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM event_log")
        return head

    async def last_event_id(self, source: str) -> str | None:
        async with self._transaction(explicit=False) as conn:
            found: str | None = await conn.fetchval(
                "SELECT last_event_id FROM event_log_sources WHERE source = $1", source
            )
        return found

    async def consumer(
        self, group: str, *, ack_wait: float, max_deliveries: int
    ) -> PostgresConsumer:
        check_consumer_args(group, ack_wait, max_deliveries)
        await self.listen()
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO event_log_groups (name) VALUES ($1) ON CONFLICT DO NOTHING", group
            )
        return PostgresConsumer(self, group, ack_wait=ack_wait, max_deliveries=max_deliveries)

    async def lag(self, group: str) -> Lag:
        async with self._transaction() as conn:
            row = await conn.fetchrow(_LAG, group)
        assert row is not None  # an aggregate always yields a row
        return Lag(row["events"], max(row["seconds"], 0.0))

    async def groups(self) -> list[str]:
        async with self._transaction() as conn:
            rows = await conn.fetch("SELECT name FROM event_log_groups ORDER BY name")
        return [row["name"] for row in rows]

    async def dead_letters(self, group: str, limit: int = 100) -> list[DeadLetter]:
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "SELECT seq, body, error, deliveries FROM event_log_dead_letters"
                " WHERE group_name = $1 ORDER BY dead_at, seq LIMIT $2",
                group,
                limit,
            )
        return [
            DeadLetter(
                group=group,
                offset=row["seq"],
                event=decode_event(row["body"].encode()),
                error=row["error"],
                deliveries=row["deliveries"],
            )
            for row in rows
        ]

    async def trim(
        self, *, older_than: timedelta | None = None, max_events: int | None = None
    ) -> int:
        """Delete events every consumer group is done with (acked or dead-lettered) and that
        are older than ``older_than`` or beyond the newest ``max_events``; with neither
        limit, every such event. Return how many were deleted.

        An event some group has not finished is never deleted: a stalled group makes the log
        grow rather than lose events (its ``lag`` shows it). A group created later starts at
        the oldest event left.
        """
        async with self._transaction() as conn:
            status = await conn.execute(_TRIM, older_than, max_events)
        return int(status.split()[-1])

    async def close(self) -> None:
        await self._stop_listening()
        if self._owns_db:
            await self._db.close()

    def wakeup(self) -> asyncio.Event:
        """The event set by the next NOTIFY. Take it *before* looking for work, so an append
        that lands in between still wakes the waiter."""
        return self._wakeup

    async def listen(self) -> None:
        """Hold one connection that LISTENs for appends, shared by every consumer; taken
        again if the last one was lost (a database restart)."""
        async with self._listen_lock:
            if self._listening is not None and not self._listen_lost:
                return
            await self._stop_listening()
            self._listen_lost = False
            stack = AsyncExitStack()
            try:
                conn = await stack.enter_async_context(self._db.connection(held=True))
                await conn.add_listener(_CHANNEL, self._notified)
            except BaseException as exc:
                # The connection must go back to the pool whatever failed (a server gone
                # mid-LISTEN raises asyncpg's own errors here): a pool closes only when
                # every connection is back.
                with suppress(Exception):
                    await stack.aclose()
                if isinstance(exc, Exception):
                    raise EventLogUnavailable(f"event log: {exc}") from exc
                raise
            stack.push_async_callback(conn.remove_listener, _CHANNEL, self._notified)
            conn.add_termination_listener(self._lost)
            self._listening = stack

    def _lost(self, *_: Any) -> None:
        self._listen_lost = True
        self._notified()  # waiters look for work (and listen again) rather than sleep on

    async def _stop_listening(self) -> None:
        stack, self._listening = self._listening, None
        if stack is not None:
            # A lost connection cannot unlisten, nor be released cleanly: nothing to undo.
            with suppress(asyncpg.InterfaceError, DatabaseUnavailable, OSError):
                await stack.aclose()

    def _notified(self, *_: Any) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()


class PostgresConsumer:
    def __init__(
        self, log: PostgresEventLog, group: str, *, ack_wait: float, max_deliveries: int
    ) -> None:
        self._log = log
        self._group = group
        self._lease = timedelta(seconds=ack_wait)
        self._max_deliveries = max_deliveries

    @property
    def group(self) -> str:
        return self._group

    async def fetch(self, batch: int = 100, max_wait: float = 1.0) -> list[Delivery]:
        if batch < 1:
            raise ValueError(f"batch {batch!r}: must be at least 1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            wakeup = self._log.wakeup()
            deliveries, next_expiry = await self._take(batch)
            remaining = deadline - loop.time()
            if deliveries or remaining <= 0:
                return deliveries
            # Sleep until an append (NOTIFY) or the next lease expiry, whichever comes first.
            # Correctness never rests on the notification: every wake-up queries again.
            if next_expiry is not None:
                remaining = min(remaining, max(next_expiry, 0.01))
            await wait_set(wakeup, remaining)

    async def _take(self, batch: int) -> tuple[list[Delivery], float | None]:
        """Lease up to ``batch`` due events: expired leases first, then new events. Also
        return the seconds until the group's next lease expires, if any is held."""
        async with self._log._transaction(explicit=False) as conn:
            rows = await conn.fetch(
                "SELECT * FROM event_log_take($1, $2, $3, $4, $5)",
                *(self._group, batch, self._lease, self._max_deliveries, _TIMEOUT_ERROR),
            )
        if len(rows) == 1 and rows[0]["seq"] is None:  # nothing due (see migration 0012)
            return [], rows[0]["next_expiry"]
        deliveries = [
            Delivery(row["seq"], decode_event(row["body"].encode()), row["deliveries"])
            for row in rows
        ]
        return deliveries, None

    async def ack(self, delivery: Delivery) -> None:
        # A late ack from a worker whose lease already expired still counts: the event was
        # handled. The delivery handed to another worker meanwhile then acks as a no-op.
        async with self._log._transaction() as conn:
            await conn.execute(
                "DELETE FROM event_log_deliveries WHERE group_name = $1 AND seq = $2",
                self._group,
                delivery.offset,
            )

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        async with self._log._transaction() as conn:
            await self.ack_in(conn, deliveries)

    def acks_in(self, db: Database) -> bool:
        return db is self._log._db

    async def ack_in(self, conn: Connection, deliveries: Sequence[Delivery]) -> None:
        await conn.execute(
            "DELETE FROM event_log_deliveries WHERE group_name = $1 AND seq = ANY($2)",
            self._group,
            [delivery.offset for delivery in deliveries],
        )

    async def nack(self, delivery: Delivery, error: str) -> None:
        # Matching on the attempt keeps a stale worker from cutting short the lease of the
        # worker that holds the event now.
        args = (self._group, delivery.offset, delivery.attempt)
        async with self._log._transaction() as conn:
            status = await conn.execute(_DEAD_NACKED, *args, self._max_deliveries, error)
            if status == "INSERT 0 0":
                await conn.execute(
                    "UPDATE event_log_deliveries SET lease_until = clock_timestamp(),"
                    " last_error = $4 WHERE group_name = $1 AND seq = $2 AND deliveries = $3",
                    *args,
                    error,
                )
                await conn.execute("SELECT pg_notify($1, '')", _CHANNEL)

    async def close(self) -> None:
        """Nothing to release: leases outlive the worker and expire on their own."""
