from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import RootModel
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.cached import cached_read, content_tag
from retailsync.api.http import Reply, encode, if_match, if_none_match_any, write
from retailsync.api.routes.params import RegionPath, SkuPath
from retailsync.api.schemas import PriceBody
from retailsync.cache.keys import prices_key
from retailsync.cache.reads import Document
from retailsync.db.database import Connection
from retailsync.models import Price
from retailsync.services import prices

router = APIRouter(tags=["prices"])


class PriceList(RootModel[list[Price]]):
    pass


@router.put(
    "/v1/prices/{sku}/{region}",
    response_model=Price,
    responses={201: {"model": Price, "description": "Created"}},
)
async def put_price(
    request: Request,
    sku: SkuPath,
    region: RegionPath,
    body: PriceBody,
    principal: Annotated[Principal, Depends(requires(Scope.CATALOG_WRITE))],
) -> Response:
    expected, create_only = if_match(request), if_none_match_any(request)

    async def work(conn: Connection) -> Reply:
        price, created = await prices.set_price(
            conn,
            sku,
            region,
            currency=body.currency,
            amount_minor=body.amount_minor,
            expected_version=expected,
            create_only=create_only,
        )
        return Reply(price, status_code=201 if created else 200, version=price.version)

    return await write(request, principal, work)


@router.get("/v1/prices/{sku}", response_model=list[Price])
async def get_prices(
    request: Request, sku: SkuPath, _: Annotated[Principal, Depends(requires(Scope.READ))]
) -> Response:

    async def load(conn: Connection) -> Document:
        body = encode(PriceList(await prices.get_prices(conn, sku)))
        return Document(body, content_tag(body))

    key = prices_key(sku)
    return await cached_read(request, "price", key, load, surrogate=[key])
