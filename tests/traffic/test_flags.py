"""Feature flags: rollout by a stable hash of the customer, a kill switch, changes applied on
every worker without restart, and the admin API that manages them."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.models import CUSTOMER_PATTERN
from retailsync.traffic.flags import BUCKETS, FLAG_PATTERN, FlagStore, Rule, bucket, threshold
from tests.support import ADMIN, WAREHOUSE, WEB, Api

flag_names = st.from_regex(FLAG_PATTERN, fullmatch=True)
customers = st.from_regex(CUSTOMER_PATTERN, fullmatch=True)
# Percentages as the API takes them: 0 to 100 in hundredths.
percents = st.integers(0, BUCKETS).map(lambda n: Decimal(n) / 100)


def _share(rule: Rule, flag: str, population: list[str]) -> float:
    return sum(rule.on_for(flag, c) for c in population) / len(population)


class TestRollout:
    """Who a flag is on for: stable, monotone in the percentage, and the right share."""

    def test_bucket_is_pinned(self) -> None:
        """The hash is part of the contract: changing it would reshuffle every rollout."""
        assert bucket("checkout.one-click", "c-1") == 909
        assert bucket("checkout.one-click", "c-2") == 6323
        assert bucket("search.v2", "c-1") == 9486

    @given(flag=flag_names, customer=customers)
    def test_bucket_in_range_and_stable(self, flag: str, customer: str) -> None:
        first = bucket(flag, customer)
        assert 0 <= first < BUCKETS
        assert bucket(flag, customer) == first

    @given(flag=flag_names, customer=customers, low=percents, high=percents)
    def test_raising_the_percentage_only_adds_customers(
        self, flag: str, customer: str, low: Decimal, high: Decimal
    ) -> None:
        low, high = min(low, high), max(low, high)
        if Rule.of(True, low).on_for(flag, customer):
            assert Rule.of(True, high).on_for(flag, customer)

    @given(flag=flag_names, customer=customers, percent=percents)
    def test_on_exactly_below_the_threshold(
        self, flag: str, customer: str, percent: Decimal
    ) -> None:
        rule = Rule.of(True, percent)
        assert rule.threshold == int(percent * 100)
        assert rule.on_for(flag, customer) is (bucket(flag, customer) < rule.threshold)
        assert rule.on_for(flag, customer) is Rule.of(True, float(percent)).on_for(flag, customer)

    @given(flag=flag_names, customer=customers, percent=percents)
    def test_kill_switch_is_off_for_everyone(
        self, flag: str, customer: str, percent: Decimal
    ) -> None:
        assert not Rule.of(False, percent).on_for(flag, customer)
        assert not Rule.of(False, percent).on_for(flag, None)

    @given(flag=flag_names, customer=customers)
    def test_zero_and_hundred_are_definite(self, flag: str, customer: str) -> None:
        assert Rule.of(True, 100).on_for(flag, customer)
        assert not Rule.of(True, 0).on_for(flag, customer)

    @given(flag=flag_names, percent=percents)
    def test_without_a_customer_only_hundred_is_on(self, flag: str, percent: Decimal) -> None:
        assert Rule.of(True, percent).on_for(flag, None) is (percent == 100)

    @pytest.mark.parametrize("percent", [0.01, 1, 10, 33.33, 50, 90, 99.5])
    def test_observed_share_matches_the_percentage(self, percent: float) -> None:
        population = [uuid.uuid4().hex for _ in range(10_000)]
        p = percent / 100
        tolerance = 5 * math.sqrt(p * (1 - p) / len(population)) + 1 / len(population)
        assert abs(_share(Rule.of(True, percent), "rollout.share", population) - p) <= tolerance

    def test_each_flag_draws_its_own_sample(self) -> None:
        """Two flags at 50% overlap on about a quarter of customers, not on the same half."""
        population = [uuid.uuid4().hex for _ in range(10_000)]
        half = Rule.of(True, 50)
        both = sum(half.on_for("flag.a", c) and half.on_for("flag.b", c) for c in population)
        assert abs(both / len(population) - 0.25) <= 0.025

    def test_threshold_takes_hundredths(self) -> None:
        assert [threshold(Decimal("12.5")), threshold(33.33), threshold(100)] == [
            1250,
            3333,
            10_000,
        ]


async def _within(seconds: float, condition: Callable[[], bool]) -> float:
    """Seconds until ``condition`` held; fails after ``seconds``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def _put(db: Database, name: str, enabled: bool, percent: str) -> None:
    await db.execute(
        "INSERT INTO feature_flags (name, enabled, rollout_percent) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET enabled = $2, rollout_percent = $3",
        name,
        enabled,
        Decimal(percent),
    )


