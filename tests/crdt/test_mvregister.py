from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from retailsync.crdt import MVRegister
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

RegisterTwin = Twin[MVRegister[Hashable], EventLog]


@dataclass(frozen=True)
class Assign:
    value: Hashable

    def __call__(self, twin: RegisterTwin) -> RegisterTwin:
        model = twin.model.write(self.value, removes=lambda held: True)
        return Twin(twin.crdt.assign(self.value), model)


OPS = st.builds(Assign, st.sampled_from(["red", "blue", 3, ("size", 42)]))


def make(replica: str) -> RegisterTwin:
    return Twin(MVRegister(replica), EventLog())


def matches_model(twin: RegisterTwin) -> None:
    live = frozenset(twin.model.live())
    assert twin.crdt.value == live
    assert twin.crdt.is_conflicted == (len(live) > 1)


class TestSemantics:
    """An assign replaces what it observed; concurrent assigns are all kept, as a conflict."""

    @THOROUGH
    @given(st.data())
    def test_matches_reference_model_at_every_step(self, data: st.DataObject) -> None:
        simulate(data, make, OPS, check=matches_model, max_steps=40)

    def test_concurrent_assigns_are_a_visible_conflict(self) -> None:
        a, b = MVRegister[str]("a"), MVRegister[str]("b")
        from_a, from_b = a.assign("red"), b.assign("blue")
        a.merge(from_b)
        b.merge(from_a)
        assert a.value == b.value == {"red", "blue"}
        assert a.is_conflicted

    def test_an_assign_after_seeing_the_conflict_resolves_it(self) -> None:
        a, b = MVRegister[str]("a"), MVRegister[str]("b")
        b.merge(a.assign("red"))
        a.merge(b.assign("blue"))
        resolution = a.assign("purple")
        b.merge(resolution)
        assert a.value == b.value == {"purple"}
        assert not b.is_conflicted

    def test_empty_register_has_no_value(self) -> None:
        assert MVRegister[str]("a").value == frozenset()


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
        matches_model(assert_converges(data, make, run.replicas, run.deltas))


class TestEncoding:
    """States and deltas survive the codec unchanged."""

    @QUICK
    @given(st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        run = simulate(data, make, OPS)
        for twin in [*run.replicas, *run.deltas]:
            assert_round_trips(twin.crdt)
