from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from retailsync.crdt import AWSet
from retailsync.crdt.causal import KernelWire
from tests.crdt.harness import (
    QUICK,
    THOROUGH,
    EventLog,
    Twin,
    assert_converges,
    assert_merge_laws,
    assert_round_trips,
    simulate,
)

SetTwin = Twin[AWSet[Hashable], EventLog]
ELEMENTS = st.sampled_from(["a", "b", "c", 7, ("sku-1", 2)])


@dataclass(frozen=True)
class Add:
    element: Hashable

    def __call__(self, twin: SetTwin) -> SetTwin:
        model = twin.model.write(self.element, removes=lambda held: held == self.element)
        return Twin(twin.crdt.add(self.element), model)


@dataclass(frozen=True)
class Remove:
    element: Hashable

    def __call__(self, twin: SetTwin) -> SetTwin:
        model = twin.model.write(None, removes=lambda held: held == self.element)
        return Twin(twin.crdt.remove(self.element), model)


OPS = st.one_of(st.builds(Add, ELEMENTS), st.builds(Remove, ELEMENTS))


def make(replica: str) -> SetTwin:
    return Twin(AWSet(replica), EventLog())


def matches_model(twin: SetTwin) -> None:
    assert twin.crdt.value == frozenset(twin.model.live())


class TestSemantics:
    """Every replica shows exactly the elements whose adds no observed remove cancelled."""

    @THOROUGH
    @given(st.data())
    def test_matches_reference_model_at_every_step(self, data: st.DataObject) -> None:
        simulate(data, make, OPS, check=matches_model, max_steps=40)

    def test_concurrent_add_wins_over_remove(self) -> None:
        a, b = AWSet[str]("a"), AWSet[str]("b")
        b.merge(a.add("x"))
        removal = b.remove("x")
        readd = a.add("x")
        a.merge(removal)
        b.merge(readd)
        assert a.value == b.value == {"x"}

    def test_removed_element_stays_removed_whatever_the_order(self) -> None:
        a, b = AWSet[str]("a"), AWSet[str]("b")
        added = a.add("x")
        removed = a.remove("x")
        b.merge(removed)
        b.merge(added)
        assert b.value == frozenset()
        assert b == a

    def test_re_adding_replaces_the_observed_dot(self) -> None:
        a = AWSet[str]("a")
        for _ in range(10):
            a.add("x")
        assert a.to_wire() == KernelWire(replicas=["a"], vv=[10], cloud=[], entries=[(0, 10, "x")])

    def test_removals_leave_only_a_version_vector(self) -> None:
        a = AWSet[str]("a")
        for i in range(50):
            a.add(f"sku-{i}")
        for i in range(50):
            a.remove(f"sku-{i}")
        assert a.to_wire() == KernelWire(replicas=["a"], vv=[50], cloud=[], entries=[])


class TestMerge:
    """Merge is a join, and replicas converge however deltas travel."""

    @QUICK
    @given(st.data())
    def test_laws(self, data: st.DataObject) -> None:
        a, b, c, *_ = simulate(data, make, OPS).replicas
        assert_merge_laws(a.crdt, b.crdt, c.crdt)

    @QUICK
    @given(st.data())
    def test_convergence(self, data: st.DataObject) -> None:
        run = simulate(data, make, OPS, check=matches_model)
        final = assert_converges(data, make, run.replicas, run.deltas)
        matches_model(final)


class TestEncoding:
    """States and deltas survive the codec unchanged."""

    @QUICK
    @given(st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        run = simulate(data, make, OPS)
        for twin in [*run.replicas, *run.deltas]:
            assert_round_trips(twin.crdt)
