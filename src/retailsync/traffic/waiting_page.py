"""The HTTP face of the waiting room: what a request presents (session, pass, queue token, as
headers from apps or cookies from browsers), what a queued or turned-away session is told (JSON
for apps, a self-refreshing page for browsers), and the gate as an ASGI middleware.

Waiting is answered ``202 Accepted`` (the session is in the queue; nothing failed) with
``Retry-After`` saying when to ask again; sold out is ``410 Gone`` (the event's stock is gone and
will not come back through this queue). Neither may be cached: each answer is for one session.
Apps get ``{"event", "position", "ahead", "estimated_wait_s", "status"}``; browsers get the same
facts in a page that reloads itself after ``Retry-After`` seconds, carrying its cookies.
"""

from __future__ import annotations

import html
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from http.cookies import SimpleCookie
from typing import Literal

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retailsync.traffic.waiting_tokens import new_session_id, valid_session_id

RawHeaders = list[tuple[bytes, bytes]]
Gate = Callable[[Scope], Awaitable[Response | None]]
# Where a gate leaves the headers (pass, session) to add to a response it let through.
ADMISSION_HEADERS = "retailsync.waiting_room.headers"
SESSION_HEADER = "retailsync-session"
TOKEN_HEADER = "retailsync-queue-token"  # noqa: S105 (a header name)
PASS_HEADER = "retailsync-queue-pass"  # noqa: S105
SESSION_COOKIE = "rs_session"
_SESSION_COOKIE_S = 30 * 86_400
MAX_POLL_S = 10  # a session admitted between two polls loses at most this much of its turn


@dataclass(frozen=True, slots=True)
class QueueView:
    event: str
    position: int | None  # None: the session never got a position (it came after sell-out)
    ahead: int  # positions before this one not yet admitted
    estimated_wait_s: int | None  # None when there is nothing to wait for
    status: Literal["waiting", "sold_out"]


def wants_html(accept: str) -> bool:
    """Browsers name text/html; apps send application/json or nothing, and get JSON."""
    return "text/html" in accept.lower()


def poll_after_s(view: QueueView) -> int:
    """Ask again about when the turn should come, at least each second, at most each 10 s."""
    wait = view.estimated_wait_s or 1
    return max(1, min(MAX_POLL_S, math.ceil(wait)))


def waiting_response(view: QueueView, *, html_page: bool, extra: RawHeaders) -> Response:
    return _queue_response(view, 202, poll_after_s(view), html_page=html_page, extra=extra)


def sold_out_response(view: QueueView, *, html_page: bool, extra: RawHeaders) -> Response:
    return _queue_response(view, 410, None, html_page=html_page, extra=extra)


def _queue_response(
    view: QueueView, status: int, retry_s: int | None, *, html_page: bool, extra: RawHeaders
) -> Response:
    """The page (refreshing itself after ``retry_s``, if any) or the JSON of ``view``."""
    headers = {"Cache-Control": "no-store"}
    if retry_s is not None:
        headers["Retry-After"] = str(retry_s)
    if html_page:
        response: Response = HTMLResponse(_page(view, refresh_s=retry_s), status, headers)
    else:
        response = JSONResponse(asdict(view), status, headers)
    response.raw_headers.extend(extra)
    return response


def cookie(name: str, value: str, *, max_age: int, secure: bool) -> tuple[bytes, bytes]:
    """One ``Set-Cookie`` header: HttpOnly (scripts never see a token), SameSite=Lax."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = value
    morsel = jar[name]
    morsel["path"] = "/"
    morsel["max-age"] = max_age
    morsel["httponly"] = True
    morsel["samesite"] = "lax"
    if secure:
        morsel["secure"] = True
    return b"set-cookie", morsel.OutputString().encode("latin-1")


def _page(view: QueueView, *, refresh_s: int | None) -> str:
    event = html.escape(view.event)
    if view.status == "sold_out":
        title = "Sold out"
        body = f"<p>Everything in <b>{event}</b> has been sold. Thank you for waiting.</p>"
    else:
        title = "You are in the queue"
        minutes = math.ceil((view.estimated_wait_s or 0) / 60)
        body = (
            f"<p>You are number <b>{view.position}</b> in the queue for <b>{event}</b>; "
            f"{view.ahead} ahead of you. Estimated wait: about {minutes} min.</p>"
            "<p>This page refreshes itself; keep it open and you will be let in.</p>"
        )
    refresh = "" if refresh_s is None else f'<meta http-equiv="refresh" content="{refresh_s}">'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"{refresh}<title>{title}</title></head>"
        f"<body><h1>{title}</h1>{body}</body></html>"
    )


class Visit:
    """What one request presents: its session (a new one when it has none), pass and token.
    A header wins over a cookie: apps send headers, browsers cookies."""

    def __init__(self, scope: Scope, event: str) -> None:
        headers = Headers(scope=scope)
        cookies = cookie_parser(headers.get("cookie", ""))
        self.pass_cookie, self.token_cookie = f"rs_pass_{event}", f"rs_queue_{event}"
        self.html = wants_html(headers.get("accept", ""))
        self.secure = scope.get("scheme") == "https"
        presented = headers.get(SESSION_HEADER) or cookies.get(SESSION_COOKIE)
        self.new_session = not presented
        self.session: str | None = presented or new_session_id()
        if not valid_session_id(self.session):
            self.session = None
        self.pass_token = headers.get(PASS_HEADER) or cookies.get(self.pass_cookie)
        self.queue_token = headers.get(TOKEN_HEADER) or cookies.get(self.token_cookie)

    def session_headers(self) -> RawHeaders:
        if not self.new_session or self.session is None:
            return []
        sid = self.session
        age = _SESSION_COOKIE_S
        return [
            cookie(SESSION_COOKIE, sid, max_age=age, secure=self.secure),
            (SESSION_HEADER.encode(), sid.encode()),
        ]


class WaitingRoomMiddleware:
    """A gate (``WaitingRoom.gate``) as an ASGI middleware: sends what the gate answers, and
    adds the pass and session headers to the responses of requests it let in."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.gate(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, with_admission_headers(scope, send))


def with_admission_headers(scope: Scope, send: Send) -> Send:
    """``send``, adding the pass and session headers the gate left for a request it let in."""
    extra: RawHeaders | None = scope.get(ADMISSION_HEADERS)
    if not extra:
        return send

    async def send_with_pass(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_pass
