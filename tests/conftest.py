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
import pytest

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.db.embedded import EmbeddedPostgres
from retailsync.db.migrate import migrate
from tests.support import Api, open_api

# Tables whose rows are reference data written by migrations; every other table is emptied.
_REFERENCE_TABLES = {"schema_migrations", "order_statuses", "order_status_transitions"}


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """RETAILSYNC_TEST_ONLY_PG=1: keep only the tests that use the PostgreSQL under test and run
    in this process. A second pass on another server version need not repeat the pure tests,
    nor those that start servers of their own, nor those that start `retailsync` processes
    (marked `processes`: what they check is how our processes behave, killed or restarted),
    nor those of the HTTP surface (marked `surface`: keys, scopes, validation, refusals). The
    statements either kind sends are also sent by the tests kept here."""
    if os.environ.get("RETAILSYNC_TEST_ONLY_PG") != "1":
        return
    kept = [
        item
        for item in items
        if "pg_admin_dsn" in getattr(item, "fixturenames", ())
        and not any(item.get_closest_marker(name) for name in ("processes", "surface"))
    ]
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
    """Every table but the reference data emptied, and the sequences they own restarted: what
    earlier tests left is gone. Only the tables holding rows are truncated (with what refers to
    them): a TRUNCATE of all forty-odd tables costs about 100 ms of new files per test."""
    tables = [
        t["tablename"]
        for t in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        if t["tablename"] not in _REFERENCE_TABLES
    ]
    probes = ", ".join(f"(EXISTS (SELECT FROM \"{name}\"), '{name}')" for name in tables)
    holding = await conn.fetch(f"SELECT name FROM (VALUES {probes}) AS t(full_, name) WHERE full_")
    async with conn.transaction():
        if holding:
            names = ", ".join(f'"{row["name"]}"' for row in holding)
            await conn.execute(f"TRUNCATE {names} CASCADE")
        # What RESTART IDENTITY did, for every table: a rolled-back insert moves a sequence too.
        await conn.execute(
            """
            SELECT setval(s.seqrelid, s.seqstart, false)
            FROM pg_sequence s
            JOIN pg_depend d ON d.objid = s.seqrelid AND d.classid = 'pg_class'::regclass
            WHERE d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
              AND d.refobjid = ANY($1::text[]::regclass[])
            """,
            [f'"{name}"' for name in tables],
        )


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
    async with open_api(db, database_dsn) as opened:
        yield opened


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
