"""The waiting room of sale events, against the real PostgreSQL: direct admission, queueing,
FIFO order across two workers, restarts, forged and replayed tokens, sell-out, configuration,
and what browsers and apps are told."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send

from retailsync.bench.fifo import Visitor, overtakers, queue_through
from retailsync.config import ServerTarget, Settings, load_settings
from retailsync.db.database import Database
from retailsync.errors import ConfigError
from retailsync.traffic.waiting_page import WaitingRoomMiddleware
from retailsync.traffic.waiting_room import EventState, WaitingRoom
from retailsync.traffic.waiting_tokens import QueueToken, TokenRefused, TokenSigner

SALE = "/v1/sale/drop"
OTHER_SALE = "/v1/sale/other"
SKUS = ("DROP-1", "DROP-2")
PASS, TOKEN, SESSION = "Retailsync-Queue-Pass", "Retailsync-Queue-Token", "Retailsync-Session"
JSON = {"Accept": "application/json"}


def sale(rate: float, burst: float | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"name": "drop", "paths": [SALE, "/v1/sale/drop/*"]}
    event |= {"skus": list(SKUS), "rate_per_s": rate, **extra}
    if burst is not None:
        event["burst"] = burst
    return event


def settings_for(dsn: str, *events: dict[str, Any], secret: str = "") -> Settings:
    return load_settings(
        {"db_url": dsn, "waiting_rooms": json.dumps(list(events)), "waiting_room_secret": secret},
        environ={},
    )


async def shop(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the gate: answers 200 to whatever gets through."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"through"})


def client_of(room: WaitingRoom, *, browser: bool = False) -> httpx.AsyncClient:
    """A client of the gated shop: an app (headers only; it keeps no cookies, so one client
    can speak for many sessions) or a browser (cookies only)."""
    transport = httpx.ASGITransport(app=WaitingRoomMiddleware(shop, room.gate))
    client = httpx.AsyncClient(transport=transport, base_url="http://shop.test")

    async def forget_cookies(_: httpx.Response) -> None:
        client.cookies.clear()

    if not browser:
        client.event_hooks["response"] = [forget_cookies]
    return client


def new_session() -> str:
    return secrets.token_urlsafe(18)


def admitted_count() -> float:
    value = REGISTRY.get_sample_value("retailsync_waiting_room_admitted_total", {"event": "drop"})
    return value or 0.0


async def event_row(db: Database) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT issued, admitted, sold_out, "
        "(SELECT count(*) FROM waiting_room_admissions) AS admissions "
        "FROM waiting_room_events WHERE event = 'drop'"
    )
    assert row is not None
    return dict(row)


@pytest.fixture
async def stocked(db: Database) -> Database:
    """The database with the sale's skus in stock at one warehouse."""
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO regions (id) VALUES ('eu')")
        await conn.execute("INSERT INTO locations (id, region, kind) VALUES ('W1', 'eu', 'store')")
        for sku in SKUS:
            await conn.execute(
                "INSERT INTO products (sku, title, category) VALUES ($1, 'drop', 'sale')", sku
            )
            await conn.execute(
                "INSERT INTO stock (sku, location, on_hand) VALUES ($1, 'W1', 50)", sku
            )
    return db


OpenRoom = Callable[..., Awaitable[WaitingRoom]]


@pytest.fixture
async def open_room(stocked: Database) -> AsyncIterator[OpenRoom]:
    """Opens waiting rooms (each one a worker) and closes them after the test."""
    rooms: list[WaitingRoom] = []

    async def opener(settings: Settings, db: Database = stocked) -> WaitingRoom:
        room = await WaitingRoom.open(settings, db)
        assert room is not None
        rooms.append(room)
        return room

    yield opener
    for room in rooms:
        await room.close()


@pytest.fixture
async def second_pool(database_dsn: str) -> AsyncIterator[Database]:
    """A pool of its own, as a second worker process would have. Tests name it before
    ``open_room``, so that the rooms on it are closed before it is."""
    target = ServerTarget(dsn=database_dsn, pool_min=1, pool_max=20, command_timeout=30.0)
    database = await Database.connect(target)
    yield database
    await database.close()


