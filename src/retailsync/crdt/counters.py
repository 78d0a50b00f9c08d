"""Counters: PNCounter (unbounded) and BoundedCounter (escrow, never below zero).

Both keep, per replica, grow-only totals written only by that replica, so the join is a
pointwise maximum and a replica's delta is just its own entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

import msgspec

from retailsync.crdt.causal import (
    NonNegative,
    Positive,
    join_max,
    read_replica_table,
    replica_table,
)
from retailsync.crdt.errors import CrdtDecodeError, InsufficientRights, InvalidOperation


def _nonzero(replicas: list[str], counts: list[int]) -> dict[str, int]:
    return {replica: n for replica, n in zip(replicas, counts, strict=True) if n}


def _require_positive(operation: str, amount: int) -> None:
    if amount <= 0:
        raise InvalidOperation(operation, f"amount must be positive, got {amount}")


class PNCounterWire(msgspec.Struct, array_like=True):
    replicas: list[str]  # replicas[0] is the owner; the lists below are aligned with it
    increments: list[NonNegative]
    decrements: list[NonNegative]


class PNCounter:
    """A counter that replicas increment and decrement concurrently."""

    __slots__ = ("_decrements", "_increments", "_replica")

    def __init__(self, replica: str) -> None:
        self._replica = replica
        self._increments: dict[str, int] = {}
        self._decrements: dict[str, int] = {}

    @property
    def replica(self) -> str:
        return self._replica

    @property
    def value(self) -> int:
        return sum(self._increments.values()) - sum(self._decrements.values())

    def increment(self, amount: int = 1) -> PNCounter:
        """Add ``amount`` (> 0); return the delta."""
        _require_positive("increment", amount)
        total = self._increments.get(self._replica, 0) + amount
        self._increments[self._replica] = total
        delta = PNCounter(self._replica)
        delta._increments[self._replica] = total
        return delta

    def decrement(self, amount: int = 1) -> PNCounter:
        """Subtract ``amount`` (> 0); return the delta."""
        _require_positive("decrement", amount)
        total = self._decrements.get(self._replica, 0) + amount
        self._decrements[self._replica] = total
        delta = PNCounter(self._replica)
        delta._decrements[self._replica] = total
        return delta

    def merge(self, other: PNCounter) -> None:
        join_max(self._increments, other._increments)
        join_max(self._decrements, other._decrements)

    def copy(self) -> Self:
        clone = type(self)(self._replica)
        clone.merge(self)
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return (self._increments, self._decrements) == (other._increments, other._decrements)

    def to_wire(self) -> PNCounterWire:
        replicas = replica_table(self._replica, self._increments.keys() | self._decrements)
        return PNCounterWire(
            replicas,
            [self._increments.get(r, 0) for r in replicas],
            [self._decrements.get(r, 0) for r in replicas],
        )

    @classmethod
    def from_wire(cls, wire: PNCounterWire) -> PNCounter:
        read_replica_table(wire.replicas, wire.increments, wire.decrements)
        made = cls(wire.replicas[0])
        made._increments = _nonzero(wire.replicas, wire.increments)
        made._decrements = _nonzero(wire.replicas, wire.decrements)
        return made


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One replica's row of a BoundedCounter: running totals, each only ever growing."""

    increments: int
    decrements: int
    moved: Mapping[str, int]  # recipient -> total rights moved to it

    def within(self, other: CounterRow) -> bool:
        """True when every total here is at most ``other``'s: nothing here is news to it."""
        return (
            self.increments <= other.increments
            and self.decrements <= other.decrements
            and all(n <= other.moved.get(to, 0) for to, n in self.moved.items())
        )


class BoundedCounterWire(msgspec.Struct, array_like=True):
    replicas: list[str]  # replicas[0] is the owner; the lists below are aligned with it
    increments: list[NonNegative]
    decrements: list[NonNegative]
    transfers: list[tuple[NonNegative, NonNegative, Positive]]  # (from #, to #, total moved)


