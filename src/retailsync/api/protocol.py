"""uvicorn's httptools protocol, with overload refusals answered from the parser's callback.

Under a flood, what a refusal costs decides whether checkout still gets through: the worker's
event loop pays it for every shed request, and each step of a checkout waits its turn behind
them. Refused through ASGI, a shed request cost about what a hello-world request costs (a
scope, a task, a coroutine and uvicorn's send path); refused here, as soon as its head is
parsed, it is a dictionary lookup, the admission check and one write of prebuilt bytes.

The decision is the traffic gate's (``TrafficGate.refusal``), handed over by the application's
lifespan in the lifespan state under ``EARLY_REFUSAL``. Until it is there, and for every request
it does not refuse, the request goes the usual way. Requests answered here are not in uvicorn's
access log; they are counted in the admission metrics like every other shed request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EARLY_REFUSAL = "retailsync.early_refusal"

Refusal = Callable[[str, str], bytes | None]  # (method, path) -> the whole answer, or None


class _AnsweredEarly:
    """Stands for a refused request's cycle: what uvicorn asks of a finished one. The parser's
    remaining callbacks for the request (a body still arriving) see it complete and drop what
    comes; the next request starts as after any other answer."""

    response_complete = True
    message_event = asyncio.Event()  # set when the connection is lost: no one waits on it


_ANSWERED_EARLY = _AnsweredEarly()


class EarlyRefusalProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        answer = self._early_refusal()
        if answer is None:
            super().on_headers_complete()
            return
        self.transport.write(answer)
        self.cycle = _ANSWERED_EARLY  # type: ignore[assignment]
        self.on_response_complete()  # counts it, arms the keep-alive timeout

    def _early_refusal(self) -> bytes | None:
        refusal: Refusal | None = self.app_state.get(EARLY_REFUSAL)
        if refusal is None:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind an unanswered request: answers keep their order
        parser = self.parser
        if parser.should_upgrade() or not parser.should_keep_alive():
            return None  # upgrades and closing connections: uvicorn's own handling
        if parser.get_http_version() != "1.1":
            return None
        path = httptools.parse_url(self.url).path
        if b"%" in path or not path.isascii():
            return None  # decoded by uvicorn, the way the application sees it
        return refusal(parser.get_method().decode("ascii"), self.root_path + path.decode())
