"""Statistics the benchmarks share."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Sequence


def percentile(values: Sequence[float], share: float) -> float:
    """The value at rank ``share`` (0..1) of the sorted values (nearest rank, upper); 0.0 for
    none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def zipf_picker(names: Sequence[str], s: float, rng: random.Random) -> Callable[[], str]:
    """Draws from ``names`` with Zipf weights: the n-th (from 1) is drawn in proportion to
    1 / n**s."""
    cumulative = list(itertools.accumulate(1.0 / rank**s for rank in range(1, len(names) + 1)))
    total = cumulative[-1]
    return lambda: names[bisect.bisect_left(cumulative, rng.random() * total)]
