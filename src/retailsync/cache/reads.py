"""Cached reads for the API: the policy table, the tiers and the invalidator together.

A read names its domain (product, price, stock, ...); the domain's class decides whether it is
cached at all, for how long, and whether a stale value may be served while one refresh runs.

Loads and versions. A load is tagged with the invalidator's position taken before it starts
(see ``invalidation``). One gap remains: a transaction can be in the log (its commit record
written and decoded) a moment before it is visible to new snapshots. So a load reads its rows
and ``pg_current_snapshot()`` in one REPEATABLE READ snapshot, and if the last transactions
that changed the key are not all visible in it, the value is answered but not stored.

Stale if error (RFC 5861). When the database cannot be reached (DatabaseUnavailable: its
breaker is open, or the connection failed), a read of a class that tolerates stale values
(``swr_s`` > 0; not stock, which is never served past its TTL) is answered with the last value
this worker held for the key, up to ``stale_if_error_s`` past its expiry, with tier
``stale-if-error`` and no shared caching; with nothing held, the error goes on (a 503). It
may predate a change this worker has not read yet: that is what the marker tells. The
last values are kept apart from L1 (a bounded map of the same documents) because L1 is emptied
when event invalidation stops, and a database outage stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from retailsync.cache import metrics
from retailsync.cache.entry import Entry
from retailsync.cache.invalidation import Invalidator
from retailsync.cache.policy import DataClass, PolicyTable, refresh_early
from retailsync.cache.tiers import Loaded, TieredCache
from retailsync.db.database import Connection, Database
from retailsync.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
_SNAPSHOT = "SELECT pg_current_snapshot()::text"


class Document(NamedTuple):
    """What a loader read: the encoded body, its entity tag, and whether it may be cached
    (False for strong data, e.g. stock at or below the low-stock threshold)."""

    body: bytes
    tag: str
    cacheable: bool = True


DocumentLoader = Callable[[Connection], Awaitable[Document]]


class Answer(NamedTuple):
    body: bytes
    tag: str
    # l1, l2, load, stale (served past its TTL while refreshing), bypass, stale-if-error (the
    # last value held, served because the database is unavailable)
    tier: str
    policy: DataClass | None  # None: the domain is never cached (or not shared now)


STALE_IF_ERROR = "stale-if-error"


class _Held(NamedTuple):
    """The last value read for a key, kept for a database outage."""

    body: bytes
    tag: str
    expires_at: float


class Snapshot(NamedTuple):
    """A ``pg_snapshot``: which transactions a read could see."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def sees(self, xid32: int) -> bool:
        """Whether a committed transaction (its 32-bit id, as in the WAL) is visible."""
        full = (self.xmax & ~0xFFFFFFFF) | xid32  # widen with the snapshot's epoch
        if full > self.xmax:
            full -= 1 << 32
        return full < self.xmin or (full < self.xmax and full not in self.running)


