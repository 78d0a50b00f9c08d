"""Who takes part in the demo's traffic, and how many of each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from retailsync.demo.offline import offline_till
from retailsync.demo.traffic import World, merchandiser, pos_terminal, shopper, warehouse_staff
from retailsync.models import Channel

Client = Callable[[World, int, Channel], Coroutine[Any, Any, None]]
CLIENT_MIX: tuple[tuple[Channel, int, Client], ...] = (
    (Channel.WEB, 8, shopper),
    (Channel.MOBILE, 4, shopper),
    (Channel.POS, 3, pos_terminal),
    (Channel.POS, 2, offline_till),
    (Channel.WAREHOUSE, 2, warehouse_staff),
    (Channel.ADMIN, 1, merchandiser),
)


async def run_traffic(world: World) -> int:
    """Run every client until the deadline; return how many ran."""
    clients = [(channel, client) for channel, count, client in CLIENT_MIX for _ in range(count)]
    async with asyncio.TaskGroup() as group:
        for index, (channel, client) in enumerate(clients):
            group.create_task(client(world, index, channel))
    return len(clients)
