from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from retailsync.access import STATUS_SCOPE, Principal, Scope
from retailsync.api.auth import authenticate, requires
from retailsync.api.http import (
    Reply,
    database,
    etag,
    if_match,
    read_response,
    write,
    write_alone,
)
from retailsync.api.routes.reservations import owner_of
from retailsync.api.schemas import OrderBody, StatusBody
from retailsync.db.database import Connection
from retailsync.models import Order, OrderStatus
from retailsync.observe import metrics
from retailsync.services import orders

router = APIRouter(tags=["orders"])


@router.post(
    "/v1/orders",
    response_model=Order,
    status_code=201,
    responses={409: {"description": "Not enough stock, empty or unpriced cart"}},
)
async def checkout(
    request: Request,
    body: OrderBody,
    principal: Annotated[Principal, Depends(requires(Scope.SELL))],
) -> Response:
    """Check out a cart: hold its stock in the cart's region (or commit ``hold_id``, a hold of
    exactly its lines) and place the order, all or nothing."""

    placed: Order | None = None  # stays None when the answer is a replay
    engine = request.app.state.engine

    def reply(result: orders.Placed) -> Reply:
        nonlocal placed
        placed = result.order
        return Reply(
            placed,
            status_code=201,
            version=placed.version,
            headers={"Location": f"/v1/orders/{placed.id}"},
            transaction_id=result.transaction_id,
        )

    declined = False  # checkout_at_once said the cart needs a transaction: do not ask again

    async def at_once(conn: Connection) -> Reply | None:
        nonlocal declined
        result = await orders.checkout_at_once(
            conn, body.cart_id, channel=principal.channel, engine=engine
        )
        declined = result is None
        return None if result is None else reply(result)

    async def work(conn: Connection) -> Reply:
        return reply(
            await orders.checkout(
                conn,
                body.cart_id,
                channel=principal.channel,
                engine=engine,
                hold_id=body.hold_id,
                owner=owner_of(principal),
                in_one_call=not declined,
            )
        )

    # A cart of cold skus is checked out in one statement; any other, and any checkout with
    # an Idempotency-Key or a hold of its own, in a transaction.
    response = await write_alone(request, at_once) if body.hold_id is None else None
    if response is None:
        response = await write(request, principal, work)
    if placed is not None:  # counted once the transaction has committed
        metrics.record_order(principal.channel, placed)
    return response


@router.get("/v1/orders/{order_id}", response_model=Order)
async def get_order(
    request: Request, order_id: UUID, _: Annotated[Principal, Depends(requires(Scope.READ))]
) -> Response:
    async with database(request).connection() as conn:
        order = await orders.get_order(conn, order_id)
    return read_response(request, order, etag(order.version))


@router.post("/v1/orders/{order_id}/status", response_model=Order)
async def change_status(
    request: Request,
    order_id: UUID,
    body: StatusBody,
    principal: Annotated[Principal, Depends(authenticate)],
) -> Response:
    """placed -> paid -> shipped -> delivered, or cancelled from placed or paid (the stock
    returns). Paying and cancelling need a selling channel; shipping and delivering need
    fulfilment (warehouse, POS, admin)."""
    status = OrderStatus(body.status)
    principal.require(STATUS_SCOPE[status])
    expected = if_match(request)

    async def work(conn: Connection) -> Reply:
        order = await orders.change_status(
            conn, order_id, status, channel=principal.channel, expected_version=expected
        )
        return Reply(order, version=order.version)

    return await write(request, principal, work)
