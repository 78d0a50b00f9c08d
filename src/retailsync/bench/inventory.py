"""``retailsync bench inventory``: durable holds per second for every strategy, beside a raw
conditional UPDATE, on one hot sku and on a Zipf spread over many skus.

Everything runs on a private embedded PostgreSQL (fsync and synchronous_commit on) in a
temporary folder. Each cell is ``clients`` closed-loop clients in this process calling the
engine for ``seconds`` (after a short warm-up), each hold one unit with a key of its own; the
ledger is emptied and the engine restarted between cells, so no cell inherits another's
tables. Per cell: holds/s, latency p50/p99 (from the call to its durable answer), wasted
attempts (rolled back and retried), refusals, and the full inventory check afterwards.

- **baseline**: ``UPDATE ... SET available = available - 1 WHERE id = $1 AND available >= 1``
  in autocommit on a table of plain rows, from the same pool: the single-row ceiling without
  any ledger, in the same run.
- **flash sale**: 256 clients on a sku of ``flash_units`` units until it is gone, per
  strategy: units acknowledged against units there were, and the stock audit's oversold
  count.
- **http**: the same hot-sku holds through ``retailsync serve`` (2 workers) over keep-alive
  HTTP, beside the in-process figure at the same concurrency.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from retailsync.bench.loadgen import closed_loop, post
from retailsync.bench.private import private_database
from retailsync.bench.stats import percentile, zipf_picker
from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.errors import DomainError, InsufficientStock
from retailsync.inventory.check import check_inventory
from retailsync.inventory.engine import EngineConfig, InventoryEngine
from retailsync.inventory.model import HoldRequest, StrategyName

LOCATION = "bench-dc"
HOT = "HOT-0"
FLASH = "FLASH-0"
POOL_MAX = 32  # connections for per-request holds (and the baseline's): a realistic pool
_TTL_MS = 15 * 60 * 1000
_ZIPF_S = 1.1
STRATEGIES = (
    StrategyName.PESSIMISTIC,
    StrategyName.OPTIMISTIC,
    StrategyName.ATOMIC,
    StrategyName.BATCHED,
    StrategyName.ESCROW,
    StrategyName.AUTO,
)


@dataclass(frozen=True, slots=True)
class InventoryPlan:
    seconds: float  # measured per cell
    warmup: float
    skus: int  # the Zipf spread
    flash_units: int
    http_seconds: float
    concurrency: tuple[int, ...] = (1, 32, 256)
    http_clients: int = 256


FULL = InventoryPlan(seconds=3.0, warmup=0.3, skus=10_000, flash_units=1_000, http_seconds=5.0)
QUICK = InventoryPlan(seconds=1.0, warmup=0.2, skus=2_000, flash_units=300, http_seconds=2.0)


def _zipf_names(skus: int) -> list[str]:
    return [f"ZIPF-{n}" for n in range(skus)]


async def _seed(db: Database, plan: InventoryPlan) -> None:
    """Skus with their receipts (so the stock audit balances), and the baseline's rows."""
    skus = [HOT, FLASH, *_zipf_names(plan.skus)]
    units = {HOT: 100_000_000, FLASH: plan.flash_units}
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO regions (id) VALUES ('bench')")
        await conn.execute(
            "INSERT INTO locations (id, region, kind) VALUES ($1, 'bench', 'warehouse')", LOCATION
        )
        await conn.execute(
            "INSERT INTO products (sku, title, category) "
            "SELECT s, s, 'bench' FROM unnest($1::text[]) AS s",
            skus,
        )
        quantities = [units.get(sku, 10_000_000) for sku in skus]
        await conn.execute(
            "INSERT INTO stock (sku, location, on_hand) "
            "SELECT s, $2, q FROM unnest($1::text[], $3::bigint[]) AS x(s, q)",
            skus,
            LOCATION,
            quantities,
        )
        await conn.execute(
            "INSERT INTO stock_movements (sku, location, delta, kind, reason) "
            "SELECT s, $2, q, 'receipt', 'bench' FROM unnest($1::text[], $3::bigint[]) AS x(s, q)",
            skus,
            LOCATION,
            quantities,
        )
        await conn.execute(
            "CREATE TABLE bench_rows (id text PRIMARY KEY, available bigint NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO bench_rows SELECT s, 100000000 FROM unnest($1::text[]) AS s", skus
        )


async def _reset(db: Database) -> None:
    """An empty ledger between cells (the holds' no-delete rule is for DELETE, not this)."""
    await db.execute(
        "TRUNCATE holds, reservations, customer_sku_usage, escrow_allotments, orders CASCADE"
    )
    await db.execute("UPDATE stock SET reserved = 0 WHERE reserved <> 0")


