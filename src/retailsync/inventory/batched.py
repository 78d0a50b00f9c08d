"""Group commit: holds queue up while a batch is being written; the next batch takes them all
in one statement (``inventory_hold_batch``: one round trip, one transaction, one fsync), and
each request gets its own answer once that transaction has committed.

On one hot row this turns N row-lock waits and N commits into one of each per batch, which is
how a single sku reaches thousands of durable holds a second. A committer runs ``lanes``
batches at a time: on the same row the second waits inside PostgreSQL for the first to
commit (so there is no idle round trip between them); on different rows they run side by
side.

The same committer writes escrow holds: given an ``owner``, its batches take units from that
owner's allotments instead of from the stock rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec

from retailsync.db.database import UNAVAILABLE_ERRORS, Connection, Database
from retailsync.errors import (
    DatabaseUnavailable,
    HoldKeyReused,
    InsufficientStock,
    NotFound,
    Refused,
    Shortage,
)
from retailsync.inventory import ledger, metrics
from retailsync.inventory.model import Hold, HoldRequest, StrategyName

log = logging.getLogger(__name__)

_APPLY = (
    "SELECT hold_index, outcome, hold_id, hold_expires, detail FROM inventory_hold_batch("
    "$1, $2, $3::text[], $4::text[], $5::bytea[], $6::text[], $7::int[], $8::int[], "
    "$9::int[], $10::int[], $11::int[], $12::text[], $13::text[], $14::text[], $15::text[], "
    "$16::int[])"
)
# A racing duplicate key (met as a replay next time), or a deadlock on first-time purchase
# limit rows: the whole batch rolled back, so it is simply run again.
_RETRYABLE = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)
_RETRIES = 3
_RECONNECT_S = 0.2
_CLOSE_WAIT_S = 10.0  # for the batches in flight when the engine stops


class NotCovered(Exception):
    """An escrow batch found the owner's allotment missing or short (taken back after a lost
    lease, or given back): the hold must take the direct path instead."""


@dataclass(slots=True)
class _Pending:
    request: HoldRequest
    limits: Sequence[int | None]
    future: asyncio.Future[Hold]
    followers: list[_Pending] = field(default_factory=list)  # same key, same batch


@dataclass(slots=True)
class _Batch:
    """The arrays one call of inventory_hold_batch takes."""

    requests: list[tuple[HoldRequest, Sequence[int | None]]]  # each with its lines' limits
    line_hold: list[int] = field(default_factory=list)
    line_row: list[int] = field(default_factory=list)
    line_qty: list[int] = field(default_factory=list)
    line_slot: list[int | None] = field(default_factory=list)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    slots: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, requests: list[tuple[HoldRequest, Sequence[int | None]]]) -> _Batch:
        batch = cls(requests)
        for index, (request, limits) in enumerate(requests, 1):
            for line, limit in zip(request.lines, limits, strict=True):
                batch.line_hold.append(index)
                batch.line_row.append(
                    batch.rows.setdefault((line.sku, line.location), len(batch.rows) + 1)
                )
                batch.line_qty.append(line.quantity)
                if limit and request.customer_id is not None:
                    slot_key = (request.customer_id, line.sku)
                    slot = batch.slots.setdefault(slot_key, (len(batch.slots) + 1, limit))[0]
                    batch.line_slot.append(slot)
                else:
                    batch.line_slot.append(None)
        return batch

    def arguments(self, owner: str | None, strategy: str) -> tuple[object, ...]:
        requests = [request for request, _ in self.requests]
        return (
            owner,
            strategy,
            [r.scope for r in requests],
            [r.key for r in requests],
            [r.fingerprint for r in requests],
            [r.customer_id for r in requests],
            [r.ttl_ms for r in requests],
            self.line_hold,
            self.line_row,
            self.line_qty,
            self.line_slot,
            [sku for sku, _ in self.rows],
            [location for _, location in self.rows],
            [customer for customer, _ in self.slots],
            [sku for _, sku in self.slots],
            [limit for _, limit in self.slots.values()],
        )


def _refusal(outcome: str, detail: object, owner: str | None) -> Exception:
    if owner is not None and outcome in ("unknown", "insufficient"):
        return NotCovered()
    if outcome == "unknown":
        assert isinstance(detail, dict)
        return NotFound("stock", f"{detail['sku']}@{detail['location']}")
    if outcome == "insufficient":
        assert isinstance(detail, list)
        return InsufficientStock(
            [Shortage(d["sku"], d["requested"], d["available"], d["location"]) for d in detail]
        )
    if outcome == "limit":
        assert isinstance(detail, dict)
        return Refused(
            "purchase-limit",
            f"a customer may hold or buy at most {detail['limit']} of {detail['sku']}",
        )
    raise AssertionError(f"unknown outcome {outcome!r}")


class GroupCommitter:
    def __init__(
        self,
        db: Database,
        *,
        strategy: StrategyName,
        owner: str | None = None,
        lanes: int = 2,
        max_batch: int = 512,
    ) -> None:
        self._db = db
        self._strategy = strategy
        self._owner = owner
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._nonempty = asyncio.Event()
        self._idle = lanes
        self._closed = False
        self._workers = [asyncio.create_task(self._work()) for _ in range(lanes)]

    def submit(self, request: HoldRequest, limits: Sequence[int | None]) -> asyncio.Future[Hold]:
        future: asyncio.Future[Hold] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(DatabaseUnavailable("the reservation engine is stopping"))
            return future
        self._queue.append(_Pending(request, limits, future))
        self._nonempty.set()
        return future

    async def close(self) -> None:
        """Take no more requests, let the batches in flight finish, fail what is queued."""
        self._closed = True
        deadline = asyncio.get_running_loop().time() + _CLOSE_WAIT_S
        # Polled: a batch takes milliseconds, and nothing else waits on this.
        while self._idle < len(self._workers) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._fail_queued(DatabaseUnavailable("the reservation engine stopped"))

    def _fail_queued(self, exc: Exception) -> None:
        queued, self._queue = self._queue, deque()
        for pending in queued:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _take(self) -> list[_Pending]:
        """The next batch: idle lanes split what is queued, so that a second batch is already
        waiting in PostgreSQL when the first commits. Requests whose callers gave up are
        dropped here rather than written for nobody."""
        share = min(self._max_batch, -(-len(self._queue) // self._idle))
        taken: list[_Pending] = []
        while self._queue and len(taken) < share:
            pending = self._queue.popleft()
            if not pending.future.done():
                taken.append(pending)
        return taken

    async def _work(self) -> None:
        """One lane. It holds a connection while there is work and gives it back when its
        queue empties: the database's breaker judges a connection when it comes back, so a
        lane idling on one would keep the half-open breaker's only probe (and every call
        behind it) until the probe timed out. When the database is unreachable, what is
        queued fails at once (503 to clients) rather than waiting, and the lane tries again
        shortly."""
        while True:
            while not self._queue:
                self._nonempty.clear()
                await self._nonempty.wait()
            try:
                async with self._db.connection() as conn:
                    while self._queue:
                        taken = self._take()
                        if not taken:
                            continue
                        self._idle -= 1
                        try:
                            await self._apply(conn, taken)
                        finally:
                            self._idle += 1
            except DatabaseUnavailable as exc:
                self._fail_queued(exc)
                await asyncio.sleep(_RECONNECT_S)
            except Exception as exc:  # cannot connect for another reason (a bad password...)
                log.error("group commit lane cannot get a connection: %s", exc)
                self._fail_queued(DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}"))
                await asyncio.sleep(_RECONNECT_S)

    async def _apply(self, conn: Connection, taken: list[_Pending]) -> None:
        leaders: dict[tuple[str, str], _Pending] = {}
        for pending in taken:
            key = (pending.request.scope, pending.request.key)
            leader = leaders.get(key)
            if leader is None:
                leaders[key] = pending
            elif leader.request.fingerprint == pending.request.fingerprint:
                leader.followers.append(pending)  # the same request: the same answer
            else:
                self._queue.appendleft(pending)  # another request: decided by the next batch
                self._nonempty.set()
        batch = _Batch.of([(p.request, p.limits) for p in leaders.values()])
        metrics.batch_size(self._strategy).observe(len(batch.requests))
        try:
            outcomes = await run_batch(conn, batch, self._owner, self._strategy, _RETRIES)
        except asyncio.CancelledError:
            for pending in taken:
                pending.future.cancel()
            raise
        except Exception as exc:
            lost = isinstance(exc, UNAVAILABLE_ERRORS)
            failure: Exception = exc
            if lost:
                failure = DatabaseUnavailable(f"lost the PostgreSQL connection: {exc}")
            elif isinstance(exc, _RETRYABLE):  # still racing after every retry
                failure = Refused("contention", "the batch met a racing duplicate; try again")
            for pending in taken:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            if lost:
                raise failure from exc  # a new connection for the next batch
            return
        for pending, outcome in zip(leaders.values(), outcomes, strict=True):
            _settle(pending, outcome)


async def hold_in_transaction(
    conn: Connection, request: HoldRequest, limits: Sequence[int | None], strategy: StrategyName
) -> Hold:
    """One hold by the batch's statement, in the caller's open transaction: it commits (or
    rolls back) with whatever the caller writes next, and the stock rows stay locked until
    then. No retry: an error aborts the caller's transaction, which is the caller's to run
    again (a fresh key can meet no duplicate)."""
    [outcome] = await run_batch(conn, _Batch.of([(request, limits)]), None, strategy, 0)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def run_batch(
    conn: Connection, batch: _Batch, owner: str | None, strategy: StrategyName, retries: int
) -> list[Hold | Exception]:
    """Run the batch; return each request's hold or refusal, in order."""
    arguments = batch.arguments(owner, strategy)
    for attempt in range(retries + 1):
        try:
            rows = await conn.fetch(_APPLY, *arguments)
            replays = [row["hold_id"] for row in rows if row["outcome"] == "replay"]
            existing = await ledger.load_holds(conn, replays) if replays else {}
            break
        except _RETRYABLE:
            metrics.WASTED.labels(strategy).inc()
            if attempt == retries:
                raise
    answers: list[Hold | Exception] = [AssertionError("no answer")] * len(batch.requests)
    for row in rows:
        index = row["hold_index"] - 1
        request = batch.requests[index][0]
        outcome = row["outcome"]
        if outcome == "held":
            answers[index] = ledger.new_hold(request, row["hold_id"], row["hold_expires"], strategy)
        elif outcome == "replay":
            answers[index] = msgspec.structs.replace(existing[row["hold_id"]], replayed=True)
        elif outcome == "key-reused":
            answers[index] = HoldKeyReused(request.key)
        else:
            answers[index] = _refusal(outcome, row["detail"], owner)
    return answers


def _settle(pending: _Pending, outcome: Hold | Exception) -> None:
    """Answer a leader, and the same requests that came with it in the batch: the same answer
    (the hold, replayed)."""
    for waiting in (pending, *pending.followers):
        if waiting.future.done():
            continue  # its caller gave up (cancelled)
        if isinstance(outcome, Exception):
            waiting.future.set_exception(outcome)
        elif waiting is pending:
            waiting.future.set_result(outcome)
        else:
            waiting.future.set_result(msgspec.structs.replace(outcome, replayed=True))
