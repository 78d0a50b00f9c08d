"""A PostgreSQL server with logical decoding, of the same major version as the one under test.

The embedded server has ``wal_level=logical``. The machine's PostgreSQL 15 runs with
``replica`` and is not ours to restart, so for it we start a private server from the same
install's binaries (``/usr/lib/postgresql/<major>/bin``) with logical decoding on: the CDC tests
then cover both PostgreSQL 18 and 15, as the suite's two runs do.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.db.embedded import EmbeddedPostgres
from retailsync.db.migrate import migrate
from tests.conftest import _with_database


async def _server_facts(dsn: str) -> tuple[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        wal_level = await conn.fetchval("SHOW wal_level")
        version = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    return wal_level, version // 10000


@pytest.fixture(scope="session")
def logical_admin_dsn(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    wal_level, major = asyncio.run(_server_facts(pg_admin_dsn))
    if wal_level == "logical":
        yield pg_admin_dsn
        return
    binaries = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (binaries / "postgres").exists():
        pytest.fail(f"server has wal_level={wal_level} and no PostgreSQL {major} binaries here")
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg-logical") / "data", binaries=binaries) as pg:
        yield pg.dsn()


@pytest.fixture
def cdc_dsn(logical_admin_dsn: str) -> Iterator[str]:
    """A fresh migrated database for one test, dropped with its slots afterwards."""
    name = f"retailsync_cdc_{secrets.token_hex(4)}"

    async def create() -> None:
        admin = await asyncpg.connect(logical_admin_dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await asyncpg.connect(_with_database(logical_admin_dsn, name))
        await migrate(conn)
        await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(logical_admin_dsn)
        try:
            # A stopped capture's walsender may take a moment to release its slot.
            for _ in range(100):
                active = await admin.fetchval(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active",
                    name,
                )
                if not active:
                    break
                await asyncio.sleep(0.1)
            await admin.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = $1",
                name,
            )
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield _with_database(logical_admin_dsn, name)
    asyncio.run(drop())


@pytest.fixture
async def cdc_db(cdc_dsn: str) -> AsyncIterator[Database]:
    target = ServerTarget(dsn=cdc_dsn, pool_min=1, pool_max=10, command_timeout=30.0)
    database = await Database.connect(target)
    yield database
    await database.close()
