"""The ``retailsync`` command: serve, demo, seed, db migrate, keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NoReturn, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from retailsync.bench import bench_app
from retailsync.config import ServerTarget, Settings, load_settings
from retailsync.db.database import Database
from retailsync.db.migrate import migrate
from retailsync.db.target import running_server
from retailsync.errors import RetailsyncError
from retailsync.models import Channel
from retailsync.traffic.capacity_cli import capacity_app

if TYPE_CHECKING:  # the cdc modules load only for the cdc commands
    from retailsync.cdc.capture import CaptureConfig
    from retailsync.cdc.tables import CapturedTable

T = TypeVar("T")
app = typer.Typer(
    help="retailsync: retail data kept consistent across channels and regions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for the channels.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
cdc_app = typer.Typer(help="Change data capture into the event log.", no_args_is_help=True)
inventory_app = typer.Typer(help="Stock reservations.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(cdc_app, name="cdc")
app.add_typer(inventory_app, name="inventory")
app.add_typer(capacity_app, name="capacity")
err = Console(stderr=True)
out = Console()


class _Global:
    overrides: ClassVar[dict[str, Any]] = {}


@app.callback()
def _options(
    db_url: Annotated[
        str | None,
        typer.Option(help="Database URL (RETAILSYNC_DB_URL): embedded://PATH or postgresql://..."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (RETAILSYNC_LOG_LEVEL)")
    ] = None,
) -> None:
    _Global.overrides = {"db_url": db_url, "log_level": log_level}


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _settings(**flags: Any) -> Settings:
    try:
        settings = load_settings({**_Global.overrides, **flags})
    except RetailsyncError as exc:
        _fail(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    if settings.log_level != "debug":
        # httpx logs every request at INFO: thousands of lines in the demo, and CPU.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return settings


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _server(settings: Settings) -> Iterator[ServerTarget]:
    """The database server for this command, with SIGTERM turned into a clean exit so an
    embedded server we started is stopped on the way out."""
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        with running_server(settings.database) as target:
            yield target
    except RetailsyncError as exc:
        _fail(str(exc), code=1)


def _with_database(target: ServerTarget, job: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``job`` on a migrated database. SIGTERM cancels the job as a task rather than
    raising wherever the loop happens to be, so its cleanups (a child server, the pool) run in
    order before the embedded PostgreSQL is stopped."""

    async def run() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        db = await Database.connect(target)
        try:
            async with db.connection() as conn:
                await migrate(conn)
            return await job(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None
    except RetailsyncError as exc:
        _fail(str(exc), code=1)
    finally:
        signal.signal(signal.SIGTERM, _raise_system_exit)  # the loop's handler went with it


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (idempotent)."""
    settings = _settings()
    with _server(settings) as target:

        async def job(db: Database) -> list[str]:
            async with db.connection() as conn:
                versions = await conn.fetch(
                    "SELECT version, name FROM schema_migrations ORDER BY 1"
                )
            return [f"{row['version']:04d}_{row['name']}" for row in versions]

        applied = _with_database(target, job)
    out.print(f"schema is current: {', '.join(applied)}")


@keys_app.command("create")
def keys_create(
    channel: Annotated[Channel, typer.Option(help="The channel the key acts for")],
    label: Annotated[str, typer.Option(help="A note to tell keys apart (200 characters)")] = "",
) -> None:
    """Create an API key. The key is printed alone on the last line, once."""
    from retailsync.services.keys import create_key

    if len(label) > 200:
        _fail("--label is longer than 200 characters")
    settings = _settings()
    with _server(settings) as target:

        async def job(db: Database) -> tuple[UUID, str]:
            async with db.transaction() as conn:
                key, secret = await create_key(conn, channel, label=label)
            return key.id, secret

        key_id, secret = _with_database(target, job)
    err.print(f"created {channel} key {key_id}; store it now, it is not shown again")
    print(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never their secrets)."""
    from retailsync.models import ApiKey
    from retailsync.services.keys import list_keys

    settings = _settings()
    with _server(settings) as target:

        async def job(db: Database) -> list[ApiKey]:
            async with db.connection() as conn:
                return await list_keys(conn)

        keys = _with_database(target, job)
    table = Table("id", "channel", "label", "created", "revoked")
    for key in keys:
        table.add_row(
            str(key.id),
            key.channel,
            key.label,
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[UUID, typer.Argument(help="The key's id (from keys list)")],
) -> None:
    """Revoke a key. Workers that verified it recently trust it for at most
    RETAILSYNC_API_KEY_CACHE_SECONDS more."""
    from retailsync.services.keys import revoke_key

    settings = _settings()
    with _server(settings) as target:

        async def job(db: Database) -> None:
            async with db.transaction() as conn:
                await revoke_key(conn, key_id)

        _with_database(target, job)
    out.print(f"revoked {key_id}")


def _capture_setup(settings: Settings) -> tuple[CaptureConfig, list[CapturedTable]]:
    from retailsync.cdc.capture import CaptureConfig
    from retailsync.cdc.tables import load_tables

    try:
        tables = load_tables(settings.cdc_tables_file)
    except RetailsyncError as exc:
        _fail(str(exc))
    config = CaptureConfig(
        source=settings.cdc_source,
        slot=settings.cdc_slot,
        publication=settings.cdc_publication,
        heartbeat_seconds=settings.cdc_heartbeat_seconds,
    )
    return config, tables


@cdc_app.command("run")
def cdc_run(
    snapshot: Annotated[
        bool,
        typer.Option(
            "--snapshot/--no-snapshot",
            help="When the slot is new, snapshot every captured table first (or start from now)",
        ),
    ] = True,
) -> None:
    """Capture every change to the captured tables into the event log, until stopped.
    Checks the tables and sets up the publication and slot first."""
    from retailsync.cdc.capture import Capture, prepare
    from retailsync.eventlog.factory import open_event_log

    settings = _settings()
    config, tables = _capture_setup(settings)
    if settings.cdc_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.cdc_metrics_port, addr=settings.host)
        except OSError as exc:
            _fail(f"RETAILSYNC_CDC_METRICS_PORT {settings.cdc_metrics_port}: {exc.strerror}")
        err.print(f"metrics on http://{settings.host}:{settings.cdc_metrics_port}/metrics")
    with _server(settings) as target:

        async def job(db: Database) -> None:
            log = await open_event_log(settings.event_log_url, db=db)
            try:
                if await prepare(db, config, tables, snapshot_new=snapshot):
                    err.print(f"created replication slot {config.slot}")
                err.print(f"capturing {len(tables)} tables into {settings.event_log_url}")
                await Capture(db, target.dsn, log, config, tables).run()
            finally:
                await log.close()

        _with_database(target, job)