@dataclass
class _Cell:
    latencies: list[float]
    done: int = 0
    refused: int = 0
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        return {
            "holds_per_s": round(self.done / self.seconds) if self.seconds else 0,
            "p50_ms": round(percentile(self.latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 2),
            "refused": self.refused,
        }


async def _closed_loop(
    clients: int, warmup: float, seconds: float, one: Callable[[], Any]
) -> _Cell:
    """Run ``one()`` from ``clients`` loops; count what completes after the warm-up."""
    cell = _Cell([])
    begin = time.perf_counter()
    measure_from = begin + warmup
    stop = measure_from + seconds

    async def client() -> None:
        while (started := time.perf_counter()) < stop:
            try:
                await one()
            except DomainError:
                if started >= measure_from:
                    cell.refused += 1
                continue
            if started >= measure_from:
                cell.latencies.append(time.perf_counter() - started)
                cell.done += 1

    await asyncio.gather(*[client() for _ in range(clients)])
    cell.seconds = seconds
    return cell


async def _engine(dsn: str) -> InventoryEngine:
    config = EngineConfig()
    pool = await Database.connect(
        ServerTarget(dsn=dsn, pool_min=2, pool_max=config.pool_size(POOL_MAX), command_timeout=60.0)
    )
    engine = InventoryEngine(pool, config)
    await engine.start()
    return engine


async def _close(engine: InventoryEngine) -> None:
    await engine.close()
    await engine.db.close()


async def _strategy_cell(
    dsn: str, db: Database, strategy: StrategyName, pick: Callable[[], str], clients: int,
    plan: InventoryPlan,
) -> dict[str, Any]:  # fmt: skip
    await _reset(db)
    engine = await _engine(dsn)
    keys = itertools.count()
    chosen = None if strategy is StrategyName.AUTO else strategy
    try:

        async def hold() -> None:
            request = HoldRequest.create(
                scope="bench", key=f"k{next(keys)}", lines=[(pick(), LOCATION, 1)], ttl_ms=_TTL_MS
            )
            await engine.hold(request, strategy=chosen)

        cell = await _closed_loop(clients, plan.warmup, plan.seconds, hold)
        wasted = engine.wasted_attempts(strategy)
    finally:
        await _close(engine)
    async with db.connection() as conn:
        checked = await check_inventory(conn)
    return {
        **cell.report(),
        "wasted_attempts": wasted,
        "oversold": checked.stock.oversold_units,
        "checks_ok": checked.ok,
    }


async def _baseline_cell(
    dsn: str, pick: Callable[[], str], clients: int, plan: InventoryPlan
) -> dict[str, Any]:
    pool = await Database.connect(
        ServerTarget(dsn=dsn, pool_min=2, pool_max=POOL_MAX, command_timeout=60.0)
    )
    try:

        async def update() -> None:
            await pool.execute(
                "UPDATE bench_rows SET available = available - 1 WHERE id = $1 AND available >= 1",
                pick(),
            )

        cell = await _closed_loop(clients, plan.warmup, plan.seconds, update)
    finally:
        await pool.close()
    return cell.report()


async def _flash_sale(dsn: str, db: Database, strategy: StrategyName, units: int) -> dict[str, Any]:
    """256 clients buy one unit at a time until the sku is gone."""
    await _reset(db)
    engine = await _engine(dsn)
    keys = itertools.count()
    acknowledged = 0
    refused = 0
    chosen = None if strategy is StrategyName.AUTO else strategy
    started = time.perf_counter()
    try:

        async def buyer() -> None:
            nonlocal acknowledged, refused
            while True:
                request = HoldRequest.create(
                    scope="flash", key=f"f{next(keys)}", lines=[(FLASH, LOCATION, 1)],
                    ttl_ms=_TTL_MS,
                )  # fmt: skip
                try:
                    await engine.hold(request, strategy=chosen)
                except InsufficientStock:
                    return  # sold out
                except DomainError:
                    refused += 1  # contention (optimistic): try again
                    continue
                acknowledged += 1

        await asyncio.gather(*[buyer() for _ in range(256)])
        seconds = time.perf_counter() - started
    finally:
        await _close(engine)
    async with db.connection() as conn:
        checked = await check_inventory(conn)
    return {
        "units": units,
        "acknowledged": acknowledged,
        "oversold": max(0, acknowledged - units) + checked.stock.oversold_units,
        "left": await db.fetchval(
            "SELECT available FROM stock_levels WHERE sku = $1 AND location = $2", FLASH, LOCATION
        ),
        "seconds_to_sell_out": round(seconds, 3),
        "retries_refused": refused,
        "checks_ok": checked.ok,
    }


async def _http(dsn: str, db: Database, plan: InventoryPlan) -> dict[str, Any]:
    """Hot-sku holds through `retailsync serve` (2 workers, default strategy)."""
    from retailsync.demo.server import ApiServer
    from retailsync.models import Channel
    from retailsync.services.keys import create_key

    await _reset(db)
    async with db.transaction() as conn:
        _, secret = await create_key(conn, Channel.POS, label="bench")
    body = msgspec.json.encode({"lines": [{"sku": HOT, "location": LOCATION, "quantity": 1}]})
    keys = itertools.count()

    def request() -> bytes:
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": f"h{next(keys)}"}
        return post("/v1/reservations", body, headers)

    with ApiServer(dsn, workers=2) as server:
        await server.wait_ready()
        await closed_loop("127.0.0.1", server.port, clients=8, seconds=plan.warmup, request=request)
        result = await closed_loop(
            "127.0.0.1", server.port, clients=plan.http_clients, seconds=plan.http_seconds,
            request=request,
        )  # fmt: skip
    async with db.connection() as conn:
        checked = await check_inventory(conn)
    ok = result.statuses.get(201, 0)
    return {
        "clients": plan.http_clients,
        "workers": 2,
        "holds_per_s": round(ok / result.seconds),
        "p50_ms": round(percentile(result.latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(result.latencies, 0.99) * 1000, 2),
        "statuses": {str(code): n for code, n in sorted(result.statuses.items())},
        "checks_ok": checked.ok,
    }


async def run_inventory_bench(
    plan: InventoryPlan, progress: Callable[[str], None]
) -> dict[str, Any]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    baseline: dict[str, dict[str, Any]] = {}
    flash: dict[str, Any] = {}
    async with private_database(progress, pool_max=4) as (dsn, db):
        await _seed(db, plan)
        workloads = {
            "hot": lambda: HOT,
            "zipf": zipf_picker(_zipf_names(plan.skus), _ZIPF_S, random.Random(1)),
        }
        for workload, pick in workloads.items():
            baseline[workload] = {}
            for clients in plan.concurrency:
                progress(f"{workload}: raw conditional UPDATE, {clients} clients")
                baseline[workload][str(clients)] = await _baseline_cell(dsn, pick, clients, plan)
            results[workload] = {}
            for strategy in STRATEGIES:
                results[workload][strategy] = {}
                for clients in plan.concurrency:
                    progress(f"{workload}: {strategy}, {clients} clients")
                    cell = await _strategy_cell(dsn, db, strategy, pick, clients, plan)
                    base = baseline[workload][str(clients)]["holds_per_s"]
                    cell["baseline_holds_per_s"] = base
                    cell["ratio_to_baseline"] = round(cell["holds_per_s"] / base, 2)
                    results[workload][strategy][str(clients)] = cell
        for strategy in STRATEGIES:
            progress(f"flash sale of {plan.flash_units} units: {strategy}")
            flash[strategy] = await _flash_sale(dsn, db, strategy, plan.flash_units)
        progress(f"http: {plan.http_clients} clients through retailsync serve")
        http = await _http(dsn, db, plan)
    return _summary(plan, results, baseline, flash, http)


def _summary(
    plan: InventoryPlan,
    results: dict[str, dict[str, dict[str, Any]]],
    baseline: dict[str, dict[str, Any]],
    flash: dict[str, Any],
    http: dict[str, Any],
) -> dict[str, Any]:
    hot = results["hot"]
    default = hot[StrategyName.AUTO]
    top = str(max(plan.concurrency))
    best = max(cell["holds_per_s"] for cells in hot.values() for cell in cells.values())
    peak_default = max(cell["holds_per_s"] for cell in default.values())
    same = default.get(str(plan.http_clients))  # the in-process figure at the same concurrency
    in_process = same["holds_per_s"] if same else None
    http["in_process_holds_per_s"] = in_process
    http["ratio_to_in_process"] = round(http["holds_per_s"] / in_process, 3) if in_process else None
    successes = sum(cell["holds_per_s"] * plan.seconds for cell in default.values())
    wasted = sum(cell["wasted_attempts"] for cell in default.values())
    return {
        "plan": {
            "seconds_per_cell": plan.seconds,
            "concurrency": list(plan.concurrency),
            "zipf_skus": plan.skus,
            "zipf_s": _ZIPF_S,
            "pool_max": POOL_MAX,
        },
        "results": results,
        "baseline": baseline,
        "flash_sale": flash,
        "http": http,
        "summary": {
            "hot_best_holds_per_s": best,
            "hot_default_peak_holds_per_s": peak_default,
            "hot_default_p99_ms_at_peak": max(
                default.values(), key=lambda cell: cell["holds_per_s"]
            )["p99_ms"],
            "hot_default_goodput_at_top_vs_peak": round(
                default[top]["holds_per_s"] / peak_default, 3
            ),
            "hot_baseline_peak_holds_per_s": max(
                c["holds_per_s"] for c in baseline["hot"].values()
            ),
            "default_wasted_per_success": round(wasted / successes, 4) if successes else None,
            "oversold_total": sum(
                cell["oversold"]
                for by_strategy in results.values()
                for by_clients in by_strategy.values()
                for cell in by_clients.values()
            )
            + sum(sale["oversold"] for sale in flash.values()),
        },
    }
