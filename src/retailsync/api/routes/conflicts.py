from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import RootModel
from starlette.responses import Response

from retailsync.access import Principal, Scope
from retailsync.api.auth import requires
from retailsync.api.http import Reply, database, json_response, write
from retailsync.api.schemas import ResolveBody
from retailsync.conflicts import ledger, reconcile
from retailsync.conflicts.ledger import Conflict
from retailsync.db.database import Connection
from retailsync.errors import RequestInvalid

router = APIRouter(tags=["conflicts"])
Admin = Annotated[Principal, Depends(requires(Scope.CONFLICTS))]
ConflictId = Annotated[int, Path(ge=1, le=2**62)]


class ConflictList(RootModel[list[Conflict]]):
    pass


@router.get("/v1/conflicts", response_model=list[Conflict])
async def list_conflicts(
    request: Request,
    _: Admin,
    status: Annotated[Literal["resolved", "queued", "manual"] | None, Query()] = None,
    entity: Annotated[str | None, Query(pattern=r"^[a-z-]{1,32}$")] = None,
    after: Annotated[int, Query(ge=0, description="Return conflicts with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """The conflict ledger, oldest first. ``status=manual`` is the queue waiting for a person."""
    async with database(request).connection() as conn:
        found = await ledger.list_conflicts(
            conn, status=status, entity=entity, after=after, limit=limit
        )
    return json_response(ConflictList(found))


@router.post("/v1/conflicts/{conflict_id}/resolve", response_model=Conflict)
async def resolve(
    request: Request, conflict_id: ConflictId, body: ResolveBody, principal: Admin
) -> Response:
    """Keep one of the conflict's versions: it is written back and the conflict closed."""

    async def work(conn: Connection) -> Reply:
        conflict = await ledger.get_conflict(conn, conflict_id, lock=True)
        if body.choose >= len(conflict.versions):
            raise RequestInvalid(
                "choose", f"conflict {conflict_id} has {len(conflict.versions)} versions"
            )
        closed = await reconcile.apply_choice(
            conn,
            request.app.state.appliers,
            conflict,
            body.choose,
            by=f"admin:{principal.key_id}",
            note=body.note,
        )
        return Reply(closed, version=closed.version)

    return await write(request, principal, work)
