"""Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

A stamp is ``(wall_ms, logical, node)``. ``wall_ms`` is the largest physical time the clock has
heard of, so stamps stay within ``max_drift_ms`` of physical time; ``logical`` orders events that
share a ``wall_ms``; ``node`` makes the order total. If event *e* happened before *f* (a local
sequence, or *f* received a message stamped at *e*), then ``stamp(e) < stamp(f)``.

Remote stamps too far in the future are refused: accepting one would drag this clock (and every
clock it talks to) ahead of real time for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import msgspec

from retailsync.crdt.errors import ClockSkewError, InvalidOperation

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, from the system clock."""
    return time.time_ns() // 1_000_000


class Stamp(msgspec.Struct, frozen=True, order=True, array_like=True):
    """An HLC timestamp, totally ordered by (wall_ms, logical, node)."""

    wall_ms: NonNegative
    logical: NonNegative
    node: str


class HLC:
    """A hybrid logical clock for one node.

    ``physical`` returns the node's physical time in milliseconds; tests pass a fake one.
    """

    __slots__ = ("_logical", "_max_drift_ms", "_node", "_physical", "_wall_ms")

    def __init__(
        self,
        node: str,
        *,
        physical: Callable[[], int] = wall_clock_ms,
        max_drift_ms: int = 250,
    ) -> None:
        if max_drift_ms < 0:
            raise InvalidOperation("HLC", f"max_drift_ms must be >= 0, got {max_drift_ms}")
        self._node = node
        self._physical = physical
        self._max_drift_ms = max_drift_ms
        self._wall_ms = 0
        self._logical = 0

    @property
    def node(self) -> str:
        return self._node

    @property
    def max_drift_ms(self) -> int:
        return self._max_drift_ms

    def now(self) -> Stamp:
        """Stamp a local or send event."""
        physical = self._physical()
        if physical > self._wall_ms:
            self._wall_ms, self._logical = physical, 0
        else:
            # Physical time stood still or went back: keep wall_ms and count on.
            self._logical += 1
        return Stamp(self._wall_ms, self._logical, self._node)

    def observe(self, remote: Stamp) -> Stamp:
        """Stamp a receive event for a message stamped ``remote``.

        Raises :class:`ClockSkewError` (and changes nothing) when ``remote`` is more than
        ``max_drift_ms`` ahead of local physical time.
        """
        physical = self._physical()
        if remote.wall_ms - physical > self._max_drift_ms:
            raise ClockSkewError(remote.wall_ms, physical, self._max_drift_ms)
        wall_ms = max(self._wall_ms, remote.wall_ms, physical)
        if wall_ms == self._wall_ms == remote.wall_ms:
            logical = max(self._logical, remote.logical) + 1
        elif wall_ms == self._wall_ms:
            logical = self._logical + 1
        elif wall_ms == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        self._wall_ms, self._logical = wall_ms, logical
        return Stamp(wall_ms, logical, self._node)
