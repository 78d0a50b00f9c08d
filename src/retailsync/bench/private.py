"""A private, migrated embedded PostgreSQL in a temporary folder, for one benchmark run: the
figures then depend on, and disturb, no one's database."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.db.embedded import EmbeddedPostgres
from retailsync.db.migrate import migrate


@contextlib.asynccontextmanager
async def private_database(
    progress: Callable[[str], None], *, pool_max: int
) -> AsyncIterator[tuple[str, Database]]:
    """(dsn, an open pool) of a fresh server (fsync and synchronous_commit on), removed after."""
    with tempfile.TemporaryDirectory(prefix="retailsync-bench-") as folder:
        progress("starting a private embedded PostgreSQL (fsync and synchronous_commit on)")
        with EmbeddedPostgres(Path(folder) / "pg") as server:
            dsn = server.dsn()
            db = await Database.connect(
                ServerTarget(dsn=dsn, pool_min=1, pool_max=pool_max, command_timeout=120.0)
            )
            try:
                async with db.connection() as conn:
                    await migrate(conn)
                yield dsn, db
            finally:
                await db.close()
