"""Background chores: a job run every few seconds until cancelled, and the wait they use."""

from __future__ import annotations

import asyncio
import contextlib
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


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed; whether it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it loses a cancellation that arrives as the
    event is set (cpython issue 86296), and a loop waiting this way then never stops: the
    close that cancelled it waits for ever. ``asyncio.timeout`` passes every cancellation on.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
    return event.is_set()


async def stop_all(tasks: list[asyncio.Task[None]], what: str) -> None:
    """Cancel ``tasks`` and wait for each; one that had failed is logged, and the rest still
    stop (a chore cut off mid-query on a dying connection must not keep the others up)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.warning("%s failed while stopping", what, exc_info=True)
