"""The read path through the tiers: L1, then L2 (when configured), then the loader (the
database), with one load per key however many readers miss it at once (single-flight).

What a load brings back is offered to both tiers under their version rules, so a slow load
that read a row before it changed can never overwrite the newer value an invalidation (or
another load) put there meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from retailsync.cache.entry import Entry
from retailsync.cache.l1 import L1Cache
from retailsync.cache.l2 import L2Cache

Loader = Callable[[], Awaitable[tuple[bytes, int]]]  # -> (value, source version)


class TieredCache:
    def __init__(self, l1: L1Cache, l2: L2Cache | None = None) -> None:
        self.l1 = l1
        self.l2 = l2
        self._loading: dict[str, asyncio.Future[Entry]] = {}
        self.hits = {"l1": 0, "l2": 0, "load": 0}

    async def get(self, key: str, load: Loader, ttl_s: float) -> Entry:
        entry = self.l1.get(key)
        if entry is not None:
            self.hits["l1"] += 1
            return entry
        pending = self._loading.get(key)
        if pending is not None:  # someone is already loading it: wait for that load
            return await asyncio.shield(pending)
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            entry = await self._fill(key, load, ttl_s)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # the waiters, if any, get it; no "never retrieved" warning
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._loading[key]

    async def _fill(self, key: str, load: Loader, ttl_s: float) -> Entry:
        if self.l2 is not None:
            entry = await self.l2.get(key)
            if entry is not None and entry.expires_at > time.time():
                self.hits["l2"] += 1
                self.l1.put(key, entry)
                return entry
        value, version = await load()
        self.hits["load"] += 1
        entry = Entry(value, version, time.time() + ttl_s)
        await self.put(key, entry, ttl_s)
        return entry

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        """Offer a value to both tiers (write-through after a commit, or a fresh load)."""
        if self.l2 is not None:
            await self.l2.put(key, entry, ttl_s)
        self.l1.put(key, entry)

    async def invalidate(self, key: str, version: int) -> None:
        """The source of ``key`` changed to ``version``: drop older values everywhere."""
        if self.l2 is not None:
            await self.l2.invalidate(key, version)
        self.l1.invalidate(key, version)
