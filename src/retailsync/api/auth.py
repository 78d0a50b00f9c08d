"""Bearer API keys. A dependency resolves the caller before the body is validated, so a
request without a valid key gets 401 whatever else is wrong with it, and nothing is written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from retailsync.access import Principal, Scope
from retailsync.errors import Unauthorized
from retailsync.services.keys import KeyVerifier


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    verifier: KeyVerifier = request.app.state.keys
    principal = await verifier.verify(secret.strip())
    request.state.principal = principal
    return principal


def requires(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the authenticated caller, who must hold ``scope``."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        principal.require(scope)
        return principal

    return dependency
