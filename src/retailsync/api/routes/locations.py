from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import RootModel
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import Reply, database, if_match, if_none_match_any, json_response, write
from retailsync.api.routes.params import LocationPath
from retailsync.api.schemas import LocationBody
from retailsync.db.database import Connection
from retailsync.models import REGION_PATTERN, Location
from retailsync.services import locations

router = APIRouter(tags=["locations"])


class LocationList(RootModel[list[Location]]):
    pass


@router.put(
    "/v1/locations/{location_id}",
    response_model=Location,
    responses={201: {"model": Location, "description": "Created"}},
)
async def put_location(
    request: Request,
    location_id: LocationPath,
    body: LocationBody,
    principal: Annotated[Principal, Depends(requires(Scope.CATALOG_WRITE))],
) -> Response:
    """A store or warehouse in a region; the region exists once a location names it."""
    expected, create_only = if_match(request), if_none_match_any(request)

    async def work(conn: Connection) -> Reply:
        location, created = await locations.put_location(
            conn,
            location_id,
            region=body.region,
            kind=body.kind,
            expected_version=expected,
            create_only=create_only,
        )
        return Reply(location, status_code=201 if created else 200, version=location.version)

    return await write(request, principal, work)


@router.get("/v1/locations", response_model=list[Location])
async def list_locations(
    request: Request,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
) -> Response:
    async with database(request).connection() as conn:
        found = await locations.list_locations(conn, region=region)
    return json_response(LocationList(found))
