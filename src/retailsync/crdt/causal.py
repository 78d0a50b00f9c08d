"""Dots, causal contexts and the dot kernel: the shared machinery of AWSet, MVRegister and Cart.

Every write creates a *dot* ``(replica, counter)`` that names it uniquely and stores its payload
under that dot. A replica's *causal context* is the set of dots it has seen, live or removed.
Removing a payload deletes its entry but keeps the dot in the context; a merge then drops any
entry whose dot the other side has seen but no longer holds, and never revives one this side
dropped. So removals need no tombstone per element: the context remembers them, compactly, as
a version vector (replica -> n: dots 1..n all seen) plus a *dot cloud* of the few dots seen out
of order, folded into the vector as soon as the gaps fill (Almeida, Shoker and Baquero, "Delta
state replicated data types", 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Generic, NamedTuple, Self, TypeVar

import msgspec

from retailsync.crdt.errors import CrdtDecodeError, InvalidOperation

K = TypeVar("K")
V = TypeVar("V")
P = TypeVar("P")

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


def join_max(into: dict[K, int], other: Mapping[K, int]) -> None:
    """Pointwise maximum, in place: the join of version vectors and grow-only counts."""
    for key, count in other.items():
        if count > into.get(key, 0):
            into[key] = count


class Dot(NamedTuple):
    """The name of one write: the ``counter``-th write of ``replica``."""

    replica: str
    counter: int


class CausalContext:
    """The set of dots a replica has seen, as a version vector plus a dot cloud.

    Kept canonical (no cloud dot is covered by or adjacent to the vector), so two contexts
    holding the same dots compare equal and encode to the same bytes.
    """

    __slots__ = ("_cloud", "_vv")

    def __init__(self) -> None:
        self._vv: dict[str, int] = {}
        self._cloud: set[Dot] = set()

    def __contains__(self, dot: Dot) -> bool:
        return dot.counter <= self._vv.get(dot.replica, 0) or dot in self._cloud

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self._vv == other._vv and self._cloud == other._cloud

    def copy(self) -> CausalContext:
        clone = CausalContext()
        clone._vv = dict(self._vv)
        clone._cloud = set(self._cloud)
        return clone

    def size(self) -> int:
        """How many dots the context holds."""
        return sum(self._vv.values()) + len(self._cloud)

    def dots(self) -> Iterator[Dot]:
        """Every dot the context holds (``size()`` of them)."""
        for replica, top in self._vv.items():
            for counter in range(1, top + 1):
                yield Dot(replica, counter)
        yield from self._cloud

    def next_dot(self, replica: str) -> Dot:
        """Make and record a fresh dot for a write by ``replica``."""
        # Past the cloud too: a state that was merged back out of order may hold later dots.
        top = max(
            [self._vv.get(replica, 0), *(d.counter for d in self._cloud if d.replica == replica)]
        )
        dot = Dot(replica, top + 1)
        self.insert([dot])
        return dot

    def insert(self, dots: Iterable[Dot]) -> None:
        self._cloud.update(dots)
        self._compact()

    def join(self, other: CausalContext) -> None:
        join_max(self._vv, other._vv)
        self._cloud |= other._cloud
        self._compact()

    def _compact(self) -> None:
        """Drop cloud dots the vector covers and fold in those that extend it."""
        for dot in sorted(self._cloud):  # by replica, then counter: gaps fill in order
            top = self._vv.get(dot.replica, 0)
            if dot.counter <= top + 1:
                self._cloud.discard(dot)
                if dot.counter == top + 1:
                    self._vv[dot.replica] = dot.counter


def replica_table(owner: str, others: Iterable[str]) -> list[str]:
    """Replica ids for a wire structure: each written once, the owner first.

    Wire structures name replicas by index into this table, so a delta, which mostly names
    only its author, carries the author's id once.
    """
    return [owner, *sorted(set(others) - {owner})]


def read_replica_table(replicas: Sequence[str], *aligned: Sequence[int]) -> Callable[[int], str]:
    """Check a decoded replica table and the lists aligned with it; return index -> id."""
    if not replicas or len(set(replicas)) != len(replicas):
        raise CrdtDecodeError("the replica table is empty or names a replica twice")
    if any(len(column) != len(replicas) for column in aligned):
        raise CrdtDecodeError("a per-replica list does not match the replica table")

    def replica(index: int) -> str:
        if index >= len(replicas):
            raise CrdtDecodeError(f"replica #{index} named, but the table has {len(replicas)}")
        return replicas[index]

    return replica


class KernelWire(msgspec.Struct, Generic[P], array_like=True):
    """A dot kernel on the wire; ``replicas[0]`` is the replica the object acts for.

    Dots name replicas by index into ``replicas``; ``vv[i]`` is the version vector entry of
    ``replicas[i]``. ``cloud`` omits the dots that carry an entry: every entry's dot is in the
    context, so the decoder adds them back.
    """

    replicas: list[str]
    vv: list[NonNegative]
    cloud: list[tuple[NonNegative, Positive]]
    entries: list[tuple[NonNegative, Positive, P]]


class DotKernel(Generic[V]):
    """Payloads stored under dots, with the causal context of the replica that holds them."""

    __slots__ = ("context", "entries")

    def __init__(self) -> None:
        self.entries: dict[Dot, V] = {}
        self.context = CausalContext()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotKernel):
            return NotImplemented
        return self.entries == other.entries and self.context == other.context

    def copy(self) -> DotKernel[V]:
        clone: DotKernel[V] = DotKernel()
        clone.entries = dict(self.entries)  # payloads are immutable
        clone.context = self.context.copy()
        return clone

    def add(self, replica: str, payload: V) -> DotKernel[V]:
        """Store ``payload`` under a fresh dot of ``replica``; return the delta."""
        dot = self.context.next_dot(replica)
        self.entries[dot] = payload
        delta: DotKernel[V] = DotKernel()
        delta.entries[dot] = payload
        delta.context.insert([dot])
        return delta

    def remove(self, matches: Callable[[V], bool]) -> DotKernel[V]:
        """Remove the entries whose payload ``matches``; return the delta.

        The delta has no entries and the removed dots as its context: it cancels exactly the
        writes observed here, so a concurrent write elsewhere survives it.
        """
        observed = [dot for dot, payload in self.entries.items() if matches(payload)]
        for dot in observed:
            del self.entries[dot]
        delta: DotKernel[V] = DotKernel()
        delta.context.insert(observed)
        return delta

    def replace(self, replica: str, payload: V, matches: Callable[[V], bool]) -> DotKernel[V]:
        """Remove the observed entries that ``matches``, then add ``payload``; one delta."""
        delta = self.remove(matches)
        delta.join(self.add(replica, payload))
        return delta

    def join(self, other: DotKernel[V]) -> None:
        """Keep what both hold, plus what either holds that the other has not seen."""
        # An entry here is dropped when the other side saw its dot and no longer holds it.
        # Look from whichever side is smaller: a one-write delta merged into a large state
        # must not cost a scan of the whole state.
        if other.context.size() < len(self.entries):
            seen = (dot for dot in other.context.dots() if dot in self.entries)
        else:
            seen = (dot for dot in self.entries if dot in other.context)
        dropped = [dot for dot in seen if dot not in other.entries]
        for dot in dropped:
            del self.entries[dot]
        for dot, payload in other.entries.items():
            if dot not in self.context:
                self.entries[dot] = payload
        self.context.join(other.context)

    def to_wire(self, owner: str) -> KernelWire[V]:
        vv, cloud = self.context._vv, self.context._cloud
        replicas = replica_table(owner, vv.keys() | {dot.replica for dot in cloud})
        index = {replica: i for i, replica in enumerate(replicas)}
        return KernelWire(
            replicas=replicas,
            vv=[vv.get(replica, 0) for replica in replicas],
            cloud=sorted((index[d.replica], d.counter) for d in cloud if d not in self.entries),
            entries=sorted(
                ((index[d.replica], d.counter, payload) for d, payload in self.entries.items()),
                key=lambda entry: entry[:2],
            ),
        )

    @classmethod
    def from_wire(cls, wire: KernelWire[Any], payload: Callable[[Any], V]) -> DotKernel[V]:
        """Rebuild a kernel; ``payload`` turns each decoded payload into a stored one."""
        replica = read_replica_table(wire.replicas, wire.vv)
        kernel: DotKernel[V] = cls()
        kernel.context._vv = {r: n for r, n in zip(wire.replicas, wire.vv, strict=True) if n}
        for i, counter, raw in wire.entries:
            kernel.entries[Dot(replica(i), counter)] = payload(raw)
        if len(kernel.entries) != len(wire.entries):
            raise CrdtDecodeError("two entries share a dot")
        kernel.context.insert([Dot(replica(i), counter) for i, counter in wire.cloud])
        kernel.context.insert(kernel.entries)
        return kernel


class KernelCrdt(Generic[V]):
    """The shared body of the dot-kernel types: replica id, merge, copy and equality.

    Subclasses with configuration (a cart's quantity rule) override ``_blank`` and
    ``_config``; replicas whose configurations differ refuse to merge.
    """

    __slots__ = ("_kernel", "_replica")

    def __init__(self, replica: str) -> None:
        self._replica = replica
        self._kernel: DotKernel[V] = DotKernel()

    @property
    def replica(self) -> str:
        return self._replica

    def merge(self, other: Self) -> None:
        """Join a delta or a full state of the same type and configuration, in place."""
        if other._config() != self._config():
            raise InvalidOperation(
                "merge", f"configurations differ: {self._config()!r} vs {other._config()!r}"
            )
        self._kernel.join(other._kernel)

    def copy(self) -> Self:
        return self._with_kernel(self._kernel.copy())

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, KernelCrdt)
        return self._config() == other._config() and self._kernel == other._kernel

    def _with_kernel(self, kernel: DotKernel[V]) -> Self:
        """An object of this type, replica and configuration holding ``kernel``: a delta."""
        made = self._blank()
        made._kernel = kernel
        return made

    def _blank(self) -> Self:
        return type(self)(self._replica)

    def _config(self) -> object:
        return None