async def queue_up(client: httpx.AsyncClient, session: str) -> dict[str, Any]:
    """One arrival that must be queued: the waiting answer, with its token."""
    response = await client.get(SALE, headers={**JSON, SESSION: session})
    assert response.status_code == 202, response.text
    return {**response.json(), "token": response.headers[TOKEN]}


async def wait_for_turn(client: httpx.AsyncClient, session: str, token: str) -> httpx.Response:
    for _ in range(200):
        response = await client.get(SALE, headers={**JSON, SESSION: session, TOKEN: token})
        if response.status_code != 202:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError("never admitted")


class TestAdmission:
    """Under the rate sessions go straight in; over it they queue, and are let in in turn."""

    async def test_under_the_rate_every_session_goes_straight_in(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=20, burst=1)))
        admitted_before = admitted_count()
        async with client_of(room) as client:
            for _ in range(5):
                session = new_session()
                response = await client.get(SALE, headers={SESSION: session})
                assert response.status_code == 200
                assert response.text == "through"
                grant = response.headers[PASS]
                again = await client.get(
                    "/v1/sale/drop/page-2", headers={SESSION: session, PASS: grant}
                )
                assert again.status_code == 200
                await asyncio.sleep(0.1)  # 10 a second: half the rate
        state = await event_row(stocked)
        assert state == {"issued": 5, "admitted": 5, "sold_out": False, "admissions": 5}
        assert admitted_count() - admitted_before == 5

    async def test_over_the_rate_sessions_queue_in_arrival_order(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=2, burst=1)))
        sessions = [new_session() for _ in range(6)]
        async with client_of(room) as client:
            answers = await asyncio.gather(
                *(client.get(SALE, headers={**JSON, SESSION: s}) for s in sessions)
            )
            assert sorted(a.status_code for a in answers) == [200] + [202] * 5
            waiting = sorted(
                (a.json() for a in answers if a.status_code == 202), key=lambda w: w["position"]
            )
            assert [w["position"] for w in waiting] == [2, 3, 4, 5, 6]
            assert [w["ahead"] for w in waiting] == [0, 1, 2, 3, 4]
            waits = [w["estimated_wait_s"] for w in waiting]
            assert waits == sorted(waits)
            assert waits[-1] >= 2
            assert {w["status"] for w in waiting} == {"waiting"}
            for answer in answers:
                if answer.status_code == 202:
                    assert int(answer.headers["Retry-After"]) >= 1
                    assert answer.headers["Cache-Control"] == "no-store"
            await room.tick()
            length = REGISTRY.get_sample_value("retailsync_waiting_room_length", {"event": "drop"})
            state = room.state("drop")
            assert length == state.issued - state.admitted
            assert length >= 4  # five queued, one of them perhaps let in by now (2 a second)
            first = next(a for a in answers if a.status_code == 202 and a.json()["position"] == 2)
            session = sessions[answers.index(first)]
            response = await wait_for_turn(client, session, first.headers[TOKEN])
            assert response.status_code == 200
            assert PASS in response.headers

    async def test_unguarded_paths_never_touch_the_database(
        self, database_dsn: str, stocked: Database
    ) -> None:
        """The gate runs for every request: for a path no event guards it answers None even
        with its pool closed; a guarded one needs the database (503 without it)."""
        private = await Database.connect(
            ServerTarget(dsn=database_dsn, pool_min=1, pool_max=2, command_timeout=5.0)
        )
        room = await WaitingRoom.open(settings_for(database_dsn, sale(rate=1, burst=1)), private)
        assert room is not None
        await room.close()
        await private.close()
        scope = {"type": "http", "path": "/v1/products", "headers": [], "scheme": "http"}
        started = time.perf_counter()
        for _ in range(1000):
            assert await room.gate(scope) is None
        assert (time.perf_counter() - started) / 1000 < 0.0001
        refused = await room.gate({**scope, "path": SALE})
        assert refused is not None
        assert refused.status_code == 503

    async def test_outside_its_window_an_event_does_not_gate(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        later = sale(rate=1, burst=1, starts_at="2999-01-01T00:00:00Z")
        room = await open_room(settings_for(database_dsn, later))
        async with client_of(room) as client:
            for _ in range(5):
                assert (await client.get(SALE)).status_code == 200
        assert (await event_row(stocked))["issued"] == 0


def overtakers_by_definition(visitors: list[Visitor]) -> int:
    """``overtakers`` as its docstring says it, pair by pair: the reference it is checked on."""
    count = 0
    for b in visitors:
        if any(
            a.arrived[1] < b.arrived[0] and any(t > b.let_in for t in a.waiting_asked)
            for a in visitors
        ):
            count += 1
    return count


times = st.integers(0, 40).map(lambda t: t / 10)


@st.composite
def visitor_histories(draw: st.DrawFn) -> list[Visitor]:
    visitors = []
    for n in range(draw(st.integers(0, 12))):
        sent = draw(times)
        answered = sent + draw(times)
        waits = sorted(answered + w for w in draw(st.lists(times, max_size=3)))
        let_in = max([answered, *waits]) + draw(times)
        visitors.append(Visitor(str(n), (sent, answered), waiting_asked=waits, let_in=let_in))
    return visitors


MARK_READ = {"issued": 200, "admitted": 10, "credit": 0.0, "sold_out": False, "outflow": None}


class TestLocalBound:
    """A worker answers "not yet" without asking PostgreSQL only while the mark surely has not
    reached the position: the mark moves at most the rate a second, counted from when the
    query that read it was sent (not when its answer came back: it may come back late)."""

    def test_the_bound_counts_from_when_the_query_was_sent(self) -> None:
        state = EventState()
        state.take(MARK_READ, sent_at=time.monotonic() - 1.0)  # answered a second late
        # rate 60: the mark may have moved 60 positions since it was read, so 70 may be in.
        assert state.may_have_come(70, rate=60.0)
        assert not state.may_have_come(72, rate=60.0)

    def test_an_older_mark_is_not_taken(self) -> None:
        state = EventState()
        state.take(MARK_READ, sent_at=time.monotonic())
        state.take({**MARK_READ, "admitted": 5}, sent_at=time.monotonic())  # crossed answers
        assert state.admitted == 10


class TestFifoAcrossWorkers:
    """Two workers (rooms with pools of their own) share one queue, admitted in order."""

    def test_the_checker_sees_an_overtaking_and_only_that(self) -> None:
        a = Visitor("a", arrived=(0.0, 0.1), waiting_asked=[0.5, 1.2], let_in=1.3)
        b = Visitor("b", arrived=(0.2, 0.3), let_in=1.0)  # in while a was told to wait
        c = Visitor("c", arrived=(0.05, 0.4), let_in=1.1)  # arrived with a: no order
        assert overtakers([a, b, c]) == 1
        a.waiting_asked = [0.5, 0.9]
        assert overtakers([a, b, c]) == 0

    @given(visitor_histories())
    def test_the_checker_counts_as_its_definition(self, visitors: list[Visitor]) -> None:
        assert overtakers(visitors) == overtakers_by_definition(visitors)

    async def test_many_concurrent_sessions_are_admitted_fifo(
        self, second_pool: Database, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        config = settings_for(database_dsn, sale(rate=60, burst=1))
        rooms = [await open_room(config), await open_room(config, second_pool)]
        clients = [client_of(room) for room in rooms]
        visitors = [Visitor(new_session()) for _ in range(240)]
        await queue_through(clients, SALE, visitors, wave=12, seed=7, timeout_s=60)
        queued = [v for v in visitors if v.position]
        assert len(queued) > 150  # the arrivals outran the rate
        positions = [v.position for v in queued]
        assert len(set(positions)) == len(positions)
        # Positions follow real-time arrival order: no later arrival holds an earlier place.
        ordered = sorted(queued, key=lambda v: v.arrived[1])
        for a, b in itertools.pairwise(ordered):
            if a.arrived[1] < b.arrived[0]:
                assert a.position < b.position
        drained_s = max(v.let_in for v in queued) - min(v.arrived[0] for v in queued)
        for client in clients:
            await client.aclose()

        assert overtakers(visitors) <= len(visitors) * 0.001
        assert drained_s >= (len(queued) - 1) / 60 * 0.95  # let in no faster than the rate
        state = await event_row(stocked)
        assert state["admissions"] == len(visitors)  # each one exactly once, on either worker
        await rooms[0].tick()
        outflow = rooms[0].state("drop").outflow
        assert 30 <= outflow <= 75  # measured: about the rate while the queue drained
        gauge = REGISTRY.get_sample_value(
            "retailsync_waiting_room_outflow_per_second", {"event": "drop"}
        )
        assert gauge == pytest.approx(outflow)

    async def test_a_token_from_one_worker_is_redeemed_on_the_other(
        self, second_pool: Database, open_room: OpenRoom, database_dsn: str
    ) -> None:
        config = settings_for(database_dsn, sale(rate=5, burst=1))
        first, second = await open_room(config), await open_room(config, second_pool)
        async with client_of(first) as one, client_of(second) as two:
            assert (await one.get(SALE, headers={SESSION: new_session()})).status_code == 200
            session_a, session_b = new_session(), new_session()
            a = await queue_up(one, session_a)
            b = await queue_up(two, session_b)
            assert (a["position"], b["position"]) == (2, 3)  # one sequence for both workers
            assert (await wait_for_turn(two, session_a, a["token"])).status_code == 200
            assert (await wait_for_turn(one, session_b, b["token"])).status_code == 200

    async def test_a_token_survives_a_restart(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        config = settings_for(database_dsn, sale(rate=4, burst=1))
        before = await open_room(config)
        async with client_of(before) as client:
            await client.get(SALE, headers={SESSION: new_session()})
            session = new_session()
            waiting = await queue_up(client, session)
        await before.close()
        after = await open_room(config)  # a new process: key and queue read from PostgreSQL
        async with client_of(after) as client:
            response = await wait_for_turn(client, session, waiting["token"])
        assert response.status_code == 200
        assert await stocked.fetchval("SELECT count(*) FROM waiting_room_secret") == 1


def tampered(token: str, change: Callable[[list[str]], None]) -> str:
    """The token with its body's fields changed and its MAC kept."""
    body, mac = token.split(".")
    fields = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split(".")
    change(fields)
    raw = ".".join(fields).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


class TestRefusals:
    """Forged, altered, borrowed and replayed tokens are refused, and change nothing."""

    async def test_forged_and_altered_tokens_are_refused(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        other = {"name": "other", "paths": [OTHER_SALE], "skus": list(SKUS), "rate_per_s": 1}
        room = await open_room(settings_for(database_dsn, sale(rate=2, burst=1), other))
        async with client_of(room) as client:
            await client.get(SALE, headers={SESSION: new_session()})
            session = new_session()
            token = (await queue_up(client, session))["token"]
            before = await event_row(stocked)

            def position_1(fields: list[str]) -> None:
                fields[2] = "1"

            def other_event(fields: list[str]) -> None:
                fields[1] = "other"

            mac_flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
            forgeries = [
                (SALE, session, mac_flipped, "queue-token-invalid"),
                (SALE, session, tampered(token, position_1), "queue-token-invalid"),
                (OTHER_SALE, session, tampered(token, other_event), "queue-token-invalid"),
                (SALE, new_session(), token, "queue-token-invalid"),  # another session's
                (SALE, session, "not-a-token", "queue-token-invalid"),
            ]
            for path, who, forged, slug in forgeries:
                response = await client.get(path, headers={SESSION: who, TOKEN: forged})
                assert response.status_code == 403, (forged, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["type"] == f"urn:retailsync:problem:{slug}"
            forged_pass = await client.get(SALE, headers={SESSION: session, PASS: token})
            assert forged_pass.status_code == 403
            assert forged_pass.json()["type"].endswith("queue-pass-invalid")
            assert await event_row(stocked) == before  # nothing moved, nothing admitted

            assert (await wait_for_turn(client, session, token)).status_code == 200

    async def test_a_redeemed_token_is_refused_on_any_worker(
        self, second_pool: Database, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        config = settings_for(database_dsn, sale(rate=5, burst=1))
        first, second = await open_room(config), await open_room(config, second_pool)
        async with client_of(first) as one, client_of(second) as two:
            await one.get(SALE, headers={SESSION: new_session()})
            session = new_session()
            token = (await queue_up(one, session))["token"]
            admitted = await wait_for_turn(one, session, token)
            assert admitted.status_code == 200
            grant = admitted.headers[PASS]
            for client in (one, two):
                replay = await client.get(SALE, headers={SESSION: session, TOKEN: token})
                assert replay.status_code == 403
                assert replay.json()["type"] == "urn:retailsync:problem:queue-token-replayed"
            with_pass = await two.get(SALE, headers={SESSION: session, PASS: grant})
            assert with_pass.status_code == 200  # the pass, not the token, is what is reused
        assert (await event_row(stocked))["admissions"] == 2


class TestTokens:
    """The signer alone: what it signs opens; any other string does not."""

    signer = TokenSigner(b"k" * 32)

    @settings(max_examples=300, deadline=None)
    @given(
        position=st.integers(1, 10**12),
        issued=st.integers(0, 2**42),
        event=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
        session=st.from_regex(r"[A-Za-z0-9_-]{16,40}", fullmatch=True),
        index=st.integers(0, 10_000),
        char=st.sampled_from("ABCabc0189-_.=+/"),
    )
    def test_signed_tokens_open_and_any_change_is_refused(
        self, position: int, issued: int, event: str, session: str, index: int, char: str
    ) -> None:
        token = self.signer.queue_token(QueueToken(event, position, issued), session)
        assert self.signer.open_queue_token(token, session) == QueueToken(event, position, issued)
        i = index % len(token)
        changed = token[:i] + char + token[i + 1 :]
        if changed != token:
            with pytest.raises(TokenRefused):
                self.signer.open_queue_token(changed, session)
        with pytest.raises(TokenRefused):
            self.signer.open_queue_token(token, session[::-1] + "x")
        with pytest.raises(TokenRefused):
            self.signer.open_pass(token, session)  # a queue token is not a pass


class TestSoldOut:
    """When the skus sell out the queue closes within a second, and everyone is told."""

    async def test_sell_out_closes_the_queue_within_a_second(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=1, burst=1)))
        async with client_of(room) as client:
            lucky = new_session()
            grant = (await client.get(SALE, headers={SESSION: lucky})).headers[PASS]
            session = new_session()
            token = (await queue_up(client, session))["token"]
            await stocked.execute("UPDATE stock SET reserved = on_hand WHERE sku = 'DROP-1'")
            await asyncio.sleep(0.3)
            assert (
                await client.get(SALE, headers={**JSON, SESSION: session, TOKEN: token})
            ).status_code == 202  # one sku left: still open
            sold_at = time.perf_counter()
            await stocked.execute("UPDATE stock SET reserved = on_hand")
            while True:
                told = await client.get(SALE, headers={**JSON, SESSION: session, TOKEN: token})
                if told.status_code != 202:
                    break
                await asyncio.sleep(0.01)
            latency = time.perf_counter() - sold_at
            assert told.status_code == 410
            assert told.json() == {
                "event": "drop",
                "position": 2,
                "ahead": 0,
                "estimated_wait_s": None,
                "status": "sold_out",
            }
            assert latency < 1.0, latency
            newcomer = await client.get(SALE, headers={**JSON, SESSION: new_session()})
            assert newcomer.status_code == 410
            assert newcomer.json()["status"] == "sold_out"
            browser = await client.get(SALE, headers={"Accept": "text/html"})
            assert browser.status_code == 410
            assert "Sold out" in browser.text
            assert "refresh" not in browser.text
            admitted = await client.get(SALE, headers={SESSION: lucky, PASS: grant})
            assert admitted.status_code == 200  # already let in: may finish checking out
            assert (await event_row(stocked))["sold_out"] is True

            await stocked.execute("UPDATE stock SET reserved = 0 WHERE sku = 'DROP-2'")
            for _ in range(100):  # units came back (a hold expired): the queue reopens
                back = await client.get(SALE, headers={SESSION: session, TOKEN: token})
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert back.status_code == 200


class TestAnswers:
    """Browsers get a page that refreshes itself and carries cookies; apps get JSON."""

    async def test_browser_page_and_cookies_all_the_way_in(
        self, open_room: OpenRoom, database_dsn: str
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=3, burst=1)))
        async with client_of(room) as app, client_of(room, browser=True) as client:
            await app.get(SALE, headers={SESSION: new_session()})
            browser = "text/html,application/xhtml+xml,*/*;q=0.8"
            page = await client.get(SALE, headers={"Accept": browser})
            assert page.status_code == 202
            assert page.headers["content-type"].startswith("text/html")
            assert '<meta http-equiv="refresh" content="1">' in page.text
            assert "number <b>2</b>" in page.text
            assert {"rs_session", "rs_queue_drop"} <= set(client.cookies.keys())
            for _ in range(100):  # the page reloading itself: cookies only, no headers set
                page = await client.get(SALE, headers={"Accept": browser})
                if page.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert page.status_code == 200
            assert "rs_pass_drop" in client.cookies
            assert (
                await client.get("/v1/sale/drop/item", headers={"Accept": browser})
            ).status_code == 200

    @pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
    async def test_apps_get_json(
        self, open_room: OpenRoom, database_dsn: str, accept: str | None
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=1, burst=1)))
        async with client_of(room) as client:
            await client.get(SALE, headers={SESSION: new_session()})
            headers = {} if accept is None else {"Accept": accept}
            answer = await client.get(SALE, headers=headers)
        assert answer.status_code == 202
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {
            "event": "drop",
            "position": 2,
            "ahead": 0,
            "estimated_wait_s": 1,
            "status": "waiting",
        }
        assert answer.headers[SESSION]
        assert answer.headers[TOKEN]

    async def test_a_malformed_session_id_is_named(
        self, open_room: OpenRoom, database_dsn: str
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=1)))
        async with client_of(room) as client:
            answer = await client.get(SALE, headers={SESSION: "short"})
        assert answer.status_code == 400
        assert answer.json()["field"] == "Retailsync-Session"


