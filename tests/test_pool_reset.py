"""What a pooled connection carries back to the pool: only what ``keeps_session_state``
declared is reset (in full); an open transaction is always rolled back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from retailsync.config import ServerTarget
from retailsync.db.database import Database, keeps_session_state


@pytest.fixture
async def one(database_dsn: str) -> AsyncIterator[Database]:
    """A pool of one connection: every acquire gets the same one back."""
    database = await Database.connect(
        ServerTarget(dsn=database_dsn, pool_min=1, pool_max=1, command_timeout=10.0)
    )
    yield database
    await database.close()


_ADVISORY_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
)


async def test_declared_session_state_is_reset(one: Database) -> None:
    async with one.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        keeps_session_state(conn)
        await conn.execute("SELECT pg_advisory_lock(4242)")  # left held, as by a cancelled task
        await conn.execute("LISTEN some_channel")
    async with one.connection() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        assert await conn.fetchval(_ADVISORY_HELD) == 0
        assert await conn.fetch("SELECT pg_listening_channels()") == []


async def test_undeclared_state_is_kept_and_open_transactions_roll_back(one: Database) -> None:
    async with one.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        # No reset round trip: a session setting made without saying so survives the release
        # (which is why nothing may make one without keeps_session_state).
        await conn.execute("SET application_name = 'left behind'")
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE pool_reset_probe (n int)")
    async with one.connection() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        assert await conn.fetchval("SHOW application_name") == "left behind"
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('pool_reset_probe')") is None
