from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retailsync.crdt import Cart, CartLine, InvalidOperation, PriceSnapshot, QuantityRule, Stamp
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

CartTwin = Twin[Cart, EventLog]
# Model events are (sku, quantity, prices, stamp), the same facts a LineDot carries.
Event = tuple[str, int, tuple[PriceSnapshot, ...], Stamp | None]

EUR_9_99, EUR_10_99 = PriceSnapshot(999, "EUR"), PriceSnapshot(1099, "EUR")
SKUS = st.sampled_from(["sku-1", "sku-2", "sku-3"])
QUANTITIES = st.integers(1, 4)
PRICES = st.sampled_from([EUR_9_99, EUR_10_99])
STAMPS = st.builds(Stamp, st.integers(0, 3), st.integers(0, 2), st.sampled_from(["n0", "n1"]))


def expected_lines(model: EventLog, rule: QuantityRule) -> Mapping[str, CartLine]:
    """The declared rule, applied to the live events of the reference model."""
    by_sku: dict[str, list[Event]] = {}
    for event in model.live():
        by_sku.setdefault(event[0], []).append(event)
    lines = {}
    for sku, events in by_sku.items():
        if rule == "counter":
            quantity = sum(event[1] for event in events)
        else:  # the highest stamp; quantity and prices only separate equal stamps
            quantity = max(events, key=lambda e: (e[3], e[1], e[2]))[1]
        prices = tuple(sorted({price for event in events for price in event[2]}))
        lines[sku] = CartLine(quantity, prices)
    return lines


def same_sku(sku: str) -> Callable[[Any], bool]:
    return lambda event: event[0] == sku


@dataclass(frozen=True)
class Add:
    sku: str
    quantity: int
    price: PriceSnapshot
    stamp: Stamp | None = None

    def __call__(self, twin: CartTwin) -> CartTwin:
        if twin.crdt.rule == "counter":
            delta = twin.crdt.add(self.sku, self.quantity, self.price)
            event: Event = (self.sku, self.quantity, (self.price,), None)
            return Twin(delta, twin.model.write(event, removes=lambda _: False))
        held = expected_lines(twin.model, "lww").get(self.sku)
        observed = 0 if held is None else held.quantity
        delta = twin.crdt.add(self.sku, self.quantity, self.price, stamp=self.stamp)
        event = (self.sku, observed + self.quantity, (self.price,), self.stamp)
        return Twin(delta, twin.model.write(event, removes=same_sku(self.sku)))


@dataclass(frozen=True)
class SetQuantity:
    sku: str
    quantity: int
    stamp: Stamp

    def __call__(self, twin: CartTwin) -> CartTwin:
        delta = twin.crdt.set_quantity(self.sku, self.quantity, self.stamp)
        prices = expected_lines(twin.model, "lww")[self.sku].price_snapshots
        event: Event = (self.sku, self.quantity, prices, self.stamp)
        return Twin(delta, twin.model.write(event, removes=same_sku(self.sku)))


@dataclass(frozen=True)
class Remove:
    sku: str

    def __call__(self, twin: CartTwin) -> CartTwin:
        delta = twin.crdt.remove(self.sku)
        return Twin(delta, twin.model.write(None, removes=same_sku(self.sku)))


COUNTER_OPS = st.one_of(st.builds(Add, SKUS, QUANTITIES, PRICES), st.builds(Remove, SKUS))
LWW_OPS = st.one_of(
    st.builds(Add, SKUS, QUANTITIES, PRICES, STAMPS),
    st.builds(SetQuantity, SKUS, QUANTITIES, STAMPS),
    st.builds(Remove, SKUS),
)
OPS = {"counter": COUNTER_OPS, "lww": LWW_OPS}
RULES: list[QuantityRule] = ["counter", "lww"]


def maker(rule: QuantityRule) -> Callable[[str], CartTwin]:
    return lambda replica: Twin(Cart(replica, rule=rule), EventLog())


def matches_model(twin: CartTwin) -> None:
    assert twin.crdt.value == expected_lines(twin.model, twin.crdt.rule)


def run(data: st.DataObject, rule: QuantityRule, *, check: bool = True) -> Any:
    # set_quantity on a line absent here is refused; the harness checks it changed nothing.
    return simulate(
        data,
        maker(rule),
        OPS[rule],
        check=matches_model if check else lambda twin: None,
        refused=(InvalidOperation,),
        max_steps=40,
    )


