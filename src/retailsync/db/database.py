"""The connection pool, transactions, and translation of driver errors at the boundary.

A connection goes back to the pool without a reset round trip (asyncpg's default sends
``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release, a round trip
a request that waits on a busy event loop pays in full). Nothing here keeps session state on
a pooled connection, except the few places that say so with ``keeps_session_state`` (session
advisory locks, LISTEN): those connections are reset in full. A transaction left open is
rolled back on release either way (asyncpg does that itself).

Every connection is taken through the pool's circuit breaker (``traffic.breaker``): after a
run of connection-level failures it opens, and ``connection()`` then raises
DatabaseUnavailable at once, without a connect attempt, until a probe gets through. A domain
error (a unique violation, a CHECK) means the server answered and counts as a success.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from retailsync.config import ServerTarget
from retailsync.errors import DatabaseUnavailable
from retailsync.traffic.breaker import Breaker

log = logging.getLogger(__name__)
_CLOSE_TIMEOUT = 10.0

if TYPE_CHECKING:  # the stubs make these generic; at run time they are plain classes
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool

# Errors that mean "the database is not reachable", as opposed to "the query was refused".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # A connection left mid-protocol by an operation cut off when the server went away.
    asyncpg.InternalClientError,
)


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


_WITH_SESSION_STATE: weakref.WeakSet[Connection] = weakref.WeakSet()


def keeps_session_state(conn: Connection) -> None:
    """Say that ``conn`` now holds session state (a session advisory lock, a LISTEN): the
    pool resets it in full when it comes back, whatever the code that took it left behind."""
    # The pool hands out a proxy; what it resets is the connection behind it.
    _WITH_SESSION_STATE.add(getattr(conn, "_con", None) or conn)


async def _reset_connection(conn: Connection) -> None:
    """Called by the pool on every release, after asyncpg's own rollback of an open
    transaction (see the module's docstring)."""
    if conn in _WITH_SESSION_STATE:
        _WITH_SESSION_STATE.discard(conn)
        await conn.execute(conn.get_reset_query())


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, pool: Pool, *, breaker: Breaker | None = None) -> None:
        """``breaker``: share one between the pools of one server (the app's and the
        inventory engine's); by default the pool has one of its own."""
        self._pool = pool
        self.breaker = Breaker("postgresql") if breaker is None else breaker

    @classmethod
    async def connect(cls, target: ServerTarget, *, breaker: Breaker | None = None) -> Database:
        try:
            pool = await asyncpg.create_pool(
                target.dsn,
                min_size=target.pool_min,
                max_size=target.pool_max,
                command_timeout=target.command_timeout,
                init=_init_connection,
                reset=_reset_connection,
            )
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(pool, breaker=breaker)

    async def close(self) -> None:
        """Close the pool once its connections are back; after 10 s, close them anyway (a
        connection that never comes back must not hang a shutdown)."""
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("connections still in use after %.0f s: closed anyway", _CLOSE_TIMEOUT)
            self._pool.terminate()

    @asynccontextmanager
    async def connection(self, *, held: bool = False) -> AsyncIterator[Connection]:
        """A connection outside any explicit transaction (each statement commits alone).

        ``held``: kept for as long as its holder lives (a LISTEN). The breaker then hears
        that the server answered once the connection is up, not when it comes back: a
        half-open breaker lets one call through at a time, and a holder that took that probe
        would keep every other call out until the probe timed out. Such a holder keeps
        session state, so the connection is reset in full when it comes back."""
        breaker = self.breaker
        if not breaker.allow():
            raise DatabaseUnavailable(
                f"PostgreSQL is unavailable (breaker open; next probe in "
                f"{breaker.retry_after_s():.2f} s)"
            )
        try:
            # A DatabaseUnavailable from a nested connection was judged there already.
            with breaker.judge(UNAVAILABLE_ERRORS, neutral=DatabaseUnavailable):
                async with self._pool.acquire() as conn:
                    if held:
                        keeps_session_state(conn)  # type: ignore[arg-type]  # unwrapped there
                        breaker.succeeded()
                    # The pool hands out a proxy that behaves as the connection it wraps.
                    yield conn  # type: ignore[misc]
        except UNAVAILABLE_ERRORS as exc:
            # The others were most likely cut by the same restart: replace every idle one now,
            # or each would fail once in turn (and trip the breaker after the server is back).
            await self._pool.expire_connections()
            raise DatabaseUnavailable(f"lost the PostgreSQL connection: {exc}") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One READ COMMITTED transaction; commits when the block exits normally."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.connection() as conn:
            return await conn.execute(query, *args)

    async def ping(self) -> bool:
        try:
            return bool(await self.fetchval("SELECT true"))
        except DatabaseUnavailable:
            return False
