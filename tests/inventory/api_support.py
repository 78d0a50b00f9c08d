"""Helpers the HTTP tests of holds share: bodies, calls, a snapshot of everything a refusal
must leave unchanged, polling."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx

from retailsync.inventory.check import check_inventory
from retailsync.models import Channel
from tests.support import ADMIN, WEB, Api

PROBLEM = "urn:retailsync:problem:"
Line = tuple[str, str, int]


def hold_body(*lines: Line, **extra: Any) -> dict[str, Any]:
    return {
        "lines": [{"sku": sku, "location": loc, "quantity": q} for sku, loc, q in lines],
        **extra,
    }


async def post_hold(
    api: Api, *lines: Line, key: str | None = None, as_: Channel = WEB, **extra: Any
) -> httpx.Response:
    return await api.call(
        "POST",
        "/v1/reservations",
        json=hold_body(*lines, **extra),
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
        as_=as_,
    )


async def new_hold(api: Api, *lines: Line, as_: Channel = WEB, **extra: Any) -> dict[str, Any]:
    response = await post_hold(api, *lines, as_=as_, **extra)
    assert response.status_code == 201, response.text
    hold: dict[str, Any] = response.json()
    return hold


async def get_hold(api: Api, hold_id: str) -> dict[str, Any]:
    hold: dict[str, Any] = await api.ok("GET", f"/v1/reservations/{hold_id}", as_=WEB)
    return hold


async def commit(api: Api, hold_id: str, as_: Channel = WEB, **kwargs: Any) -> httpx.Response:
    return await api.call("POST", f"/v1/reservations/{hold_id}/commit", as_=as_, **kwargs)


async def release(api: Api, hold_id: str, as_: Channel = WEB) -> httpx.Response:
    return await api.call("POST", f"/v1/reservations/{hold_id}/release", as_=as_)


async def reserved(api: Api, sku: str) -> dict[str, int]:
    """Units reserved per location of the sku, as GET /v1/stock/{sku} shows them."""
    stock = await api.ok("GET", f"/v1/stock/{sku}")
    return {loc["location"]: loc["reserved"] for loc in stock["locations"]}


async def held_count(api: Api) -> int:
    return int(await api.db.fetchval("SELECT count(*) FROM holds WHERE state = 'held'"))


async def snapshot(api: Api, *, allotments: bool = True) -> tuple[Any, ...]:
    """Everything a refused hold request could have written, stock reserved as the channels
    see it (stock_levels) included. ``allotments=False`` leaves out what escrow lanes keep in
    reserve, which the channels do not see: escrow_allotments and the raw stock.reserved."""
    units: tuple[Any, ...] = (
        tuple(await api.db.fetch("SELECT sku, location, reserved FROM stock_levels ORDER BY 1, 2")),
    )
    if allotments:
        units += (
            await api.count("escrow_allotments"),
            tuple(await api.db.fetch("SELECT sku, location, reserved FROM stock ORDER BY 1, 2")),
        )
    return (
        *units,
        await api.count("holds"),
        await api.count("reservations"),
        await api.count("orders"),
        await api.count("order_lines"),
        await api.count("carts"),
        await api.db.fetchval("SELECT coalesce(sum(on_hand), 0) FROM stock"),
        await api.db.fetchval("SELECT coalesce(sum(quantity), 0) FROM customer_sku_usage"),
        await api.db.fetchval(
            "SELECT count(*), coalesce(sum(version), 0) FROM reservation_policies"
        ),
        tuple(await api.db.fetch("SELECT id, state FROM holds ORDER BY id")),
    )


def assert_problem(
    response: httpx.Response, status: int, slug: str, reason: str | None = None
) -> dict[str, Any]:
    """The response is the problem document ``slug`` (with ``reason``); return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM + slug, problem
    assert problem["status"] == status
    assert "Traceback" not in response.text
    if reason is not None:
        assert problem.get("reason") == reason, problem
    return problem


async def assert_consistent(api: Api) -> None:
    """The ledger's invariants (stock audit, hold lines, expiry timing, purchase usage)."""
    async with api.db.connection() as conn:
        check = await check_inventory(conn)
    assert check.ok, check.problems()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 1.5) -> float:
    """Poll ``check`` until it holds; return the seconds it took. Fails after ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def stocked_sku(api: Api, sku: str, units: int = 100, *, price: int | None = 1000) -> None:
    """A product with ``units`` at eu-dc1 and at eu-store1, priced in eu unless None (the
    locations of ``api.world()`` must exist)."""
    await api.product(sku)
    if price is not None:
        await api.price(sku, "eu", price)
    for location in ("eu-dc1", "eu-store1"):
        await api.receive(sku, location, units)


async def set_policy(api: Api, sku: str, **policy: Any) -> dict[str, Any]:
    stored: dict[str, Any] = await api.ok(
        "PUT", f"/v1/reservation-policies/{sku}", json=policy, as_=ADMIN
    )
    return stored
