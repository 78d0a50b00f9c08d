"""The open-model load generator against a small real HTTP server whose answers the test
controls: every request is offered at its time, latency counts from that time (coordinated
omission corrected), answers split across packets are read whole, connections opened before
the clock are used, and a request with no answer is given up after the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retailsync.bench.loadgen import get
from retailsync.bench.openloop import let_in_during, open_loop
from retailsync.bench.stats import percentile

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
RELEASE = asyncio.Event()  # set as the server closes


async def _quick(head: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[Answer]]]:
    """A server on a free port; each request is answered by ``answers[0]`` (settable)."""
    RELEASE.clear()
    answers: list[Answer] = [_quick]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await answers[0](head, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield port, answers
    RELEASE.set()  # a handler left hanging ends
    listening.close()


def _requests(path: str = "/x") -> Callable[[], tuple[str, bytes]]:
    raw = get(path, {})
    return lambda: ("a", raw)


def _good(name: str, status: int) -> bool:
    return status == 200


async def test_every_request_is_offered_and_answered(server: tuple[int, list[Answer]]) -> None:
    port, _ = server
    result = await open_loop(
        "127.0.0.1", port, rate=400, seconds=0.5, request=_requests(), good=_good
    )
    outcome = result.classes["a"]
    assert outcome.offered == 200
    assert outcome.statuses == {200: 200}
    assert len(outcome.good_latencies) == 200
    assert result.connections_opened < 50


async def test_connections_opened_before_the_clock_are_used_first(
    server: tuple[int, list[Answer]],
) -> None:
    port, _ = server
    result = await open_loop(
        "127.0.0.1", port, rate=400, seconds=0.5, request=_requests(), good=_good, preopen=450
    )
    outcome = result.classes["a"]
    assert outcome.statuses == {200: 200}
    assert result.connections_opened == 450  # every request found one idle: none opened after
    assert max(outcome.send_waits) < 0.05  # and none waited for a connect


async def test_latency_counts_from_the_intended_send_time(
    server: tuple[int, list[Answer]],
) -> None:
    """One connection, and the server stalls 300 ms on the first request: the requests due
    during the stall waited for it, and their latencies say so."""
    port, answers = server
    stalled = asyncio.Event()

    async def stall_once(head: bytes, writer: asyncio.StreamWriter) -> None:
        if not stalled.is_set():
            stalled.set()
            await asyncio.sleep(0.3)
        await _quick(head, writer)

    answers[0] = stall_once
    result = await open_loop(
        "127.0.0.1", port, rate=200, seconds=0.5, request=_requests(), good=_good,
        max_connections=1,
    )  # fmt: skip
    latencies = result.classes["a"].good_latencies
    assert len(latencies) == 100
    assert result.connections_opened == 1
    assert sum(1 for latency in latencies if latency >= 0.1) >= 30
    assert percentile(latencies, 0.5) > 0.05  # a closed loop would see one slow request


async def test_answers_split_across_packets_are_read_whole(
    server: tuple[int, list[Answer]],
) -> None:
    port, answers = server

    async def in_pieces(head: bytes, writer: asyncio.StreamWriter) -> None:
        for piece in (b"HTTP/1.1 201 Cre", b"ated\r\nX-A: b\r\nContent-Le", b"ngth: 5\r\n\r\nab"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(b"cde")

    answers[0] = in_pieces
    result = await open_loop(
        "127.0.0.1", port, rate=100, seconds=0.3, request=_requests(),
        good=lambda name, status: status == 201,
    )  # fmt: skip
    assert result.classes["a"].statuses == {201: 30}


async def test_a_request_without_an_answer_is_given_up(server: tuple[int, list[Answer]]) -> None:
    port, answers = server

    async def hang_some(head: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET /hang"):
            await RELEASE.wait()
            return
        await _quick(head, writer)

    answers[0] = hang_some
    paths = iter(["/hang" if n % 4 == 0 else "/x" for n in range(40)])
    started = asyncio.get_running_loop().time()
    result = await open_loop(
        "127.0.0.1", port, rate=100, seconds=0.4,
        request=lambda: ("a", get(next(paths), {})), good=_good, timeout_s=0.3,
    )  # fmt: skip
    assert result.classes["a"].statuses == {0: 10, 200: 30}
    assert asyncio.get_running_loop().time() - started < 2.0


spans = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 10)).map(lambda p: (p[0] / 10, sum(p) / 10)),
    max_size=12,
)


@given(shed=spans, good=spans)
def test_let_in_during_counts_as_its_definition(
    shed: list[tuple[float, float]], good: list[tuple[float, float]]
) -> None:
    expected = sum(
        any(written <= g_written and g_answered <= answered for g_written, g_answered in good)
        for written, answered in shed
    )
    assert let_in_during(shed, good) == expected


async def test_spans_of_good_and_shed_answers_are_kept(server: tuple[int, list[Answer]]) -> None:
    port, answers = server

    async def shed_some(head: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET /busy"):
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            return
        await _quick(head, writer)

    answers[0] = shed_some
    paths = iter(["/busy" if n % 2 else "/x" for n in range(20)])
    result = await open_loop(
        "127.0.0.1", port, rate=100, seconds=0.2,
        request=lambda: ("a", get(next(paths), {})), good=_good,
    )  # fmt: skip
    outcome = result.classes["a"]
    assert (len(outcome.good_spans), len(outcome.shed_spans)) == (10, 10)
    assert all(written <= answered for written, answered in outcome.good_spans)
    assert all(written <= answered for written, answered in outcome.shed_spans)
