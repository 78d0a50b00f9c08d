"""``retailsync bench cache``: cached product reads kept fresh by the change stream, beside
plain cache-aside with a TTL, on the same workload in the same run.

- **freshness**: readers draw skus from a Zipf spread and read them through the cache while
  writers change titles directly in PostgreSQL. Run twice: retailsync's event invalidation
  (the default policy table, a capture process, the worker's invalidator tailing the log),
  then cache-aside with a TTL only. Each mode first runs the workload for ``warmup_s``
  uncounted, so both are measured warm (a cold start's misses would weigh by each mode's
  read rate, not by how it invalidates). A read is *stale* if a version committed more than
  ``bound_s`` before the read began is newer than the one it got (commit time is taken when
  the writer's UPDATE returned: a little late, so the count errs low by a few ms per write).
  Freshness is commit to L1 eviction, per transaction, from the invalidator.
- **l1**: the time of a cached read that hits L1, through the whole read path (policy, tiers,
  metrics), in process.
- **http**: cached product GETs through ``retailsync serve`` beside a bare ASGI hello-world
  served the same way (uvicorn, same socket setup, same worker count), closed loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from retailsync.bench.loadgen import ClosedLoopResult, closed_loop, get
from retailsync.bench.private import private_database
from retailsync.bench.stats import percentile, zipf_picker
from retailsync.cache.entry import Entry
from retailsync.cache.invalidation import Invalidator
from retailsync.cache.keys import product_key
from retailsync.cache.l1 import L1Cache
from retailsync.cache.policy import load_policies
from retailsync.cache.reads import CachedReads, Document, DocumentLoader
from retailsync.cache.tiers import Loaded, TieredCache
from retailsync.db.database import Connection, Database
from retailsync.demo.capture import new_slot_name
from retailsync.demo.server import ApiServer, CaptureProcess
from retailsync.eventlog.postgres import PostgresEventLog
from retailsync.process import free_port
from retailsync.services import catalog
from retailsync.views import GROUP, ViewMaintainer, ensure_built

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class CachePlan:
    seconds: float  # per mode
    skus: int
    readers: int
    writes_per_s: float
    ttl_baseline_s: float  # the TTL-only cache's TTL
    http_seconds: float
    http_clients: int = 64
    workers: int = 2
    zipf_s: float = 1.1
    bound_s: float = 0.1  # the freshness target: commit to L1 evicted on every worker
    warmup_s: float = 1.0  # per mode, the same workload first, not counted: caches start warm


FULL = CachePlan(seconds=10.0, skus=10_000, readers=32, writes_per_s=200, ttl_baseline_s=1.0,
                 http_seconds=10.0)  # fmt: skip
QUICK = CachePlan(seconds=3.0, skus=2_000, readers=16, writes_per_s=100, ttl_baseline_s=1.0,
                  http_seconds=2.0)  # fmt: skip


def _load_product(sku: str) -> DocumentLoader:
    async def load(conn: Connection) -> Document:
        product = await catalog.get_product(conn, sku)
        return Document(product.model_dump_json().encode(), f'"{product.version}"')

    return load


class Workload:
    """Readers and writers over the same skus; the writers' commits are the staleness oracle."""

    def __init__(self, db: Database, plan: CachePlan, names: list[str]) -> None:
        self._db = db
        self._plan = plan
        self._pick = zipf_picker(names, plan.zipf_s, random.Random(7))
        self._committed: dict[str, list[tuple[float, int]]] = {}
        self.stale = 0
        self.reads = 0
        self.tiers: Counter[str] = Counter()

    async def run(self, read: Callable[[str], Any], seconds: float) -> float:
        stop = time.monotonic() + seconds
        started = time.perf_counter()
        readers = [self._reader(read, stop) for _ in range(self._plan.readers)]
        await asyncio.gather(self._writer(stop), *readers)
        return time.perf_counter() - started

    async def _writer(self, stop: float) -> None:
        interval = 1.0 / self._plan.writes_per_s
        due = time.monotonic()
        while (now := time.monotonic()) < stop:
            if now < due:
                await asyncio.sleep(due - now)
            due += interval
            sku = self._pick()
            version = await self._db.fetchval(
                "UPDATE products SET title = 'Title ' || version WHERE sku = $1 RETURNING version",
                sku,
            )
            self._committed.setdefault(sku, []).append((time.monotonic(), version))

    async def _reader(self, read: Callable[[str], Any], stop: float) -> None:
        while (started := time.monotonic()) < stop:
            # A request boundary: an L1 hit never suspends, and a server's reader waits for
            # its socket between requests; without this, hits would starve the invalidator.
            await asyncio.sleep(0)
            sku = self._pick()
            version, tier = await read(sku)
            self.reads += 1
            self.tiers[tier] += 1
            for committed_at, newer in reversed(self._committed.get(sku, ())):
                if committed_at < started - self._plan.bound_s:
                    self.stale += newer > version
                    break

    async def warm(self, read: Callable[[str], Any]) -> None:
        """Run the workload uncounted (its commits still judge later reads), so both modes
        are measured in their steady state rather than from a cold cache."""
        await self.run(read, self._plan.warmup_s)
        self.stale = self.reads = 0
        self.tiers.clear()

    def report(self, seconds: float, hits: set[str]) -> dict[str, Any]:
        hit = sum(n for tier, n in self.tiers.items() if tier in hits)
        return {
            "reads": self.reads,
            "reads_per_s": round(self.reads / seconds),
            "hit_ratio": round(hit / max(self.reads, 1), 4),
            "stale_reads": self.stale,
            "tiers": dict(self.tiers),
        }


