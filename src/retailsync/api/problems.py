"""Errors as RFC 9457 problem documents (application/problem+json) with stable ``type``s.

No stack trace ever reaches a client: unexpected exceptions are logged here and answered
with a bare 500 problem. Every 503 carries ``Retry-After`` (RFC 9110): when the database's
circuit breaker is open, the seconds until its next probe; otherwise 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from retailsync import errors
from retailsync.observe.metrics import REJECTIONS
from retailsync.traffic.breaker import Breaker

log = logging.getLogger(__name__)
PROBLEM_TYPE_PREFIX = "urn:retailsync:problem:"

# DomainError subclass -> (HTTP status, stable problem type)
_DOMAIN: Mapping[type[errors.DomainError], tuple[int, str]] = {
    errors.RequestInvalid: (400, "invalid-parameter"),
    errors.IdempotencyKeyInvalid: (400, "invalid-idempotency-key"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "not-found"),
    errors.InsufficientStock: (409, "insufficient-stock"),
    errors.InvalidTransition: (409, "invalid-transition"),
    errors.CartNotOpen: (409, "cart-not-open"),
    errors.Refused: (409, "refused"),
    errors.VersionConflict: (412, "version-conflict"),
    errors.AlreadyExists: (412, "already-exists"),
    errors.HoldKeyReused: (409, "idempotency-key-reused"),
    errors.IdempotencyKeyReused: (422, "idempotency-key-reused"),
}


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reader passes it through instead of turning
    every error while reading into a 400."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(413, f"request body larger than {limit} bytes")


def problem_body(status: int, slug: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The document itself (RFC 9457 members and ``extra``), for callers that send it
    without a Response object (the traffic gate, which prebuilds its refusals)."""
    return {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        **extra,
    }


def problem(
    status: int, slug: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    REJECTIONS.labels(slug).inc()
    if status == 503 and not any(name.lower() == "retry-after" for name in headers or ()):
        headers = {**(headers or {}), "Retry-After": "1"}  # unavailable: say when to retry
    return JSONResponse(
        problem_body(status, slug, detail, **extra),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.DomainError)
    status, slug = next(
        (mapping for cls, mapping in _DOMAIN.items() if isinstance(exc, cls)), (400, "refused")
    )
    headers: dict[str, str] = {}
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.VersionConflict) and exc.current is not None:
        headers["ETag"] = f'"{exc.current}"'
    return problem(status, slug, exc.detail, headers=headers, **exc.extras())


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    about_body = any(e["loc"] and e["loc"][0] == "body" for e in exc.errors())
    if request.method in ("POST", "PUT") and media_type != "application/json" and about_body:
        return problem(
            415,
            "unsupported-media-type",
            "send the body as JSON with Content-Type: application/json",
        )
    issues = [
        {"location": [str(part) for part in e["loc"]], "message": e["msg"]} for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return problem(400, "malformed-json", "the request body is not valid JSON", errors=issues)
    return problem(422, "validation-error", "the request does not match the schema", errors=issues)


def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, BodyTooLarge):
        return problem(413, "payload-too-large", exc.detail, limit_bytes=exc.limit)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return problem(exc.status_code, slug, str(exc.detail), headers=exc.headers)


def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    breaker = getattr(getattr(request.app.state, "db", None), "breaker", None)
    wait = max(1.0, breaker.retry_after_s()) if isinstance(breaker, Breaker) else 1.0
    headers = {"Retry-After": str(math.ceil(wait))}
    return problem(503, "unavailable", "the database is unavailable", headers=headers)


def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal-error", "an internal error occurred; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(errors.DatabaseUnavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
