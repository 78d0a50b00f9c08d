"""Request rates per sku, on a clock the test moves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from retailsync.inventory.rates import RateMeter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_seen_within_its_second_and_fades_after_two() -> None:
    clock = Clock()
    meter = RateMeter(clock)
    for _ in range(30):
        meter.add("A")
    clock.now += 0.5
    assert meter.rate("A") == 60  # 30 in half a second
    assert meter.rate("B") == 0
    clock.now += 0.6  # the next second: the last full second had 30
    assert meter.rate("A") == 30
    assert meter.above(20) == ["A"]
    clock.now += 1.0  # two seconds on, nothing since
    assert meter.rate("A") == 0
    assert meter.above(1) == []


def test_early_in_a_second_the_rate_is_not_overstated() -> None:
    clock = Clock()
    meter = RateMeter(clock)
    meter.add("A", 5)
    clock.now += 0.01
    assert meter.rate("A") == 20  # 5 over at least a quarter of a second


def test_a_gap_of_seconds_forgets_the_past() -> None:
    clock = Clock()
    meter = RateMeter(clock)
    meter.add("A", 100)
    clock.now += 5
    meter.add("A")
    assert meter.rate("A") < 100


@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.floats(0, 1.5), st.integers(1, 20)), max_size=60)
)
def test_watched_is_every_sku_at_or_above_the_watch_rate(
    steps: list[tuple[str, float, int]],
) -> None:
    """``watched`` looks only at skus that reached the rate at an add: the same skus as
    ``above`` (which looks at every sku), after any history of adds and waits."""
    clock = Clock()
    meter = RateMeter(clock, watch=10)
    for sku, wait, amount in steps:
        clock.now += wait
        assert sorted(meter.watched()) == sorted(meter.above(10))
        meter.add(sku, amount)
        assert sorted(meter.watched()) == sorted(meter.above(10))