async def _seed(db: Database, skus: int) -> list[str]:
    await db.execute(
        "INSERT INTO products (sku, title, category, attributes) "
        "SELECT 'C-' || n, 'Title 1', 'bench/c' || (n % 50), jsonb_build_object('n', n) "
        "FROM generate_series(0, $1 - 1) AS n",
        skus,
    )
    return [f"C-{n}" for n in range(skus)]


async def _wait_slot(db: Database, slot: str) -> None:
    query = "SELECT active FROM pg_replication_slots WHERE slot_name = $1"
    for _ in range(300):
        if await db.fetchval(query, slot):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the capture never started reading slot {slot}")


async def _events_mode(
    db: Database, plan: CachePlan, names: list[str], slot: str
) -> dict[str, Any]:
    log = PostgresEventLog(db)
    l1 = L1Cache()
    invalidator = Invalidator(log, l1, db, slot=slot)
    lags: list[float] = []
    invalidator.observer = lags.append
    await invalidator.start()
    reads = CachedReads(db, load_policies("", ""), TieredCache(l1), invalidator)
    # The views, as every worker keeps them: built first, then fed by the same stream.
    await ensure_built(db)
    views = ViewMaintainer(db, log)
    view_lags: list[float] = []
    views.observer = view_lags.append
    keeping_views = asyncio.create_task(views.run())
    # As a worker does once it is up (api.app): what lives for the whole run stays out of the
    # collector's full passes, each of which would stall this loop for tens of ms.
    gc.collect()
    gc.freeze()
    try:

        async def read(sku: str) -> tuple[int, str]:
            answer = await reads.read("product", product_key(sku), _load_product(sku))
            return int(answer.tag.strip('"')), answer.tier

        workload = Workload(db, plan, names)
        await workload.warm(read)
        await _drained(log, GROUP)
        lags.clear()
        view_lags.clear()
        seconds = await workload.run(read, plan.seconds)
        # The last writes' events still on their way are measured as they land, before the
        # L1 timing below holds the loop for a while.
        await _drained(log, GROUP)
        lags, view_lags = list(lags), list(view_lags)
        report = workload.report(seconds, {"l1", "stale"})
        report["live"] = invalidator.live
        report["freshness_p50_ms"] = round(percentile(lags, 0.5) * 1000, 2)
        report["freshness_p99_ms"] = round(percentile(lags, 0.99) * 1000, 2)
        report["freshness_max_ms"] = round(max(lags, default=0.0) * 1000, 2)
        report["transactions_applied"] = len(lags)
        report["view_lag_p50_ms"] = round(percentile(view_lags, 0.5) * 1000, 2)
        report["view_lag_p99_ms"] = round(percentile(view_lags, 0.99) * 1000, 2)
        report["view_events"] = len(view_lags)
        report["l1_hit_us"] = await _l1_hit_latency(reads, names[0])
        return report
    finally:
        gc.unfreeze()
        keeping_views.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping_views
        await reads.close()
        await invalidator.close()
        await log.close()  # its LISTEN connection


