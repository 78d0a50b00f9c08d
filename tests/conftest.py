"""Fixtures that start and isolate real servers.

PostgreSQL: the embedded server (started once per session in a temporary folder) or, when
RETAILSYNC_TEST_PG_URL is set, that server. Either way the session gets a database of its own,
created fresh and dropped at the end, so runs on a shared server never collide; each test
starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from retailsync.api.app import create_app
from retailsync.config import ServerTarget, load_settings
from retailsync.db.database import Database
from retailsync.db.embedded import EmbeddedPostgres
from retailsync.db.migrate import migrate
from retailsync.models import Channel
from retailsync.services.keys import create_key
from tests.support import Api

# Tables whose rows are reference data written by migrations; every other table is emptied.
_REFERENCE_TABLES = {"schema_migrations", "order_statuses", "order_status_transitions"}


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """RETAILSYNC_TEST_ONLY_PG=1: keep only the tests that use the PostgreSQL under test (a
    second pass on another server version need not repeat the pure tests, nor those that
    start servers of their own)."""
    if os.environ.get("RETAILSYNC_TEST_ONLY_PG") != "1":
        return
    kept = [item for item in items if "pg_admin_dsn" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN with rights to create databases, on the server under test."""
    external = os.environ.get("RETAILSYNC_TEST_PG_URL")
    if external:
        yield external
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data") as server:
        yield server.dsn()


@pytest.fixture(scope="session")
def database_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    name = f"retailsync_test_{secrets.token_hex(4)}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await asyncpg.connect(_with_database(pg_admin_dsn, name))
        await migrate(conn)
        await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    asyncio.run(create())
    yield _with_database(pg_admin_dsn, name)
    asyncio.run(drop())


async def _empty(conn: asyncpg.Connection) -> None:
    """Every table but the reference data emptied: what earlier tests left is gone."""
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    names = [f'"{t["tablename"]}"' for t in tables if t["tablename"] not in _REFERENCE_TABLES]
    await conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(
        ServerTarget(dsn=database_dsn, pool_min=1, pool_max=60, command_timeout=30.0)
    )
    async with database.connection() as conn:
        await _empty(conn)  # type: ignore[arg-type]  # the pool's proxy is a connection
    yield database
    await database.close()


@pytest.fixture
def empty_dsn(database_dsn: str) -> str:
    """The session's database emptied, for tests that run our processes against it and check
    the whole database afterwards (the demo's inventory audit)."""

    async def empty() -> None:
        conn = await asyncpg.connect(database_dsn)
        try:
            await _empty(conn)
        finally:
            await conn.close()

    asyncio.run(empty())
    return database_dsn


@pytest.fixture
async def api(db: Database, database_dsn: str) -> AsyncIterator[Api]:
    """The real application in-process over ASGI, with one API key per channel."""
    # Reconciliation is driven by the tests that exercise it, not by the background chore.
    settings = load_settings(
        {"db_url": database_dsn, "api_key_cache_seconds": 0, "reconcile_interval_seconds": 3600},
        environ={},
    )
    app = create_app(settings, db=db)
    secrets_by_channel: dict[Channel, str] = {}
    async with db.transaction() as conn:
        for channel in Channel:
            _, secret = await create_key(conn, channel, label="test")
            secrets_by_channel[channel] = secret
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://retailsync.test") as client,
    ):
        yield Api(client, db, secrets_by_channel)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
