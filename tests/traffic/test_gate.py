"""The traffic gate in front of the real application (PostgreSQL behind it): refusals are
cheap, honest 503s; the classes above keep their share; operations routes always pass."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from retailsync.traffic.gate import TrafficGate
from tests.support import ADMIN, Api

pytestmark = pytest.mark.surface


def gate_of(api: Api) -> TrafficGate:
    gate: TrafficGate = api.client._transport.app.state.traffic  # type: ignore[attr-defined]
    assert gate.admission is not None
    return gate


@contextlib.contextmanager
def busy(api_or_gate: Api | TrafficGate) -> Iterator[None]:
    """Pretend 70 of a limit of 100 are in flight: past browse's share (0.6 of the limit),
    under product's (0.75), cart's and checkout's."""
    gate = api_or_gate if isinstance(api_or_gate, TrafficGate) else gate_of(api_or_gate)
    admission = gate.admission
    assert admission is not None
    limit = admission.limit
    held = limit.limit, limit.minimum, limit.maximum
    limit.limit = limit.minimum = limit.maximum = 100.0  # held still for the test
    admission.inflight += 70
    try:
        yield
    finally:
        admission.inflight -= 70
        limit.limit, limit.minimum, limit.maximum = held


async def test_browse_is_shed_with_retry_after_while_checkout_goes_through(api: Api) -> None:
    await api.world()
    cart = await api.cart({"SKU-1": 1})
    with busy(api):
        await shed_browse_and_serve_checkout(api, cart)


async def shed_browse_and_serve_checkout(api: Api, cart: str) -> None:
    shed = await api.call("GET", "/v1/products")
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.headers["content-type"] == "application/problem+json"
    assert shed.json()["type"] == "urn:retailsync:problem:overloaded"
    assert (await api.call("GET", "/v1/products/SKU-1")).status_code == 200  # product: 0.75
    placed = await api.checkout(cart)
    assert placed.status_code == 201
    assert (await api.call("GET", "/healthz")).status_code == 200  # never managed
    assert (await api.call("GET", "/metrics")).status_code == 200


async def test_a_shed_request_changes_nothing(api: Api) -> None:
    """A browse-class write (catalog) refused at the gate never reaches the database."""
    with busy(api):
        response = await api.call("PUT", "/v1/products/SKU-9", json={"title": "x", "category": "a"})
    assert response.status_code == 503
    assert await api.db.fetchval("SELECT count(*) FROM products WHERE sku = 'SKU-9'") == 0


async def test_every_admitted_request_gives_its_slot_back(api: Api) -> None:
    admission = gate_of(api).admission
    assert admission is not None
    await api.world()
    before = admission.inflight
    answers = await asyncio.gather(
        *[api.call("GET", f"/v1/products/SKU-{n % 3}") for n in range(60)],
        api.call("GET", "/v1/products/NOPE"),  # 404
        api.call("POST", "/v1/orders", json={"cart_id": "not a uuid"}),  # 422
    )
    assert {a.status_code for a in answers} == {200, 404, 422}
    assert admission.inflight == before


async def test_metrics_show_admissions_by_class(api: Api) -> None:
    with busy(api):
        await api.call("GET", "/v1/products")
    page = (await api.call("GET", "/metrics")).text
    assert 'retailsync_admission_requests_total{criticality="browse",outcome="shed"}' in page


async def test_the_admission_flag_is_a_kill_switch_without_restart(api: Api) -> None:
    with busy(api):
        assert (await api.call("GET", "/v1/products")).status_code == 503
        off = {"enabled": False, "rollout_percent": 100}
        put = await api.call("PUT", "/v1/admin/flags/traffic.admission", json=off, as_=ADMIN)
        assert put.status_code in (200, 201)  # the admin API is never itself shed
        assert (await api.call("GET", "/v1/products")).status_code == 200  # every one let in
        gone = await api.call("DELETE", "/v1/admin/flags/traffic.admission", as_=ADMIN)
        assert gone.status_code == 200
        assert (await api.call("GET", "/v1/products")).status_code == 503  # no flag: on
