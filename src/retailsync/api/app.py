"""The ASGI application: routes, error documents, middlewares, and the lifespan that opens the
database pool and sweeps expired idempotency answers. Migrations are applied by
`retailsync serve` once, before any worker starts, so a failure is reported once and clearly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.responses import Response

from retailsync import __version__
from retailsync.api import problems
from retailsync.api.body_limit import BodyLimit
from retailsync.api.routes import carts, locations, orders, prices, products, stock
from retailsync.config import ServerTarget, Settings, load_settings
from retailsync.db.database import Database
from retailsync.errors import ConfigError
from retailsync.observe.metrics import HttpMetrics, exposition
from retailsync.services.idempotency import forget_expired
from retailsync.services.keys import KeyVerifier

log = logging.getLogger(__name__)
_SWEEP_INTERVAL = 60.0


async def _sweep_idempotency(db: Database, ttl_seconds: int) -> None:
    while True:
        await asyncio.sleep(_SWEEP_INTERVAL)
        try:
            async with db.connection() as conn:
                await forget_expired(conn, ttl_seconds)
        except Exception:  # a sweep failing must not end the loop; the next one retries
            log.exception("idempotency sweep failed")


def create_app(settings: Settings, *, db: Database | None = None) -> FastAPI:
    """The application. ``db``: an open Database to use (tests); otherwise the lifespan opens
    one from ``settings``, which must then name a server (the CLI resolves embedded://)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        if db is None:
            target = settings.database
            if not isinstance(target, ServerTarget):
                raise ConfigError(
                    "RETAILSYNC_DB_URL",
                    settings.db_url,
                    "start embedded:// through `retailsync serve`",
                )
            database = await Database.connect(target)
        else:
            database = db
        app.state.db = database
        app.state.keys = KeyVerifier(database, ttl=settings.api_key_cache_seconds)
        sweeper = asyncio.create_task(
            _sweep_idempotency(database, settings.idempotency_ttl_seconds)
        )
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if own_db:
                await database.close()

    app = FastAPI(
        title="retailsync",
        version=__version__,
        summary="Retail data kept consistent across web, mobile, POS and warehouse channels.",
        lifespan=lifespan,
    )
    problems.install(app)
    for module in (products, prices, stock, locations, carts, orders):
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


def app_from_environment() -> FastAPI:
    """Factory for uvicorn worker processes: settings come from the environment the CLI set."""
    return create_app(load_settings())
