"""Shed requests refused from uvicorn's parser callback (api/protocol.py), through a real
uvicorn serving the real application on a socket: the lifespan hands the gate's refusal to
the protocol, a refused request never reaches the ASGI application, and the connection goes
on as after any answer (keep-alive, a body still arriving, pipelined requests in order)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from retailsync.api.app import create_app
from retailsync.api.protocol import EarlyRefusalProtocol
from retailsync.config import load_settings
from retailsync.db.database import Database
from retailsync.traffic.gate import TrafficGate
from tests.traffic.test_gate import busy

pytestmark = pytest.mark.surface


@dataclass
class Served:
    port: int
    gate: TrafficGate
    asgi_calls: list[str]  # the path of every HTTP request the application was called for


class _Counting:
    def __init__(self, app: ASGIApp, calls: list[str]) -> None:
        self.app, self.calls = app, calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
async def served(db: Database, database_dsn: str) -> AsyncIterator[Served]:
    settings = load_settings({"db_url": database_dsn}, environ={})
    app = create_app(settings, db=db)
    calls: list[str] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        _Counting(app, calls), http=EarlyRefusalProtocol, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)
        yield Served(listener.getsockname()[1], app.state.traffic, calls)
    finally:
        server.should_exit = True
        await task
        listener.close()


Answer = tuple[int, dict[str, str], bytes]  # status, headers (names lower case), body


@contextlib.asynccontextmanager
async def _connection(port: int) -> AsyncIterator[Callable[[bytes, int], Awaitable[list[Answer]]]]:
    """One keep-alive connection: ``ask(raw, count)`` writes ``raw``, reads ``count`` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def ask(raw: bytes, count: int) -> list[Answer]:
        writer.write(raw)
        answers = []
        async with asyncio.timeout(10):
            for _ in range(count):
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                status_line, *lines = head.strip().split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines)
                body = await reader.readexactly(int(headers["content-length"]))
                answers.append((int(status_line.split()[1]), headers, body))
        return answers

    try:
        yield ask
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _answers(port: int, raw: bytes, count: int) -> list[Answer]:
    async with _connection(port) as ask:
        return await ask(raw, count)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


async def test_a_shed_request_is_answered_without_calling_the_application(
    served: Served,
) -> None:
    async with _connection(served.port) as ask:
        with busy(served.gate):
            [(status, headers, body)] = await ask(_get("/v1/products"), 1)
        [healthy] = await ask(_get("/healthz"), 1)  # the same connection, kept alive
    assert status == 503
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "urn:retailsync:problem:overloaded"
    assert healthy[0] == 200
    assert served.asgi_calls == ["/healthz"]  # the shed request never reached it


async def test_the_connection_goes_on_after_an_early_refusal_even_with_a_body(
    served: Served,
) -> None:
    body = b'{"title": "x", "category": "a"}'
    put = (
        f"PUT /v1/products/SKU-9 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with busy(served.gate):
        answers = await _answers(served.port, put + _get("/healthz"), 2)
    assert [status for status, _, _ in answers] == [503, 200]
    assert served.asgi_calls == ["/healthz"]  # the body was dropped, not read as a request


async def test_pipelined_requests_keep_their_order(served: Served) -> None:
    """A request pipelined behind one not yet answered is not answered ahead of it: it goes
    the usual way (and is shed there, by the same gate)."""
    with busy(served.gate):
        answers = await _answers(served.port, _get("/healthz") + _get("/v1/products"), 2)
    assert [status for status, _, _ in answers] == [200, 503]
    assert served.asgi_calls == ["/healthz", "/v1/products"]


async def test_classes_that_wait_for_slots_and_unmanaged_routes_are_never_refused_early(
    served: Served,
) -> None:
    gate = served.gate
    with busy(served.gate):
        assert gate.refusal("GET", "/v1/products") is not None  # browse: past its share
        assert gate.refusal("GET", "/v1/products/SKU-1") is None  # product: under its share
        assert gate.refusal("POST", "/v1/orders") is None  # checkout waits for a slot
        assert gate.refusal("GET", "/healthz") is None  # operations: never managed
    assert gate.refusal("GET", "/v1/products") is None  # not busy: let in


async def test_a_head_in_two_writes_and_a_get_with_a_body_are_refused_and_the_connection_goes_on(
    served: Served,
) -> None:
    """Requests the whole-request check leaves to the parser are refused by it just the same:
    a head split over two packets, and a GET whose body must be read past, not as a request."""
    with_body = b"GET /v1/products HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nGET /"
    async with _connection(served.port) as ask:
        with busy(served.gate):
            assert await ask(b"GET /v1/products HTTP/1.1\r\nHo", 0) == []
            [first] = await ask(b"st: t\r\n\r\n", 1)
            [second, healthy] = await ask(with_body + _get("/healthz"), 2)
    assert (first[0], second[0], healthy[0]) == (503, 503, 200)
    assert served.asgi_calls == ["/healthz"]


@pytest.mark.parametrize(
    ("extra", "refused_early"),
    [
        ("Connection: keep-alive\r\n", True),
        ("Connection: close\r\n", False),
        ("Connection: keep-alive\r\nConnection: close\r\n", False),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\n", False),
    ],
)
async def test_only_a_connection_kept_alive_is_refused_before_the_application(
    served: Served, extra: str, refused_early: bool
) -> None:
    raw = f"GET /v1/products HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()
    with busy(served.gate):
        [(status, headers, _)] = await _answers(served.port, raw, 1)
    assert status == 503  # shed either way: by the protocol, or by the gate through ASGI
    assert served.asgi_calls == ([] if refused_early else ["/v1/products"])
    assert (headers.get("connection") == "close") == ("close" in extra)


async def test_http_1_0_and_encoded_paths_go_the_usual_way(served: Served) -> None:
    with busy(served.gate):
        old = await _answers(served.port, b"GET /v1/products HTTP/1.0\r\nHost: t\r\n\r\n", 1)
        encoded = await _answers(served.port, _get("/v1/product%73"), 1)
    assert [old[0][0], encoded[0][0]] == [503, 503]
    assert served.asgi_calls == ["/v1/products", "/v1/products"]
