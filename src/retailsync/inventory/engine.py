"""The reservation engine of one process: routes each hold to its sku's strategy, runs the
group committers, escrow lanes and the expiry chore.

``auto`` (the default policy) picks the path from what the sku is doing: while it is hot (at
least ``hot_rps`` requests a second) and well stocked (above its low-stock threshold), escrow;
otherwise its stock row directly, by group commit, where a lone request is simply a batch of
one. A sku changes path between one request and the next: requests already queued finish
where they are, so none is dropped.

The engine has a pool of its own, so a caller holding a connection of the application's
pool (checkout, in its transaction) can never starve the engine of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from uuid import UUID

from retailsync.chores import every
from retailsync.db.database import Connection, Database
from retailsync.errors import DomainError, InsufficientStock, Refused
from retailsync.inventory import batched, escrow, ledger, metrics
from retailsync.inventory.batched import GroupCommitter
from retailsync.inventory.direct import Atomic, DirectStrategy, Optimistic, Pessimistic
from retailsync.inventory.model import Hold, HoldRequest, Policy, StrategyName
from retailsync.inventory.rates import RateMeter

log = logging.getLogger(__name__)

_POLICY_REFRESH_S = 2.0
_EXPIRY_BATCH = 1000
_DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class EngineConfig:
    default_strategy: StrategyName = StrategyName.AUTO
    hot_rps: float = 50.0
    low_stock_threshold: int = 20
    escrow_lanes: int = 2
    lease_seconds: float = 10.0
    expiry_interval_s: float = 0.1
    max_batch: int = 512
    committer_lanes: int = 2
    optimistic_attempts: int = 8

    def pool_size(self, others: int) -> int:
        """Connections the engine's pool needs: one kept by each group-commit lane (batched
        and escrow), and ``others`` for per-request strategies, refills and chores; fewer and
        a lane could wait for a connection that never comes back."""
        return self.committer_lanes + self.escrow_lanes + others


class InventoryEngine:
    def __init__(self, db: Database, config: EngineConfig = EngineConfig()) -> None:
        """``db``: the engine's own pool (see the module docstring)."""
        self.db = db
        self.config = config
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._policies: dict[str, Policy] = {}
        self._rates = RateMeter(watch=config.hot_rps / 2)  # watched: not cold (``_cold``)
        self._demand = RateMeter()
        self._route_of: dict[str, StrategyName] = {}
        self._chores: list[asyncio.Task[None]] = []
        self._batched: GroupCommitter | None = None
        self._escrow: escrow.Escrow | None = None
        self._direct: dict[StrategyName, DirectStrategy] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            await self.refresh_policies()
        except Exception as exc:  # the refresh chore keeps trying; holds wait for nothing
            log.warning("reservation policies not loaded yet: %s", exc)
        self._batched = GroupCommitter(
            self.db,
            strategy=StrategyName.BATCHED,
            lanes=self.config.committer_lanes,
            max_batch=self.config.max_batch,
        )
        self._escrow = escrow.Escrow(
            self.db,
            engine_id=self.id,
            lanes=self.config.escrow_lanes,
            lease_seconds=self.config.lease_seconds,
            fallback=self._from_row,
            floor_of=self._floor,
            demand_of=self._demand.rate,
            max_batch=self.config.max_batch,
        )
        attempts = self.config.optimistic_attempts
        self._direct = {
            StrategyName.PESSIMISTIC: Pessimistic(self.db),
            StrategyName.OPTIMISTIC: Optimistic(self.db, max_attempts=attempts),
            StrategyName.ATOMIC: Atomic(self.db),
        }
        self._chores = [
            asyncio.create_task(every(_POLICY_REFRESH_S, "policy refresh", self.refresh_policies)),
            asyncio.create_task(every(self.config.expiry_interval_s, "expiry", self.expire_due)),
            asyncio.create_task(
                every(self.config.lease_seconds / 2, "escrow reclaim", self._reclaim)
            ),
        ]

    async def close(self) -> None:
        if self._releasing:
            await asyncio.wait(self._releasing, timeout=5)
        for chore in self._chores:
            chore.cancel()
        for chore in self._chores:
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        if self._escrow is not None:
            await self._escrow.close()
        if self._batched is not None:
            await self._batched.close()

    # --- holds ---------------------------------------------------------------------------

    async def hold(self, request: HoldRequest, *, strategy: StrategyName | None = None) -> Hold:
        """Place a hold (or replay the one its key made). ``strategy`` overrides the skus'
        policies (benchmarks). Raises the refusal; nothing is written then."""
        policies, limits = self._admit(request)
        chosen = strategy or self._choose(request, policies)
        return await self._counted(chosen, self._dispatch(chosen, request, limits))

    async def hold_within(
        self, conn: Connection, request: HoldRequest, *, locked: bool = False
    ) -> tuple[Hold, bool]:
        """A hold for a caller that goes on writing in the transaction open on ``conn``
        (checkout), and whether it was written in that transaction. A cold hold (see
        ``_cold``) is: one commit and one fsync then serve the hold and what follows it,
        instead of two, and a rollback takes the hold with it; its stock rows stay locked
        until that commit, which a cold sku can afford. Any other takes ``hold``'s way, and
        the caller releases it if its transaction fails. ``locked``: the transaction may
        already hold stock rows from an earlier, refused attempt (a refusal is an answer, not
        an error), so this one stays in it too: on the engine's connections it could wait
        for those rows while the caller waits for it, a cycle PostgreSQL cannot see."""
        policies, limits = self._admit(request)
        if locked or self._cold(request, policies):
            within = batched.hold_in_transaction(conn, request, limits, StrategyName.BATCHED)
            return await self._counted(StrategyName.BATCHED, within), True
        chosen = self._choose(request, policies)
        return await self._counted(chosen, self._dispatch(chosen, request, limits)), False

    def _cold(self, request: HoldRequest, policies: Sequence[Policy]) -> bool:
        """Whether every line may hold its stock row for the rest of a caller's transaction:
        under the ``auto`` policy, below half the hot rate (each worker counts only the
        requests it serves), not found low a moment ago (its last units are contended), and
        with no units in this process's escrow lanes (by their own counts; the engine's path
        gives those back to the row first)."""
        if self.config.default_strategy is not StrategyName.AUTO or any(
            policy.strategy is not StrategyName.AUTO for policy in policies
        ):
            return False
        assert self._escrow is not None, "start() the engine first"
        return (
            all(self._rates.rate(line.sku) < self.config.hot_rps / 2 for line in request.lines)
            and not self._low(request)
            and not self._escrow.may_hold(request.places)
        )

    def engine_skus(self) -> list[str] | None:
        """The skus whose holds must go through the engine now, for a caller that holds every
        other sku itself, in its own statement (``checkout_place``, migration 0014), as
        ``hold_within`` would in its transaction: those not cold by ``_cold``'s rate, low and
        escrow tests (a sku with a policy of its own the statement sees for itself). None:
        every hold goes through the engine (a default strategy other than auto)."""
        if self.config.default_strategy is not StrategyName.AUTO:
            return None
        assert self._escrow is not None, "start() the engine first"
        return sorted(self._escrow.busy_skus().union(self._rates.watched()))

    def count_within(self, lines: Sequence[tuple[str, int]]) -> None:
        """Count a hold its caller wrote itself (after ``engine_skus``): in the skus' rates,
        as ``_admit`` counts every other, and in the holds metric."""
        for sku, quantity in lines:
            self._rates.add(sku)
            self._demand.add(sku, quantity)
        metrics.holds_counted(StrategyName.BATCHED, "held").inc()

    def _low(self, request: HoldRequest) -> bool:
        """Whether a place of the request was found below its floor a moment ago."""
        assert self._escrow is not None
        now = time.monotonic()
        return any(
            now - self._escrow.low.get(place, -1e9) < escrow.LOW_MEMORY_S
            for place in request.places
        )

    def _admit(self, request: HoldRequest) -> tuple[list[Policy], list[int | None]]:
        """The lines' policies and purchase limits, refusing an anonymous hold a limit needs;
        counts the request in the skus' rates."""
        policies = [self._policies.get(line.sku, _DEFAULT_POLICY) for line in request.lines]
        limits = [policy.per_customer_limit for policy in policies]
        if request.customer_id is None and any(limits):
            raise Refused(
                "customer-required",
                "a sku under a purchase limit can only be held for a named customer_id",
            )
        for line in request.lines:
            self._rates.add(line.sku)
            self._demand.add(line.sku, line.quantity)
        return policies, limits

    async def _counted(self, chosen: StrategyName, placing: Awaitable[Hold]) -> Hold:
        started = time.perf_counter()
        try:
            hold = await placing
        except DomainError:
            metrics.holds_counted(chosen, "refused").inc()
            raise
        except Exception:
            metrics.holds_counted(chosen, "failed").inc()
            raise
        metrics.hold_latency(chosen).observe(time.perf_counter() - started)
        metrics.holds_counted(chosen, "replayed" if hold.replayed else "held").inc()
        return hold

    async def release(self, hold_id: UUID) -> Hold:
        """Give a hold's stock back now (see ``ledger.release``)."""
        async with self.db.transaction() as conn:
            return await ledger.release(conn, hold_id)

    def release_soon(self, hold_id: UUID) -> None:
        """Release a hold in the background: for a caller whose own transaction, still open,
        may hold the hold row's lock (the release then waits for its rollback). If this fails
        too, the hold expires with its TTL."""
        task = asyncio.create_task(self._release_quietly(hold_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_quietly(self, hold_id: UUID) -> None:
        try:
            await self.release(hold_id)
        except Exception as exc:
            log.warning("could not release hold %s (it expires with its TTL): %s", hold_id, exc)

    def wasted_attempts(self, strategy: StrategyName) -> int:
        direct = self._direct.get(strategy)
        return direct.counters.wasted if direct is not None else 0

    async def _dispatch(
        self, strategy: StrategyName, request: HoldRequest, limits: Sequence[int | None]
    ) -> Hold:
        assert self._batched is not None, "start() the engine first"
        assert self._escrow is not None
        if strategy is StrategyName.ESCROW:
            return await self._escrow.hold(request, limits)
        if strategy is StrategyName.BATCHED:
            return await self._from_row(request, limits)
        if strategy is StrategyName.AUTO:
            raise AssertionError("auto is resolved by _choose")
        direct = self._direct[strategy]
        before = direct.counters.wasted
        try:
            return await direct.hold(request, limits)
        finally:
            metrics.WASTED.labels(strategy).inc(direct.counters.wasted - before)

    async def _from_row(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        """Group commit against the stock rows. Refused while escrow lanes of this process
        still hold units of a line: those go back to the row, and the hold is tried again."""
        assert self._batched is not None
        assert self._escrow is not None
        try:
            return await self._batched.submit(request, limits)
        except InsufficientStock:
            stranded = await self._escrow.stranded(request.places)
            if not stranded:
                raise
        await self._escrow.give_back_places(stranded)
        return await self._batched.submit(request, limits)

    def _choose(self, request: HoldRequest, policies: Sequence[Policy]) -> StrategyName:
        named = {policy.strategy for policy in policies}
        if len(named) > 1:
            return StrategyName.BATCHED  # lines that disagree meet on the row itself
        name = named.pop()
        if name is StrategyName.AUTO:
            name = self.config.default_strategy
        if name is not StrategyName.AUTO:
            return name
        hot = all(self._rates.rate(line.sku) >= self.config.hot_rps for line in request.lines)
        chosen = StrategyName.ESCROW if hot and not self._low(request) else StrategyName.BATCHED
        for line in request.lines:
            if self._route_of.get(line.sku) is not chosen:
                if line.sku in self._route_of:
                    metrics.STRATEGY_SWITCHES.labels(chosen).inc()
                self._route_of[line.sku] = chosen
        return chosen

    def _floor(self, sku: str) -> int:
        policy = self._policies.get(sku)
        if policy is not None and policy.low_stock_threshold is not None:
            return policy.low_stock_threshold
        return self.config.low_stock_threshold

    # --- chores --------------------------------------------------------------------------

    async def refresh_policies(self) -> None:
        rows = await self.db.fetch(
            "SELECT sku, strategy, per_customer_limit, low_stock_threshold "
            "FROM reservation_policies"
        )
        self._policies = {
            row["sku"]: Policy(
                StrategyName(row["strategy"]), row["per_customer_limit"], row["low_stock_threshold"]
            )
            for row in rows
        }
        metrics.HOT_SKUS.set(len(self._rates.above(self.config.hot_rps)))

    def set_policy(self, sku: str, policy: Policy) -> None:
        """Apply a policy this process just wrote, before the next refresh."""
        self._policies[sku] = policy

    async def expire_due(self) -> int:
        """Give back the stock of every hold whose TTL has run out; return how many."""
        total = 0
        while True:
            async with self.db.transaction() as conn:
                expired = await ledger.expire_due(conn, _EXPIRY_BATCH)
            if not expired:
                return total
            now = time.time()
            for expires_at in expired:
                metrics.EXPIRY_DELAY.observe(max(0.0, now - expires_at.timestamp()))
            metrics.EXPIRED.inc(len(expired))
            total += len(expired)
            if len(expired) < _EXPIRY_BATCH:
                return total

    async def _reclaim(self) -> None:
        await escrow.reclaim_expired(self.db)
