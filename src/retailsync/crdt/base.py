"""The contract every CRDT in this package meets, and the rule for the values they hold."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol, Self

import msgspec

from retailsync.crdt.errors import CrdtDecodeError


class Crdt(Protocol):
    """A replica of a delta-state CRDT.

    A Protocol rather than a base class: callers (replication, the codec) rely only on these
    members, and the types share their machinery by composition, not through this.

    Operations are methods of each type; each applies locally and returns a *delta*, an object
    of the same type holding just what changed. ``merge`` takes a delta or a full state and
    joins it in place; the join is commutative, associative and idempotent, so deltas may be
    delivered in any order, more than once, or replaced by a later full state.
    """

    @property
    def replica(self) -> str:
        """The replica id this object acts for: the author of its operations."""
        ...

    @property
    def value(self) -> object:
        """What the application sees."""
        ...

    def merge(self, other: Self) -> None:
        """Join a delta or a full state of the same type into this replica."""
        ...

    def copy(self) -> Self:
        """An independent object with the same replica id and state.

        For snapshots and for shipping state: do not write through both it and the original,
        as both would name their writes with the same dots.
        """
        ...

    def to_wire(self) -> msgspec.Struct:
        """The state as a msgspec structure; :mod:`retailsync.crdt.codec` frames it."""
        ...


def hashable_value(decoded: object) -> Hashable:
    """The value that was encoded, from what msgpack decoded.

    Set elements and register values must be hashable (they are compared and kept in sets), so
    arrays were tuples when encoded; msgpack hands them back as lists.
    """
    if isinstance(decoded, list):
        return tuple(hashable_value(item) for item in decoded)
    if isinstance(decoded, dict):
        raise CrdtDecodeError("a map cannot be a set element or register value")
    if not isinstance(decoded, Hashable):
        raise CrdtDecodeError(f"a {type(decoded).__name__} cannot be a set element or value")
    return decoded
