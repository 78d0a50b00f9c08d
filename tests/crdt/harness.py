"""Random replica histories, a reference model, and the checks every CRDT type must pass.

``simulate`` runs 3-5 replicas through a drawn sequence of local operations, delta deliveries
(out of order, duplicated) and full-state merges, checking each replica after every step.
``assert_merge_laws`` and ``assert_converges`` then check the join on what it produced.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar

from hypothesis import event, settings
from hypothesis import strategies as st

from retailsync.crdt import Crdt, decode, encode

# Example budgets that keep the whole folder near 10 s: histories run up to 40 steps on 3-5
# replicas, so each example already covers many interleavings.
THOROUGH = settings(max_examples=100, deadline=None)  # the main property of each type
QUICK = settings(max_examples=40, deadline=None)  # laws, convergence, round trips


class Replica(Protocol):
    def merge(self, other: Self) -> None: ...

    def copy(self) -> Self: ...


R = TypeVar("R", bound=Replica)
C = TypeVar("C", bound=Replica)
M = TypeVar("M", bound=Replica)

Op = Callable[[R], R]  # applies one operation to a replica and returns its delta


@dataclass
class History(Generic[R]):
    replicas: list[R]
    deltas: list[R]


def simulate(
    data: st.DataObject,
    make: Callable[[str], R],
    ops: st.SearchStrategy[Op[R]],
    *,
    check: Callable[[R], None] = lambda replica: None,
    refused: tuple[type[Exception], ...] = (),
    max_steps: int = 30,
) -> History[R]:
    """Run replicas ``r0``.. through drawn steps; an op raising ``refused`` must change nothing."""
    count = data.draw(st.integers(3, 5), label="replicas")
    replicas = [make(f"r{i}") for i in range(count)]
    deltas: list[R] = []
    for _ in range(data.draw(st.integers(1, max_steps), label="steps")):
        at = replicas[data.draw(st.integers(0, count - 1), label="at")]
        kind = data.draw(st.sampled_from(["op", "op", "deliver", "sync"]), label="kind")
        if kind == "op":
            op = data.draw(ops, label="op")
            before = at.copy()
            try:
                deltas.append(op(at))
            except refused:
                event("operation refused")
                assert at == before, "a refused operation changed the replica"
        elif kind == "deliver" and deltas:
            at.merge(deltas[data.draw(st.integers(0, len(deltas) - 1), label="delta")])
        elif kind == "sync":
            at.merge(replicas[data.draw(st.integers(0, count - 1), label="from")])
        check(at)
    return History(replicas, deltas)


def joined(first: R, *rest: R) -> R:
    """A copy of ``first`` with every one of ``rest`` merged into it."""
    result = first.copy()
    for other in rest:
        result.merge(other)
    return result


def assert_merge_laws(a: R, b: R, c: R) -> None:
    """Merge is commutative, associative and idempotent, and leaves its argument alone."""
    b_before = b.copy()
    assert joined(a, b) == joined(b, a)
    assert joined(joined(a, b), c) == joined(a, joined(b, c))
    assert joined(a, a) == a
    assert joined(a, b, b) == joined(a, b)
    assert b == b_before


def assert_converges(
    data: st.DataObject, make: Callable[[str], R], replicas: Sequence[R], deltas: Sequence[R]
) -> R:
    """Whatever the order, duplicates or drops (repaired by full states), all end up equal.

    Returns the converged state.
    """
    expected = joined(make("expected"), *replicas)
    assert joined(make("from-deltas"), *deltas) == expected, "an operation's delta lost effect"
    extra = data.draw(st.lists(st.sampled_from(deltas), max_size=5)) if deltas else []
    for _ in range(2):
        arrivals = data.draw(st.permutations([*deltas, *extra]), label="arrivals")
        assert joined(make("observer"), *arrivals) == expected
    kept = [d for d in deltas if data.draw(st.booleans(), label="kept")]
    repairs = data.draw(st.permutations(replicas), label="repairs")
    assert joined(make("observer"), *kept, *repairs) == expected
    for replica in replicas:
        for other in replicas:
            replica.merge(other)
    assert all(replica == expected for replica in replicas)
    return expected


def assert_round_trips(crdt: Crdt) -> None:
    """Decoding an encoding gives an equal object of the same type, for the same replica,
    and equal objects encode to the same bytes."""
    data = encode(crdt)
    back = decode(data)
    assert type(back) is type(crdt)
    assert back == crdt
    assert back.replica == crdt.replica
    assert encode(back) == data


_event_ids = itertools.count()


@dataclass
class EventLog:
    """Reference semantics of the observed-remove types: every write kept as an event and
    every removal as a tombstone, forever. Plainly right and unboundedly large."""

    events: dict[int, Any] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)

    def live(self) -> list[Any]:
        return [p for i, p in self.events.items() if i not in self.removed]

    def write(self, payload: Hashable | None, removes: Callable[[Any], bool]) -> EventLog:
        """Tombstone the live events that ``removes`` matches, then record ``payload`` (unless
        None) as a new event; return the delta."""
        gone = {i for i, p in self.events.items() if i not in self.removed and removes(p)}
        delta = EventLog(removed=gone)
        if payload is not None:
            delta.events[next(_event_ids)] = payload
        self.merge(delta)
        return delta

    def merge(self, other: EventLog) -> None:
        self.events.update(other.events)
        self.removed |= other.removed

    def copy(self) -> EventLog:
        return EventLog(dict(self.events), set(self.removed))


@dataclass
class Twin(Generic[C, M]):
    """A replica under test and its reference model, operated and merged in lockstep."""

    crdt: C
    model: M

    def merge(self, other: Twin[C, M]) -> None:
        self.crdt.merge(other.crdt)
        self.model.merge(other.model)

    def copy(self) -> Twin[C, M]:
        return Twin(self.crdt.copy(), self.model.copy())
