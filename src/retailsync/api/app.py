"""The ASGI application: routes, error documents, middlewares, and the lifespan that opens the
database pool and runs the chores: sweeping expired idempotency answers, putting queued
conflicts to the reconciliation rules. Migrations are applied by
`retailsync serve` once, before any worker starts, so a failure is reported once and clearly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from functools import partial

from fastapi import FastAPI
from starlette.responses import Response

from retailsync import __version__
from retailsync.api import openapi, problems
from retailsync.api.body_limit import BodyLimit
from retailsync.api.fastpath import RetailsyncApi
from retailsync.api.protocol import EARLY_REFUSAL, Refusal
from retailsync.api.routes import (
    carts,
    categories,
    changes,
    clicks,
    conflicts,
    flags,
    locations,
    orders,
    prices,
    products,
    reservations,
    stock,
    sync,
)
from retailsync.cache.keys import category_key
from retailsync.cache.setup import open_caches
from retailsync.chores import every, stop_all
from retailsync.clicks import ClickBuffer
from retailsync.config import ServerTarget, Settings, load_settings
from retailsync.conflicts.reconcile import reconcile_queued
from retailsync.crdt import HLC
from retailsync.db.database import Database
from retailsync.edge.purge import EdgePurger
from retailsync.errors import ConfigError
from retailsync.eventlog.factory import open_event_log
from retailsync.inventory.engine import InventoryEngine
from retailsync.inventory.model import Hold
from retailsync.observe import tally
from retailsync.observe.metrics import HttpMetrics, exposition
from retailsync.process import follow_parent
from retailsync.services.idempotency import forget_expired
from retailsync.services.keys import KeyVerifier
from retailsync.sync.appliers import appliers
from retailsync.traffic.flags import FlagStore
from retailsync.traffic.setup import open_traffic
from retailsync.views import ViewMaintainer

log = logging.getLogger(__name__)
_SWEEP_INTERVAL = 60.0


async def _sweep_idempotency(db: Database, ttl_seconds: int) -> None:
    async with db.connection() as conn:
        await forget_expired(conn, ttl_seconds)


async def _purge_categories(purger: EdgePurger | None, categories: set[str]) -> None:
    """The view consumer changed these categories' pages: purge them from the edge (best
    effort: their s-maxage bounds a purge that fails)."""
    if purger is None:
        return
    try:
        await purger.purge(category_key(category) for category in categories)
    except ValueError as exc:  # a category too long for a surrogate key: its TTL bounds it
        log.warning("category pages not purged: %s", exc)


def target_of(settings: Settings) -> ServerTarget:
    target = settings.database
    if not isinstance(target, ServerTarget):
        raise ConfigError(
            "RETAILSYNC_DB_URL", settings.db_url, "start embedded:// through `retailsync serve`"
        )
    return target


def create_app(settings: Settings, *, db: Database | None = None) -> FastAPI:
    """The application. ``db``: an open Database to use (tests); otherwise the lifespan opens
    one from ``settings``, which must then name a server (the CLI resolves embedded://)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Refusal]]:
        # Whatever was opened is closed again, in reverse, also when a later step fails.
        async with contextlib.AsyncExitStack() as stack:
            await _open_worker(app, stack)
            # Everything made so far lives as long as the worker: keep it out of the
            # collector's full passes, which would otherwise walk it every few thousand
            # requests.
            gc.collect()
            gc.freeze()
            # Lifespan state reaches uvicorn's protocol (api/protocol.py): shed requests
            # are refused there, before any ASGI call.
            yield {EARLY_REFUSAL: app.state.traffic.refusal}

    async def _open_worker(app: FastAPI, stack: contextlib.AsyncExitStack) -> None:
        database = db
        if database is None:
            database = await Database.connect(target_of(settings))
            stack.push_async_callback(database.close)
        app.state.db = database
        app.state.keys = KeyVerifier(database, ttl=settings.api_key_cache_seconds)
        # Each worker is an HLC node of its own: decisions it stamps never tie another's.
        hlc = HLC(f"server-{os.getpid()}", max_drift_ms=settings.max_clock_drift_ms)
        app.state.hlc = hlc
        app.state.appliers = appliers(hlc)  # for the reconciliation chore and admin decisions
        app.state.event_log = await open_event_log(settings.event_log_url, db=database)
        stack.push_async_callback(app.state.event_log.close)
        engine_config = settings.engine_config
        engine_db = await Database.connect(
            ServerTarget(
                dsn=target_of(settings).dsn,
                pool_min=1,
                pool_max=engine_config.pool_size(settings.inventory_pool_max),
                command_timeout=30.0,
            ),
            breaker=database.breaker,  # one server: one verdict on whether it is there
        )
        stack.push_async_callback(engine_db.close)
        app.state.engine = InventoryEngine(engine_db, engine_config)
        await app.state.engine.start()
        stack.push_async_callback(app.state.engine.close)
        app.state.clicks = ClickBuffer(database, flush_interval=settings.click_flush_ms / 1000)
        app.state.clicks.start()
        stack.push_async_callback(app.state.clicks.close)
        purger = None
        if settings.edge_purge_url:
            purger = await stack.enter_async_context(EdgePurger(settings.edge_purge_url))
        app.state.reads = await stack.enter_async_context(
            open_caches(settings, database, app.state.event_log, purger)
        )
        views = ViewMaintainer(
            database, app.state.event_log, on_changed=partial(_purge_categories, purger)
        )
        chores = [
            asyncio.create_task(views.run()),
            asyncio.create_task(
                every(
                    _SWEEP_INTERVAL,
                    "idempotency sweep",
                    partial(_sweep_idempotency, database, settings.idempotency_ttl_seconds),
                )
            ),
            asyncio.create_task(
                every(
                    settings.reconcile_interval_seconds,
                    "conflict reconciliation",
                    partial(reconcile_queued, database, app.state.appliers),
                )
            ),
            asyncio.create_task(every(tally.FLUSH_INTERVAL_S, "metrics flush", _flush_tallies)),
        ]
        stack.callback(tally.flush)  # after the chores stop: the last counts too
        stack.push_async_callback(stop_all, chores, "a background job")
        # Feature flags: each worker holds them all, reloaded on NOTIFY (traffic/flags.py).
        app.state.flags = FlagStore(database)
        await app.state.flags.start()
        stack.push_async_callback(app.state.flags.close)
        # Last, so that no request is admitted before everything it needs is open.
        app.state.traffic = await stack.enter_async_context(
            open_traffic(settings, database, app.state.flags)
        )
        if isinstance(app, RetailsyncApi):
            app.open_fast_path(app.state.reads, app.state.keys, app.state.traffic)
            stack.callback(app.close_fast_path)  # first out: nothing answered from closed parts

    app = RetailsyncApi(
        title="retailsync",
        version=__version__,
        summary="Retail data kept consistent across web, mobile, POS and warehouse channels.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry hooks look for a provider on every request (a few
        # percent of a hold's time, profiled); our metrics are Prometheus, below.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    problems.install(app)
    openapi.install(app, [Hold])
    routes = (products, prices, stock, locations, carts, orders, reservations, sync, conflicts)
    for module in (*routes, categories, changes, clicks, flags):
        app.include_router(module.router)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        healthy = await app.state.db.ping()
        return Response(
            b'{"status":"ok"}' if healthy else b'{"status":"database unavailable"}',
            status_code=200 if healthy else 503,
            media_type="application/json",
        )

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics_page() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HttpMetrics)
    return app


async def _flush_tallies() -> None:
    tally.flush()


def app_from_environment() -> FastAPI:
    """Factory for uvicorn worker processes: settings come from the environment the CLI set.
    A worker stops (SIGTERM: it finishes its requests and gives its escrow allotments back)
    when its supervisor dies, even by kill -9: uvicorn does not, and orphaned workers would
    keep the port and renew their leases."""
    supervisor = multiprocessing.parent_process()
    if supervisor is not None and supervisor.pid is not None:
        follow_parent(signal.SIGTERM, supervisor.pid)
    return create_app(load_settings())
