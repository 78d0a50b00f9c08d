from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import Reply, database, etag, if_match, read_response, write
from retailsync.api.routes.params import SkuPath
from retailsync.api.schemas import CartLineBody, NewCartBody
from retailsync.db.database import Connection
from retailsync.models import Cart
from retailsync.services import carts

router = APIRouter(tags=["carts"])
Seller = Annotated[Principal, Depends(requires(Scope.SELL))]


@router.post("/v1/carts", response_model=Cart, status_code=201)
async def create_cart(request: Request, body: NewCartBody, principal: Seller) -> Response:
    async def work(conn: Connection) -> Reply:
        cart = await carts.create_cart(
            conn, customer_id=body.customer_id, region=body.region, currency=body.currency
        )
        return Reply(
            cart,
            status_code=201,
            version=cart.version,
            headers={"Location": f"/v1/carts/{cart.id}"},
        )

    return await write(request, principal, work)


@router.get("/v1/carts/{cart_id}", response_model=Cart)
async def get_cart(
    request: Request, cart_id: UUID, _: Annotated[Principal, Depends(requires(Scope.READ))]
) -> Response:
    async with database(request).connection() as conn:
        cart = await carts.get_cart(conn, cart_id)
    return read_response(request, cart, etag(cart.version))


@router.put("/v1/carts/{cart_id}/lines/{sku}", response_model=Cart)
async def set_line(
    request: Request, cart_id: UUID, sku: SkuPath, body: CartLineBody, principal: Seller
) -> Response:
    """Set a line's quantity. If-Match names the cart version the client saw."""
    expected = if_match(request)

    async def work(conn: Connection) -> Reply:
        cart = await carts.set_line(
            conn, cart_id, sku, quantity=body.quantity, expected_version=expected
        )
        return Reply(cart, version=cart.version)

    return await write(request, principal, work)


@router.delete("/v1/carts/{cart_id}/lines/{sku}", response_model=Cart)
async def remove_line(request: Request, cart_id: UUID, sku: SkuPath, principal: Seller) -> Response:
    expected = if_match(request)

    async def work(conn: Connection) -> Reply:
        cart = await carts.remove_line(conn, cart_id, sku, expected_version=expected)
        return Reply(cart, version=cart.version)

    return await write(request, principal, work)
