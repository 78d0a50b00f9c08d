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
    _in_message = False  # the parser has begun a request and not finished it

    def data_received(self, data: bytes) -> None:
        answer = None if self._in_message else self._whole_request_refusal(data)
        if answer is None:
            super().data_received(data)
            return
        self._answer_early(answer)

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        answer = self._parsed_request_refusal()
        if answer is None:
            super().on_headers_complete()
            return
        self._answer_early(answer)

    def _answer_early(self, answer: bytes) -> None:
        self.transport.write(answer)
        self.cycle = _ANSWERED_EARLY  # type: ignore[assignment]
        self.on_response_complete()  # counts it, re-arms the keep-alive timeout

    def _refusal(self) -> Refusal | None:
        """The gate's decision, if this connection may be answered early now."""
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind an unanswered request: answers keep their order
        return self.app_state.get(EARLY_REFUSAL)

    def _whole_request_refusal(self, data: bytes) -> bytes | None:
        """The refusal of a request that ``data`` holds whole, decided before the parser sees
        it. At ten times capacity most requests are refused, and httptools' Python callbacks
        (one per header, then uvicorn's scope) were most of what a refusal cost. Only the
        plainest request qualifies: one GET, HTTP/1.1, every line ending in CRLF, the head
        ending with the data, no header that could give it a body, end the connection or
        change the protocol; anything else, or anything unsure, goes to the parser."""
        if not data.startswith(b"GET ") or not data.endswith(b"\r\n\r\n"):
            return None
        if data.find(b"\r\n\r\n") != len(data) - 4 or data.count(b"\n") != data.count(b"\r\n"):
            return None  # more than one request, or a line the parser may split otherwise
        refusal = self._refusal()
        if refusal is None:
            return None
        line_end = data.find(b"\r\n")
        parts = data[:line_end].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(b"/"):
            return None
        headers = data[line_end:].lower()
        if any(name in headers for name in _HEADERS_FOR_THE_PARSER):
            return None
        if b"connection" in headers and not _keeps_alive(headers):
            return None
        return self._refusal_of_path(refusal, "GET", parts[1].split(b"?", 1)[0])

    def _parsed_request_refusal(self) -> bytes | None:
        parser = self.parser
        if parser.should_upgrade() or not parser.should_keep_alive():
            return None  # upgrades and closing connections: uvicorn's own handling
        if parser.get_http_version() != "1.1":
            return None
        refusal = self._refusal()
        if refusal is None:
            return None
        method = parser.get_method().decode("ascii")
        return self._refusal_of_path(refusal, method, httptools.parse_url(self.url).path)

    def _refusal_of_path(self, refusal: Refusal, method: str, path: bytes) -> bytes | None:
        if b"%" in path or not path.isascii():
            return None  # decoded by uvicorn, the way the application sees it
        return refusal(method, self.root_path + path.decode())


# Headers that may give a GET a body, change the protocol or ask for an interim answer.
_HEADERS_FOR_THE_PARSER = (b"content-length", b"transfer-encoding", b"upgrade", b"expect")


def _keeps_alive(headers: bytes) -> bool:
    """Whether the (lowercased) headers' one Connection header says only keep-alive."""
    if headers.count(b"connection") != 1:
        return False
    at = headers.find(b"\r\nconnection:")
    if at < 0:
        return False
    start = at + len(b"\r\nconnection:")
    return headers[start : headers.index(b"\r\n", start)].strip() == b"keep-alive"
