"""Which locations of a region serve each line of an order: a pure function, tested alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from retailsync.errors import Shortage


@dataclass(frozen=True, slots=True)
class Supply:
    sku: str
    location: str
    available: int


@dataclass(frozen=True, slots=True)
class Allocation:
    sku: str
    location: str
    quantity: int


def allocate(
    demand: Sequence[tuple[str, int]], supply: Iterable[Supply]
) -> tuple[list[Allocation], list[Shortage]]:
    """Cover each (sku, quantity) from the locations holding it, fullest first, so an order
    splits across as few locations as possible. Returns allocations, or the shortages when
    any line cannot be covered (then the allocations must not be applied)."""
    by_sku: dict[str, list[Supply]] = defaultdict(list)
    for item in supply:
        if item.available > 0:
            by_sku[item.sku].append(item)
    allocations: list[Allocation] = []
    shortages: list[Shortage] = []
    for sku, wanted in demand:
        sources = sorted(by_sku[sku], key=lambda s: (-s.available, s.location))
        total = sum(s.available for s in sources)
        if total < wanted:
            shortages.append(Shortage(sku, wanted, total))
            continue
        remaining = wanted
        for source in sources:
            take = min(remaining, source.available)
            allocations.append(Allocation(sku, source.location, take))
            remaining -= take
            if remaining == 0:
                break
    return allocations, shortages
