from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retailsync.crdt import BoundedCounter, InsufficientRights, InvalidOperation, PNCounter
from tests.crdt.harness import (
    QUICK,
    THOROUGH,
    Twin,
    assert_converges,
    assert_merge_laws,
    assert_round_trips,
    simulate,
)

# The model counts what was added and spent (transfers change neither).
EscrowTwin = Twin[BoundedCounter, PNCounter]
NAMES = [f"r{i}" for i in range(5)]


def assert_escrow_invariants(counter: BoundedCounter) -> None:
    """In any state, delta or replica: no negative rights, and rights sum to the value."""
    rights = [counter.rights(name) for name in NAMES]
    assert min(rights) >= 0
    assert sum(rights) == counter.value >= 0


@dataclass(frozen=True)
class Increment:
    amount: int

    def __call__(self, twin: EscrowTwin) -> EscrowTwin:
        delta = twin.crdt.increment(self.amount)
        assert_escrow_invariants(delta)
        return Twin(delta, twin.model.increment(self.amount))


@dataclass(frozen=True)
class Decrement:
    amount: int

    def __call__(self, twin: EscrowTwin) -> EscrowTwin:
        delta = twin.crdt.decrement(self.amount)
        assert_escrow_invariants(delta)
        return Twin(delta, twin.model.decrement(self.amount))


@dataclass(frozen=True)
class Transfer:
    amount: int
    step: int  # to the replica this many places further round the ring, never to itself

    def __call__(self, twin: EscrowTwin) -> EscrowTwin:
        to = NAMES[(NAMES.index(twin.crdt.replica) + self.step) % len(NAMES)]
        delta = twin.crdt.transfer(self.amount, to=to)
        assert_escrow_invariants(delta)
        return Twin(delta, PNCounter(twin.model.replica))


AMOUNTS = st.integers(1, 6)
OPS = st.one_of(
    st.builds(Increment, AMOUNTS),
    st.builds(Decrement, AMOUNTS),
    st.builds(Transfer, AMOUNTS, st.integers(1, len(NAMES) - 1)),
)


def make(replica: str) -> EscrowTwin:
    return Twin(BoundedCounter(replica), PNCounter(replica))


def check(twin: EscrowTwin) -> None:
    assert_escrow_invariants(twin.crdt)


def run(data: st.DataObject) -> tuple[list[EscrowTwin], list[EscrowTwin]]:
    history = simulate(data, make, OPS, check=check, refused=(InsufficientRights,), max_steps=40)
    return history.replicas, history.deltas


class TestEscrow:
    """No sequence of operations and merges, in any order, makes the value negative."""

    @THOROUGH
    @given(st.data())
    def test_invariants_hold_everywhere_and_the_total_is_exact(self, data: st.DataObject) -> None:
        replicas, deltas = run(data)
        final = assert_converges(data, make, replicas, deltas)
        check(final)
        assert final.crdt.value == final.model.value

    def test_refused_decrement_changes_nothing(self) -> None:
        counter = BoundedCounter("a")
        counter.increment(3)
        before = counter.copy()
        with pytest.raises(InsufficientRights) as refused:
            counter.decrement(4)
        assert (refused.value.replica, refused.value.requested, refused.value.available) == (
            "a",
            4,
            3,
        )
        assert counter == before

    def test_transfer_moves_rights_and_is_refused_beyond_them(self) -> None:
        a, b = BoundedCounter("a"), BoundedCounter("b")
        a.increment(5)
        b.merge(a.transfer(2, to="b"))
        assert (a.rights(), a.rights("b"), b.rights(), b.value) == (3, 2, 2, 5)
        with pytest.raises(InsufficientRights):
            a.transfer(4, to="b")
        with pytest.raises(InsufficientRights):
            b.decrement(3)
        b.decrement(2)
        assert b.value == 3

    def test_a_decrement_arriving_first_brings_the_rights_it_spent(self) -> None:
        """A bare "b spent 5" merged before the increment would show -5; the delta carries
        the rows that gave b those rights."""
        a, b, observer = BoundedCounter("a"), BoundedCounter("b"), BoundedCounter("c")
        a.increment(5)
        b.merge(a.transfer(5, to="b"))
        spent = b.decrement(5)
        observer.merge(spent)
        assert observer.value == 0
        assert observer.rights("a") == observer.rights("b") == 0

    def test_operation_arguments_are_checked(self) -> None:
        counter = BoundedCounter("a")
        counter.increment(5)
        with pytest.raises(InvalidOperation, match="itself"):
            counter.transfer(1, to="a")
        with pytest.raises(InvalidOperation, match="positive"):
            counter.decrement(0)
        assert counter.rights() == 5


class TestMerge:
    """Merge is a join."""

    @QUICK
    @given(st.data())
    def test_laws(self, data: st.DataObject) -> None:
        a, b, c, *_ = run(data)[0]
        assert_merge_laws(a.crdt, b.crdt, c.crdt)


class TestEncoding:
    """States and deltas survive the codec unchanged."""

    @QUICK
    @given(st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        replicas, deltas = run(data)
        for twin in [*replicas, *deltas]:
            assert_round_trips(twin.crdt)


class TestRows:
    """The row view the server's authority check reads: rows only grow under merge, and a
    state's rows describe it completely."""

    @QUICK
    @given(st.data())
    def test_rows_grow_and_describe_the_state(self, data: st.DataObject) -> None:
        a, b, *_ = (twin.crdt for twin in run(data)[0])
        joined = a.copy()
        joined.merge(b)
        for name in NAMES:
            assert a.row(name).within(joined.row(name))
            assert b.row(name).within(joined.row(name))
            row = joined.row(name)
            received = sum(joined.row(source).moved.get(name, 0) for source in NAMES)
            rights = row.increments + received - sum(row.moved.values()) - row.decrements
            assert rights == joined.rights(name)
        assert joined.writers() == a.writers() | b.writers()
        assert {n for n in NAMES if joined.row(n) != BoundedCounter("x").row(n)} == set(
            joined.writers()
        )

    def test_within_sees_every_total(self) -> None:
        counter = BoundedCounter("a")
        counter.increment(3)
        before = counter.row("a")
        counter.transfer(1, to="b")
        assert before.within(counter.row("a"))
        assert not counter.row("a").within(before)
