"""Holds on stock (``/v1/reservations``) and the reservation policy of each sku."""

from __future__ import annotations

import contextlib
from typing import Annotated
from uuid import UUID

import msgspec
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import Reply, database, json_response, read_response, write
from retailsync.api.openapi import struct_response
from retailsync.api.routes.params import SkuPath
from retailsync.api.schemas import CommitBody, HoldBody, PolicyBody
from retailsync.db.database import Connection
from retailsync.errors import DatabaseUnavailable, RequestInvalid
from retailsync.inventory import ledger, policies
from retailsync.inventory.engine import InventoryEngine
from retailsync.inventory.model import Hold, HoldRequest, Policy, StrategyName
from retailsync.models import Channel, ReservationPolicy
from retailsync.services.orders import place_from_hold

router = APIRouter(tags=["reservations"])


def owner_of(principal: Principal) -> str | None:
    """The holds a caller may see and act on: those its key took (admin: all)."""
    return None if principal.channel is Channel.ADMIN else str(principal.key_id)


def engine_of(request: Request) -> InventoryEngine:
    engine: InventoryEngine = request.app.state.engine
    return engine


def _hold_response(hold: Hold, status_code: int = 200) -> Response:
    headers = {"Location": f"/v1/reservations/{hold.id}"}
    if hold.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(hold, status_code=status_code, headers=headers)


async def _commit(request: Request, hold: Hold, channel: str, currency: str | None) -> Hold:
    async with database(request).transaction() as conn:
        await place_from_hold(conn, hold.id, channel=channel, currency=currency)
        return await ledger.get_hold(conn, hold.id)


@router.post(
    "/v1/reservations",
    status_code=201,
    responses={
        201: struct_response(Hold, "The hold (or, replayed, the one the key made)"),
        409: {"description": "Not enough stock, a purchase limit, a reused key"},
    },
)
async def create_hold(
    request: Request,
    body: HoldBody,
    principal: Annotated[Principal, Depends(requires(Scope.SELL))],
) -> Response:
    """Hold stock for ``ttl_ms``: every line or none. The Idempotency-Key is the hold's
    identity: a retry gets the same hold back (Idempotent-Replayed), another request under
    the same key 409. With ``commit``, the hold becomes an order at once (a POS sale)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        raise RequestInvalid("Idempotency-Key", "a hold needs one; it is the hold's identity")
    hold_request = HoldRequest.create(
        scope=str(principal.key_id),
        key=key,
        lines=[(line.sku, line.location, line.quantity) for line in body.lines],
        ttl_ms=body.ttl_ms,
        customer_id=body.customer_id,
        variant=f"commit:{body.currency}" if body.commit else "",
    )
    engine = engine_of(request)
    hold = await engine.hold(hold_request)
    if body.commit:
        try:
            committed = await _commit(request, hold, principal.channel, body.currency)
        except DatabaseUnavailable:
            raise  # the hold stays: a retry under the same key replays it and commits
        except BaseException:
            if not hold.replayed:  # a sale that cannot be placed holds nothing
                with contextlib.suppress(Exception):  # else it expires with its TTL
                    await engine.release(hold.id)  # _commit's transaction has ended
            raise
        hold = msgspec.structs.replace(committed, replayed=hold.replayed)
    return _hold_response(hold, 201)


@router.get("/v1/reservations/{hold_id}", responses={200: struct_response(Hold, "The hold")})
async def get_hold(
    request: Request,
    hold_id: UUID,
    principal: Annotated[Principal, Depends(requires(Scope.SELL))],
) -> Response:
    """A hold this key took (admin: any)."""
    async with database(request).connection() as conn:
        hold = await ledger.get_hold(conn, hold_id, owner=owner_of(principal))
    return _hold_response(hold)


@router.post(
    "/v1/reservations/{hold_id}/commit",
    responses={
        200: struct_response(Hold, "The committed hold, naming its order"),
        409: {"description": "The hold expired, was released, or spans regions"},
    },
)
async def commit_hold(
    request: Request,
    hold_id: UUID,
    principal: Annotated[Principal, Depends(requires(Scope.SELL))],
    body: CommitBody | None = None,
) -> Response:
    """Commit the hold into an order (priced in its locations' region). Committing it again
    answers the same hold and order."""
    currency = body.currency if body is not None else None

    async def work(conn: Connection) -> Reply:
        owner = owner_of(principal)
        await place_from_hold(
            conn, hold_id, channel=principal.channel, currency=currency, owner=owner
        )
        return Reply(await ledger.get_hold(conn, hold_id))

    return await write(request, principal, work)


@router.post(
    "/v1/reservations/{hold_id}/release",
    responses={200: struct_response(Hold, "The released hold")},
)
async def release_hold(
    request: Request,
    hold_id: UUID,
    principal: Annotated[Principal, Depends(requires(Scope.SELL))],
) -> Response:
    """Give the stock back now. Releasing again changes nothing; a committed hold is 409."""

    async def work(conn: Connection) -> Reply:
        return Reply(await ledger.release(conn, hold_id, owner=owner_of(principal)))

    return await write(request, principal, work)


@router.put("/v1/reservation-policies/{sku}", response_model=ReservationPolicy)
async def put_policy(
    request: Request,
    sku: SkuPath,
    body: PolicyBody,
    principal: Annotated[Principal, Depends(requires(Scope.CATALOG_WRITE))],
) -> Response:
    """Set how the sku's holds take stock, its purchase limit, its low-stock threshold. Other
    worker processes apply it within 2 s."""
    policy = Policy(StrategyName(body.strategy), body.per_customer_limit, body.low_stock_threshold)

    async def work(conn: Connection) -> Reply:
        stored = await policies.set_policy(conn, sku, policy)
        return Reply(stored, version=stored.version)

    response = await write(request, principal, work)
    engine_of(request).set_policy(sku, policy)
    return response


@router.get("/v1/reservation-policies/{sku}", response_model=ReservationPolicy)
async def get_policy(
    request: Request, sku: SkuPath, _: Annotated[Principal, Depends(requires(Scope.READ))]
) -> Response:
    async with database(request).connection() as conn:
        policy = await policies.get_policy(conn, sku)
    return read_response(request, policy, f'"{policy.version}"')
