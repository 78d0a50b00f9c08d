from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import Reply, write
from retailsync.api.schemas import SyncBody
from retailsync.crdt import HLC
from retailsync.db.database import Connection
from retailsync.errors import RequestInvalid
from retailsync.sync.exchange import Refusal, SentObject, exchange

router = APIRouter(tags=["sync"])
ReplicaPath = Annotated[
    str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="The syncing replica's id")
]


class SyncedObject(BaseModel):
    key: str
    state: str = Field(description="The server's state of the object, base64")
    allotted: int | None = Field(None, description="Units allotted by this sync (stock.units)")


class SyncReply(BaseModel):
    replica: str
    objects: list[SyncedObject]
    conflicts: list[int] = Field(description="Conflicts this sync recorded in the ledger")


def _state(index: int, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise RequestInvalid(f"objects[{index}].state", "is not valid base64") from None


@router.post("/v1/sync/{replica}", response_model=SyncReply)
async def sync(
    request: Request,
    replica: ReplicaPath,
    body: SyncBody,
    principal: Annotated[Principal, Depends(requires(Scope.SYNC))],
) -> Response:
    """Exchange CRDT deltas with an offline-capable replica (a POS terminal, an app).

    The replica sends its deltas (or states) of the objects it changed, asks for stock
    allotments to sell from while offline, and reports sales it refused for want of
    allotment. The server merges everything by the field's merge policy in one transaction,
    and answers with its state of every object named, for the replica to merge in turn.
    """
    sent = [SentObject(o.key, _state(i, o.state)) for i, o in enumerate(body.objects)]
    allot: dict[str, int] = {}
    for item in body.allot:
        if item.key in allot:
            raise RequestInvalid("allot", f"{item.key!r} appears twice")
        allot[item.key] = item.quantity
    refusals = [Refusal(r.key, r.requested, r.available, r.at) for r in body.refused]
    hlc: HLC = request.app.state.hlc

    async def work(conn: Connection) -> Reply:
        outcome = await exchange(conn, hlc, principal, replica, sent, allot, refusals)
        objects = [
            SyncedObject(
                key=key,
                state=base64.b64encode(state).decode(),
                allotted=outcome.granted.get(key),
            )
            for key, state in outcome.states.items()
        ]
        return Reply(SyncReply(replica=replica, objects=objects, conflicts=outcome.conflicts))

    return await write(request, principal, work)