class TestDeclaredRules:
    """Lines follow the model: no concurrent add is lost, no observed removal is undone, and
    quantities follow the rule (counter: sum of surviving adds; lww: highest stamp)."""

    @pytest.mark.parametrize("rule", RULES)
    @THOROUGH
    @given(data=st.data())
    def test_matches_reference_model_at_every_step(
        self, rule: QuantityRule, data: st.DataObject
    ) -> None:
        run(data, rule)

    def test_concurrent_adds_are_summed(self) -> None:
        a, b = Cart("a", rule="counter"), Cart("b", rule="counter")
        from_a = a.add("sku-1", 2, EUR_9_99)
        from_b = b.add("sku-1", 3, EUR_10_99)
        a.merge(from_b)
        b.merge(from_a)
        assert a.value == b.value == {"sku-1": CartLine(5, (EUR_9_99, EUR_10_99))}

    def test_concurrent_add_survives_a_remove_with_only_its_own_contribution(self) -> None:
        a, b = Cart("a", rule="counter"), Cart("b", rule="counter")
        b.merge(a.add("sku-1", 2, EUR_9_99))
        removal = b.remove("sku-1")
        concurrent = a.add("sku-1", 1, EUR_10_99)
        a.merge(removal)
        b.merge(concurrent)
        assert a.value == b.value == {"sku-1": CartLine(1, (EUR_10_99,))}

    def test_removed_line_does_not_reappear_when_its_add_arrives_late(self) -> None:
        a, b = Cart("a", rule="counter"), Cart("b", rule="counter")
        added = a.add("sku-1", 2, EUR_9_99)
        removed = a.remove("sku-1")
        b.merge(removed)
        b.merge(added)
        b.merge(added)
        assert b.value == {}

    def test_lww_concurrent_sets_highest_stamp_wins(self) -> None:
        a, b = Cart("a", rule="lww"), Cart("b", rule="lww")
        b.merge(a.add("sku-1", 1, EUR_9_99, stamp=Stamp(10, 0, "a")))
        from_a = a.set_quantity("sku-1", 5, Stamp(20, 0, "a"))
        from_b = b.set_quantity("sku-1", 3, Stamp(20, 1, "b"))
        a.merge(from_b)
        b.merge(from_a)
        assert a.value == b.value == {"sku-1": CartLine(3, (EUR_9_99,))}

    def test_lww_add_adds_to_the_observed_quantity(self) -> None:
        cart = Cart("a", rule="lww")
        cart.add("sku-1", 2, EUR_9_99, stamp=Stamp(1, 0, "a"))
        cart.add("sku-1", 1, EUR_10_99, stamp=Stamp(2, 0, "a"))
        assert cart.value == {"sku-1": CartLine(3, (EUR_10_99,))}

    def test_rule_specific_arguments_are_checked(self) -> None:
        counter, lww = Cart("a", rule="counter"), Cart("a", rule="lww")
        with pytest.raises(InvalidOperation, match="no stamp"):
            counter.add("sku-1", 1, EUR_9_99, stamp=Stamp(1, 0, "a"))
        with pytest.raises(InvalidOperation, match="lww cart"):
            counter.set_quantity("sku-1", 1, Stamp(1, 0, "a"))
        with pytest.raises(InvalidOperation, match="needs the stamp"):
            lww.add("sku-1", 1, EUR_9_99)
        with pytest.raises(InvalidOperation, match="not in the cart"):
            lww.set_quantity("sku-1", 1, Stamp(1, 0, "a"))
        with pytest.raises(InvalidOperation, match="positive"):
            counter.add("sku-1", 0, EUR_9_99)
        with pytest.raises(InvalidOperation, match="configurations differ"):
            counter.merge(lww)
        assert counter.value == lww.value == {}


class TestMerge:
    """Merge is a join, and replicas converge however deltas travel."""

    @pytest.mark.parametrize("rule", RULES)
    @QUICK
    @given(data=st.data())
    def test_laws(self, rule: QuantityRule, data: st.DataObject) -> None:
        a, b, c, *_ = run(data, rule, check=False).replicas
        assert_merge_laws(a.crdt, b.crdt, c.crdt)

    @pytest.mark.parametrize("rule", RULES)
    @QUICK
    @given(data=st.data())
    def test_convergence(self, rule: QuantityRule, data: st.DataObject) -> None:
        history = run(data, rule, check=False)
        matches_model(assert_converges(data, maker(rule), history.replicas, history.deltas))


class TestEncoding:
    """States and deltas survive the codec unchanged."""

    @pytest.mark.parametrize("rule", RULES)
    @QUICK
    @given(data=st.data())
    def test_round_trip(self, rule: QuantityRule, data: st.DataObject) -> None:
        history = run(data, rule, check=False)
        for twin in [*history.replicas, *history.deltas]:
            assert_round_trips(twin.crdt)
