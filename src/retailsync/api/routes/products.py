from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.cached import cached_read
from retailsync.api.http import (
    Reply,
    database,
    encode,
    etag,
    if_match,
    if_none_match_any,
    json_response,
    write,
)
from retailsync.api.routes.params import SkuPath
from retailsync.api.schemas import CATEGORY_PATTERN, ProductBody
from retailsync.cache.keys import product_key
from retailsync.cache.reads import Document
from retailsync.db.database import Connection
from retailsync.models import Product, ProductPage
from retailsync.services import catalog

router = APIRouter(tags=["catalog"])


@router.get("/v1/products/{sku}", response_model=Product)
async def get_product(
    request: Request, sku: SkuPath, _: Annotated[Principal, Depends(requires(Scope.READ))]
) -> Response:

    async def load(conn: Connection) -> Document:
        product = await catalog.get_product(conn, sku)
        return Document(encode(product), etag(product.version))

    key = product_key(sku)
    return await cached_read(request, "product", key, load, surrogate=[key])


@router.put(
    "/v1/products/{sku}",
    response_model=Product,
    responses={201: {"model": Product, "description": "Created"}},
)
async def put_product(
    request: Request,
    sku: SkuPath,
    body: ProductBody,
    principal: Annotated[Principal, Depends(requires(Scope.CATALOG_WRITE))],
) -> Response:
    """Create or replace a product. If-Match: "N" replaces only version N; If-None-Match: *
    only creates."""
    expected, create_only = if_match(request), if_none_match_any(request)

    async def work(conn: Connection) -> Reply:
        product, created = await catalog.upsert_product(
            conn,
            sku,
            title=body.title,
            category=body.category,
            attributes=body.attributes,
            expected_version=expected,
            create_only=create_only,
        )
        return Reply(product, status_code=201 if created else 200, version=product.version)

    return await write(request, principal, work)


@router.get("/v1/products", response_model=ProductPage)
async def list_products(
    request: Request,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
    category: Annotated[str | None, Query(pattern=CATEGORY_PATTERN, max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """Products in a category and its subcategories, in sku order, a page at a time."""
    async with database(request).connection() as conn:
        page = await catalog.list_products(conn, category=category, cursor=cursor, limit=limit)
    return json_response(page)
