"""Properties of the allocation of order lines to locations."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from retailsync.services.allocation import Supply, allocate

SKUS = ["A", "B", "C"]
LOCATIONS = ["l1", "l2", "l3", "l4"]

supplies = st.dictionaries(
    st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCATIONS)), st.integers(0, 20)
).map(lambda d: [Supply(sku, loc, qty) for (sku, loc), qty in d.items()])
demands = st.dictionaries(st.sampled_from(SKUS), st.integers(1, 40)).map(
    lambda d: sorted(d.items())
)


class TestAllocate:
    """Allocation covers demand exactly from what is available, or reports every shortage."""

    @given(demands, supplies)
    def test_never_takes_more_than_available(
        self, demand: list[tuple[str, int]], supply: list[Supply]
    ) -> None:
        allocations, _ = allocate(demand, supply)
        available = {(s.sku, s.location): s.available for s in supply}
        for allocation in allocations:
            assert 0 < allocation.quantity <= available[(allocation.sku, allocation.location)]
        pairs = [(a.sku, a.location) for a in allocations]
        assert len(pairs) == len(set(pairs))

    @given(demands, supplies)
    def test_covers_exactly_or_reports_shortage(
        self, demand: list[tuple[str, int]], supply: list[Supply]
    ) -> None:
        allocations, shortages = allocate(demand, supply)
        totals: dict[str, int] = defaultdict(int)
        for item in supply:
            totals[item.sku] += item.available
        short = {s.sku: s for s in shortages}
        covered: dict[str, int] = defaultdict(int)
        for allocation in allocations:
            covered[allocation.sku] += allocation.quantity
        for sku, wanted in demand:
            if totals[sku] >= wanted:
                assert sku not in short
                assert covered[sku] == wanted
            else:
                assert short[sku].requested == wanted
                assert short[sku].available == totals[sku]
                assert covered[sku] == 0

    def test_prefers_the_fullest_location(self) -> None:
        allocations, _ = allocate(
            [("A", 5)], [Supply("A", "l1", 3), Supply("A", "l2", 9), Supply("A", "l3", 0)]
        )
        assert [(a.location, a.quantity) for a in allocations] == [("l2", 5)]