class BoundedCounter:
    """A counter whose value never goes below zero, however replicas interleave and merge.

    Escrow (Balegas et al., "Putting consistency back into eventual consistency", 2015): each
    increment gives the incrementing replica that many *rights*; a replica decrements only its
    own rights and may transfer rights to another. The rights of all replicas sum to the value.

    Each replica's *row* (its increments, decrements and transfers out) grows monotonically and
    is written only by it. A delta carries whole rows: the author's, plus those of every replica
    that moved rights to a replica already included, transitively. Then every delta, like every
    state, gives each replica it mentions non-negative rights, and a join of two such states
    does too (each row comes from the later of two snapshots, and transfers in only grow). So
    even deltas merged out of causal order never show a negative value, where a bare
    "decrements of r = n" delta merged before the increments it spent would.
    """

    __slots__ = ("_decrements", "_increments", "_moved", "_replica")

    def __init__(self, replica: str) -> None:
        self._replica = replica
        self._increments: dict[str, int] = {}
        self._decrements: dict[str, int] = {}
        self._moved: dict[tuple[str, str], int] = {}  # (from, to) -> total rights moved

    @property
    def replica(self) -> str:
        return self._replica

    @property
    def value(self) -> int:
        return sum(self._increments.values()) - sum(self._decrements.values())

    def rights(self, replica: str | None = None) -> int:
        """The rights ``replica`` (default: this one) holds, as far as this replica knows.

        Exact for this replica's own rights; for another replica, a lower bound until every
        transfer to it has arrived here.
        """
        owner = self._replica if replica is None else replica
        received = sum(n for (_, to), n in self._moved.items() if to == owner)
        given = sum(n for (source, _), n in self._moved.items() if source == owner)
        spent = self._decrements.get(owner, 0)
        return self._increments.get(owner, 0) + received - given - spent

    def row(self, replica: str) -> CounterRow:
        """What ``replica`` has written, as far as this replica knows: its increments,
        decrements and rights moved out, each a running total that only grows."""
        return CounterRow(
            self._increments.get(replica, 0),
            self._decrements.get(replica, 0),
            {to: n for (source, to), n in self._moved.items() if source == replica},
        )

    def writers(self) -> frozenset[str]:
        """Every replica with a non-empty row."""
        return frozenset(self._increments.keys() | self._decrements.keys()) | {
            source for source, _ in self._moved
        }

    def increment(self, amount: int = 1) -> BoundedCounter:
        """Add ``amount`` (> 0) to the value and to this replica's rights; return the delta."""
        _require_positive("increment", amount)
        self._increments[self._replica] = self._increments.get(self._replica, 0) + amount
        return self._delta()

    def decrement(self, amount: int = 1) -> BoundedCounter:
        """Spend ``amount`` of this replica's rights; return the delta.

        Raises :class:`InsufficientRights` (changing nothing) beyond this replica's rights.
        """
        _require_positive("decrement", amount)
        self._require_rights(amount)
        self._decrements[self._replica] = self._decrements.get(self._replica, 0) + amount
        return self._delta()

    def transfer(self, amount: int, *, to: str) -> BoundedCounter:
        """Move ``amount`` of this replica's rights to replica ``to``; return the delta.

        Raises :class:`InsufficientRights` (changing nothing) beyond this replica's rights.
        """
        _require_positive("transfer", amount)
        if to == self._replica:
            raise InvalidOperation("transfer", f"replica {to!r} cannot transfer to itself")
        self._require_rights(amount)
        key = (self._replica, to)
        self._moved[key] = self._moved.get(key, 0) + amount
        return self._delta()

    def merge(self, other: BoundedCounter) -> None:
        join_max(self._increments, other._increments)
        join_max(self._decrements, other._decrements)
        join_max(self._moved, other._moved)

    def copy(self) -> Self:
        clone = type(self)(self._replica)
        clone.merge(self)
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundedCounter):
            return NotImplemented
        return (self._increments, self._decrements, self._moved) == (
            other._increments,
            other._decrements,
            other._moved,
        )

    def _require_rights(self, amount: int) -> None:
        available = self.rights()
        if amount > available:
            raise InsufficientRights(self._replica, amount, available)

    def _delta(self) -> BoundedCounter:
        """The rows of this replica and of everyone who moved rights into them (see class)."""
        rows = {self._replica}
        grew = True
        while grew:
            sources = {source for source, to in self._moved if to in rows}
            grew = not sources <= rows
            rows |= sources
        delta = BoundedCounter(self._replica)
        delta._increments = {r: n for r, n in self._increments.items() if r in rows}
        delta._decrements = {r: n for r, n in self._decrements.items() if r in rows}
        delta._moved = {key: n for key, n in self._moved.items() if key[0] in rows}
        return delta

    def to_wire(self) -> BoundedCounterWire:
        named = self._increments.keys() | self._decrements.keys() | {to for _, to in self._moved}
        replicas = replica_table(self._replica, named)
        index = {replica: i for i, replica in enumerate(replicas)}
        return BoundedCounterWire(
            replicas,
            [self._increments.get(r, 0) for r in replicas],
            [self._decrements.get(r, 0) for r in replicas],
            sorted((index[source], index[to], n) for (source, to), n in self._moved.items()),
        )

    @classmethod
    def from_wire(cls, wire: BoundedCounterWire) -> BoundedCounter:
        replica = read_replica_table(wire.replicas, wire.increments, wire.decrements)
        made = cls(wire.replicas[0])
        made._increments = _nonzero(wire.replicas, wire.increments)
        made._decrements = _nonzero(wire.replicas, wire.decrements)
        made._moved = {(replica(i), replica(j)): n for i, j, n in wire.transfers}
        if len(made._moved) != len(wire.transfers):
            raise CrdtDecodeError("a transfer pair appears twice")
        if any(source == to for source, to in made._moved):
            raise CrdtDecodeError("a replica transfers to itself")
        overdrawn = [r for r in wire.replicas if made.rights(r) < 0]
        if overdrawn:
            raise CrdtDecodeError(f"replicas {overdrawn} would hold negative rights")
        return made
