"""Migrations apply in order from an empty database, exactly once, and refuse edited history."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from retailsync.db.migrate import available_migrations, migrate
from retailsync.errors import MigrationError
from tests.conftest import _with_database


@pytest.fixture
async def empty_database(pg_admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    name = f"retailsync_empty_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(_with_database(pg_admin_dsn, name))
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


class TestMigrate:
    """From empty to current, idempotently."""

    async def test_from_empty_creates_the_schema(self, empty_database: asyncpg.Connection) -> None:
        applied = await migrate(empty_database)
        assert [m.version for m in applied] == [m.version for m in available_migrations()]
        tables = {
            row["tablename"]
            for row in await empty_database.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert {
            "products",
            "prices",
            "stock",
            "locations",
            "regions",
            "reservations",
            "carts",
            "cart_lines",
            "orders",
            "order_lines",
            "order_status_history",
            "customers",
            "api_keys",
            "idempotency_keys",
            "stock_movements",
        } <= tables

    async def test_second_run_applies_nothing(self, empty_database: asyncpg.Connection) -> None:
        await migrate(empty_database)
        assert await migrate(empty_database) == []

    async def test_edited_migration_is_refused(self, empty_database: asyncpg.Connection) -> None:
        await migrate(empty_database)
        await empty_database.execute("UPDATE schema_migrations SET checksum = 'edited'")
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await migrate(empty_database)

    async def test_constraints_live_in_the_database(
        self, empty_database: asyncpg.Connection
    ) -> None:
        await migrate(empty_database)
        await empty_database.execute(
            "INSERT INTO regions VALUES ('eu');"
            "INSERT INTO locations (id, region, kind) VALUES ('l', 'eu', 'store');"
            "INSERT INTO products (sku, title, category) VALUES ('S', 't', 'c');"
            "INSERT INTO stock (sku, location, on_hand) VALUES ('S', 'l', 2)"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await empty_database.execute("UPDATE stock SET on_hand = -1")
        with pytest.raises(asyncpg.CheckViolationError):
            await empty_database.execute("UPDATE stock SET reserved = 3")
        with pytest.raises(asyncpg.CheckViolationError):
            await empty_database.execute(
                "INSERT INTO prices (sku, region, currency, amount_minor) "
                "VALUES ('S', 'eu', 'EUR', -1)"
            )
        version = await empty_database.fetchval("UPDATE stock SET on_hand = 5 RETURNING version")
        assert version == 2
        version = await empty_database.fetchval(
            "UPDATE stock SET on_hand = 6, version = 1 RETURNING version"
        )
        assert version == 3  # the trigger owns the version; it never goes back