class CachedReads:
    def __init__(
        self,
        db: Database,
        policies: PolicyTable,
        tiers: TieredCache,
        invalidator: Invalidator | None,
        *,
        ryw_wait_s: float = 0.1,
        stale_if_error_s: float = 3600.0,
        held_entries: int = 10_000,
    ) -> None:
        """``stale_if_error_s``: how long past its expiry a value may still be served while
        the database is unavailable; ``held_entries``: how many last values are kept for it."""
        self._db = db
        self.policies = policies
        self.tiers = tiers
        self.invalidator = invalidator
        self._ryw_wait_s = ryw_wait_s
        self._stale_if_error_s = stale_if_error_s
        self._held_max = held_entries
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._refreshing: set[asyncio.Task[None]] = set()

    def _usable(self, policy: DataClass | None) -> DataClass | None:
        if policy is None:
            return None
        if policy.events and (self.invalidator is None or not self.invalidator.live):
            return None  # no change stream: an event-kept value could be stale, unbounded
        return policy

    def hit(self, domain: str, key: str) -> Answer | None:
        """The answer if L1 holds a value to serve as it is: unexpired, and not picked for an
        early refresh (that, and everything else, is ``read``'s)."""
        policy = self._usable(self.policies.of(domain))
        if policy is None:
            return None
        entry = self.tiers.l1.get(key)
        if entry is None or refresh_early(
            entry.expires_at, entry.cost_s, policy.early_beta, time.time()
        ):
            return None
        return self._answer(domain, entry, "l1", policy)

    async def read(
        self, domain: str, key: str, loader: DocumentLoader, *, token: int | None = None
    ) -> Answer:
        """The document of ``key``. ``token``: a write's Consistency-Token (its transaction
        id); the answer then reflects that write, from the cache or read through. While the
        database is unavailable: the last value held (see the module's docstring)."""
        declared = self.policies.of(domain)
        # A read-your-writes read is never answered from before its write.
        keeps = declared is not None and declared.swr_s > 0 and token is None
        try:
            answer = await self._read(domain, key, loader, declared, token)
        except DatabaseUnavailable:
            held = self._held_answer(domain, key) if keeps else None
            if held is None:
                raise
            return held
        if keeps and answer.tier not in ("l1", "stale"):  # those are in L1 already
            assert declared is not None
            self._hold(key, answer.body, answer.tag, time.time() + declared.ttl_s)
        return answer

    async def _read(
        self,
        domain: str,
        key: str,
        loader: DocumentLoader,
        declared: DataClass | None,
        token: int | None,
    ) -> Answer:
        policy = self._usable(declared)
        if policy is None:
            # Not cached, or changes could go unseen now: nobody downstream may keep it either.
            return await self._bypass(domain, loader, None)
        if token is not None and self.invalidator is not None:
            if not await self.invalidator.wait_for(token, self._ryw_wait_s):
                return await self._bypass(domain, loader, policy)  # not here in time
            entry = self.tiers.l1.get(key)
            if entry is not None:
                return self._answer(domain, entry, "l1", policy)
            # A load already under way may have begun before the write: load anew.
            loaded = await self._loader(domain, key, loader, policy)()
            if loaded.cacheable:
                await self.tiers.put(key, loaded.entry)
            return self._answer(domain, loaded.entry, "load", policy)
        now = time.time()
        entry = self.tiers.l1.get(key, stale_ok=True)
        if entry is not None:
            if entry.expires_at > now:
                if refresh_early(entry.expires_at, entry.cost_s, policy.early_beta, now):
                    self._refresh(domain, key, loader, policy)
                return self._answer(domain, entry, "l1", policy)
            if now < entry.expires_at + policy.swr_s:
                self._refresh(domain, key, loader, policy)
                return self._answer(domain, entry, "stale", policy)
        served = await self.tiers.fill(key, self._loader(domain, key, loader, policy))
        return self._answer(domain, served.entry, served.tier, policy)

    def _hold(self, key: str, body: bytes, tag: str, expires_at: float) -> None:
        self._held[key] = _Held(body, tag, expires_at)
        self._held.move_to_end(key)
        if len(self._held) > self._held_max:
            self._held.popitem(last=False)

    def _held_answer(self, domain: str, key: str) -> Answer | None:
        """The value to serve for ``key`` while the database is away: L1's (even expired), or
        the last one held; None when there is none recent enough."""
        entry = self.tiers.l1.get(key, stale_ok=True)
        held = self._held.get(key) if entry is None else _Held(entry.value, entry.tag,
                                                               entry.expires_at)  # fmt: skip
        if held is None or time.time() > held.expires_at + self._stale_if_error_s:
            return None
        metrics.count_read(domain, STALE_IF_ERROR)
        # No policy: not for shared caches, which would keep it after the database is back.
        return Answer(held.body, held.tag, STALE_IF_ERROR, None)

    def _answer(self, domain: str, entry: Entry, tier: str, policy: DataClass) -> Answer:
        metrics.count_read(domain, tier)
        return Answer(entry.value, entry.tag, tier, policy)

    async def _bypass(
        self, domain: str, loader: DocumentLoader, policy: DataClass | None
    ) -> Answer:
        async with self._db.connection() as conn:
            document = await loader(conn)
        metrics.count_read(domain, "bypass")
        return Answer(document.body, document.tag, "bypass", policy)

    def _loader(
        self, domain: str, key: str, loader: DocumentLoader, policy: DataClass
    ) -> Callable[[], Awaitable[Loaded]]:
        async def load() -> Loaded:
            invalidator = self.invalidator
            # Before the snapshot: see the module's docstring. Without events, versions only
            # order the loads of this worker's TTL-kept values.
            position = 0 if invalidator is None else invalidator.position
            epoch = 0 if invalidator is None else invalidator.epoch
            started = time.perf_counter()
            async with (
                self._db.connection() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                snapshot = Snapshot.parse(await conn.fetchval(_SNAPSHOT))
                document = await loader(conn)
            cost = time.perf_counter() - started
            entry = Entry(document.body, position, time.time() + policy.ttl_s, document.tag, cost)
            if invalidator is None or not policy.events:
                return Loaded(entry, document.cacheable)
            sees_all = all(snapshot.sees(xid) for xid in invalidator.writers(key))
            if document.cacheable and not sees_all:
                metrics.REFUSED_PUTS.labels(domain).inc()
            still = invalidator.live and invalidator.epoch == epoch
            return Loaded(entry, document.cacheable and sees_all and still)

        return load

    def _refresh(self, domain: str, key: str, loader: DocumentLoader, policy: DataClass) -> None:
        """Reload in the background (stale-while-revalidate, early refresh), once per key."""

        async def refresh() -> None:
            try:
                await self.tiers.fill(key, self._loader(domain, key, loader, policy))
            except Exception as exc:  # the next read tries again; a refresh never fails one
                log.warning("background refresh of %s failed: %s", key, exc)

        task = asyncio.create_task(refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def close(self) -> None:
        for task in list(self._refreshing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
