"""The demo from start to finish: seed, keys, API server, flash sale, traffic, audit, report."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.demo.capture import CaptureReport, capture_report, capturing, new_slot_name
from retailsync.demo.client import Api, Rejected, Stats
from retailsync.demo.mix import run_traffic
from retailsync.demo.server import ApiServer, DemoError
from retailsync.demo.traffic import (
    DOORBUSTER,
    DOORBUSTER_LIMIT,
    FLASH_REGION,
    World,
    limit_doorbuster,
    stage_flash_sale,
)
from retailsync.inventory.check import InventoryCheck, check_inventory
from retailsync.models import Channel, OrderStatus
from retailsync.seed import SeedPlan, load_seed
from retailsync.services.keys import create_key

FLASH_UNITS_PER_LOCATION = 15


@dataclass(frozen=True, slots=True)
class DemoPlan:
    duration: float = 20.0
    products: int = 10_000
    seed: int = 7
    workers: int = 1


@dataclass(frozen=True, slots=True)
class Latency:
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, latencies_ms: list[float]) -> Latency | None:
        if not latencies_ms:
            return None
        ordered = sorted(latencies_ms)

        def rank(share: float) -> float:  # nearest-rank percentile
            return ordered[max(0, math.ceil(share * len(ordered)) - 1)]

        return cls(rank(0.50), rank(0.95), rank(0.99))


@dataclass(frozen=True, slots=True)
class FlashSale:
    """The doorbuster in the flash region: what there was to sell, and what was sold."""

    sku: str
    region: str
    start: int
    restocked: int
    sold: int
    left: int
    turned_away: int
    limited: int  # checkouts refused by the purchase limit

    @property
    def oversold(self) -> int:
        return max(0, self.sold - (self.start + self.restocked))


@dataclass(frozen=True, slots=True)
class OfflineSales:
    """Offline tills: units allotted to them, sold by them (as their syncs acknowledged and
    as the database recorded), and sales they refused beyond their allotments."""

    allotted: int
    sold: int
    sold_in_db: int
    refused: int


@dataclass(frozen=True, slots=True)
class DemoReport:
    seconds: float
    clients: int
    requests: int
    latency_ms: Latency | None
    transport_errors: dict[str, int]
    rejections: dict[str, int]
    orders_by_channel: dict[str, int]
    units_sold: int
    skus_sold: int
    status_changes: dict[str, int]
    receipts: int
    received_units: int
    receipt_retries: int
    receipt_replays: int
    receipts_in_db: int
    adjustments: int
    price_edits: int
    price_conflicts: int
    offline: OfflineSales
    available_total: int
    flash: FlashSale
    store_sales: int
    audit: InventoryCheck
    captured: CaptureReport | None

    @property
    def oversold_units(self) -> int:
        return self.audit.stock.oversold_units + self.flash.oversold

    def print(self, console: Console) -> None:
        summary = Table(
            title=f"retailsync demo: {self.clients} clients for {self.seconds:.1f} s",
            show_header=False,
        )
        summary.add_column(style="bold")
        summary.add_column()
        for row in self._traffic_rows():
            summary.add_row(*row)
        for rows in (self._order_rows(), self._stock_rows(), self._consistency_rows()):
            summary.add_section()
            for row in rows:
                summary.add_row(*row)
        console.print(summary)
        rejected = Table("rejected requests (problem type)", "count", title="Refusals")
        for reason, count in sorted(self.rejections.items(), key=lambda item: -item[1]):
            rejected.add_row(reason, str(count))
        if not self.rejections:
            rejected.add_row("none", "0")
        console.print(rejected)
        for problem in self.audit.problems()[:10]:
            console.print(f"[red]inventory check:[/] {problem}", highlight=False)

    def _traffic_rows(self) -> list[tuple[str, str]]:
        rate = self.requests / self.seconds if self.seconds else 0.0
        latency = (
            f"{self.latency_ms.p50:.1f} / {self.latency_ms.p95:.1f} / {self.latency_ms.p99:.1f} ms"
            if self.latency_ms
            else "no answers"
        )
        errors = ", ".join(f"{name} {n}" for name, n in sorted(self.transport_errors.items()))
        transport = f"{sum(self.transport_errors.values())}" + (f" ({errors})" if errors else "")
        return [
            ("requests", f"{self.requests} ({rate:.0f}/s)"),
            ("latency p50 / p95 / p99", latency),
            ("transport errors", transport),
        ]

    def _order_rows(self) -> list[tuple[str, str]]:
        placed = sum(self.orders_by_channel.values())
        channels = ", ".join(f"{ch} {n}" for ch, n in sorted(self.orders_by_channel.items()))
        flash = self.flash
        statuses = ", ".join(
            f"{status} {self.status_changes.get(status, 0)}"
            for status in (
                OrderStatus.PAID,
                OrderStatus.CANCELLED,
                OrderStatus.SHIPPED,
                OrderStatus.DELIVERED,
            )
        )
        return [
            ("orders placed", f"{placed} ({channels})" if channels else "0"),
            ("units sold", f"{self.units_sold} of {self.skus_sold} skus (net of cancellations)"),
            ("orders then", statuses),
            (
                f"doorbuster {flash.sku} in {flash.region}",
                f"{flash.start} at the start + {flash.restocked} restocked; {flash.sold} sold, "
                f"{flash.left} left; {flash.turned_away} checkouts refused as sold out, "
                f"{flash.limited} by the limit of {DOORBUSTER_LIMIT} per customer",
            ),
            ("store sales", f"{self.store_sales} POS holds committed at once into orders"),
        ]

    def _stock_rows(self) -> list[tuple[str, str]]:
        return [
            (
                "receipts",
                f"{self.receipts} ({self.received_units} units); {self.receipt_retries} retried "
                f"with the same key, {self.receipt_replays} answered as replays; "
                f"{self.receipts_in_db} recorded in the database",
            ),
            ("stock adjustments", str(self.adjustments)),
            ("price edits", f"{self.price_edits}; {self.price_conflicts} version conflicts (412)"),
            (
                "offline tills",
                f"{self.offline.allotted} units allotted; {self.offline.sold} sold offline and "
                f"synced ({self.offline.sold_in_db} recorded in the database); "
                f"{self.offline.refused} sales refused beyond the allotment (conflict ledger)",
            ),
            ("available stock left", f"{self.available_total} units over all skus and locations"),
            ("change data capture", self._capture_cell()),
        ]

    def _capture_cell(self) -> str:
        captured = self.captured
        if captured is None:
            return "not run (the server's wal_level is not logical)"
        if captured.p50_ms is None or captured.p99_ms is None:
            return f"{captured.events} events in the event log"
        return (
            f"{captured.events} events in the event log; commit to log p50 "
            f"{captured.p50_ms:.1f} ms, p99 {captured.p99_ms:.1f} ms"
        )

    def _consistency_rows(self) -> list[tuple[str, str]]:
        checked = self.audit
        audit = checked.stock
        holds_ok = not (
            checked.hold_mismatches or checked.timing_violations or checked.usage_mismatches
        )

        def verdict(mismatches: list[str]) -> str:
            return "[green]ok[/]" if not mismatches else f"[red]{len(mismatches)} mismatches[/]"

        colour = "green" if self.oversold_units == 0 else "red"
        return [
            ("stock rows audited", str(audit.rows_checked)),
            ("on_hand = sum of movements", verdict(audit.on_hand_mismatches)),
            ("reserved = open reservations", verdict(audit.reserved_mismatches)),
            (
                "holds checked",
                f"{checked.holds_checked}: lines, expiry and purchase limits "
                + ("[green]ok[/]" if holds_ok else f"[red]{len(checked.problems())} problems[/]"),
            ),
            (
                "oversold units",
                f"[{colour}]{self.oversold_units}[/] ({audit.oversold_units} in the database "
                f"audit, {self.flash.oversold} by the clients' doorbuster ledger)",
            ),
        ]


async def _create_keys(db: Database) -> dict[Channel, str]:
    async with db.transaction() as conn:
        return {channel: (await create_key(conn, channel, label="demo"))[1] for channel in Channel}


async def _stage_flash_sale(url: str, keys: dict[Channel, str]) -> int:
    # Setup requests are not part of the measured traffic, hence their own Stats.
    async with (
        Api(url, keys[Channel.WAREHOUSE], Stats(), deadline=math.inf) as warehouse,
        Api(url, keys[Channel.ADMIN], Stats(), deadline=math.inf) as admin,
    ):
        try:
            await limit_doorbuster(admin)
            return await stage_flash_sale(warehouse, FLASH_UNITS_PER_LOCATION)
        except (Rejected, httpx.TransportError) as exc:
            raise DemoError(f"could not stage the flash sale: {exc}") from exc


async def _show_progress(console: Console, world: World, duration: float) -> None:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as progress:
        bar = progress.add_task("traffic", total=duration)
        while not world.over():
            progress.update(
                bar,
                completed=duration - world.remaining(),
                description=f"{world.stats.requests} requests, {len(world.ledger.orders)} orders",
            )
            await asyncio.sleep(0.25)


async def run_demo(
    db: Database, target: ServerTarget, plan: DemoPlan, *, console: Console
) -> DemoReport:
    """Seed, start the API server and the capture, run the traffic, audit, report. Cancelling
    it (SIGTERM in the CLI) stops both before returning."""
    console.print(
        await load_seed(db, SeedPlan(seed=plan.seed, products=plan.products), console=console)
    )
    keys = await _create_keys(db)
    slot = new_slot_name()  # the server's caches follow the demo's own capture
    server_env = {"RETAILSYNC_SERVE_CAPTURE": "false", "RETAILSYNC_CDC_SLOT": slot}
    with ApiServer(target.dsn, workers=plan.workers, env=server_env) as server:
        console.print(f"API server on {server.url} with {plan.workers} worker(s)")
        await server.wait_ready()
        async with capturing(db, target.dsn, slot) as source:
            if source is None:
                console.print("no change data capture: the server's wal_level is not logical")
            else:
                console.print(f"change data capture on slot {source}")
            flash_start = await _stage_flash_sale(server.url, keys)
            console.print(
                f"flash sale: {DOORBUSTER} set to {FLASH_UNITS_PER_LOCATION} per {FLASH_REGION} "
                f"location ({flash_start} units), at most {DOORBUSTER_LIMIT} per customer"
            )
            # Movements after this id are the run's: no traffic has started yet.
            mark = await db.fetchval("SELECT coalesce(max(id), 0) FROM stock_movements")
            started = time.monotonic()
            world = World(server.url, keys, plan.products, plan.seed, started + plan.duration)
            async with asyncio.TaskGroup() as group:
                traffic = group.create_task(run_traffic(world))
                group.create_task(_show_progress(console, world, plan.duration))
            seconds = time.monotonic() - started
            code = server.exit_code()
            if code is not None:
                raise server.failure(f"the API server exited with code {code} during the run")
    if server.log_path is not None:
        console.print(f"the API server logged warnings or errors: see {server.log_path}")
    async with db.connection() as conn:
        audit = await check_inventory(conn)
        database = _DatabaseView(
            available_total=await conn.fetchval(
                "SELECT coalesce(sum(available), 0)::bigint FROM stock_levels"
            ),
            flash_left=await conn.fetchval(_AVAILABLE_IN_REGION, DOORBUSTER, FLASH_REGION),
            receipts=await conn.fetchval(
                "SELECT count(*) FROM stock_movements WHERE id > $1 AND kind = 'receipt'", mark
            ),
            offline_sold=await conn.fetchval(
                "SELECT coalesce(-sum(delta), 0) FROM stock_movements WHERE id > $1 "
                "AND kind = 'shipment' AND reason LIKE 'sold offline by %'",
                mark,
            ),
        )
    captured = await capture_report(db, source)
    return _report(world, seconds, traffic.result(), flash_start, database, audit, captured)


@dataclass(frozen=True, slots=True)
class _DatabaseView:
    """What the database says after the run, beside the audit."""

    available_total: int
    flash_left: int
    receipts: int  # receipt movements written during the run
    offline_sold: int  # units that left stock as offline sales during the run


_AVAILABLE_IN_REGION = """
SELECT coalesce(sum(s.available), 0)::bigint
FROM stock_levels s JOIN locations l ON l.id = s.location WHERE s.sku = $1 AND l.region = $2
"""


def _report(
    world: World,
    seconds: float,
    clients: int,
    flash_start: int,
    database: _DatabaseView,
    audit: InventoryCheck,
    captured: CaptureReport | None,
) -> DemoReport:
    ledger, stats = world.ledger, world.stats
    sold = ledger.units_sold()
    return DemoReport(
        seconds=seconds,
        clients=clients,
        requests=stats.requests,
        latency_ms=Latency.of(stats.latencies_ms),
        transport_errors=dict(stats.transport_errors),
        rejections=dict(stats.rejections),
        orders_by_channel=dict(Counter(order.channel for order in ledger.orders.values())),
        units_sold=sum(sold.values()),
        skus_sold=sum(1 for units in sold.values() if units),
        status_changes={status: len(ids) for status, ids in ledger.status_changes.items()},
        receipts=len(ledger.receipts),
        received_units=sum(receipt.quantity for receipt in ledger.receipts.values()),
        receipt_retries=ledger.receipt_retries,
        receipt_replays=ledger.receipt_replays,
        receipts_in_db=database.receipts,
        adjustments=ledger.adjustments,
        price_edits=ledger.price_edits,
        price_conflicts=ledger.price_conflicts,
        offline=OfflineSales(
            allotted=ledger.offline_allotted,
            sold=ledger.offline_sold,
            sold_in_db=database.offline_sold,
            refused=ledger.offline_refused,
        ),
        available_total=database.available_total,
        flash=FlashSale(
            sku=DOORBUSTER,
            region=FLASH_REGION,
            start=flash_start,
            restocked=ledger.doorbuster_received(),
            sold=ledger.doorbuster_sold(),
            left=database.flash_left,
            turned_away=ledger.doorbuster_turned_away,
            limited=ledger.doorbuster_limited,
        ),
        store_sales=ledger.store_sales,
        audit=audit,
        captured=captured,
    )