@pytest.fixture
async def worker_store(db: Database, database_dsn: str) -> AsyncIterator[Callable[..., Any]]:
    """Opens FlagStores as separate workers would: each with a pool of its own."""
    opened: list[tuple[FlagStore, Database]] = []

    async def open_store(refresh_interval: float = 3600.0) -> FlagStore:
        pool = await Database.connect(
            ServerTarget(dsn=database_dsn, pool_min=1, pool_max=4, command_timeout=10.0)
        )
        store = FlagStore(pool, refresh_interval=refresh_interval)
        await store.start()
        opened.append((store, pool))
        return store

    yield open_store
    for store, pool in opened:
        await store.close()
        await pool.close()


Opener = Callable[..., Awaitable[FlagStore]]
_LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query = 'LISTEN \"retailsync_flags\"'"
)


class TestFlagStore:
    """Each worker's in-memory copy follows the table without a restart."""

    async def test_loads_at_start_and_evaluates_in_memory(
        self, db: Database, worker_store: Opener
    ) -> None:
        await _put(db, "search.v2", True, "25.50")
        store = await worker_store()
        assert store.flags()["search.v2"].rollout_percent == 25.5
        people = [f"c-{i}" for i in range(200)]
        assert [store.enabled("search.v2", c) for c in people] == [
            bucket("search.v2", c) < 2550 for c in people
        ]
        assert not store.enabled("no.such.flag", "c-1")
        assert store.enabled("no.such.flag", "c-1", default=True)

    async def test_another_worker_sees_a_change_within_a_second(
        self, db: Database, worker_store: Opener
    ) -> None:
        """Periodic reload set to an hour: only the NOTIFY can bring the change in time."""
        first, second = await worker_store(), await worker_store()
        assert first.listening
        assert second.listening
        await _put(db, "checkout.new", True, "100")
        await _within(1.0, lambda: first.enabled("checkout.new") and second.enabled("checkout.new"))
        await _put(db, "checkout.new", True, "0")
        await _within(1.0, lambda: not second.enabled("checkout.new", "c-1"))
        await db.execute("DELETE FROM feature_flags WHERE name = 'checkout.new'")
        await _within(1.0, lambda: "checkout.new" not in second.flags())
        assert second.enabled("checkout.new", "c-1", default=True)

    async def test_kill_switch_turns_everyone_off_within_a_second(
        self, db: Database, worker_store: Opener
    ) -> None:
        people = [uuid.uuid4().hex for _ in range(1000)]
        await _put(db, "drop.queue", True, "100")
        stores = [await worker_store(), await worker_store()]
        assert all(s.enabled("drop.queue", c) for s in stores for c in people)
        await db.execute("UPDATE feature_flags SET enabled = false WHERE name = 'drop.queue'")
        took = await _within(
            1.0, lambda: not any(s.enabled("drop.queue", c) for s in stores for c in people)
        )
        assert took < 1.0
        assert all(s.flags()["drop.queue"].rollout_percent == 100 for s in stores)  # kept

    async def test_lost_listen_connection_is_taken_again(
        self, db: Database, worker_store: Opener
    ) -> None:
        """The LISTEN backend is killed: the store listens again at once (no periodic reload
        here), and the next change still arrives by NOTIFY."""
        store = await worker_store()
        lost = {row["pid"] for row in await db.fetch(_LISTENERS)}
        assert len(lost) == 1
        await db.execute("SELECT pg_terminate_backend($1)", next(iter(lost)))
        deadline = time.monotonic() + 2.0
        while not ({row["pid"] for row in await db.fetch(_LISTENERS)} - lost and store.listening):
            assert time.monotonic() < deadline, "did not LISTEN again"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the reload that follows the new LISTEN is over
        await _put(db, "after.loss", True, "100")
        await _within(1.0, lambda: store.enabled("after.loss"))

    async def test_periodic_reload_catches_a_change_without_notify(
        self, db: Database, worker_store: Opener
    ) -> None:
        """Triggers off (replica mode) for the writer: no NOTIFY, the periodic reload finds it;
        a store without one (an hour) does not, so the NOTIFY is what the others rely on."""
        polling, waiting = await worker_store(refresh_interval=0.3), await worker_store()
        async with db.transaction() as conn:
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "INSERT INTO feature_flags (name, enabled, rollout_percent) "
                "VALUES ('quiet', true, 100)"
            )
        await _within(1.5, lambda: polling.enabled("quiet"))
        assert not waiting.enabled("quiet")

    async def test_refresh_interval_must_be_positive(self, db: Database) -> None:
        with pytest.raises(ValueError, match="refresh_interval"):
            FlagStore(db, refresh_interval=0)


