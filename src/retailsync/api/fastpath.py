"""The cached GETs' fast path, in front of the framework.

A product, price list or stock level that L1 holds is answered here, from the key cache and
L1 alone: no routing, no dependency injection, no validation objects, about a fifth of what
the same answer costs through FastAPI (measured by ``retailsync bench cache``). Anything else
(a miss, an expired or early-refresh entry, a key not verified in the last seconds, a
read-your-writes token, any other route) goes on to the application unchanged, which answers
it the slow way and fills the cache.
"""

from __future__ import annotations

import re
import time

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from retailsync.access import CHANNEL_SCOPES
from retailsync.access import Scope as AccessScope
from retailsync.api.cached import cached_headers
from retailsync.cache.keys import prices_key, product_key, stock_key
from retailsync.cache.reads import Answer, CachedReads
from retailsync.observe.metrics import observe_request
from retailsync.services.keys import KeyVerifier
from retailsync.traffic.gate import TrafficGate

_CACHED = re.compile(r"/v1/(products|prices|stock)/([A-Za-z0-9][A-Za-z0-9._-]{0,63})")
_DOMAINS = {
    "products": ("product", product_key),
    "prices": ("price", prices_key),
    "stock": ("stock", stock_key),
}


_ROUTES = {name: f"/v1/{name}/{{sku}}" for name in _DOMAINS}  # templates, as metrics label them


class RetailsyncApi(FastAPI):
    """The application, with cached GETs answered before the framework's middleware stack
    (each layer of which costs a coroutine and a wrapped ``send`` per request)."""

    # What the fast path needs, set by ``open_fast_path`` once the worker is open: plain
    # attributes, not ``state`` (whose every lookup is a Python-level ``__getattr__``).
    _gate: TrafficGate | None = None
    _cache: tuple[CachedReads, KeyVerifier] | None = None

    def open_fast_path(self, reads: CachedReads, keys: KeyVerifier, gate: TrafficGate) -> None:
        self._cache, self._gate = (reads, keys), gate

    def close_fast_path(self) -> None:
        self._cache = self._gate = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = self._gate
        if gate is not None and scope["type"] == "http":
            await gate(scope, receive, send, self._serve)
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        cache = self._cache
        if cache is not None and scope["type"] == "http" and scope["method"] == "GET":
            started = time.perf_counter()
            answered = await _answer_from_cache(scope, send, *cache)
            if answered is not None:
                observe_request(answered[0], "GET", started, answered[1])
                return
        await super().__call__(scope, receive, send)


async def _answer_from_cache(
    scope: Scope, send: Send, reads: CachedReads, keys: KeyVerifier
) -> tuple[str, int] | None:
    """(route template, status) when answered; None: on to the framework."""
    match = _CACHED.fullmatch(scope["path"])
    if match is None or scope["query_string"]:
        return None
    authorization = held = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is not None:  # two: the framework decides
                return None
            authorization = value
        elif name == b"if-none-match":
            held = value.decode("latin-1").strip()
        elif name == b"consistency-token":
            return None
    principal = None if authorization is None else keys.from_header(authorization)
    if principal is None or AccessScope.READ not in CHANNEL_SCOPES[principal.channel]:
        return None
    resource, sku = match.groups()
    domain, key_of = _DOMAINS[resource]
    key = key_of(sku)
    answer = reads.hit(domain, key)
    if answer is None:
        return None
    headers = _encoded_headers(answer, key)
    if held is not None and held.removeprefix("W/") == answer.tag.removeprefix("W/"):
        await send({"type": "http.response.start", "status": 304, "headers": headers[0]})
        await send({"type": "http.response.body", "body": b""})
        return _ROUTES[resource], 304
    await send({"type": "http.response.start", "status": 200, "headers": headers[1]})
    await send({"type": "http.response.body", "body": answer.body})
    return _ROUTES[resource], 200


RawHeaders = list[tuple[bytes, bytes]]
# Per document key, the headers of its version last answered, as uvicorn takes them: for a
# 304, and for a 200 (with the body's type and length). Shared lists: nothing appends to them.
_HEADERS: dict[str, tuple[str, str, tuple[RawHeaders, RawHeaders]]] = {}


def _encoded_headers(answer: Answer, key: str) -> tuple[RawHeaders, RawHeaders]:
    held = _HEADERS.get(key)
    if held is not None and held[0] == answer.tag and held[1] == answer.tier:
        return held[2]
    if len(_HEADERS) > 100_000:  # one per cached document, bounded like L1
        _HEADERS.clear()
    encoded = [(k.lower().encode(), v.encode()) for k, v in cached_headers(answer, [key]).items()]
    length = str(len(answer.body)).encode()
    full = [*encoded, (b"content-type", b"application/json"), (b"content-length", length)]
    _HEADERS[key] = (answer.tag, answer.tier, (encoded, full))
    return encoded, full
