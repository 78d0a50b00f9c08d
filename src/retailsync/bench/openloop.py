"""An open-model HTTP load generator: requests are sent at a constant arrival rate whatever
the server does, the way shoppers arrive, and each latency runs from the request's intended
send time, not from when a connection was free to send it. A closed loop (a fixed set of
clients each waiting for its answer) slows down with the server and so never offers it more
than it can take, and timing from the actual send hides the queueing a slow server causes
(coordinated omission). Here a request whose turn came while every connection was busy opens
another connection, up to ``max_connections``, and then waits, with the wait counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from retailsync.bench.loadgen import HttpConnection
from retailsync.bench.stats import percentile


@dataclass
class ClassResult:
    offered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # 0: no answer (reset, timeout)
    good_latencies: list[float] = field(default_factory=list)  # from the intended send time

    def report(self, seconds: float, good: Callable[[int], bool]) -> dict[str, object]:
        goodput = sum(n for status, n in self.statuses.items() if good(status))
        shed = sum(n for status, n in self.statuses.items() if status in (429, 503))
        latencies = self.good_latencies
        return {
            "offered": self.offered,
            "offered_per_s": round(self.offered / seconds, 1),
            "goodput": goodput,
            "goodput_ratio": round(goodput / self.offered, 4) if self.offered else 0.0,
            "shed": shed,
            "shed_ratio": round(shed / self.offered, 4) if self.offered else 0.0,
            "errors": self.offered - goodput - shed,
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
            "p999_ms": round(percentile(latencies, 0.999) * 1000, 2) if latencies else None,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
        }


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    classes: dict[str, ClassResult]
    connections_opened: int = 0
    behind_s: float = 0.0  # how far the sender itself fell behind its schedule, at most


class _Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[HttpConnection] = []
        self.opened = 0
        self.live = 0
        self._freed = asyncio.Condition()

    async def take(self) -> HttpConnection:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.live < self.limit:
                self.live += 1
                self.opened += 1
                try:
                    return await HttpConnection.open(self.host, self.port)
                except OSError:
                    self.live -= 1
                    raise
            async with self._freed:
                await self._freed.wait()

    async def give(self, connection: HttpConnection | None) -> None:
        if connection is None:
            self.live -= 1
        else:
            self.idle.append(connection)
        async with self._freed:
            self._freed.notify()

    async def close(self) -> None:
        for connection in self.idle:
            await connection.close()


async def open_loop(
    host: str,
    port: int,
    *,
    rate: float,
    seconds: float,
    request: Callable[[], tuple[str, bytes]],
    good: Callable[[str, int], bool],
    max_connections: int = 4000,
    timeout_s: float = 10.0,
) -> OpenLoopResult:
    """Send ``request()`` (its class and bytes) ``rate`` times a second for ``seconds``."""
    pool = _Pool(host, port, max_connections)
    result = OpenLoopResult(rate, seconds, {})
    tasks: set[asyncio.Task[None]] = set()

    async def one(name: str, raw: bytes, intended: float) -> None:
        outcome = result.classes.setdefault(name, ClassResult())
        connection: HttpConnection | None = None
        status = 0
        try:
            async with asyncio.timeout(timeout_s - (time.perf_counter() - intended)):
                connection = await pool.take()
                status, _ = await connection.send(raw)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            if connection is not None:  # broken mid-request: never reused
                with contextlib.suppress(Exception):
                    await connection.close()
                await pool.give(None)
        else:
            await pool.give(connection)
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        if status and good(name, status):
            outcome.good_latencies.append(time.perf_counter() - intended)

    start = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        result.behind_s = max(result.behind_s, now - (start + sent / rate))
        while sent < due:
            name, raw = request()
            result.classes.setdefault(name, ClassResult()).offered += 1
            task = asyncio.create_task(one(name, raw, start + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    if tasks:
        await asyncio.wait(tasks)
    result.connections_opened = pool.opened
    await pool.close()
    return result
