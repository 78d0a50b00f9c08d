"""GET answers from the cache, with the headers a shared cache and a browser need: ETag,
Cache-Control by data class, Surrogate-Key (the edge cache is purged by these keys), and
read-your-writes through the ``Consistency-Token`` a write's response carried."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from fastapi import Request
from starlette.responses import Response

from retailsync.cache.reads import Answer, CachedReads, DocumentLoader
from retailsync.errors import RequestInvalid

TOKEN_HEADER = "Consistency-Token"  # noqa: S105 (a header name)
_MAX_XID = 2**64 - 1
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: str.isdigit() takes "²" too


def content_tag(body: bytes) -> str:
    """A weak entity tag for a document made of many rows: from its bytes."""
    return f'W/"{hashlib.blake2b(body, digest_size=8).hexdigest()}"'


def consistency_token(request: Request) -> int | None:
    raw = request.headers.get(TOKEN_HEADER.lower())
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or int(raw) > _MAX_XID:
        raise RequestInvalid(TOKEN_HEADER, "expected the token a write's response carried")
    return int(raw)


async def cached_read(
    request: Request, domain: str, key: str, loader: DocumentLoader, *, surrogate: Sequence[str]
) -> Response:
    reads: CachedReads = request.app.state.reads
    answer = await reads.read(domain, key, loader, token=consistency_token(request))
    return cached_response(request, answer, surrogate)


def cached_headers(answer: Answer, surrogate: Sequence[str]) -> dict[str, str]:
    headers = {
        "ETag": answer.tag,
        "Cache-Control": "no-cache" if answer.policy is None else answer.policy.cache_control(),
        "Surrogate-Key": " ".join(surrogate),
        "Retailsync-Cache": answer.tier,
    }
    if answer.tier == "stale":  # served past its TTL while a refresh runs (RFC 9111 Warning)
        headers["Warning"] = '110 retailsync "Response is Stale"'
    elif answer.tier == "stale-if-error":  # the database is away: the last value held
        headers["Warning"] = '111 retailsync "Revalidation Failed"'
    return headers


def cached_response(request: Request, answer: Answer, surrogate: Sequence[str]) -> Response:
    headers = cached_headers(answer, surrogate)
    held = request.headers.get("if-none-match", "").strip()
    if held.removeprefix("W/") == answer.tag.removeprefix("W/"):  # weak comparison (RFC 9110)
        return Response(status_code=304, headers=headers)
    return Response(answer.body, headers=headers, media_type="application/json")
