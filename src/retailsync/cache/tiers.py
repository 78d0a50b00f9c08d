"""The read path through the tiers: L1, then L2 (when configured), then the loader (the
database), with one load per key however many readers miss it at once (single-flight).

What a load brings back is offered to both tiers under their version rules, so a slow load
that read a row before it changed can never overwrite the newer value an invalidation (or
another load) put there meanwhile. A value found in L2 is used only if it is at least as new
as what this worker's L1 knows (its floor): L2's own invalidation may lag behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from retailsync.cache.entry import Entry
from retailsync.cache.l1 import L1Cache
from retailsync.cache.l2 import L2Cache


class Loaded(NamedTuple):
    entry: Entry
    cacheable: bool = True  # False: answer with it, store it nowhere


class Served(NamedTuple):
    entry: Entry
    tier: str  # "l1", "l2" or "load"


Loader = Callable[[], Awaitable[Loaded]]


class TieredCache:
    def __init__(
        self, l1: L1Cache, l2: L2Cache | None = None, *, origin: Callable[[], int] = lambda: 0
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        # Below this version, a value's freshness is unknown to this worker (its tail began
        # later, or the key's floor was pushed out): an L2 value older than it is not used.
        self._origin = origin
        self._loading: dict[str, asyncio.Future[Served]] = {}

    async def get(self, key: str, load: Loader) -> Served:
        entry = self.l1.get(key)
        if entry is not None:
            return Served(entry, "l1")
        return await self.fill(key, load)

    async def fill(self, key: str, load: Loader) -> Served:
        """L2 or a load, once per key at a time: concurrent callers share the one answer."""
        pending = self._loading.get(key)
        if pending is not None:  # someone is already loading it: wait for that load
            return await asyncio.shield(pending)
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            served = await self._fill(key, load)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # the waiters, if any, get it; no "never retrieved" warning
            raise
        else:
            future.set_result(served)
            return served
        finally:
            del self._loading[key]

    async def _fill(self, key: str, load: Loader) -> Served:
        if self.l2 is not None:
            entry = await self.l2.get(key)
            if entry is not None and entry.expires_at > time.time():
                floor = self.l1.floor(key)
                if entry.version >= (self._origin() if floor is None else floor):
                    self.l1.put(key, entry)
                    return Served(entry, "l2")
        entry, cacheable = await load()
        if cacheable:
            await self.put(key, entry)
        return Served(entry, "load")

    async def put(self, key: str, entry: Entry) -> None:
        """Offer a value to both tiers (write-through after a commit, or a fresh load)."""
        if self.l2 is not None:
            await self.l2.put(key, entry, max(entry.expires_at - time.time(), 0.001))
        self.l1.put(key, entry)

    async def invalidate(self, key: str, version: int) -> None:
        """The source of ``key`` changed to ``version``: drop older values everywhere."""
        if self.l2 is not None:
            await self.l2.invalidate(key, version)
        self.l1.invalidate(key, version)
