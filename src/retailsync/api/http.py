"""HTTP plumbing shared by the routes: versions as ETags, conditional requests, and the write
path that makes every POST idempotent under an Idempotency-Key."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import msgspec
from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response

from retailsync.access import Principal
from retailsync.db.database import Connection, Database
from retailsync.errors import RequestInvalid
from retailsync.services import idempotency

_VERSION_TAG = re.compile(r'^(?:W/)?"(\d{1,18})"$')
_TRANSACTION_ID = "SELECT pg_current_xact_id()::text"
T = TypeVar("T")
_RETRIES = 3  # a deadlock or serialization failure rolls everything back; try again


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(request: Request) -> int | None:
    """The version a conditional write names (If-Match: "7"), or None for a blind write."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    match = _VERSION_TAG.match(raw.strip())
    if match is None:
        raise RequestInvalid("If-Match", 'expected one entity tag such as "7"')
    return int(match[1])


def if_none_match_any(request: Request) -> bool:
    """If-None-Match: * on a write: create only, never replace."""
    return request.headers.get("if-none-match", "").strip() == "*"


Document = BaseModel | msgspec.Struct  # pydantic entities, or the engine's structs (holds)


def encode(document: Document) -> bytes:
    if isinstance(document, BaseModel):
        return document.model_dump_json().encode()
    return msgspec.json.encode(document)


def json_response(
    model: Document,
    *,
    status_code: int = 200,
    version: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    all_headers = dict(headers or {})
    if version is not None:
        all_headers["ETag"] = etag(version)
    return Response(
        encode(model),
        status_code=status_code,
        headers=all_headers,
        media_type="application/json",
    )


def read_response(request: Request, model: Document, tag: str) -> Response:
    """A GET answer carrying ``tag``; 304 when the client already holds it."""
    if request.headers.get("if-none-match", "").strip() in (tag, f"W/{tag}"):
        return Response(status_code=304, headers={"ETag": tag})
    response = json_response(model)
    response.headers["ETag"] = tag
    return response


@dataclass(frozen=True, slots=True)
class Reply:
    """What a write produced, before it becomes (and is stored as) an HTTP response."""

    model: Document
    status_code: int = 200
    version: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The transaction's id, if the work read it already (saves ``write`` its round trip).
    transaction_id: str | None = None


async def write_alone(
    request: Request, work: Callable[[Connection], Awaitable[Reply | None]]
) -> Response | None:
    """Run ``work``, one statement that is its own transaction (no BEGIN and no COMMIT to wait
    for: two round trips fewer), unless the request has an Idempotency-Key, whose answer must
    be stored in the effect's transaction. None: not done so (no key was allowed, or ``work``
    declined, having written nothing); the caller then uses ``write``. ``work``'s reply must
    carry its transaction's id."""
    if request.headers.get("idempotency-key") is not None:
        return None
    db = database(request)

    async def attempt() -> Reply | None:
        async with db.connection() as conn:
            return await work(conn)

    reply = await _retried(attempt)
    if reply is None:
        return None
    assert reply.transaction_id is not None, "a statement alone reads its transaction's id"
    response = _response(reply)
    response.headers["Consistency-Token"] = reply.transaction_id
    return response


def _response(reply: Reply) -> Response:
    return json_response(
        reply.model, status_code=reply.status_code, version=reply.version, headers=reply.headers
    )


async def write(
    request: Request, principal: Principal, work: Callable[[Connection], Awaitable[Reply]]
) -> Response:
    """Run ``work`` in one transaction. For a POST with an Idempotency-Key, the answer is stored
    in that same transaction and a retry gets it back instead of a second effect."""
    db = database(request)
    key = request.headers.get("idempotency-key") if request.method == "POST" else None
    if key is not None:
        key = idempotency.validate_key(key)
        target = request.url.path + ("?" + request.url.query if request.url.query else "")
        request_print = idempotency.fingerprint(request.method, target, await request.body())

    async def attempt() -> Response:
        async with db.transaction() as conn:
            if key is not None:
                stored = await idempotency.claim(conn, principal.key_id, key, request_print)
                if stored is not None:
                    return _replay(stored)
            reply = await work(conn)
            response = _response(reply)
            if key is not None:
                answer = idempotency.StoredAnswer(
                    reply.status_code, bytes(response.body), response.headers.get("etag")
                )
                await idempotency.record(conn, principal.key_id, key, answer)
            # Read-your-writes: a cached read presenting the transaction's id waits until
            # its changes reached that worker's cache (or reads through).
            token = reply.transaction_id or await conn.fetchval(_TRANSACTION_ID)
        response.headers["Consistency-Token"] = token
        return response

    return await _retried(attempt)


async def _retried(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt``, again after a deadlock or serialization failure (which rolled it back)."""
    for tries in range(1, _RETRIES + 1):
        try:
            return await attempt()
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if tries == _RETRIES:
                raise
    raise AssertionError("unreachable")


def _replay(stored: idempotency.StoredAnswer) -> Response:
    headers = {"Idempotent-Replayed": "true"}
    if stored.etag:
        headers["ETag"] = stored.etag
    return Response(
        stored.body, status_code=stored.status_code, headers=headers, media_type="application/json"
    )


def database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db
