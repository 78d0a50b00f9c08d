"""The per-request strategies: each hold is a transaction of its own.

- ``pessimistic``: lock the stock rows in (sku, location) order (``SELECT ... FOR NO KEY
  UPDATE``, the row lock an UPDATE takes: unlike ``FOR UPDATE`` it does not block the
  key-share locks of foreign keys to the row, e.g. escrow allotments'), check, update.
- ``optimistic``: read the rows and their versions without a lock, then update only if no
  one changed them in between; otherwise roll back and try again after a jittered backoff,
  a bounded number of times (the version-based OCC of the foundation's write path).
- ``atomic``: one conditional ``UPDATE ... WHERE on_hand - reserved >= quantity``.

They are here to be compared honestly with group commit and escrow (``retailsync bench
inventory``), and for skus whose policy names them. Every one records the hold in the same
transaction as the stock it takes, so none can oversell or lose an acknowledged hold.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import asyncpg

from retailsync.db.database import Connection, Database
from retailsync.errors import InsufficientStock, NotFound, Refused, Shortage
from retailsync.inventory import ledger
from retailsync.inventory.model import Hold, HoldRequest, StrategyName

_BACKOFF_BASE_S = 0.001
_BACKOFF_CAP_S = 0.05
# A duplicate key committed concurrently (the next attempt replays it), or a deadlock between
# multi-line holds whose conditional updates met the rows in different orders (an UPDATE
# ... FROM unnest locks in the order of the lines): roll back and try again, then give up
# with a refusal the client may retry. Group commit locks in order and never deadlocks.
_RETRIES = 4
_RETRYABLE = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)


def _arrays(request: HoldRequest) -> tuple[list[str], list[str], list[int]]:
    return (
        [line.sku for line in request.lines],
        [line.location for line in request.lines],
        [line.quantity for line in request.lines],
    )


def refuse(
    request: HoldRequest, rows: Sequence[asyncpg.Record], failed: set[tuple[str, str]] | None = None
) -> None:
    """Raise the refusal for the lines that rows (sku, location, available) cannot cover, or,
    given ``failed``, for those lines whatever the rows say now (a conditional update missed
    them a moment ago). Returns when every line is covered and nothing failed."""
    found = {(row["sku"], row["location"]): row["available"] for row in rows}
    for line in request.lines:
        if (line.sku, line.location) not in found:
            raise NotFound("stock", f"{line.sku}@{line.location}")
    shortages = [
        Shortage(line.sku, line.quantity, found[(line.sku, line.location)], line.location)
        for line in request.lines
        if found[(line.sku, line.location)] < line.quantity
        or (failed is not None and (line.sku, line.location) in failed)
    ]
    if shortages:
        raise InsufficientStock(shortages)


_READ_ROWS = (
    "SELECT s.sku, s.location, s.on_hand - s.reserved AS available, s.version "
    "FROM stock s JOIN unnest($1::text[], $2::text[]) AS x(sku, location) "
    "ON s.sku = x.sku AND s.location = x.location ORDER BY s.sku, s.location"
)
_ADD_RESERVED = (
    "UPDATE stock s SET reserved = s.reserved + x.q "
    "FROM unnest($1::text[], $2::text[], $3::int[]) AS x(sku, location, q) "
    "WHERE s.sku = x.sku AND s.location = x.location"
)


class Counters:
    """Attempts a strategy wasted (rolled back and retried), for metrics and benchmarks."""

    def __init__(self) -> None:
        self.wasted = 0


class DirectStrategy(ABC):
    """Shared frame: one transaction per attempt, replay first, the hold recorded last."""

    name: StrategyName

    def __init__(self, db: Database, *, max_attempts: int = 8) -> None:
        self._db = db
        self._max_attempts = max_attempts
        self.counters = Counters()

    async def hold(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        for _ in range(_RETRIES + 1):
            try:
                return await self._hold(request, limits)
            except _RETRYABLE:
                self.counters.wasted += 1
        raise Refused("contention", "the hold met concurrent holds of the same rows; try again")

    @abstractmethod
    async def _hold(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        """One attempt: take the units the strategy's way and record the hold."""

    async def _in_transaction(
        self,
        request: HoldRequest,
        limits: Sequence[int | None],
        take: Callable[[Connection], Awaitable[None]],
    ) -> Hold:
        """Replay, or take the stock with ``take`` and record the hold, in one transaction."""
        async with self._db.transaction() as conn:
            replay = await ledger.find_replay(conn, request)
            if replay is not None:
                return replay
            await take(conn)
            counted = await ledger.take_allowance(conn, request, limits)
            hold_id = uuid.uuid4()
            expires_at = await ledger.record_hold(conn, request, hold_id, self.name, counted)
        return ledger.new_hold(request, hold_id, expires_at, self.name)


class Pessimistic(DirectStrategy):
    name = StrategyName.PESSIMISTIC

    async def _hold(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        skus, locations, quantities = _arrays(request)

        async def take(conn: Connection) -> None:
            rows = await conn.fetch(_READ_ROWS + " FOR NO KEY UPDATE OF s", skus, locations)
            refuse(request, rows)
            await conn.execute(_ADD_RESERVED, skus, locations, quantities)

        return await self._in_transaction(request, limits, take)


class Atomic(DirectStrategy):
    name = StrategyName.ATOMIC

    async def _hold(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        skus, locations, quantities = _arrays(request)

        async def take(conn: Connection) -> None:
            updated = await conn.fetch(
                _ADD_RESERVED + " AND s.on_hand - s.reserved >= x.q RETURNING s.sku, s.location",
                skus,
                locations,
                quantities,
            )
            if len(updated) < len(request.lines):
                taken = {(row["sku"], row["location"]) for row in updated}
                failed = {place for place in request.places if place not in taken}
                refuse(request, await conn.fetch(_READ_ROWS, skus, locations), failed)

        return await self._in_transaction(request, limits, take)


class _Changed(Exception):
    """A row changed between the read and the conditional update: roll back, retry."""


async def _take_if_unchanged(
    request: HoldRequest, versions: Sequence[int], conn: Connection
) -> None:
    """Take the units only from rows still at the versions read; else raise _Changed."""
    skus, locations, quantities = _arrays(request)
    updated = await conn.fetch(
        "UPDATE stock s SET reserved = s.reserved + x.q "
        "FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS x(sku, location, q, v) "
        "WHERE s.sku = x.sku AND s.location = x.location AND s.version = x.v RETURNING s.sku",
        skus,
        locations,
        quantities,
        list(versions),
    )
    if len(updated) < len(request.lines):
        raise _Changed


class Optimistic(DirectStrategy):
    name = StrategyName.OPTIMISTIC

    async def _hold(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        skus, locations, _ = _arrays(request)
        for attempt in range(self._max_attempts):
            rows = await self._db.fetch(_READ_ROWS, skus, locations)
            refuse(request, rows)
            seen = {(row["sku"], row["location"]): row["version"] for row in rows}
            versions = [seen[(line.sku, line.location)] for line in request.lines]

            take = partial(_take_if_unchanged, request, versions)
            try:
                return await self._in_transaction(request, limits, take)
            except _Changed:
                self.counters.wasted += 1
                cap = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
        raise Refused(
            "contention",
            f"the stock changed under {self._max_attempts} attempts in a row; try again",
        )
