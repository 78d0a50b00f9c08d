"""An open-model HTTP load generator: requests are sent at a constant arrival rate whatever
the server does, the way shoppers arrive, and each latency runs from the request's intended
send time, not from when a connection was free to send it. A closed loop (a fixed set of
clients each waiting for its answer) slows down with the server and so never offers it more
than it can take, and timing from the actual send hides the queueing a slow server causes
(coordinated omission). Here a request whose turn came while every connection was busy opens
another connection, up to ``max_connections``, and then waits, with the wait counted; one
that has had no answer ``timeout_s`` after it was due is given up (status 0). ``preopen``
connections are opened before the clock starts, a batch at a time, as a load balancer keeps
a pool: opened all at once as the first second's requests came due, thousands overflowed the
server's listen backlog, and each retried SYN cost its request a second.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from retailsync.bench.loadgen import HEAD_END as _HEAD_END
from retailsync.bench.loadgen import LENGTH as _LENGTH
from retailsync.bench.stats import percentile

_SWEEP_S = 0.05  # how often requests past their timeout are looked for
_PREOPEN_BATCH = 200  # connections opened at once before a run: the listen backlog's share
_TICK_S = 0.001  # the sender wakes at most this often, and sends everything then due


@dataclass
class ClassResult:
    offered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # 0: no answer (reset, timeout)
    good_latencies: list[float] = field(default_factory=list)  # from the intended send time
    send_waits: list[float] = field(default_factory=list)  # due until written: no connection
    # (written, answered) of each good answer and each shed one, for ``let_in_during``.
    good_spans: list[tuple[float, float]] = field(default_factory=list)
    shed_spans: list[tuple[float, float]] = field(default_factory=list)

    def report(self, seconds: float, good: Callable[[int], bool]) -> dict[str, object]:
        goodput = sum(n for status, n in self.statuses.items() if good(status))
        shed = sum(n for status, n in self.statuses.items() if status in (429, 503))
        latencies, waits = self.good_latencies, self.send_waits
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
            "send_wait_p99_ms": round(percentile(waits, 0.99) * 1000, 2) if waits else None,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
        }


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    classes: dict[str, ClassResult]
    connections_opened: int = 0
    behind_s: float = 0.0  # how far the sender itself fell behind its schedule, at most


@dataclass(slots=True)
class _Job:
    name: str
    raw: bytes
    intended: float  # when it was due to be sent: its latency runs from here
    written: float = 0.0  # when it was sent


class _Connection(asyncio.Protocol):
    """One keep-alive connection driven by callbacks: a request costs the generator no task,
    no future and no timer. At 10x a server's capacity a generator built on streams, a task
    and a timeout per request used a whole core of the two and fell behind its own schedule,
    and its queueing counted against the server."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.job: _Job | None = None
        self._buffer = bytearray()
        self._head_end = -1  # where the current answer's head ends, once it has arrived
        self._status = 0
        self._length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not a subclass of asyncio's: no isinstance check).
        self.transport = cast(asyncio.Transport, transport)
        self.run.ready(self)

    def send(self, job: _Job) -> None:
        assert self.transport is not None
        self.job = job
        self.transport.write(job.raw)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._head_end < 0:
            end = buffer.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buffer[: end + 2]).lower()
            at = head.find(_LENGTH)
            try:
                self._status = int(head[9:12])
                self._length = (
                    int(head[at + len(_LENGTH) : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
                )
            except ValueError:  # not an answer we can read: the connection is given up
                self.abort()
                return
            self._head_end = end + len(_HEAD_END)
        size = self._head_end + self._length
        if len(buffer) < size:
            return
        del buffer[:size]
        self._head_end = -1
        job, self.job = self.job, None
        if job is not None:
            self.run.answered(self, job, self._status)

    def abort(self) -> None:
        """Give up the connection (and its request, if any, unanswered)."""
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        job, self.job = self.job, None
        self.run.lost(self, job)


class _Run:
    """The requests of one open-loop run: who is sending what, and what came back."""

    def __init__(self, host: str, port: int, limit: int, timeout_s: float, total: int,
                 good: Callable[[str, int], bool], result: OpenLoopResult) -> None:  # fmt: skip
        self.host, self.port, self.limit, self.timeout_s = host, port, limit, timeout_s
        self.good = good
        self.result = result
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.pending: collections.deque[_Job] = collections.deque()  # due, no connection yet
        self.live = 0  # connections open or opening
        self.left = total  # requests not yet finished
        self.finished = asyncio.get_running_loop().create_future()
        self._opening: set[asyncio.Task[None]] = set()

    def submit(self, job: _Job) -> None:
        if self.idle:
            self._send(self.idle.pop(), job)
            return
        self.pending.append(job)
        self._open_one_if_allowed()

    async def preopen(self, count: int) -> None:
        """Open ``count`` idle connections before the clock starts, a batch at a time."""
        for start in range(0, count, _PREOPEN_BATCH):
            batch = min(_PREOPEN_BATCH, count - start)
            self.live += batch
            self.result.connections_opened += batch
            await asyncio.gather(*[self._open() for _ in range(batch)])

    def _open_one_if_allowed(self) -> None:
        """Open another connection for what is pending, unless ``limit`` are open already."""
        if self.live < self.limit:
            self.live += 1
            self.result.connections_opened += 1
            task = asyncio.create_task(self._open())
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self.live -= 1
            if self.pending and self.live == 0:  # nothing else would ever send it
                self._finish(self.pending.popleft(), 0)

    def ready(self, connection: _Connection) -> None:
        if self.pending:
            self._send(connection, self.pending.popleft())
        else:
            self.idle.append(connection)

    def _send(self, connection: _Connection, job: _Job) -> None:
        self.busy.add(connection)
        job.written = time.perf_counter()
        self.result.classes[job.name].send_waits.append(job.written - job.intended)
        connection.send(job)

    def answered(self, connection: _Connection, job: _Job, status: int) -> None:
        self.busy.discard(connection)
        self._finish(job, status)
        self.ready(connection)

    def lost(self, connection: _Connection, job: _Job | None) -> None:
        self.busy.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        self.live -= 1
        if job is not None:
            self._finish(job, 0)
        if self.pending:
            self._open_one_if_allowed()

    def expire(self, now: float) -> None:
        """Give up what has waited ``timeout_s`` since it was due: queued, or sent."""
        while self.pending and now - self.pending[0].intended >= self.timeout_s:
            self._finish(self.pending.popleft(), 0)
        for connection in [
            c for c in self.busy if c.job and now - c.job.intended >= self.timeout_s
        ]:
            connection.abort()  # connection_lost finishes its request, unanswered

    def _finish(self, job: _Job, status: int) -> None:
        outcome = self.result.classes[job.name]
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        if status and self.good(job.name, status):
            now = time.perf_counter()
            outcome.good_latencies.append(now - job.intended)
            outcome.good_spans.append((job.written, now))
        elif status in (429, 503):
            outcome.shed_spans.append((job.written, time.perf_counter()))
        self.left -= 1
        if self.left == 0 and not self.finished.done():
            self.finished.set_result(None)

    def close(self) -> None:
        for connection in self.idle + list(self.busy):
            connection.abort()


async def open_loop(
    host: str,
    port: int,
    *,
    rate: float,
    seconds: float,
    request: Callable[[], tuple[str, bytes]],
    good: Callable[[str, int], bool],
    max_connections: int = 4000,
    preopen: int = 0,
    timeout_s: float = 10.0,
) -> OpenLoopResult:
    """Send ``request()`` (its class and bytes) ``rate`` times a second for ``seconds``."""
    result = OpenLoopResult(rate, seconds, {})
    total = int(rate * seconds)
    run = _Run(host, port, max_connections, timeout_s, total, good, result)
    await run.preopen(min(preopen, max_connections))
    start = swept = time.perf_counter()
    sent = 0
    try:
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - start) * rate) + 1)
            result.behind_s = max(result.behind_s, now - (start + sent / rate))
            while sent < due:
                name, raw = request()
                result.classes.setdefault(name, ClassResult()).offered += 1
                run.submit(_Job(name, raw, start + sent / rate))
                sent += 1
            if now - swept >= _SWEEP_S:
                run.expire(now)
                swept = now
            # Sent in ticks: waking once a request would cost more than sending it.
            await asyncio.sleep(max(_TICK_S, start + sent / rate - time.perf_counter()))
        while total and not run.finished.done():
            run.expire(time.perf_counter())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.finished), _SWEEP_S)
    finally:
        run.close()
    return result


def let_in_during(shed: list[tuple[float, float]], good: list[tuple[float, float]]) -> int:
    """How many of the ``shed`` requests had one of ``good`` sent after them and answered
    before their refusal came back: a request the server let in while it was, or was about to
    be, refusing the shed one. An upper bound on admission-order inversions as the server saw
    them (it cannot tell two workers apart, nor a refusal made just before that admission)."""
    by_written = sorted(good)
    starts = [written for written, _ in by_written]
    # earliest[i]: the earliest answer among the good requests sent at starts[i] or later.
    earliest = list(itertools.accumulate(reversed([a for _, a in by_written]), min))[::-1]
    count = 0
    for written, answered in shed:
        first = bisect.bisect_left(starts, written)
        if first < len(earliest) and earliest[first] <= answered:
            count += 1
    return count
