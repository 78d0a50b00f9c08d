"""From a configured database target to a server we can connect to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from retailsync.config import DatabaseTarget, ServerTarget
from retailsync.db.embedded import EmbeddedPostgres


@contextmanager
def running_server(target: DatabaseTarget) -> Iterator[ServerTarget]:
    """Yield a connectable server: the configured one, or the embedded one started (or joined)
    for the duration of the block. Call from the main thread (see EmbeddedPostgres)."""
    if isinstance(target, ServerTarget):
        yield target
        return
    with EmbeddedPostgres(target.data_dir) as server:
        yield ServerTarget(dsn=server.dsn(), pool_min=2, pool_max=20, command_timeout=30.0)
