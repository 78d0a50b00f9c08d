"""``POST /v1/events/clicks``: behavioural events, written back in batches (see
``retailsync.clicks`` for what a crash can lose)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import json_response
from retailsync.api.schemas import ClicksBody
from retailsync.clicks import Click, ClickBuffer
from retailsync.errors import RequestInvalid

router = APIRouter(tags=["events"])
_SKEW = timedelta(days=1)  # how far an event's own time may be from the server's


class Accepted(BaseModel):
    accepted: int
    buffered: int


@router.post("/v1/events/clicks", response_model=Accepted, status_code=202)
async def clicks(
    request: Request,
    body: ClicksBody,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
) -> Response:
    """Accepted into memory (202) and written within a second: a worker killed before that
    loses what it had not written yet."""
    now = datetime.now(UTC)
    for event in body.events:
        if event.at is not None and abs(event.at - now) > _SKEW:
            raise RequestInvalid("at", "more than a day from the server's clock")
    buffer: ClickBuffer = request.app.state.clicks
    buffer.accept([Click(e.session_id, e.kind, e.sku, e.at or now, now) for e in body.events])
    return json_response(
        Accepted(accepted=len(body.events), buffered=buffer.buffered), status_code=202
    )
