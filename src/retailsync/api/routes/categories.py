"""Category pages and facets, served from the views the change stream keeps
(``retailsync.views``): fresh within the consumer's lag, not read-your-writes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import Document, database, etag, read_response
from retailsync.api.schemas import CATEGORY_PATTERN
from retailsync.cache.keys import category_key
from retailsync.cache.reads import CachedReads
from retailsync.views import CategoryFacets, CategoryPage, SortOrder, queries

router = APIRouter(tags=["catalog"])

CategoryPath = Annotated[
    str,
    Path(
        pattern=CATEGORY_PATTERN,
        max_length=200,
        description="Slash-separated path, e.g. electronics/audio (its subcategories included)",
    ),
]


@router.get("/v1/categories/{category:path}/products", response_model=CategoryPage)
async def category_products(
    request: Request,
    category: CategoryPath,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
    sort: SortOrder = "title",
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """Products in a category and its subcategories, by title (then sku) or by sku, a page at
    a time. The ETag is the category's view version, shared by all its pages."""
    async with database(request).connection() as conn:
        page = await queries.category_products(conn, category, sort, cursor, limit)
    return _view_response(request, page, page.version, category)


@router.get("/v1/categories/{category:path}/facets", response_model=CategoryFacets)
async def category_facets(
    request: Request,
    category: CategoryPath,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
) -> Response:
    """Products in a category and its subcategories, counted per attribute value."""
    async with database(request).connection() as conn:
        facets = await queries.category_facets(conn, category)
    return _view_response(request, facets, facets.version, category)


def _view_response(request: Request, view: Document, version: int, category: str) -> Response:
    """A view's answer for a shared cache: purged by the view consumer when it changes."""
    response = read_response(request, view, etag(version))
    reads: CachedReads = request.app.state.reads
    policy = reads.policies.of("category")
    response.headers["Cache-Control"] = "no-cache" if policy is None else policy.cache_control()
    response.headers["Surrogate-Key"] = category_key(category)
    return response
