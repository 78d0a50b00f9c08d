"""The traffic gate: what every HTTP request passes before the application sees it.

In order, cheapest first, so that an overload is refused for the least work:

1. its criticality class, from the route table (operations routes pass untouched);
2. the waiting room of a sale event, if one guards the path (a session kept waiting is not
   load: it is answered before admission);
3. admission under the adaptive concurrency limit: a refusal is a 503 with Retry-After,
   written straight to the ASGI channel, with no database or Redis work; a class that never
   waits for slots is refused earlier still, by ``refusal``, from uvicorn's parser callback
   before any ASGI call (api/protocol.py);
4. rate limits per API key and client address (429 with Retry-After);

then the application, and, once it has answered, the admission ticket is given back with its
latency, which is what moves the concurrency limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from starlette.types import Receive, Scope, Send

from retailsync.api.problems import problem_body
from retailsync.traffic import metrics
from retailsync.traffic.admission import Admission
from retailsync.traffic.classes import RouteTable
from retailsync.traffic.flags import FlagStore
from retailsync.traffic.ratelimit import RateLimiter
from retailsync.traffic.recorder import TrafficRecorder
from retailsync.traffic.waiting_page import with_admission_headers
from retailsync.traffic.waiting_room import WaitingRoom

ADMISSION_FLAG = "traffic.admission"


def _problem(status: int, slug: str, detail: str, retry_after_s: int, **extra: object) -> bytes:
    body = problem_body(status, slug, detail, retry_after_s=retry_after_s, **extra)
    return msgspec.json.encode(body)


def _problem_headers(body: bytes, retry_after_s: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
        (b"cache-control", b"no-store"),
    ]


async def _send_problem(send: Send, status: int, body: bytes, retry_after_s: int) -> None:
    headers = _problem_headers(body, retry_after_s)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _raw_shed_answer(body: bytes) -> bytes:
    """The whole HTTP/1.1 answer of a shed request, as written to the socket."""
    head = b"".join(name + b": " + value + b"\r\n" for name, value in _problem_headers(body, 1))
    return b"HTTP/1.1 503 Service Unavailable\r\n" + head + b"\r\n" + body


class TrafficGate:
    def __init__(
        self,
        routes: RouteTable,
        admission: Admission | None,
        *,
        limiter: RateLimiter | None = None,
        room: WaitingRoom | None = None,
        recorder: TrafficRecorder | None = None,
        flags: FlagStore | None = None,
    ) -> None:
        self.routes = routes
        self.admission = admission
        self.limiter = limiter
        self.room = room
        self.recorder = recorder
        self.flags = flags
        # Refusals are the same bytes every time: built once, so shedding costs no encoding.
        self._shed_bodies = {
            c.name: _problem(503, "overloaded", f"over capacity: {c.name} is shed", 1)
            for c in routes.classes
        }
        self._raw_shed_answers = {
            name: _raw_shed_answer(body) for name, body in self._shed_bodies.items()
        }

    def refusal(self, method: str, path: str) -> bytes | None:
        """The whole answer to a request shed before the application is called, as soon as
        its head is parsed (api/protocol.py), or None: on the usual way, through ``__call__``.
        Only what ``__call__`` would shed at once and the same way: a class that waits for
        slots, a path a waiting room guards, or admission switched off all go on."""
        admission = self.admission
        if admission is None:
            return None
        criticality = self.routes.classify(method, path)
        if criticality is None or (self.room is not None and self.room.guards(path)):
            return None
        if not self._admitting() or not admission.shed_at_once(criticality, time.monotonic()):
            return None
        if self.recorder is not None:
            self.recorder.count(criticality.name, shed=True)
        return self._raw_shed_answers[criticality.name]

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, app: Callable[..., Awaitable[None]]
    ) -> None:
        criticality = self.routes.classify(scope["method"], scope["path"])
        if criticality is None:
            await app(scope, receive, send)
            return
        if self.room is not None:  # before admission: a session kept waiting is not load
            waiting = await self.room.gate(scope)
            if waiting is not None:
                await waiting(scope, receive, send)
                return
            send = with_admission_headers(scope, send)
        ticket = None
        admission = self.admission
        if admission is not None and not self._admitting():
            admission = None
        if admission is not None:
            ticket = await admission.admit(criticality)
            if ticket is None:
                if self.recorder is not None:
                    self.recorder.count(criticality.name, shed=True)
                await _send_problem(send, 503, self._shed_bodies[criticality.name], 1)
                return
        if self.recorder is not None:
            self.recorder.count(criticality.name)
        try:
            if self.limiter is None or not await self._rate_limited(scope, send):
                await app(scope, receive, send)
        finally:
            if ticket is not None and admission is not None:
                admission.done(ticket)

    def _admitting(self) -> bool:
        """Admission's kill switch: the flag ``traffic.admission`` set off (through the admin
        API, on every worker within a second) lets every request in; no flag: on."""
        return self.flags is None or self.flags.enabled(ADMISSION_FLAG, default=True)

    async def _rate_limited(self, scope: Scope, send: Send) -> bool:
        assert self.limiter is not None
        api_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                api_key = value
                break
        client = scope.get("client")
        refused = await self.limiter.check(api_key=api_key, address=client[0] if client else None)
        if refused is None:
            return False
        body = _problem(
            429, "rate-limited", f"over the {refused.scope} limit {refused.limit}",
            refused.retry_after_s, limit=refused.limit, scope=refused.scope,
        )  # fmt: skip
        await _send_problem(send, 429, body, refused.retry_after_s)
        return True

    async def publish(self) -> None:
        """Set the gauges (a chore, every second: per request they would cost more)."""
        if self.admission is not None:
            metrics.CONCURRENCY_LIMIT.set(self.admission.limit.limit)
            metrics.IN_FLIGHT.set(self.admission.inflight)
