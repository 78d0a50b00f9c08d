from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.cached import cached_read, content_tag
from retailsync.api.http import Reply, encode, if_match, write
from retailsync.api.routes.params import LocationPath, SkuPath
from retailsync.api.schemas import AdjustmentBody, ReceiptBody
from retailsync.cache.keys import stock_key
from retailsync.cache.reads import Document
from retailsync.db.database import Connection
from retailsync.errors import RequestInvalid
from retailsync.models import StockAtLocation, StockLevel
from retailsync.services import stock

router = APIRouter(tags=["stock"])


@router.post("/v1/stock/{sku}/{location}/receipts", response_model=StockAtLocation)
async def receive(
    request: Request,
    sku: SkuPath,
    location: LocationPath,
    body: ReceiptBody,
    principal: Annotated[Principal, Depends(requires(Scope.STOCK_WRITE))],
) -> Response:
    """Goods received at a location. Send an Idempotency-Key: a retried receipt must not count
    twice."""
    expected = if_match(request)

    async def work(conn: Connection) -> Reply:
        level = await stock.receive(
            conn, sku, location, quantity=body.quantity, expected_version=expected
        )
        return Reply(level, version=level.version)

    return await write(request, principal, work)


@router.post("/v1/stock/{sku}/{location}/adjustments", response_model=StockAtLocation)
async def adjust(
    request: Request,
    sku: SkuPath,
    location: LocationPath,
    body: AdjustmentBody,
    principal: Annotated[Principal, Depends(requires(Scope.STOCK_WRITE))],
) -> Response:
    """Correct on_hand by a signed delta; refused (409) if it would fall below what is
    reserved."""
    if body.delta == 0:
        raise RequestInvalid("delta", "must not be zero")
    expected = if_match(request)

    async def work(conn: Connection) -> Reply:
        level = await stock.adjust(
            conn, sku, location, delta=body.delta, reason=body.reason, expected_version=expected
        )
        return Reply(level, version=level.version)

    return await write(request, principal, work)


@router.get("/v1/stock/{sku}", response_model=StockLevel)
async def get_stock(
    request: Request, sku: SkuPath, _: Annotated[Principal, Depends(requires(Scope.READ))]
) -> Response:
    """Stock per location and the total available. Cached as volatile data (evicted by every
    change); at or below the low-stock threshold it is read from the database every time."""
    low_stock: int = request.app.state.settings.low_stock_threshold

    async def load(conn: Connection) -> Document:
        level = await stock.get_stock(conn, sku)
        body = encode(level)
        return Document(body, content_tag(body), cacheable=level.available > low_stock)

    key = stock_key(sku)
    return await cached_read(request, "stock", key, load, surrogate=[key])
