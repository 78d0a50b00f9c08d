"""A small HTTP/1.1 load generator for benchmarks against ``retailsync serve``.

Keep-alive connections over asyncio streams, requests pre-built as bytes: a request costs the
generator a few microseconds, so on a machine it shares with the server it takes as little
of the CPU as it can (httpx costs about ten times as much a request). It speaks only what the
benchmarks need: requests the caller builds, and responses with a Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"
LENGTH = b"\r\ncontent-length:"


class HttpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request; return the response's status and body."""
        self._writer.write(raw)
        head = await self._reader.readuntil(HEAD_END)
        status = int(head[9:12])
        # One search, not a loop over the header lines: the generator's cost per answer
        # then does not grow with the number of headers the server sends.
        at = head.lower().find(LENGTH)
        length = int(head[at + len(LENGTH) : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


def get(path: str, headers: dict[str, str], host: str = "bench") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, headers: dict[str, str], host: str = "bench") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class ClosedLoopResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of answers with a 2xx status
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, other: ClosedLoopResult) -> None:
        """Take in another run's answers (rounds of one measurement)."""
        self.seconds += other.seconds
        self.latencies += other.latencies
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


async def closed_loop(
    host: str, port: int, *, clients: int, seconds: float, request: Callable[[], bytes]
) -> ClosedLoopResult:
    """``clients`` connections, each sending ``request()`` as soon as the last answered, for
    ``seconds``."""
    connections = [await HttpConnection.open(host, port) for _ in range(clients)]
    result = ClosedLoopResult(seconds)
    stop = time.perf_counter() + seconds

    async def client(connection: HttpConnection) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            status, _ = await connection.send(request())
            if 200 <= status < 300:
                result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*[client(connection) for connection in connections])
    finally:
        for connection in connections:
            await connection.close()
    result.seconds = time.perf_counter() - started
    return result
