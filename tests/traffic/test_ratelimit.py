"""Rate limits: the notation and its settings, the algorithm's arithmetic in process memory,
and the shared counters on a real Redis, across processes and through an outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import REGISTRY

from retailsync.config import load_settings
from retailsync.errors import ConfigError
from retailsync.traffic.ratelimit import (
    LocalWindows,
    RateLimited,
    RateLimiter,
    key_identity,
    parse_limits,
    seconds_until_admitted,
)
from tests.cache.conftest import REDIS_URL, RedisServer

SECRET = b"rs_live_" + b"s3cr3t" * 4


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def local_limiter(key: str = "", address: str = "") -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    limiter = RateLimiter(
        key_limits=parse_limits(key, "k"),
        address_limits=parse_limits(address, "a"),
        local=LocalWindows(clock),
    )
    return limiter, clock


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the machine's Redis, emptied afterwards."""
    name = f"rstest-rl-{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{name}:*"):
        await client.delete(key)
    await client.aclose()


@contextlib.asynccontextmanager
async def limits_storage(prefix: str) -> AsyncIterator[RedisStorage]:
    """``limits``' own Redis storage under ``prefix``, on a pool we close (it has no close)."""
    pool = redis.ConnectionPool.from_url(REDIS_URL)
    options: dict[str, Any] = {"connection_pool": pool}
    try:
        yield RedisStorage(
            f"async+{REDIS_URL}", implementation="redispy", key_prefix=prefix, **options
        )
    finally:
        await pool.aclose()


