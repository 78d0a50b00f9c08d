"""Admission by criticality: the class table, the adaptive limit, and the ordering promise
(checkout is never shed while browsing is let in), on simulated overloads and on random
histories with a checker."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retailsync.errors import ConfigError
from retailsync.traffic.admission import HIGHER_PRESSED_HOLD_S, AdaptiveLimit, Admission, Ticket
from retailsync.traffic.classes import load_route_table

ROUTES = load_route_table("", "")
CHECKOUT, CART, PRODUCT, BROWSE, ANALYTICS = ROUTES.classes


class TestRouteTable:
    @pytest.mark.parametrize(
        ("method", "path", "expected"),
        [
            ("POST", "/v1/orders", "checkout"),
            ("POST", "/v1/reservations", "checkout"),
            ("PUT", "/v1/carts/1/lines/SKU-1", "cart"),
            ("GET", "/v1/orders/123", "cart"),
            ("GET", "/v1/products/SKU-1", "product"),
            ("GET", "/v1/stock/SKU-1", "product"),
            ("GET", "/v1/products", "browse"),
            ("GET", "/v1/categories/shoes/products", "browse"),
            ("POST", "/v1/events/clicks", "analytics"),
            ("PUT", "/v1/products/SKU-1", "browse"),
        ],
    )
    def test_default_routes(self, method: str, path: str, expected: str) -> None:
        criticality = ROUTES.classify(method, path)
        assert criticality is not None
        assert criticality.name == expected

    @pytest.mark.parametrize("path", ["/healthz", "/metrics", "/v1/admin/flags", "/v1/admin"])
    def test_operations_routes_are_never_managed(self, path: str) -> None:
        assert ROUTES.classify("GET", path) is None

    def test_routes_given_come_before_the_defaults(self) -> None:
        route = '[{"method": "GET", "path": "^/v1/products/", "class": "cart"}]'
        table = load_route_table("", route)
        assert table.classify("GET", "/v1/products/A").name == "cart"  # type: ignore[union-attr]
        assert table.classify("POST", "/v1/orders").name == "checkout"  # type: ignore[union-attr]

    def test_classes_may_be_renamed_and_shares_default_by_rank(self) -> None:
        table = load_route_table('[{"name": "checkout"}, {"name": "rest"}]', "")
        assert [(c.name, c.trigger) for c in table.classes] == [("checkout", 1.0), ("rest", 0.4)]
        # Defaults that name a class no longer listed are dropped; the rest fall to the last.
        assert table.classify("GET", "/v1/products/A").name == "rest"  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("classes", "routes", "setting", "reason"),
        [
            ("[", "", "RETAILSYNC_TRAFFIC_CLASSES", "JSON"),
            ("[]", "", "RETAILSYNC_TRAFFIC_CLASSES", "non-empty"),
            ('[{"name": "a"}, {"name": "a"}]', "", "RETAILSYNC_TRAFFIC_CLASSES", "distinct"),
            ('[{"name": "a", "trigger": 0.5}]', "", "RETAILSYNC_TRAFFIC_CLASSES", "1.0"),
            ('[{"name": "a"}, {"name": "b", "trigger": 0.5, "release": 0.6}]', "",
             "RETAILSYNC_TRAFFIC_CLASSES", "release < trigger"),
            ('[{"name": "A"}]', "", "RETAILSYNC_TRAFFIC_CLASSES", "lowercase"),
            ('[{"name": "a", "colour": 1}]', "", "RETAILSYNC_TRAFFIC_CLASSES", "colour"),
            ('[{"name": "a", "objective_ms": -1}]', "", "RETAILSYNC_TRAFFIC_CLASSES",
             "objective_ms"),
            ("", '[{"path": "^/x", "class": "vip"}]', "RETAILSYNC_TRAFFIC_ROUTES", "unknown class"),
            ("", '[{"path": "(", "class": "cart"}]', "RETAILSYNC_TRAFFIC_ROUTES", "route"),
            ("", '[{"path": "^/x", "class": "cart", "method": "get it"}]',
             "RETAILSYNC_TRAFFIC_ROUTES", "method"),
        ],
    )  # fmt: skip
    def test_bad_tables_are_refused_naming_the_setting(
        self, classes: str, routes: str, setting: str, reason: str
    ) -> None:
        with pytest.raises(ConfigError) as raised:
            load_route_table(classes, routes)
        assert raised.value.setting == setting
        assert reason in str(raised.value)


def fill(admission: Admission, count: int) -> list[Ticket]:
    """Admit ``count`` checkouts (which only the limit itself stops)."""
    now = time.monotonic()
    tickets = []
    for _ in range(count):
        assert admission.try_admit(CHECKOUT, now)
        tickets.append(Ticket(CHECKOUT.rank, now))
    return tickets


class TestThresholds:
    def test_each_class_is_shed_past_its_share_and_back_after_its_release(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        now = time.monotonic()
        tickets = fill(admission, 60)  # browse's trigger: 0.6 of the limit
        assert admission.try_admit(PRODUCT, now)
        admission.inflight -= 1
        assert not admission.try_admit(BROWSE, now)
        assert not admission.try_admit(ANALYTICS, now)
        admission.inflight = 55  # between browse's release (0.5) and trigger: still shed
        assert not admission.try_admit(BROWSE, now)
        admission.inflight = 49
        assert not admission.try_admit(BROWSE, now)  # released, but its ramp starts at 0
        assert admission.try_admit(BROWSE, now + BROWSE.ramp_s)  # ramped up
        del tickets

    def test_the_most_critical_class_is_only_stopped_by_the_limit(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=10))
        fill(admission, 10)
        assert not admission.try_admit(CHECKOUT, time.monotonic())

    def test_a_released_class_comes_back_gradually(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        admission.inflight = 60
        now = time.monotonic()
        assert not admission.try_admit(BROWSE, now)  # triggered
        admission.inflight = 0
        assert not admission.try_admit(BROWSE, now)  # released now: nothing yet
        halfway = now + BROWSE.ramp_s / 2
        admitted = 0
        for _ in range(4000):
            admission.inflight = 0  # every try under the threshold: only the ramp decides
            admitted += admission.try_admit(BROWSE, halfway)
        share = admitted / 4000
        assert 0.4 < share < 0.6

    def test_lower_classes_are_shed_for_the_hold_after_a_higher_one_was(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        admission.note_pressed(CART.rank, time.monotonic())
        now = time.monotonic()
        assert admission.try_admit(CHECKOUT, now)
        assert not admission.try_admit(BROWSE, now)
        assert not admission.try_admit(BROWSE, now + HIGHER_PRESSED_HOLD_S * 0.9)
        assert admission.try_admit(BROWSE, now + HIGHER_PRESSED_HOLD_S + BROWSE.ramp_s)

    def test_after_the_hold_lower_classes_come_back_over_their_ramp(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        pressed = time.monotonic()
        admission.note_pressed(CHECKOUT.rank, pressed)
        halfway = pressed + HIGHER_PRESSED_HOLD_S + CART.ramp_s / 2
        admitted = 0
        for _ in range(4000):
            admission.inflight = 0
            admitted += admission.try_admit(CART, halfway)
        assert 0.4 < admitted / 4000 < 0.6

    def test_a_class_past_its_latency_objective_presses_the_classes_below(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        tickets = fill(admission, 60)
        assert admission.shed_at_once(BROWSE, time.monotonic())  # a shed: overloaded
        now = time.monotonic()
        admission.done(Ticket(CHECKOUT.rank, now - CHECKOUT.objective_s * 0.5))  # within it
        now = time.monotonic()
        assert admission.try_admit(CART, now)
        admission.inflight = 10  # room again, for every class
        assert admission.try_admit(PRODUCT, now)
        admission.done(Ticket(CHECKOUT.rank, now - CHECKOUT.objective_s * 30))  # far past
        now = time.monotonic()
        assert admission.try_admit(CHECKOUT, now)
        assert not admission.try_admit(CART, now)
        assert not admission.try_admit(PRODUCT, now)
        assert admission.shed_at_once(CART, now)  # refused before its request is parsed
        del tickets

    def test_a_slow_request_on_a_worker_not_shedding_presses_nothing(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        now = time.monotonic()
        assert admission.try_admit(CHECKOUT, now)  # the only request in flight
        admission.done(Ticket(CHECKOUT.rank, now - CHECKOUT.objective_s * 30))
        now = time.monotonic()
        assert admission.try_admit(CART, now)
        assert admission.try_admit(BROWSE, now)

    def test_objectives_are_configured_per_class(self) -> None:
        table = load_route_table('[{"name": "checkout", "objective_ms": 80}, {"name": "b"}]', "")
        assert [c.objective_s for c in table.classes] == [0.08, math.inf]


class TestQueue:
    async def test_a_wait_keeps_the_lower_classes_out_for_the_hold(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=10, minimum=10))
        tickets = fill(admission, 10)
        waiting = asyncio.create_task(admission.admit(CHECKOUT))
        await asyncio.sleep(0.01)
        for _ in range(6):
            admission.done(tickets.pop())  # the first freed slot goes to the waiter
        assert await asyncio.wait_for(waiting, 1) is not None
        assert admission.inflight < BROWSE.trigger * admission.limit.limit  # room by share
        now = time.monotonic()
        assert not admission.try_admit(BROWSE, now)  # but a checkout waited a moment ago
        assert admission.try_admit(BROWSE, now + HIGHER_PRESSED_HOLD_S + BROWSE.ramp_s)

    async def test_checkout_waits_for_a_slot_and_gets_the_first_one_freed(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=4))
        tickets = fill(admission, 4)
        waiting = asyncio.create_task(admission.admit(CHECKOUT))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert await admission.admit(BROWSE) is None  # a checkout waits: browse is refused
        admission.done(tickets.pop())
        ticket = await asyncio.wait_for(waiting, 1)
        assert ticket is not None
        assert admission.inflight == 4

    async def test_a_wait_runs_out_after_queue_ms_and_sheds(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=4))
        fill(admission, 4)
        started = time.monotonic()
        assert await admission.admit(CHECKOUT) is None
        assert CHECKOUT.queue_s <= time.monotonic() - started < CHECKOUT.queue_s + 0.2
        assert admission.inflight == 4

    async def test_a_class_its_ramp_turns_away_is_shed_without_waiting(self) -> None:
        admission = Admission(ROUTES.classes, AdaptiveLimit(initial=100))
        admission.note_pressed(CHECKOUT.rank, time.monotonic() - HIGHER_PRESSED_HOLD_S)
        started = time.monotonic()  # the hold is over; cart's ramp has only just begun
        refused = [await admission.admit(CART) for _ in range(20)]
        assert refused.count(None) >= 15
        assert time.monotonic() - started < CART.queue_s  # not one of them waited


class TestAdaptiveLimit:
    def test_grows_while_latency_stays_at_its_minimum_and_is_used(self) -> None:
        limit = AdaptiveLimit(initial=10)
        now = time.monotonic()
        for _ in range(200):
            limit.sample(0, 0.005, int(limit.limit), now)
        assert limit.limit > 50

    def test_does_not_grow_when_unused(self) -> None:
        limit = AdaptiveLimit(initial=10)
        now = time.monotonic()
        for _ in range(200):
            limit.sample(0, 0.005, 1, now)
        assert limit.limit == 10

    def test_shrinks_when_latency_rises_and_stays_within_bounds(self) -> None:
        limit = AdaptiveLimit(initial=100, minimum=4)
        now = time.monotonic()
        for _ in range(50):
            limit.sample(0, 0.005, 100, now)
        high = limit.limit
        for _ in range(400):
            limit.sample(0, 0.100, 100, now)
        assert limit.limit < high / 4
        assert limit.limit >= 4

    def test_classes_are_compared_with_their_own_minimum(self) -> None:
        limit = AdaptiveLimit(initial=20)
        now = time.monotonic()
        for _ in range(300):  # a fast class and a slow one, each steady
            limit.sample(0, 0.050, int(limit.limit), now)
            limit.sample(3, 0.0002, int(limit.limit), now)
        assert limit.limit > 20


async def simulated_overload(
    admission: Admission, *, capacity: int, service_s: float, offered_rps: float, seconds: float
) -> dict[str, list[tuple[float, str]]]:
    """A server that serves ``capacity`` requests at a time, offered Poisson arrivals in a
    browse-heavy mix. Returns per class the (time, outcome) of every request."""
    slots = asyncio.Semaphore(capacity)
    outcomes: dict[str, list[tuple[float, str]]] = {c.name: [] for c in ROUTES.classes}
    rng = random.Random(7)
    mix = [CHECKOUT] * 5 + [CART] * 15 + [PRODUCT] * 30 + [BROWSE] * 45 + [ANALYTICS] * 5

    async def request() -> None:
        criticality = rng.choice(mix)
        ticket = await admission.admit(criticality)
        if ticket is None:
            outcomes[criticality.name].append((time.monotonic(), "shed"))
            return
        outcomes[criticality.name].append((time.monotonic(), "admitted"))
        async with slots:
            await asyncio.sleep(service_s)
        admission.done(ticket)

    tasks = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tasks.append(asyncio.create_task(request()))
        await asyncio.sleep(rng.expovariate(offered_rps))
    await asyncio.gather(*tasks)
    return outcomes


def shed_ratio(outcomes: list[tuple[float, str]]) -> float:
    return sum(outcome == "shed" for _, outcome in outcomes) / max(1, len(outcomes))


async def test_an_overload_sheds_browse_and_keeps_checkout() -> None:
    admission = Admission(ROUTES.classes, AdaptiveLimit())
    # 8 slots of 20 ms: 400 requests/s of capacity, offered three times that.
    outcomes = await simulated_overload(
        admission, capacity=8, service_s=0.02, offered_rps=1200, seconds=4
    )
    assert shed_ratio(outcomes["checkout"]) <= 0.02
    assert shed_ratio(outcomes["browse"]) > 0.5
    assert shed_ratio(outcomes["analytics"]) >= shed_ratio(outcomes["browse"])
    assert shed_ratio(outcomes["browse"]) >= shed_ratio(outcomes["cart"])
    # The overload brought the limit down from where it started (100), not to nothing.
    assert admission.limit.minimum <= admission.limit.limit < 100
    # Never a checkout shed while browsing was let in: after any checkout shed, no browse
    # admitted for the hold.
    for shed_at, outcome in outcomes["checkout"]:
        if outcome == "shed":
            assert not any(
                shed_at < at < shed_at + HIGHER_PRESSED_HOLD_S and o == "admitted"
                for at, o in outcomes["browse"]
            )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.floats(0, 0.3), st.booleans(), st.booleans()),
        min_size=1,
        max_size=300,
    )
)
def test_random_histories_keep_the_class_order(steps: list[tuple[int, float, bool, bool]]) -> None:
    """Arrivals of random classes at random times, each answered or not before the next, some
    first past the early refusal (``shed_at_once``, as uvicorn's protocol asks it). The
    checker: a class is admitted only under its share of the limit; after a more critical
    class that queues (checkout, cart) was shed, no less critical one is admitted within the
    hold; an early refusal of a class that queues comes only within the hold of a more
    critical one's shed, and admission would have refused it too; in-flight never goes below
    zero."""
    admission = Admission(ROUTES.classes, AdaptiveLimit(initial=6, minimum=4, maximum=12))
    now = 0.0
    last_shed = [-1e9] * len(ROUTES.classes)
    held: list[Ticket] = []
    for rank, gap, answer_one, early in steps:
        now += gap
        criticality = ROUTES.classes[rank]
        before = admission.inflight
        limit = admission.limit.limit
        if early and admission.shed_at_once(criticality, now):
            if criticality.queue_s > 0:
                assert any(at > now - HIGHER_PRESSED_HOLD_S for at in last_shed[:rank])
                last_shed[rank] = now  # as admit() records it
            assert not admission.try_admit(criticality, now)
        elif admission.try_admit(criticality, now):
            assert before < criticality.trigger * limit
            assert all(at <= now - HIGHER_PRESSED_HOLD_S for at in last_shed[:rank])
            held.append(Ticket(rank, now))
        elif criticality.queue_s > 0:  # as admit() records it, after the wait
            last_shed[rank] = now
            admission.note_pressed(rank, now)
        if answer_one and held:
            admission.inflight -= 1
            held.pop(0)
        assert admission.inflight == len(held) >= 0


async def test_a_waiter_that_goes_away_gives_its_slot_on() -> None:
    admission = Admission(ROUTES.classes, AdaptiveLimit(initial=16, minimum=16))
    tickets = fill(admission, 16)
    gone = asyncio.create_task(admission.admit(CHECKOUT))
    await asyncio.sleep(0.01)
    admission.done(tickets.pop())  # its slot is handed to the waiter...
    gone.cancel()  # ...whose client left before it ran
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert admission.inflight == 15
