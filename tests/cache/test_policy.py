"""The policy table from settings, the snapshot visibility rule, and early refresh."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retailsync.cache.policy import load_policies, refresh_early
from retailsync.cache.reads import Snapshot
from retailsync.config import load_settings
from retailsync.errors import ConfigError


def test_the_defaults_and_an_override() -> None:
    table = load_policies(
        '{"volatile": {"ttl_s": 2}, "hot": {"ttl_s": 1, "events": true}}',
        '{"price": {"cls": "hot"}}',
    )
    assert table.of("price") == table.classes["hot"]
    assert table.classes["volatile"].ttl_s == 2
    assert table.classes["volatile"].events  # the rest of the class is kept
    assert table.of("cart") is None  # strong: never cached
    assert table.of("stock") == table.classes["volatile"]


@pytest.mark.parametrize(
    ("classes", "domains", "named"),
    [
        ("{", "", "RETAILSYNC_CACHE_CLASSES"),
        ('{"volatile": {"ttl_s": 0}}', "", "RETAILSYNC_CACHE_CLASSES"),
        ('{"volatile": {"ttl": 5}}', "", "RETAILSYNC_CACHE_CLASSES"),
        ('["volatile"]', "", "RETAILSYNC_CACHE_CLASSES"),
        ("", '{"basket": {"cls": "static"}}', "RETAILSYNC_CACHE_DOMAINS"),
        ("", '{"price": {"cls": "nope"}}', "RETAILSYNC_CACHE_DOMAINS"),
        ("", '{"price": {"consistency": "sometimes"}}', "RETAILSYNC_CACHE_DOMAINS"),
    ],
)
def test_a_bad_table_names_its_setting(classes: str, domains: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_policies(classes, domains)
    env = {"RETAILSYNC_CACHE_CLASSES": classes, "RETAILSYNC_CACHE_DOMAINS": domains}
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=env)  # refused at start-up


def test_cache_control_by_class() -> None:
    table = load_policies("", "")
    assert table.classes["semi-static"].cache_control() == "public, max-age=0, s-maxage=300"
    assert table.classes["static"].cache_control() == "public, max-age=300, s-maxage=3600"


@given(
    epoch=st.integers(0, 5),
    xmin_low=st.integers(0, 2**32 - 1),
    span=st.integers(0, 1000),
    running=st.sets(st.integers(0, 1000), max_size=20),
    candidate=st.integers(-2000, 2000),
)
def test_snapshot_visibility_matches_full_ids(
    epoch: int, xmin_low: int, span: int, running: set[int], candidate: int
) -> None:
    """The WAL carries 32-bit ids; the snapshot 64-bit ones. Widening must give the answer
    the 64-bit ids give, across an epoch boundary too."""
    xmin = (epoch << 32) + xmin_low + 3
    xmax = xmin + span
    xip = {xmin + r for r in running if xmin + r < xmax}
    snapshot = Snapshot.parse(f"{xmin}:{xmax}:{','.join(map(str, sorted(xip)))}")
    full = xmax + candidate
    if full < 3 or full >= xmax:  # visibility of ids from the future is never asked
        return
    expected = full < xmin or full not in xip
    assert snapshot.sees(full & 0xFFFFFFFF) == expected


def test_early_refresh_grows_near_expiry_and_with_cost() -> None:
    random.seed(1)

    def share(seconds_left: float, cost: float) -> float:
        hits = sum(refresh_early(100.0 + seconds_left, cost, 1.0, 100.0) for _ in range(2000))
        return hits / 2000

    assert share(60.0, 0.01) == 0.0  # far from expiry: never
    assert share(0.0, 0.01) == 1.0  # at expiry: always
    assert 0.0 < share(0.02, 0.01) < 1.0  # near it: sometimes
    assert share(0.02, 0.05) > share(0.02, 0.01)  # costlier loads refresh earlier
    assert not refresh_early(100.0, 0.01, 0.0, 99.99)  # beta 0: off
