"""Background chores: a job run every few seconds until cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from retailsync.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


async def every(seconds: float, what: str, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``seconds`` until cancelled; a failed run is logged (briefly when the
    database is away, which the next run retries), and the next run goes on."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except DatabaseUnavailable as exc:
            log.warning("%s: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)
