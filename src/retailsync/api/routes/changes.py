"""``GET /v1/changes``: the change stream as Server-Sent Events, for channel clients (a POS
feed, a warehouse system) that follow changes without running a consumer of their own.

Each event's SSE ``id`` is its offset in the event log, so a client that reconnects with
``Last-Event-ID`` (browsers do it by themselves) resumes right after the last event it saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import StreamingResponse

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.cdc.events import encode_event
from retailsync.errors import RequestInvalid
from retailsync.eventlog.base import EventLog

router = APIRouter(tags=["changes"])
_BATCH = 500
_IDLE_POLL = 0.2  # seconds between looks at the log's head when caught up
_KEEPALIVE = 15.0  # an SSE comment now and then keeps proxies from closing an idle stream
_TYPE = r"^[a-z][a-z0-9_.-]{0,99}(,[a-z][a-z0-9_.-]{0,99}){0,49}$"


def _resume_point(from_: int | None, last_event_id: str | None) -> int:
    if last_event_id is None:
        return from_ or 0
    if not last_event_id.isdigit() or len(last_event_id) > 18:
        raise RequestInvalid("Last-Event-ID", "expected the id of an event of this stream")
    return int(last_event_id)


@router.get(
    "/v1/changes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def changes(
    request: Request,
    _: Annotated[Principal, Depends(requires(Scope.READ))],
    types: Annotated[
        str | None, Query(pattern=_TYPE, description="Comma-separated event types")
    ] = None,
    from_: Annotated[
        int | None, Query(alias="from", ge=0, le=2**62, description="Start after this offset")
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=100_000, description="Close after this many events")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Changes in log order, as they are captured: ``event:`` the event type, ``data:`` the
    change event as JSON."""
    cursor = _resume_point(from_, last_event_id)
    wanted = None if types is None else frozenset(types.split(","))
    log: EventLog = request.app.state.event_log
    return StreamingResponse(
        _stream(request, log, cursor, wanted, limit),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(
    request: Request,
    log: EventLog,
    cursor: int,
    wanted: frozenset[str] | None,
    limit: int | None,
) -> AsyncIterator[bytes]:
    sent = 0
    idle = 0.0
    while limit is None or sent < limit:
        records = await log.read(cursor, _BATCH)
        for record in records:
            cursor = record.offset
            if wanted is not None and record.event.type not in wanted:
                continue
            data = encode_event(record.event).decode()
            yield f"id: {record.offset}\nevent: {record.event.type}\ndata: {data}\n\n".encode()
            sent += 1
            if limit is not None and sent >= limit:
                return
        if records:
            idle = 0.0
            continue
        if await request.is_disconnected():
            return
        await asyncio.sleep(_IDLE_POLL)
        idle += _IDLE_POLL
        if idle >= _KEEPALIVE:
            idle = 0.0
            yield b": keep-alive\n\n"
