"""An HTTP session per simulated client, and the request statistics all the clients share.

Every request is counted here, once per attempt: its latency if an answer came back, its
problem type if the answer was a refusal, or its exception class if the connection failed.
The clients run on one event loop, so the shared counters need no lock.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

_PROBLEM_MEDIA_TYPE = "application/problem+json"
_TIMEOUT = 10.0
# A POST carrying an Idempotency-Key is safe to send again after a lost connection: the server
# answers a retry with the first answer instead of doing the work twice.
_IDEMPOTENT_ATTEMPTS = 3


class TrafficOver(Exception):
    """The run's deadline has passed; the client sends nothing more."""


class Rejected(Exception):
    """The server refused a request (4xx or 5xx); ``reason`` is its problem type's last part."""

    def __init__(self, response: httpx.Response, reason: str, problem: dict[str, Any]) -> None:
        self.response = response
        self.reason = reason
        self.problem = problem
        super().__init__(f"{response.request.method} {response.request.url.path}: {reason}")


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        """Every attempt, answered or not."""
        return len(self.latencies_ms) + self.transport_errors.total()


def _problem(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The refusal's reason and document; a non-problem error body is named by its status."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if media_type == _PROBLEM_MEDIA_TYPE:
        document = response.json()
        if isinstance(document, dict) and isinstance(document.get("type"), str):
            return document["type"].rsplit(":", 1)[-1], document
    return f"http-{response.status_code}", {}


class Api:
    """One client's connection to the API, acting with one channel's key."""

    def __init__(self, base_url: str, key: str, stats: Stats, *, deadline: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=_TIMEOUT
        )
        self._stats = stats
        self._deadline = deadline

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
        if_match: str | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send a request and return its 2xx answer; raise Rejected for a refusal,
        httpx.TransportError when no answer came, TrafficOver once the run is over.
        ``if_match``: an entity tag as the server sent it, e.g. ``"7"``."""
        if time.monotonic() >= self._deadline:
            raise TrafficOver
        headers: dict[str, str] = {}
        if if_match is not None:
            headers["If-Match"] = if_match
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        attempts = _IDEMPOTENT_ATTEMPTS if idempotency_key is not None else 1
        attempt = 1
        while True:
            started = time.perf_counter()
            try:
                # json= also sets Content-Type: application/json.
                response = await self._client.request(
                    method, path, json=body, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                self._stats.transport_errors[type(exc).__name__] += 1
                if attempt == attempts:
                    raise
                attempt += 1
                continue
            self._stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code >= 400:
                reason, problem = _problem(response)
                self._stats.rejections[reason] += 1
                raise Rejected(response, reason, problem)
            return response
