"""Open a worker's traffic gate from the settings, and close it with the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from retailsync.chores import every
from retailsync.config import Settings
from retailsync.db.database import Database
from retailsync.traffic.admission import AdaptiveLimit, Admission
from retailsync.traffic.classes import load_route_table
from retailsync.traffic.flags import FlagStore
from retailsync.traffic.gate import TrafficGate
from retailsync.traffic.ratelimit import RateLimiter
from retailsync.traffic.recorder import TrafficRecorder
from retailsync.traffic.waiting_room import WaitingRoom

_PUBLISH_INTERVAL = 1.0


@contextlib.asynccontextmanager
async def open_traffic(
    settings: Settings, db: Database, flags: FlagStore | None = None
) -> AsyncIterator[TrafficGate]:
    """Admission (unless RETAILSYNC_TRAFFIC_MANAGEMENT is off, or the flag
    ``traffic.admission`` is), the rate limits and waiting rooms the settings name, and the
    per-minute traffic counts the capacity forecast reads."""
    routes = load_route_table(settings.traffic_classes, settings.traffic_routes)
    admission = Admission(routes.classes, AdaptiveLimit()) if settings.traffic_management else None
    async with contextlib.AsyncExitStack() as stack:
        limiter = await RateLimiter.open(settings)
        if limiter is not None:
            stack.push_async_callback(limiter.close)
        room = await WaitingRoom.open(settings, db)
        if room is not None:
            stack.push_async_callback(room.close)
        recorder = TrafficRecorder(db)
        recorder.start()
        stack.push_async_callback(recorder.close)
        gate = TrafficGate(
            routes, admission, limiter=limiter, room=room, recorder=recorder, flags=flags
        )
        publisher = asyncio.create_task(every(_PUBLISH_INTERVAL, "admission gauges", gate.publish))
        try:
            yield gate
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