def _flag(percent: Any = 12.5, enabled: Any = True, **extra: Any) -> dict[str, Any]:
    return {"enabled": enabled, "rollout_percent": percent, **extra}


async def _snapshot(api: Api) -> Any:
    return await api.db.fetchval("SELECT (count(*), sum(version)) FROM feature_flags")


class TestAdminApi:
    """Managing flags: versions, conditional writes, auth, and 404."""

    async def test_put_get_list_delete(self, api: Api) -> None:
        created = await api.call("PUT", "/v1/admin/flags/search.v2", json=_flag(description="d"))
        assert created.status_code == 201
        assert created.headers["etag"] == '"1"'
        body = created.json()
        assert body["rollout_percent"] == 12.5
        assert body["enabled"]
        assert body["description"] == "d"
        got = await api.ok("GET", "/v1/admin/flags/search.v2")
        assert got == body
        await api.ok("PUT", "/v1/admin/flags/a.first", json=_flag(100))
        listed = await api.ok("GET", "/v1/admin/flags")
        assert [f["name"] for f in listed] == ["a.first", "search.v2"]
        deleted = await api.ok("DELETE", "/v1/admin/flags/search.v2")
        assert deleted["name"] == "search.v2"
        assert (await api.call("GET", "/v1/admin/flags/search.v2")).status_code == 404
        assert (await api.call("DELETE", "/v1/admin/flags/search.v2")).status_code == 404

    async def test_conditional_writes(self, api: Api) -> None:
        path = "/v1/admin/flags/cond"
        await api.ok("PUT", path, json=_flag(10))
        stale = await api.call("PUT", path, json=_flag(90), headers={"If-Match": '"7"'})
        assert stale.status_code == 412
        assert stale.headers["etag"] == '"1"'
        again = await api.call("PUT", path, json=_flag(90), headers={"If-None-Match": "*"})
        assert again.status_code == 412
        assert (await api.ok("GET", path))["rollout_percent"] == 10
        updated = await api.call("PUT", path, json=_flag(90), headers={"If-Match": '"1"'})
        assert updated.status_code == 200
        assert updated.json()["version"] == 2
        refused = await api.call("DELETE", path, headers={"If-Match": '"1"'})
        assert refused.status_code == 412
        assert (await api.call("DELETE", path, headers={"If-Match": '"2"'})).status_code == 200

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/admin/flags"),
            ("GET", "/v1/admin/flags/x"),
            ("PUT", "/v1/admin/flags/x"),
            ("DELETE", "/v1/admin/flags/x"),
        ],
    )
    async def test_only_the_flags_scope_manages_flags(
        self, api: Api, method: str, path: str
    ) -> None:
        await api.ok("PUT", "/v1/admin/flags/x", json=_flag())
        before = await _snapshot(api)
        for channel in (WEB, WAREHOUSE):
            answer = await api.call(method, path, as_=channel, json=_flag(100))
            assert answer.status_code == 403
            assert answer.json()["required_scope"] == "flags"
        anonymous = await api.client.request(method, path, json=_flag(100))
        assert anonymous.status_code == 401
        assert await _snapshot(api) == before

    @pytest.mark.parametrize(
        ("path", "body", "status"),
        [
            ("/v1/admin/flags/Upper", _flag(), 422),
            ("/v1/admin/flags/9starts-with-digit", _flag(), 422),
            ("/v1/admin/flags/" + "x" * 65, _flag(), 422),
            ("/v1/admin/flags/ok", _flag(100.01), 422),
            ("/v1/admin/flags/ok", _flag(-1), 422),
            ("/v1/admin/flags/ok", _flag(33.333), 422),
            ("/v1/admin/flags/ok", _flag(1e-5), 422),
            ("/v1/admin/flags/ok", _flag("50"), 422),
            ("/v1/admin/flags/ok", _flag(True), 422),
            ("/v1/admin/flags/ok", {"rollout_percent": 5}, 422),
            ("/v1/admin/flags/ok", _flag(enabled="yes"), 422),
            ("/v1/admin/flags/ok", _flag(owner="me"), 422),
            ("/v1/admin/flags/ok", _flag(description="d" * 501), 422),
            ("/v1/admin/flags/ok", [1], 422),
        ],
    )
    async def test_bad_input_is_refused_and_writes_nothing(
        self, api: Api, path: str, body: Any, status: int
    ) -> None:
        before = await _snapshot(api)
        answer = await api.call("PUT", path, json=body)
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "urn:retailsync:problem:validation-error"
        assert await _snapshot(api) == before

    async def test_malformed_json_and_bad_if_match(self, api: Api) -> None:
        path = "/v1/admin/flags/ok"
        broken = await api.call(
            "PUT", path, content=b"{", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["type"] == "urn:retailsync:problem:malformed-json"
        tag = await api.call("PUT", path, json=_flag(), headers={"If-Match": "seven"})
        assert tag.status_code == 400
        assert tag.json()["field"] == "If-Match"
        assert await api.count("feature_flags") == 0

    async def test_rollout_gauge(self, api: Api) -> None:
        await api.ok("PUT", "/v1/admin/flags/gauge.flag", json=_flag(12.5))
        page = (await api.client.get("/metrics")).text
        assert 'retailsync_flag_rollout_percent{flag="gauge.flag"} 12.5' in page
        assert 'retailsync_flag_enabled{flag="gauge.flag"} 1.0' in page
        await api.ok("PUT", "/v1/admin/flags/gauge.flag", json=_flag(12.5, enabled=False))
        assert (
            'retailsync_flag_enabled{flag="gauge.flag"} 0.0'
            in (await api.client.get("/metrics")).text
        )


class TestClientApi:
    """Channels ask whether a flag is on for a customer; the answer follows every change."""

    async def _on(self, api: Api, name: str, customer: str | None = None) -> bool:
        query = "" if customer is None else f"?customer={customer}"
        answer = await api.ok("GET", f"/v1/flags/{name}{query}", as_=WEB)
        assert answer["name"] == name
        return bool(answer["enabled"])

    async def test_answers_by_customer_bucket(self, api: Api) -> None:
        await api.ok("PUT", "/v1/admin/flags/one-click", json=_flag(40))
        people = [f"c-{i}" for i in range(40)]
        assert [await self._on(api, "one-click", c) for c in people] == [
            bucket("one-click", c) < 4000 for c in people
        ]
        assert not await self._on(api, "one-click")  # no customer: only 100% is on
        assert not await self._on(api, "unknown.flag", "c-1")
        await api.ok("PUT", "/v1/admin/flags/one-click", json=_flag(100))
        assert await self._on(api, "one-click")  # applied by this worker before answering
        await api.ok("PUT", "/v1/admin/flags/one-click", json=_flag(100, enabled=False))
        assert not any([await self._on(api, "one-click", c) for c in people])

    async def test_a_change_made_elsewhere_applies_without_restart(self, api: Api) -> None:
        """Written by another worker (or by hand in psql): the trigger's NOTIFY brings it."""
        name = f"elsewhere.{secrets.token_hex(3)}"
        await _put(api.db, name, True, "100")
        await self._until(api, name, on=True)
        await api.db.execute("UPDATE feature_flags SET enabled = false WHERE name = $1", name)
        await self._until(api, name, on=False)

    async def _until(self, api: Api, name: str, *, on: bool) -> None:
        deadline = time.monotonic() + 1.0
        while await self._on(api, name, "c-1") is not on:
            assert time.monotonic() < deadline, f"{name} not {'on' if on else 'off'} within 1 s"
            await asyncio.sleep(0.005)

    async def test_bad_customer_or_name(self, api: Api) -> None:
        for path in (
            "/v1/flags/x?customer=-bad",
            "/v1/flags/x?customer=" + "c" * 65,
            "/v1/flags/X",
        ):
            answer = await api.call("GET", path, as_=WEB)
            assert answer.status_code == 422, path
        assert (await api.client.get("/v1/flags/x")).status_code == 401
        assert (await api.call("GET", "/v1/flags/x", as_=ADMIN)).status_code == 200
