"""Feature flags: managed under /v1/admin/flags (scope flags), evaluated by channels at
/v1/flags/{name} from the worker's in-memory copy (no database work)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import (
    Field,
    RootModel,
    Strict,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
)
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import (
    Reply,
    database,
    etag,
    if_match,
    if_none_match_any,
    json_response,
    read_response,
    write,
)
from retailsync.api.schemas import Body, StrictText
from retailsync.db.database import Connection
from retailsync.errors import DatabaseUnavailable
from retailsync.models import CUSTOMER_PATTERN, Entity
from retailsync.traffic import flags
from retailsync.traffic.flags import FLAG_PATTERN, Flag, FlagStore

log = logging.getLogger(__name__)
router = APIRouter(tags=["flags"])
Admin = Annotated[Principal, Depends(requires(Scope.FLAGS))]
FlagName = Annotated[str, Path(pattern=FLAG_PATTERN, description="Feature flag name")]


Percent = (
    Annotated[StrictInt, Field(ge=0, le=100)]
    | Annotated[StrictFloat, Field(ge=0, le=100, allow_inf_nan=False)]
)


class FlagList(RootModel[list[Flag]]):
    pass


class FlagBody(Body):
    enabled: Annotated[bool, Strict()] = Field(description="false: the kill switch, off for all")
    rollout_percent: Percent = Field(
        description="Share of customers it is on for: 0 to 100, at most two decimals"
    )
    description: Annotated[StrictText, StringConstraints(max_length=500)] = ""

    @field_validator("rollout_percent")
    @classmethod
    def _percent(cls, value: float) -> float:
        exponent = Decimal(repr(value)).as_tuple().exponent
        if not isinstance(exponent, int) or exponent < -2:
            raise ValueError("at most two decimals (hundredths of a percent)")
        return value


class FlagAnswer(Entity):
    name: str
    enabled: bool


def _store(request: Request) -> FlagStore:
    store: FlagStore = request.app.state.flags
    return store


@router.get("/v1/admin/flags", response_model=list[Flag])
async def list_flags(request: Request, _: Admin) -> Response:
    async with database(request).connection() as conn:
        found = await flags.list_flags(conn)
    return json_response(FlagList(found))


@router.get("/v1/admin/flags/{name}", response_model=Flag)
async def get_flag(request: Request, name: FlagName, _: Admin) -> Response:
    async with database(request).connection() as conn:
        flag = await flags.get_flag(conn, name)
    return read_response(request, flag, etag(flag.version))


@router.put(
    "/v1/admin/flags/{name}",
    response_model=Flag,
    responses={201: {"model": Flag, "description": "Created"}},
)
async def put_flag(request: Request, name: FlagName, body: FlagBody, principal: Admin) -> Response:
    """Create or replace a flag. ``enabled: false`` is the kill switch. If-Match: "N" replaces
    only version N; If-None-Match: * only creates. Every worker applies it within a second."""
    expected, create_only = if_match(request), if_none_match_any(request)

    async def work(conn: Connection) -> Reply:
        flag, created = await flags.put_flag(
            conn,
            name,
            enabled=body.enabled,
            rollout_percent=Decimal(repr(body.rollout_percent)),
            description=body.description,
            expected_version=expected,
            create_only=create_only,
        )
        return Reply(flag, status_code=201 if created else 200, version=flag.version)

    response = await write(request, principal, work)
    await _reload(request)
    return response


@router.delete("/v1/admin/flags/{name}", response_model=Flag)
async def delete_flag(request: Request, name: FlagName, principal: Admin) -> Response:
    """Delete a flag (then off everywhere); the answer is the flag as it was. If-Match: "N"
    deletes only version N."""
    expected = if_match(request)

    async def work(conn: Connection) -> Reply:
        flag = await flags.delete_flag(conn, name, expected_version=expected)
        return Reply(flag, version=flag.version)

    response = await write(request, principal, work)
    await _reload(request)
    return response


@router.get("/v1/flags/{name}", response_model=FlagAnswer)
async def evaluate_flag(
    request: Request,
    name: FlagName,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
    customer: Annotated[str | None, Query(pattern=CUSTOMER_PATTERN)] = None,
) -> Response:
    """Whether the flag is on for this customer (an unknown flag is off). Without a customer,
    only a flag at 100% is on."""
    answer = FlagAnswer(name=name, enabled=_store(request).enabled(name, customer))
    return json_response(answer, headers={"Cache-Control": "no-store"})


async def _reload(request: Request) -> None:
    """This worker applies its own write before answering (read-your-writes on the client API);
    the others hear of it by NOTIFY. The write is committed: a failed reload is only logged,
    the NOTIFY or the periodic reload catch up."""
    try:
        await _store(request).reload()
    except DatabaseUnavailable as exc:
        log.warning("feature flags not reloaded after a write: %s", exc)