GOOD = sale(rate=5)


class TestConfiguration:
    """Bad sale events are refused at start-up, naming the setting."""

    @pytest.mark.parametrize(
        "raw",
        [
            "not json",
            '{"name": "drop"}',
            json.dumps([{**GOOD, "rate_per_s": 0}]),
            json.dumps([{**GOOD, "rate_per_s": -3}]),
            json.dumps([{**GOOD, "paths": []}]),
            json.dumps([{**GOOD, "skus": []}]),
            json.dumps([{**GOOD, "paths": ["no-slash"]}]),
            json.dumps([{**GOOD, "name": "Bad Name"}]),
            json.dumps([{**GOOD, "colour": "red"}]),
            json.dumps([{**GOOD, "starts_at": "2030-01-01T00:00:00"}]),  # no offset
            json.dumps(
                [{**GOOD, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}]
            ),
            json.dumps([GOOD, GOOD]),
            json.dumps([GOOD, {**GOOD, "name": "again"}]),  # one path, two events
        ],
    )
    def test_bad_events_name_the_setting(self, raw: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings({"waiting_rooms": raw}, environ={})
        assert caught.value.setting == "RETAILSYNC_WAITING_ROOMS"

    def test_a_short_secret_is_refused_and_not_shown(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings({}, environ={"RETAILSYNC_WAITING_ROOM_SECRET": "hunter2"})
        assert caught.value.setting == "RETAILSYNC_WAITING_ROOM_SECRET"
        assert "hunter2" not in str(caught.value)
        configured = load_settings({"waiting_room_secret": "s" * 40}, environ={})
        assert "s" * 40 not in repr(configured)

    async def test_no_events_no_room(self, db: Database, database_dsn: str) -> None:
        assert await WaitingRoom.open(load_settings({}, environ={}), db) is None

    async def test_a_configured_secret_is_used_and_not_stored(
        self, open_room: OpenRoom, database_dsn: str, stocked: Database
    ) -> None:
        room = await open_room(settings_for(database_dsn, sale(rate=1), secret="z" * 32))
        async with client_of(room) as client:
            assert (await client.get(SALE)).status_code == 200
        assert await stocked.fetchval("SELECT count(*) FROM waiting_room_secret") == 0
