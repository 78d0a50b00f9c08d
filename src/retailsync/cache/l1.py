"""L1: each worker process's in-memory cache, bounded, least recently used out first.

A hit is a dictionary lookup and a clock read. Versions follow the rules in ``entry``. Floors
are kept in a bounded map of their own (twice the entries), so a key pushed out by LRU still
refuses its older versions for a while; past that bound a late old write could land until the
next event for the key, which is what TTLs bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from retailsync.cache.entry import Entry, admits


class L1Cache:
    def __init__(
        self, max_entries: int = 100_000, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._floors: OrderedDict[str, int] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, *, stale_ok: bool = False) -> Entry | None:
        """The entry, if present and unexpired (or expired but ``stale_ok``)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not stale_ok and entry.expires_at <= self._clock():
            return None
        self._entries.move_to_end(key)
        return entry

    def floor(self, key: str) -> int | None:
        return self._floors.get(key)

    def put(self, key: str, entry: Entry) -> bool:
        """Store ``entry`` if the version rules admit it; whether they did."""
        held = self._entries.get(key)
        floor = self._floors.get(key)
        if not admits(entry.version, floor, None if held is None else held.version):
            return False
        if floor is None or entry.version > floor:
            self._raise_floor(key, entry.version)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return True

    def invalidate(self, key: str, version: int) -> bool:
        """The source of ``key`` is now at ``version``: drop what is older. False when the key
        had already seen that version (a replayed or late invalidation)."""
        floor = self._floors.get(key)
        if floor is not None and version <= floor:
            return False
        self._raise_floor(key, version)
        held = self._entries.get(key)
        if held is not None and held.version < version:
            del self._entries[key]
        return True

    def clear(self) -> None:
        """Forget every value (a missed stretch of invalidations); floors stay."""
        self._entries.clear()

    def _raise_floor(self, key: str, version: int) -> None:
        self._floors[key] = version
        self._floors.move_to_end(key)
        if len(self._floors) > 2 * self._max:
            self._floors.popitem(last=False)