@cdc_app.command("snapshot")
def cdc_snapshot(
    table: Annotated[str, typer.Argument(help="A captured table, as schema.table")],
) -> None:
    """Snapshot one table again, from the start: the running capture reads it in chunks
    between watermarks, interleaved with the stream."""
    from retailsync.cdc.snapshot import request

    settings = _settings()
    _, tables = _capture_setup(settings)
    if table not in {t.name for t in tables}:
        known = ", ".join(t.name for t in tables)
        _fail(f"{table} is not a captured table (captured: {known})")
    with _server(settings) as target:
        _with_database(target, lambda db: request(db, settings.cdc_source, [table]))
    out.print(f"snapshot of {table} requested; `retailsync cdc run` takes it")


@cdc_app.command("status")
def cdc_status() -> None:
    """The slot's health (WAL status, confirmed position, retained WAL) and the log's head."""
    from retailsync.cdc.slot import lsn_text, slot_status
    from retailsync.eventlog.factory import open_event_log

    settings = _settings()
    config, _ = _capture_setup(settings)
    with _server(settings) as target:

        async def job(db: Database) -> list[tuple[str, str]]:
            async with db.connection() as conn:
                status = await slot_status(conn, config.slot)
            log = await open_event_log(settings.event_log_url, db=db)
            try:
                last = await log.last_event_id(config.source)
            finally:
                await log.close()
            return [
                ("slot", config.slot if status.exists else f"{config.slot} (absent)"),
                ("wal status", status.wal_status or "-"),
                ("confirmed position", lsn_text(status.confirmed_lsn)),
                ("retained WAL bytes", str(status.retained_bytes)),
                ("last event in the log", last or "-"),
            ]

        rows = _with_database(target, job)
    table = Table(show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


@inventory_app.command("check")
def inventory_check() -> None:
    """Check the reservation ledger's invariants over the whole database, in one snapshot:
    on_hand = available + held + committed + allotted per sku x location, every hold's lines
    agree with it, expiry was never early, purchase allowances match. Exits 1 on any problem."""
    from retailsync.inventory.check import InventoryCheck, check_inventory

    settings = _settings()
    with _server(settings) as target:

        async def job(db: Database) -> InventoryCheck:
            async with db.connection() as conn:
                return await check_inventory(conn)

        checked = _with_database(target, job)
    stock = checked.stock
    out.print(
        f"{stock.rows_checked} stock rows and {checked.holds_checked} holds checked; "
        f"oversold units: {stock.oversold_units}"
    )
    problems = checked.problems()
    for problem in problems[:50]:
        out.print(f"  [red]{problem}[/]", highlight=False)
    if len(problems) > 50:
        out.print(f"  ... and {len(problems) - 50} more")
    if problems:
        raise typer.Exit(1)
    out.print("[green]every invariant holds[/]")


@app.command()
def seed(
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data")] = 7,
    products: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many products")] = 10_000,
) -> None:
    """Load a realistic catalog: products in a category tree, 3 regions with 2 locations each,
    prices and stock. Re-running updates the catalog and prices; stock rows that exist are left
    as they are."""
    from retailsync.seed import SeedPlan, load_seed

    settings = _settings()
    with _server(settings) as target:
        summary = _with_database(
            target, lambda db: load_seed(db, SeedPlan(seed=seed, products=products), console=err)
        )
    out.print(summary)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (RETAILSYNC_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (RETAILSYNC_PORT)")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (RETAILSYNC_WORKERS)")
    ] = None,
) -> None:
    """Serve the HTTP API. Applies pending migrations first."""
    from retailsync.api.serving import run_server
    from retailsync.cdc.supervise import CaptureChild

    settings = _settings(host=host, port=port, workers=workers)
    with _server(settings) as target:
        # Applies migrations, once, before any worker starts.
        wal_level = _with_database(target, _wal_level)
        settings = settings.model_copy(update={"db_url": _db_url_for_workers(settings, target)})
        with contextlib.ExitStack() as stack:
            if settings.serve_capture and wal_level == "logical":
                stack.enter_context(CaptureChild(target.dsn, settings.log_level))
            elif settings.serve_capture:
                err.print(
                    f"no change capture: the server's wal_level is {wal_level}, not logical; "
                    "caches kept fresh by events read through instead"
                )
            try:
                run_server(settings)
            except RetailsyncError as exc:
                _fail(str(exc), code=1)


async def _wal_level(db: Database) -> str:
    level: str = await db.fetchval("SHOW wal_level")
    return level


def _db_url_for_workers(settings: Settings, target: ServerTarget) -> str:
    """Workers connect to the server directly; an embedded one is owned by this process."""
    return settings.db_url if settings.db_url.startswith("postgres") else target.dsn


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(min=1, max=3600, help="Seconds of mixed traffic")
    ] = 20.0,
    products: Annotated[int, typer.Option(min=100, max=1_000_000, help="Catalog size")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed for data and traffic")] = 7,
    workers: Annotated[int, typer.Option(min=1, max=16, help="API worker processes")] = 1,
) -> None:
    """The main job: start everything, seed, run web, mobile, POS and warehouse clients over
    real HTTP, and report what happened."""
    from retailsync.demo.run import DemoPlan, run_demo

    settings = _settings()
    with _server(settings) as target:
        plan = DemoPlan(duration=duration, products=products, seed=seed, workers=workers)
        report = _with_database(target, lambda db: run_demo(db, target, plan, console=err))
    report.print(out)
    if report.oversold_units:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
