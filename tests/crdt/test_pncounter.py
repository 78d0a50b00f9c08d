from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retailsync.crdt import InvalidOperation, PNCounter
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

CounterTwin = Twin[PNCounter, EventLog]


@dataclass(frozen=True)
class Increment:
    amount: int

    def __call__(self, twin: CounterTwin) -> CounterTwin:
        model = twin.model.write(self.amount, removes=lambda _: False)
        return Twin(twin.crdt.increment(self.amount), model)


@dataclass(frozen=True)
class Decrement:
    amount: int

    def __call__(self, twin: CounterTwin) -> CounterTwin:
        model = twin.model.write(-self.amount, removes=lambda _: False)
        return Twin(twin.crdt.decrement(self.amount), model)


AMOUNTS = st.integers(1, 1000)
OPS = st.one_of(st.builds(Increment, AMOUNTS), st.builds(Decrement, AMOUNTS))


def make(replica: str) -> CounterTwin:
    return Twin(PNCounter(replica), EventLog())


class TestSemantics:
    """The value is the sum of every increment minus every decrement, once all have arrived."""

    @THOROUGH
    @given(st.data())
    def test_converged_value_counts_every_operation_once(self, data: st.DataObject) -> None:
        run = simulate(data, make, OPS)
        final = assert_converges(data, make, run.replicas, run.deltas)
        assert final.crdt.value == sum(final.model.live())

    def test_local_operations(self) -> None:
        counter = PNCounter("a")
        counter.increment(5)
        counter.decrement(7)
        assert counter.value == -2

    @pytest.mark.parametrize("amount", [0, -3])
    def test_amount_must_be_positive(self, amount: int) -> None:
        counter = PNCounter("a")
        with pytest.raises(InvalidOperation, match="positive"):
            counter.increment(amount)
        with pytest.raises(InvalidOperation, match="positive"):
            counter.decrement(amount)
        assert counter == PNCounter("a")


class TestMerge:
    """Merge is a join, and replicas converge however deltas travel."""

    @QUICK
    @given(st.data())
    def test_laws(self, data: st.DataObject) -> None:
        a, b, c, *_ = simulate(data, make, OPS).replicas
        assert_merge_laws(a.crdt, b.crdt, c.crdt)


class TestEncoding:
    """States and deltas survive the codec unchanged."""

    @QUICK
    @given(st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        run = simulate(data, make, OPS)
        for twin in [*run.replicas, *run.deltas]:
            assert_round_trips(twin.crdt)
