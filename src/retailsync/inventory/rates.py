"""Request rates per sku over the last second or two, for hot-sku detection and escrow sizing.

Counts fall into one-second buckets; a sku's rate is the larger of the last full second and
the current one scaled by how much of it has passed (so a burst is seen within the second it
starts, and a quiet sku cools down within two). A sku's rate only falls between its adds, so
the skus at or above a ``watch`` rate are found among those that reached it at an add, without
looking at every sku counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateMeter:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, watch: float | None = None
    ) -> None:
        self._clock = clock
        self._watch = watch
        self._watched: set[str] = set()  # skus that reached ``watch`` at an add
        self._second = int(clock())
        self._current: dict[str, float] = {}
        self._previous: dict[str, float] = {}

    def _roll(self) -> float:
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._previous = self._current if second == self._second + 1 else {}
            self._current = {}
            self._second = second
        return now - second

    def add(self, sku: str, amount: float = 1.0) -> None:
        self._roll()
        self._current[sku] = self._current.get(sku, 0.0) + amount
        if self._watch is not None and sku not in self._watched and self.rate(sku) >= self._watch:
            self._watched.add(sku)

    def rate(self, sku: str) -> float:
        elapsed = self._roll()
        current = self._current.get(sku, 0.0) / max(elapsed, 0.25)
        return max(self._previous.get(sku, 0.0), current)

    def above(self, threshold: float) -> list[str]:
        """Skus whose rate is at least ``threshold``."""
        self._roll()
        return [sku for sku in {*self._previous, *self._current} if self.rate(sku) >= threshold]

    def watched(self) -> list[str]:
        """Skus whose rate is at least the ``watch`` rate now."""
        watch = self._watch
        if watch is None:
            raise ValueError("a RateMeter made without a watch rate")
        self._watched = {sku for sku in self._watched if self.rate(sku) >= watch}
        return list(self._watched)
