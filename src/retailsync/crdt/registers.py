"""Registers: multi-value (conflicts kept for the caller) and last-writer-wins (conflicts resolved,
losers reported).

Register values follow the set element rule: hashable and msgspec-serializable.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import msgspec

from retailsync.crdt.base import hashable_value
from retailsync.crdt.causal import DotKernel, KernelCrdt, KernelWire
from retailsync.crdt.clock import Stamp
from retailsync.crdt.errors import InvalidOperation

T = TypeVar("T", bound=Hashable)


class MVRegister(KernelCrdt[T]):
    """A multi-value register: an assign replaces the values it observed; concurrent assigns
    are all kept, so a conflict is visible and left to the caller to resolve (by assigning)."""

    __slots__ = ()

    @property
    def value(self) -> frozenset[T]:
        """The concurrent values: empty before any assign, one unless in conflict."""
        return frozenset(self._kernel.entries.values())

    @property
    def is_conflicted(self) -> bool:
        """True while concurrent assigns left more than one distinct value."""
        return len(self.value) > 1

    def origins(self) -> dict[T, frozenset[str]]:
        """Each concurrent value, with the replicas that wrote it (for the conflict ledger)."""
        writers: dict[T, set[str]] = {}
        for dot, value in self._kernel.entries.items():
            writers.setdefault(value, set()).add(dot.replica)
        return {value: frozenset(replicas) for value, replicas in writers.items()}

    def assign(self, value: T) -> MVRegister[T]:
        """Replace every value observed here with ``value``; return the delta."""
        return self._with_kernel(self._kernel.replace(self._replica, value, lambda _: True))

    def to_wire(self) -> KernelWire[T]:
        return self._kernel.to_wire(self._replica)

    @classmethod
    def from_wire(cls, wire: KernelWire[Any]) -> MVRegister[Any]:
        kernel = DotKernel.from_wire(wire, hashable_value)
        made: MVRegister[Any] = cls(wire.replicas[0])
        made._kernel = kernel
        return made


class LWWEntry(msgspec.Struct, Generic[T], frozen=True, array_like=True):
    """One write to an LWWRegister.

    ``priority`` is the region's priority in the writer's configuration, carried with the
    write so that the merge is a function of the two states alone: replicas whose
    configurations disagree (say, mid-rollout) still pick the same winner.
    """

    value: T
    stamp: Stamp
    region: str
    priority: int


@dataclass(frozen=True, slots=True)
class LWWConflict(Generic[T]):
    """A merge met a write with a different value and dropped one of the two.

    ``displaced`` is True when the loser is the value this replica held (the incoming write
    won), False when the incoming write was rejected.
    """

    winner: LWWEntry[T]
    loser: LWWEntry[T]
    displaced: bool


def _rank(entry: LWWEntry[Any]) -> tuple[int, int, int, str, str, bytes]:
    """The order writes are decided by, highest wins.

    Stamp time first, then region priority, then node id, as declared. Region and encoded value
    only separate two different writes with one stamp, which a correct HLC never issues; they
    keep the merge deterministic even then.
    """
    stamp = entry.stamp
    value = msgspec.msgpack.encode(entry.value)
    return (stamp.wall_ms, stamp.logical, entry.priority, stamp.node, entry.region, value)


class LWWRegisterWire(msgspec.Struct, array_like=True):
    replica: str
    region_priority: dict[str, int]
    entry: LWWEntry[Any] | None


class LWWRegister(Generic[T]):
    """A last-writer-wins register ordered by HLC stamp, then region priority, then node id.

    ``merge`` keeps the winner silently; ``merge_reporting`` does the same join and returns an
    :class:`LWWConflict` when it displaced or rejected a different value, for the caller to
    record. Stamp writes with an :class:`~retailsync.crdt.clock.HLC` that has observed the
    stamps of the values merged here, so a write made after seeing another always beats it.

    ``region_priority`` is configuration: it prices this replica's own writes (each write
    carries its priority), and two registers are equal when entry and configuration match.
    """

    __slots__ = ("_entry", "_region_priority", "_replica")

    def __init__(self, replica: str, *, region_priority: Mapping[str, int]) -> None:
        self._replica = replica
        self._region_priority = dict(region_priority)
        self._entry: LWWEntry[T] | None = None

    @property
    def replica(self) -> str:
        return self._replica

    @property
    def region_priority(self) -> Mapping[str, int]:
        return dict(self._region_priority)

    @property
    def entry(self) -> LWWEntry[T] | None:
        """The winning write, or None before any."""
        return self._entry

    @property
    def value(self) -> T | None:
        return None if self._entry is None else self._entry.value

    def assign(self, value: T, stamp: Stamp, region: str) -> LWWRegister[T]:
        """Write ``value`` at ``stamp`` from ``region``; return the delta.

        A write whose stamp does not beat the current entry changes nothing here, and its
        delta loses wherever it is merged.
        """
        priority = self._region_priority.get(region)
        if priority is None:
            known = ", ".join(sorted(self._region_priority)) or "none"
            raise InvalidOperation("assign", f"region {region!r} has no priority (known: {known})")
        delta = self._holding(LWWEntry(value, stamp, region, priority))
        self.merge(delta)
        return delta

    def merge(self, other: LWWRegister[T]) -> None:
        """Join a delta or a full state: keep the higher-ranked write."""
        self.merge_reporting(other)

    def merge_reporting(self, other: LWWRegister[T]) -> LWWConflict[T] | None:
        """Join like ``merge``; return the conflict if a different value lost."""
        incoming, current = other._entry, self._entry
        if incoming is None or incoming == current:
            return None
        if current is None:
            self._entry = incoming
            return None
        if _rank(incoming) > _rank(current):
            self._entry = incoming
            winner, loser, displaced = incoming, current, True
        else:
            winner, loser, displaced = current, incoming, False
        if loser.value == winner.value:
            return None
        return LWWConflict(winner, loser, displaced)

    def copy(self) -> Self:
        return self._holding(self._entry)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWRegister):
            return NotImplemented
        return self._entry == other._entry and self._region_priority == other._region_priority

    def _holding(self, entry: LWWEntry[T] | None) -> Self:
        made = type(self)(self._replica, region_priority=self._region_priority)
        made._entry = entry
        return made

    def to_wire(self) -> LWWRegisterWire:
        return LWWRegisterWire(self._replica, dict(self._region_priority), self._entry)

    @classmethod
    def from_wire(cls, wire: LWWRegisterWire) -> LWWRegister[Any]:
        made: LWWRegister[Any] = cls(wire.replica, region_priority=wire.region_priority)
        if wire.entry is not None:
            value = hashable_value(wire.entry.value)
            made._entry = LWWEntry(value, wire.entry.stamp, wire.entry.region, wire.entry.priority)
        return made
