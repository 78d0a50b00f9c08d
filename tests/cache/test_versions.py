"""The version rules of both tiers (see ``cache.entry``): whatever order, duplication or
mixture of writes and invalidations arrives, a key ends holding the value of the highest
version anyone wrote, or nothing if the highest version seen is an invalidation's; it never
goes back in time on the way."""

from __future__ import annotations

import asyncio
import secrets
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retailsync.cache.entry import Entry
from retailsync.cache.l1 import L1Cache
from retailsync.cache.l2 import L2Cache
from retailsync.cache.tiers import Loaded, TieredCache

# ("put" | "invalidate", version); a put's value is its version, so equal versions agree.
Op = tuple[str, int]
ops = st.lists(st.tuples(st.sampled_from(["put", "invalidate"]), st.integers(0, 30)), max_size=40)


def entry(version: int) -> Entry:
    return Entry(str(version).encode(), version, time.time() + 3600)


def expected(history: list[Op]) -> int | None:
    """The version a key ends with: the highest seen, if a put carried it."""
    if not history:
        return None
    top = max(version for _, version in history)
    return top if ("put", top) in history else None


def apply_l1(cache: L1Cache, history: list[Op], key: str = "k") -> list[int | None]:
    seen = []
    for kind, version in history:
        if kind == "put":
            cache.put(key, entry(version))
        else:
            cache.invalidate(key, version)
        held = cache.get(key)
        seen.append(None if held is None else held.version)
    return seen


@given(ops)
def test_l1_ends_with_the_newest_put_and_never_goes_back(history: list[Op]) -> None:
    seen = apply_l1(L1Cache(), history)
    final = seen[-1] if seen else None
    assert final == expected(history)
    held = [version for version in seen if version is not None]
    assert held == sorted(held)  # a value, once replaced, is only ever replaced by a newer one
    if final is not None:
        assert L1Cache().get("k") is None


@given(ops, st.randoms())
def test_l1_order_and_duplicates_do_not_matter(history: list[Op], rng) -> None:  # type: ignore[no-untyped-def]
    shuffled = history + rng.sample(history, len(history) // 2)  # duplicates, then a shuffle
    rng.shuffle(shuffled)
    a, b = L1Cache(), L1Cache()
    apply_l1(a, history)
    apply_l1(b, shuffled)
    ga, gb = a.get("k"), b.get("k")
    assert (ga and ga.version) == (gb and gb.version) == expected(history)


def test_a_key_can_be_cached_again_at_the_version_an_invalidation_named() -> None:
    cache = L1Cache()
    cache.put("k", entry(3))
    assert cache.invalidate("k", 5)
    assert cache.get("k") is None
    assert not cache.put("k", entry(4))  # read before the change: refused
    assert cache.put("k", entry(5))  # the new version, read after it: cached
    assert not cache.invalidate("k", 5)  # replayed invalidation: nothing happens
    held = cache.get("k")
    assert held is not None
    assert held.version == 5


def test_l1_evicts_the_least_recently_used_but_remembers_its_floor() -> None:
    cache = L1Cache(max_entries=2)
    cache.put("a", entry(7))
    cache.put("b", entry(1))
    cache.get("a")
    cache.put("c", entry(1))
    assert cache.get("b") is None  # evicted
    assert cache.get("a") is not None
    assert not cache.put("b", entry(0))  # still refuses what is older than it had


def test_l1_expiry_and_stale_reads() -> None:
    now = [1000.0]
    cache = L1Cache(clock=lambda: now[0])
    cache.put("k", Entry(b"x", 1, 1005.0))
    now[0] = 1006.0
    assert cache.get("k") is None
    assert cache.get("k", stale_ok=True) == Entry(b"x", 1, 1005.0)


# The fixture is shared by the examples on purpose: each example works on a key of its own.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops)
async def test_l2_follows_the_same_rules_in_redis(l2: L2Cache, history: list[Op]) -> None:
    key = f"k{secrets.token_hex(8)}"
    held: list[int] = []
    for kind, version in history:
        if kind == "put":
            await l2.put(key, entry(version), 60)
        else:
            await l2.invalidate(key, version)
        got = await l2.get(key)
        if got is not None:
            held.append(got.version)
    final = await l2.get(key)
    assert (final and final.version) == expected(history)
    assert held == sorted(held)


async def test_l2_big_versions_are_exact(l2: L2Cache) -> None:
    top = 2**63 - 1  # beyond a double's exact integers: compared as padded strings
    assert await l2.put("big", entry(top - 1), 60)
    assert await l2.put("big", entry(top), 60)
    assert not await l2.put("big", entry(top - 1), 60)
    got = await l2.get("big")
    assert got is not None
    assert got.version == top


async def test_concurrent_misses_load_once(l2: L2Cache) -> None:
    cache = TieredCache(L1Cache(), l2)
    loads = 0

    async def load() -> Loaded:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return Loaded(Entry(b"row", 9, time.time() + 60))

    got = await asyncio.gather(*[cache.get("p:1", load) for _ in range(50)])
    assert loads == 1
    assert {served.entry.version for served in got} == {9}
    assert (await l2.get("p:1")) is not None  # and it reached L2 for the other workers


async def test_a_slow_load_cannot_undo_an_invalidation(l2: L2Cache) -> None:
    """The classic race: a reader loads version 1, the row changes to 2 and is invalidated,
    the reader puts version 1 back. Both tiers refuse it."""
    cache = TieredCache(L1Cache(), l2)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_load() -> Loaded:
        started.set()
        await release.wait()
        return Loaded(Entry(b"old", 1, time.time() + 60))

    reader = asyncio.create_task(cache.get("p:2", slow_load))
    await started.wait()
    await cache.invalidate("p:2", 2)
    release.set()
    await reader
    assert cache.l1.get("p:2") is None
    assert await l2.get("p:2") is None
