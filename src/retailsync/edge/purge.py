"""Purging the edge cache by surrogate key: ``EdgePurger(url).purge(keys)``.

One ``PURGE`` request carries up to 50 keys (and at most 4 KB of them) in its ``xkey-purge``
header; the Varnish of ``vcl.render_vcl`` hard-purges every object tagged with any of them and
answers how many it purged. Keys are checked before anything is sent: a surrogate key is a
token of ``[A-Za-z0-9._:/-]``, 1 to 200 characters; anything else is a bug in the caller and
raises ValueError.

Failures are not raised. A Varnish that is down, refuses us, or takes over ``timeout``
seconds (1 s by default, the whole request) is logged and counted, and ``purge`` returns a
``PurgeResult`` whose ``failed`` names the keys not confirmed purged: the invalidation
consumer does not acknowledge the change and tries those keys again later (purging is
idempotent, so retrying keys that were in fact purged costs nothing). A batch that fails
ends the call: the keys of the batches after it are reported failed without being tried, so
a dead Varnish costs one timeout per call, not one per batch. Across calls, a circuit breaker
(``traffic.breaker``, dependency ``edge``) stops even that: after ``failures`` transport
failures or timeouts in a row, calls fail at once (outcome ``open``) until a probe PURGE gets
through. A refusal (an HTTP error status) is an answer: it does not count against the edge.

These PURGEs are retailsync's only outgoing HTTP calls (there are no webhooks yet).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client import Counter, Histogram

from retailsync.traffic.breaker import Breaker, BreakerPolicy

log = logging.getLogger(__name__)

MAX_KEYS_PER_REQUEST = 50
MAX_HEADER_BYTES = 4096
_KEY = re.compile(r"[A-Za-z0-9._:/-]{1,200}")
# The edge's URL scheme -> the scheme we speak to it. ``varnish://`` is how
# RETAILSYNC_EDGE_URL names it; PURGE is plain HTTP to Varnish's listen address.
_SCHEMES = {"http": "http", "https": "https", "varnish": "http"}

PURGES = Counter(
    "retailsync_edge_purges_total",
    "PURGE requests to the edge cache, by outcome (ok, refused, error; open: not sent, the "
    "edge's breaker is open)",
    ["outcome"],
)
PURGE_SECONDS = Histogram(
    "retailsync_edge_purge_seconds",
    "Time for one PURGE request to the edge cache, whatever its outcome",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What one ``purge`` call did: ``purged`` objects evicted (as Varnish counted them);
    ``failed`` the keys not confirmed purged, to retry; ``error`` why, when some failed."""

    purged: int = 0
    requests: int = 0
    failed: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


class _Failure(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


def validate_key(key: str) -> str:
    """``key`` if it is a valid surrogate key; ValueError otherwise."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
        raise ValueError(f"not a surrogate key (want [A-Za-z0-9._:/-]{{1,200}}): {shown}")
    return key


def batches(keys: Iterable[str]) -> Iterator[list[str]]:
    """Distinct valid ``keys``, first occurrence first, in groups that fit one PURGE request.
    Every key is validated before the first group is yielded."""
    distinct = list(dict.fromkeys(validate_key(key) for key in keys))
    batch: list[str] = []
    size = 0
    for key in distinct:
        added = len(key) + (1 if batch else 0)
        if batch and (len(batch) == MAX_KEYS_PER_REQUEST or size + added > MAX_HEADER_BYTES):
            yield batch
            batch, size, added = [], 0, len(key)
        batch.append(key)
        size += added
    if batch:
        yield batch


class EdgePurger:
    """Purges a Varnish by surrogate key over HTTP (``http://127.0.0.1:6081``, or
    ``varnish://host:port``). Safe to share between tasks; ``close`` when done."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = _SCHEMES.get(parts.scheme)
        if scheme is None or not parts.hostname:
            known = ", ".join(f"{name}://" for name in _SCHEMES)
            raise ValueError(f"edge URL {url!r}: expected {known}host:port")
        self.url = urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))
        self._timeout = timeout
        self.breaker = Breaker("edge", breaker or BreakerPolicy(failures=3, reset_s=2.0))
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": "retailsync-edge-purger"},
        )

    async def purge(self, keys: Iterable[str]) -> PurgeResult:
        """Evict every cached object tagged with any of ``keys``. ValueError (before anything
        is sent) if a key is not a surrogate key; every other failure is in the result."""
        groups = list(batches(keys))
        purged = 0
        for index, group in enumerate(groups):
            try:
                purged += await self._send(group)
            except _Failure as exc:
                failed = tuple(key for rest in groups[index:] for key in rest)
                log.warning(
                    "edge purge of %d keys failed (%s: %s); the caller retries",
                    len(failed),
                    exc.outcome,
                    exc.detail,
                )
                return PurgeResult(purged, index + 1, failed, f"{exc.outcome}: {exc.detail}")
        return PurgeResult(purged, len(groups))

    async def _send(self, keys: list[str]) -> int:
        if not self.breaker.allow():
            PURGES.labels("open").inc()
            wait = self.breaker.retry_after_s()
            raise _Failure("open", f"edge breaker open; next probe in {wait:.2f} s")
        started = time.perf_counter()
        outcome = "error"
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._client.request(
                        "PURGE", self.url, headers={"xkey-purge": " ".join(keys)}
                    )
            except TimeoutError:
                self.breaker.failed()
                raise _Failure("error", f"no answer within {self._timeout:g} s") from None
            except httpx.HTTPError as exc:
                self.breaker.failed()
                raise _Failure("error", f"{type(exc).__name__}: {exc}") from None
            except BaseException:
                self.breaker.released()
                raise
            self.breaker.succeeded()  # it answered, whatever it said
            if response.status_code != 200:
                outcome = "refused"
                raise _Failure("refused", f"HTTP {response.status_code} {response.text[:200]!r}")
            count = response.headers.get("xkey-purged", "")
            if not count.isdigit():
                raise _Failure("error", f"answer without a purge count: {count!r}")
            outcome = "ok"
            return int(count)
        finally:
            PURGES.labels(outcome).inc()
            PURGE_SECONDS.observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> EdgePurger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