async def _drained(log: PostgresEventLog, group: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (await log.lag(group)).events and time.monotonic() < deadline:  # noqa: ASYNC110 - a poll of the database
        await asyncio.sleep(0.02)


async def _l1_hit_latency(reads: CachedReads, sku: str) -> dict[str, float]:
    key, load = product_key(sku), _load_product(sku)
    await reads.read("product", key, load)
    samples = []
    for _ in range(50_000):
        started = time.perf_counter_ns()
        answer = await reads.read("product", key, load)
        samples.append((time.perf_counter_ns() - started) / 1000)
        assert answer.tier in ("l1", "load")  # a write may evict it meanwhile: then it loads
    return {"p50": round(percentile(samples, 0.5), 2), "p99": round(percentile(samples, 0.99), 2)}


async def _ttl_mode(db: Database, plan: CachePlan, names: list[str]) -> dict[str, Any]:
    """Plain cache-aside: a value lives for the TTL whatever happens to its row."""
    cache = TieredCache(L1Cache())

    async def read(sku: str) -> tuple[int, str]:
        async def load() -> Loaded:
            async with db.connection() as conn:
                product = await catalog.get_product(conn, sku)
            body = product.model_dump_json().encode()
            expires = time.time() + plan.ttl_baseline_s
            return Loaded(Entry(body, product.version, expires, f'"{product.version}"'))

        served = await cache.get(product_key(sku), load)
        return served.entry.version, served.tier

    workload = Workload(db, plan, names)
    await workload.warm(read)
    seconds = await workload.run(read, plan.seconds)
    return {**workload.report(seconds, {"l1"}), "ttl_s": plan.ttl_baseline_s}


async def _http(
    dsn: str, db: Database, plan: CachePlan, names: list[str], slot: str, progress: Progress
) -> dict[str, Any]:
    """Both servers up at once, measured in alternating rounds of a second: the machine's
    own drift (other work, CPU frequency) then falls on both alike. Both are sent the same
    requests (paths and Authorization header), so they parse the same bytes."""
    from retailsync.models import Channel
    from retailsync.services.keys import create_key

    async with db.transaction() as conn:
        _, secret = await create_key(conn, Channel.WEB, label="bench")
    pick = zipf_picker(names[:1000], plan.zipf_s, random.Random(3))
    auth = {"Authorization": f"Bearer {secret}"}

    def product() -> bytes:
        return get(f"/v1/products/{pick()}", auth)

    hot = itertools.cycle(names[:1000])

    def every_hot_product() -> bytes:
        return get(f"/v1/products/{next(hot)}", auth)

    env = {"RETAILSYNC_SERVE_CAPTURE": "false", "RETAILSYNC_CDC_SLOT": slot}
    port = free_port()
    hello_args = [sys.executable, "-m", "retailsync.bench.hello", str(port), str(plan.workers)]
    with ApiServer(dsn, workers=plan.workers, env=env) as server:
        hello = await asyncio.create_subprocess_exec(*hello_args, stdin=subprocess.DEVNULL)
        try:
            await server.wait_ready()
            await _wait_port(port)
            # What the log holds that the workers' view consumers have not applied (the TTL
            # mode's writes, with no consumer running then) is applied first: otherwise the
            # first rounds measure that catch-up, not cached GETs.
            log = PostgresEventLog(db)
            progress(f"the workers' views catching up: {(await log.lag(GROUP)).events} events")
            await _drained(log, GROUP, within=120)
            await log.close()
            # Warm: every hot product loaded by every worker (each connection stays on one),
            # so what is measured is cached GETs, not the first loads.
            await closed_loop(
                "127.0.0.1", server.port, clients=plan.http_clients, seconds=3.0,
                request=every_hot_product,
            )  # fmt: skip
            await closed_loop("127.0.0.1", port, clients=8, seconds=1.0, request=product)
            cached, bare = ClosedLoopResult(0.0), ClosedLoopResult(0.0)
            pairs: list[float] = []  # each round's ratio: how far the machine moves them
            for _ in range(max(2, round(plan.http_seconds))):
                rates = []
                for into, target in ((cached, server.port), (bare, port)):
                    round_ = await closed_loop(
                        "127.0.0.1", target, clients=plan.http_clients, seconds=1.0,
                        request=product,
                    )  # fmt: skip
                    into.add(round_)
                    rates.append(len(round_.latencies) / round_.seconds)
                pairs.append(rates[0] / rates[1] if rates[1] else 0.0)
        finally:
            hello.terminate()
            await hello.wait()
    product_rps = len(cached.latencies) / cached.seconds
    hello_rps = len(bare.latencies) / bare.seconds
    return {
        "workers": plan.workers,
        "clients": plan.http_clients,
        "seconds_each": cached.seconds,
        "product_get_per_s": round(product_rps),
        "product_p99_ms": round(percentile(cached.latencies, 0.99) * 1000, 2),
        "product_statuses": cached.statuses,
        "hello_per_s": round(hello_rps),
        "hello_p99_ms": round(percentile(bare.latencies, 0.99) * 1000, 2),
        "ratio": round(product_rps / hello_rps, 3) if hello_rps else 0.0,
        "round_ratios": {
            "min": round(min(pairs), 3),
            "median": round(statistics.median(pairs), 3),
            "max": round(max(pairs), 3),
        },
    }


async def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"the hello-world server did not listen on {port}")