async def keys_under(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*")]
    finally:
        await client.aclose()


_GRANULARITIES = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class TestNotation:
    """Limit lists parse to their items; anything else is refused naming the setting."""

    @given(
        st.lists(
            st.tuples(
                st.integers(1, 10**6),
                st.one_of(st.none(), st.integers(1, 99)),
                st.sampled_from(sorted(_GRANULARITIES)),
                st.sampled_from(["/", " per "]),
                st.booleans(),
            ),
            min_size=1,
            max_size=4,
        ),
        st.sampled_from([";", ",", "|", " ; "]),
    )
    def test_lists_round_trip(
        self, parts: list[tuple[int, int | None, str, str, bool]], separator: str
    ) -> None:
        text = separator.join(
            f"{amount}{per}{'' if n is None else n}{unit}{'s' if plural else ''}"
            for amount, n, unit, per, plural in parts
        )
        items = parse_limits(text, "RETAILSYNC_RATE_LIMIT_KEY")
        assert [(i.amount, i.get_expiry()) for i in items] == [
            (amount, (n or 1) * _GRANULARITIES[unit]) for amount, n, unit, _, _ in parts
        ]

    @pytest.mark.parametrize(
        "text", ["lots", "200", "200/fortnight", "0/second", "10/second;", "1/second 2/minute"]
    )
    @pytest.mark.parametrize("field", ["rate_limit_key", "rate_limit_address"])
    def test_bad_text_names_the_setting(self, text: str, field: str) -> None:
        name = f"RETAILSYNC_{field.upper()}"
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={name: text})
        assert caught.value.setting == name
        assert caught.value.value == text

    def test_a_flag_is_named_too(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings({"rate_limit_address": "5/sec0nd"}, environ={})
        assert caught.value.setting == "RETAILSYNC_RATE_LIMIT_ADDRESS (--rate-limit-address)"

    def test_the_url_must_be_redis(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={"RETAILSYNC_RATE_LIMIT_URL": "http://127.0.0.1:6379"})
        assert caught.value.setting == "RETAILSYNC_RATE_LIMIT_URL"

    async def test_no_limits_no_limiter(self) -> None:
        settings = load_settings({"rate_limit_url": REDIS_URL}, environ={})
        assert await RateLimiter.open(settings) is None


class TestArithmetic:
    """In process memory, with a clock of the test's: the exact wait, and the bounds."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(1, 20),
        st.sampled_from([1, 2, 60]),
        st.lists(st.floats(0.0, 1.5), min_size=1, max_size=120),
    )
    def test_refused_until_exactly_the_computed_wait(
        self, limit: int, window: int, gaps: list[float]
    ) -> None:
        """At the computed wait minus a hair a request is still refused (a refusal counts
        nowhere, so probing changes nothing), and just after it, admitted."""
        clock = FakeClock()
        local = LocalWindows(clock)
        name = "LIMITER/key/x"
        hair = window * 1e-6
        admitted: Tally[int] = Tally()
        for gap in gaps:
            clock.now += gap * window
            refusal = local.acquire([(name, limit, window)])
            if refusal is None:
                admitted[int(clock.now // window)] += 1
                continue
            _, previous, previous_ttl, current, current_ttl = refusal
            wait = seconds_until_admitted(
                limit, window, previous, previous_ttl, current, current_ttl
            )
            assert wait >= 0  # 0: refused exactly on the boundary, admitted just after
            start = clock.now
            if wait > 2 * hair:
                clock.now = start + wait - hair
                assert local.acquire([(name, limit, window)]) is not None
            clock.now = start + wait + hair
            assert local.acquire([(name, limit, window)]) is None
            admitted[int(clock.now // window)] += 1
        assert max(admitted.values()) <= limit  # never more than the limit in one window

    async def test_retry_after_in_whole_seconds(self) -> None:
        limiter, clock = local_limiter(key="3/minute;50/second")
        clock.now = 60 * 20_000 + 15.2  # 15.2 s into a minute
        for _ in range(3):
            assert await limiter.check(api_key=SECRET, address=None) is None
        refused = await limiter.check(api_key=SECRET, address=None)
        assert refused == RateLimited("key", "3/minute", 45)  # ceil(44.8)

    async def test_a_refused_request_counts_nowhere(self) -> None:
        limiter, clock = local_limiter(key="5/minute", address="2/minute")
        clock.now = 60 * 20_000.0
        verdicts = [await limiter.check(api_key=SECRET, address="10.0.0.1") for _ in range(3)]
        assert verdicts[:2] == [None, None]
        assert verdicts[2] is not None
        assert verdicts[2].scope == "address"
        # the refusal did not use the key's budget: 3 of 5 are left, from another address
        verdicts = [await limiter.check(api_key=SECRET, address=f"10.0.1.{n}") for n in range(4)]
        assert verdicts[:3] == [None, None, None]
        assert verdicts[3] is not None
        assert verdicts[3].scope == "key"

    async def test_ipv6_counts_by_64_and_mapped_ipv4_as_ipv4(self) -> None:
        limiter, _ = local_limiter(address="2/hour")
        assert await limiter.check(api_key=None, address="2001:db8:1:2::1") is None
        assert await limiter.check(api_key=None, address="2001:db8:1:2:ffff::9") is None
        assert await limiter.check(api_key=None, address="2001:db8:1:2::77") is not None
        assert await limiter.check(api_key=None, address="2001:db8:1:3::1") is None
        assert await limiter.check(api_key=None, address="192.0.2.7") is None
        assert await limiter.check(api_key=None, address="::ffff:192.0.2.7") is None
        assert await limiter.check(api_key=None, address="192.0.2.7") is not None

    async def test_a_scope_without_limits_or_identity_is_not_counted(self) -> None:
        limiter, _ = local_limiter(key="1/hour")
        for _ in range(5):
            assert await limiter.check(api_key=None, address="10.0.0.1") is None

    def test_idle_counters_are_dropped(self) -> None:
        clock = FakeClock()
        local = LocalWindows(clock)
        for n in range(1000):
            assert local.acquire([(f"id{n}", 5, 1), (f"id{n}-m", 5, 60)]) is None
        assert len(local) == 2000
        clock.now += 3
        local.acquire([("other", 5, 1)])
        assert len(local) == 1001  # the per-second counters died; the per-minute ones live
        clock.now += 180
        local.acquire([("other", 5, 1)])
        assert len(local) == 1


class TestShared:
    """On the machine's Redis, under a prefix of the test's own."""

    async def test_limits_per_key_and_address_with_retry_after(self, prefix: str) -> None:
        refused_before = sample("retailsync_rate_limited_total", scope="key")
        limiter = RateLimiter(
            key_limits=parse_limits("3/minute", "k"),
            address_limits=parse_limits("4/hour", "a"),
            url=REDIS_URL,
            prefix=prefix,
        )
        try:
            for _ in range(3):
                assert await limiter.check(api_key=SECRET, address="10.1.0.1") is None
            refused = await limiter.check(api_key=SECRET, address="10.1.0.1")
            assert refused is not None
            assert (refused.scope, refused.limit) == ("key", "3/minute")
            assert 58 <= refused.retry_after_s <= 60
            assert sample("retailsync_rate_limited_total", scope="key") == refused_before + 1
            # another key has its own budget; the address had 3 of its 4
            assert await limiter.check(api_key=b"another-secret", address="10.1.0.1") is None
            refused = await limiter.check(api_key=b"a-third-secret", address="10.1.0.1")
            assert refused is not None
            assert (refused.scope, refused.limit) == ("address", "4/hour")
            assert 3598 <= refused.retry_after_s <= 3600
            assert await limiter.check(api_key=None, address="10.1.0.2") is None
        finally:
            await limiter.close()
        names = await keys_under(REDIS_URL, prefix)
        assert names
        assert all(name.startswith(f"{prefix}:{{LIMITER/".encode()) for name in names)
        assert not any(SECRET in name or SECRET.hex().encode() in name for name in names)

    async def test_limits_reads_our_counters(self, prefix: str) -> None:
        """The library's own strategy, on its own Redis storage, sees what we counted."""
        item = parse_limits("5/minute", "k")[0]
        limiter = RateLimiter(key_limits=[item], address_limits=[], url=REDIS_URL, prefix=prefix)
        for _ in range(3):
            assert await limiter.check(api_key=SECRET, address=None) is None
        await limiter.close()
        async with limits_storage(prefix) as storage:
            theirs = SlidingWindowCounterRateLimiter(storage)
            stats = await theirs.get_window_stats(item, "key", key_identity(SECRET))
            assert stats.remaining == 2
            assert await theirs.hit(item, "key", key_identity(SECRET))
            assert await theirs.hit(item, "key", key_identity(SECRET))
            assert not await theirs.hit(item, "key", key_identity(SECRET))

    async def test_retry_after_is_the_exact_wait_on_redis(self, prefix: str) -> None:
        """With the previous window decaying: refused just before the computed wait, admitted
        just after, by a second limiter (another worker) that remembers nothing."""
        item: RateLimitItem = parse_limits("4/4second", "k")[0]
        first = RateLimiter(key_limits=[item], address_limits=[], url=REDIS_URL, prefix=prefix)
        other = RateLimiter(key_limits=[item], address_limits=[], url=REDIS_URL, prefix=prefix)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(first.close)
            stack.push_async_callback(other.close)
            storage = await stack.enter_async_context(limits_storage(prefix))
            for _ in range(4):
                assert await first.check(api_key=SECRET, address=None) is None
            await asyncio.sleep(4.2)  # the next window: the 4 decay from weight 0.95
            assert await first.check(api_key=SECRET, address=None) is None
            assert await first.check(api_key=SECRET, address=None) is not None
            window = await storage.get_sliding_window(item.key_for("key", key_identity(SECRET)), 4)
            wait = seconds_until_admitted(4, 4, *window)
            assert 0.5 < wait < 1.0  # floor(4 * ttl / 4) + 1 < 4 once ttl < 3
            await asyncio.sleep(wait - 0.3)
            assert await other.check(api_key=SECRET, address=None) is not None
            await asyncio.sleep(0.5)
            assert await other.check(api_key=SECRET, address=None) is None

    def test_two_processes_share_one_budget(self, prefix: str) -> None:
        start_at = time.time() + 3.0  # both are up and connected by then
        script = (
            "import asyncio, sys, time\n"
            "from retailsync.config import load_settings\n"
            "from retailsync.traffic.ratelimit import RateLimiter\n"
            "async def main(prefix, start_at):\n"
            "    s = load_settings({'rate_limit_key': '60/minute', 'rate_limit_url': sys.argv[3]},"
            " environ={})\n"
            "    limiter = await RateLimiter.open(s, prefix=prefix)\n"
            "    await asyncio.sleep(start_at - time.time())\n"
            "    admitted = 0\n"
            "    for _ in range(100):\n"
            "        admitted += await limiter.check(api_key=b'shared', address=None) is None\n"
            "    print(admitted, limiter.shared_up)\n"
            "    await limiter.close()\n"
            "asyncio.run(main(sys.argv[1], float(sys.argv[2])))\n"
        )
        args = [sys.executable, "-c", script, prefix, str(start_at), REDIS_URL]
        workers = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [worker.communicate(timeout=60)[0].split() for worker in workers]
        assert all(worker.returncode == 0 for worker in workers)
        assert all(shared_up == "True" for _, shared_up in outputs)
        assert sum(int(admitted) for admitted, _ in outputs) == 60  # not 2 x 60

    async def test_an_outage_falls_back_to_local_and_recovers(
        self, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="retailsync.traffic.ratelimit")
        fallbacks = sample("retailsync_rate_limit_fallbacks_total")
        settings = load_settings(
            {"rate_limit_key": "3/minute", "rate_limit_url": private_redis.url}, environ={}
        )
        limiter = await RateLimiter.open(settings, retry_s=0.2)  # 1 s by default
        assert limiter is not None
        assert limiter.shared_up
        try:
            assert await limiter.check(api_key=SECRET, address=None) is None
            assert await keys_under(private_redis.url, "retailsync:rl")

            private_redis.kill()
            began = time.monotonic()
            verdicts = [await limiter.check(api_key=SECRET, address=None) for _ in range(5)]
            assert time.monotonic() - began < 1.0
            assert verdicts[:3] == [None, None, None]  # a local budget of its own
            assert isinstance(verdicts[3], RateLimited)
            assert verdicts[3].scope == "key"
            assert not limiter.shared_up
            assert sample("retailsync_rate_limit_fallbacks_total") == fallbacks + 5
            outage_logs = [r for r in caplog.records if "on its own" in r.getMessage()]
            assert len(outage_logs) == 1

            private_redis.start()  # empty: what the outage's requests counted is not there
            await asyncio.sleep(0.3)
            verdicts = [await limiter.check(api_key=SECRET, address=None) for _ in range(4)]
            assert verdicts[:3] == [None, None, None]  # Redis's budget, not the spent local one
            assert isinstance(verdicts[3], RateLimited)
            assert limiter.shared_up
            assert sample("retailsync_rate_limit_fallbacks_total") == fallbacks + 5
            assert await keys_under(private_redis.url, "retailsync:rl")
            assert any("answers again" in r.getMessage() for r in caplog.records)
        finally:
            await limiter.close()

    async def test_redis_down_at_start_is_no_error(self, private_redis: RedisServer) -> None:
        private_redis.kill()
        settings = load_settings(
            {"rate_limit_address": "2/minute", "rate_limit_url": private_redis.url}, environ={}
        )
        limiter = await RateLimiter.open(settings)
        assert limiter is not None
        assert not limiter.shared_up
        try:
            verdicts = [await limiter.check(api_key=None, address="10.2.0.1") for _ in range(3)]
            assert verdicts[:2] == [None, None]
            assert verdicts[2] is not None
            assert verdicts[2].scope == "address"
        finally:
            await limiter.close()
