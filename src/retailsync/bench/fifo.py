"""A waiting room's order as its clients see it: sessions arrive in waves, each on any
worker, and poll with their queue token until they are let in. A FIFO inversion is a session
let in while one that arrived before it was, afterwards, still told to wait. Used by
``bench overload`` (against ``retailsync serve``) and the waiting-room tests (in process)."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from retailsync.traffic.waiting_page import PASS_HEADER, SESSION_HEADER, TOKEN_HEADER

_JSON = {"Accept": "application/json"}


@dataclass
class Visitor:
    session: str
    arrived: tuple[float, float] = (0.0, 0.0)  # request start, answer received
    position: int = 0
    token: str = ""
    waiting_asked: list[float] = field(default_factory=list)  # starts of answered-waiting polls
    let_in: float = 0.0  # when the answer letting it in came back


def overtakers(visitors: Sequence[Visitor]) -> int:
    """Sessions let in while one that arrived before them (its arrival answered before theirs
    was sent) was still, afterwards, told to wait: each is a FIFO inversion clients can see.
    Sorted by arrival answer, so n log n: the bench's thousands of sessions stay cheap."""
    by_answer = sorted(visitors, key=lambda v: v.arrived[1])
    answered = [v.arrived[1] for v in by_answer]
    last_waits = itertools.accumulate(
        (max(v.waiting_asked, default=-math.inf) for v in by_answer), max
    )
    latest_wait = list(last_waits)  # [i]: the last "wait" told to any of the first i + 1
    count = 0
    for b in visitors:
        before = bisect.bisect_left(answered, b.arrived[0])  # answered before b was sent
        if before and latest_wait[before - 1] > b.let_in:
            count += 1
    return count


async def queue_through(
    clients: Sequence[httpx.AsyncClient],
    path: str,
    visitors: Sequence[Visitor],
    *,
    wave: int,
    seed: int,
    timeout_s: float,
    poll_s: tuple[float, float] = (0.02, 0.08),
) -> list[float]:
    """Send ``visitors`` to ``path`` in waves of ``wave`` concurrent arrivals, each request on
    a client picked at random, then let every queued one poll (at random intervals within
    ``poll_s``) until it is let in, recording what each was told and when. Returns when
    each request answered 503 was sent."""
    rng = random.Random(seed)
    refusals: list[float] = []

    async def send(headers: dict[str, str]) -> tuple[float, httpx.Response]:
        """(when the answered request was sent, its answer). A 503 (the worker is shedding)
        without a pass is asked again after a moment, as an app would; one with a pass (the
        room let the session in, and admission behind it shed the page) lets the session in:
        it keeps its turn, the pass, for its next request."""
        while True:
            started = time.perf_counter()
            response = await rng.choice(clients).get(path, headers=headers)
            if response.status_code == 503:
                refusals.append(started)
                if PASS_HEADER not in response.headers:
                    await asyncio.sleep(rng.uniform(*poll_s))
                    continue
            return started, response

    async def arrive(v: Visitor) -> None:
        started, response = await send({**_JSON, SESSION_HEADER: v.session})
        v.arrived = (started, time.perf_counter())
        if PASS_HEADER in response.headers:
            v.let_in = v.arrived[1]
        elif response.status_code == 202:
            v.position, v.token = response.json()["position"], response.headers[TOKEN_HEADER]
        else:
            raise _unexpected("an arriving session", response)

    async def poll(v: Visitor) -> None:
        headers = {**_JSON, SESSION_HEADER: v.session, TOKEN_HEADER: v.token}
        while not v.let_in:
            await asyncio.sleep(rng.uniform(*poll_s))
            started, response = await send(headers)
            if PASS_HEADER in response.headers:
                v.let_in = time.perf_counter()
            elif response.status_code == 202:
                v.waiting_asked.append(started)
            else:
                raise _unexpected("a queued session", response)

    for start in range(0, len(visitors), wave):
        await asyncio.gather(*(arrive(v) for v in visitors[start : start + wave]))
    queued = [v for v in visitors if not v.let_in]
    await asyncio.wait_for(asyncio.gather(*(poll(v) for v in queued)), timeout_s)
    return refusals


def _unexpected(who: str, response: httpx.Response) -> RuntimeError:
    return RuntimeError(f"{who} was answered {response.status_code}: {response.text[:300]}")


async def fifo_report(
    base_url: str,
    headers: dict[str, str],
    path: str,
    *,
    sessions: int,
    rate_per_s: float,
    connections: int = 64,
) -> dict[str, float | int]:
    """``sessions`` new sessions at a sale event's ``path`` (admitting ``rate_per_s``) of a
    running server, polling every 0.2-0.4 s as an app might: how many were queued, the FIFO
    inversions clients saw, and the rate the queue drained at."""
    visitors = [Visitor(secrets.token_urlsafe(18)) for _ in range(sessions)]
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    # Apps present their tokens as headers; a shared cookie jar would hand one session's pass
    # to every other session on the client (and be refused, rightly).
    no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, cookies=no_cookies
    ) as client:
        timeout_s = sessions / rate_per_s * 3 + 30
        refusals = await queue_through(
            [client], path, visitors, wave=20, seed=11, timeout_s=timeout_s, poll_s=(0.2, 0.4)
        )
    queued = [v for v in visitors if v.position]
    inversions = overtakers(visitors)
    drained_s = max((v.let_in for v in queued), default=0.0) - min(
        (v.arrived[0] for v in queued), default=0.0
    )
    return {
        "sessions": sessions,
        "queued": len(queued),
        "rate_per_s": rate_per_s,
        "drained_per_s": round((len(queued) - 1) / drained_s, 1) if drained_s > 0 else 0.0,
        "fifo_inversions": inversions,
        "fifo_inversion_ratio": round(inversions / sessions, 5),
        "refused_503": len(refusals),
    }