async def run_cache_bench(plan: CachePlan, progress: Progress) -> dict[str, Any]:
    async with private_database(progress, pool_max=plan.readers + 8) as (dsn, db):
        names = await _seed(db, plan.skus)
        slot = new_slot_name()
        progress(f"{plan.skus} products; starting the capture on slot {slot}")
        with CaptureProcess(dsn, slot):
            await _wait_slot(db, slot)
            progress(
                f"event invalidation: {plan.readers} readers, {plan.writes_per_s:.0f} writes/s"
            )
            events = await _events_mode(db, plan, names, slot)
            progress(f"cache-aside with a {plan.ttl_baseline_s:.0f} s TTL, same workload")
            ttl = await _ttl_mode(db, plan, names)
            progress(f"HTTP: product GETs and a hello-world, {plan.workers} workers each")
            http = await _http(dsn, db, plan, names, slot, progress)
    return {
        "plan": asdict(plan),
        "events": events,
        "ttl_only": ttl,
        "http": http,
        "hit_ratio": events["hit_ratio"],
        "ttl_hit_ratio": ttl["hit_ratio"],
        "stale_reads": events["stale_reads"],
        "ttl_stale_reads": ttl["stale_reads"],
        "freshness_p50_ms": events["freshness_p50_ms"],
        "freshness_p99_ms": events["freshness_p99_ms"],
        "view_lag_p99_ms": events["view_lag_p99_ms"],
        "http_ratio_vs_hello": http["ratio"],
        "l1_hit_p99_us": events["l1_hit_us"]["p99"],
    }
