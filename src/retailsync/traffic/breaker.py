"""Circuit breakers: stop calling a dependency that is down, and find out cheaply when it is back.

One ``Breaker`` per dependency (``postgresql``, ``redis``, ``nats``, ``edge``), owned by the
client of that dependency (``Database``, ``L2Cache``, ``EdgePurger``, ``NatsEventLog``)::

    if not breaker.allow():           # open: fail at once, no connect attempt
        raise DatabaseUnavailable(...)
    with breaker.judge(CONNECTION_ERRORS):
        ...                           # the call: only connection-level failures count; any
                                      # other exception is an answer; cancelled: no verdict

Policy (``BreakerPolicy``). Closed: ``failures`` *consecutive* connection-level failures open
it (a success resets the count). We count consecutive failures rather than a failure ratio
in a window because the failures we count are all-or-nothing (a refused connection, a dropped
socket, a timeout): when PostgreSQL or Redis is down every call fails, so a run of N says it
as surely as a ratio, in O(1) and with no window to size; domain errors (a unique violation,
a refused PURGE) are answers and count as successes. Open: every call is refused at once for
``reset_s``. Half-open: then at most ``probes`` calls at a time go through; the first success
closes the breaker, a failure opens it for another ``reset_s``. A probe that neither succeeds
nor fails within ``probe_timeout_s`` (a hung connect) is written off, so a lost probe cannot
keep the breaker half-open for ever.

Why our own and not a library. We evaluated ``aiobreaker`` 1.2 and ``purgatory`` 3.0 (the
asyncio-native ones on PyPI) against the two things that matter here, and neither fits:

- *Shape*: both wrap a callable (``await breaker.call_async(f)``, a decorator, or
  purgatory's ``async with await factory.get_breaker(name)``). The PostgreSQL call to guard
  is ``Database.connection()``, an async context manager that yields the connection to the
  caller's block, and which failures count is a list of connection errors (an *include*
  list); both libraries count every exception unless excluded.
- *Half-open*: neither limits the probes. Once the timeout passes, every caller goes
  through at once, so a whole pool reconnects to a PostgreSQL that is still recovering.
  Both keep time on the wall clock (``datetime.utcnow()``, ``time.time()``), which a clock
  step moves; we use ``time.monotonic``.
- *Cost*: measured on this machine, a successful call through either costs 1.3-2 us
  (aiobreaker: listeners and state objects; purgatory: a unit of work and a message bus per
  call, awaited); ``allow()`` + ``succeeded()`` here cost 0.15-0.3 us, two attribute
  checks, because the closed state does no bookkeeping beyond a failure count. It sits on
  every database acquire and every Redis call.

Metrics: ``retailsync_breaker_state{dependency}`` (0 closed, 1 half-open, 2 open) and
``retailsync_breaker_transitions_total{dependency,to}``, written only on transitions.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from retailsync.errors import ConfigError

log = logging.getLogger(__name__)

STATE = Gauge(
    "retailsync_breaker_state",
    "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open",
    ["dependency"],
)
TRANSITIONS = Counter(
    "retailsync_breaker_transitions_total",
    "Circuit breaker state changes, by dependency and the state entered",
    ["dependency", "to"],
)


class State(enum.IntEnum):
    """The gauge's values."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how it probes. ConfigError names the bad parameter."""

    failures: int = 5  # consecutive connection-level failures that open it
    reset_s: float = 1.0  # how long it stays open before probing
    probes: int = 1  # calls let through at a time while half-open
    probe_timeout_s: float = 10.0  # a probe unfinished after this is written off

    def __post_init__(self) -> None:
        if not isinstance(self.failures, int) or not 1 <= self.failures <= 10_000:
            raise ConfigError("failures", self.failures, "must be an integer in [1, 10000]")
        if not isinstance(self.probes, int) or not 1 <= self.probes <= 1_000:
            raise ConfigError("probes", self.probes, "must be an integer in [1, 1000]")
        for name in ("reset_s", "probe_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 3600 or math.isnan(value):
                raise ConfigError(name, value, "must be a number of seconds in (0, 3600]")


class Breaker:
    """The breaker of one dependency, for one process; not thread-safe (one event loop)."""

    __slots__ = (
        "_clock",
        "_failures",
        "_opened_at",
        "_probe_deadline",
        "_probing",
        "_state",
        "dependency",
        "policy",
    )

    def __init__(
        self,
        dependency: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not dependency or not dependency.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("dependency", dependency, "expected a name like 'postgresql'")
        self.dependency = dependency
        self.policy = BreakerPolicy() if policy is None else policy
        self._clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = 0
        self._probe_deadline = 0.0
        STATE.labels(dependency).set(State.CLOSED)

    @property
    def state(self) -> State:
        """The state now (an open breaker whose reset time has passed reads as half-open)."""
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.policy.reset_s:
            return State.HALF_OPEN
        return self._state

    @property
    def ready(self) -> bool:
        """Whether ``allow`` would let a call through now (without taking a probe slot)."""
        if self._state is State.CLOSED:
            return True
        now = self._clock()
        if self._state is State.OPEN:
            return now - self._opened_at >= self.policy.reset_s
        return self._probing < self.policy.probes or now >= self._probe_deadline

    def retry_after_s(self) -> float:
        """Seconds until a call may be tried again: the rest of the open time, else 0."""
        if self._state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.reset_s - self._clock())

    def allow(self) -> bool:
        """True: make the call (and report how it ended); False: fail at once."""
        if self._state is State.CLOSED:
            return True
        now = self._clock()
        if self._state is State.OPEN:
            if now - self._opened_at < self.policy.reset_s:
                return False
            self._enter(State.HALF_OPEN)
        elif now >= self._probe_deadline:  # the probes out are hung: write them off
            self._probing = 0
        if self._probing >= self.policy.probes:
            return False
        self._probing += 1
        self._probe_deadline = now + self.policy.probe_timeout_s
        return True

    def succeeded(self) -> None:
        """The dependency answered (a domain error counts: it answered)."""
        if self._state is State.CLOSED:
            self._failures = 0
        elif self._state is State.HALF_OPEN:
            self._enter(State.CLOSED)
        # OPEN: a call from before it opened came back late; the probes decide.

    def failed(self) -> None:
        """A connection-level failure: refused, dropped, or no answer in time."""
        if self._state is State.CLOSED:
            self._failures += 1
            if self._failures >= self.policy.failures:
                self._enter(State.OPEN)
        elif self._state is State.HALF_OPEN:
            self._enter(State.OPEN)

    def released(self) -> None:
        """A call ended with no verdict (cancelled): its probe slot, if any, is free again."""
        if self._state is State.HALF_OPEN and self._probing > 0:
            self._probing -= 1

    @contextmanager
    def judge(
        self,
        failures: type[BaseException] | tuple[type[BaseException], ...],
        *,
        neutral: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> Iterator[None]:
        """Give the verdict on the call in the block: ``failures`` count against the
        dependency, ``neutral`` (already judged elsewhere) and cancellation say nothing, any
        other outcome means it answered."""
        try:
            yield
        except failures:
            self.failed()
            raise
        except neutral:
            self.released()
            raise
        except Exception:
            self.succeeded()
            raise
        except BaseException:
            self.released()
            raise
        else:
            self.succeeded()

    def _enter(self, state: State) -> None:
        previous, self._state = self._state, state
        self._failures = 0
        self._probing = 0
        if state is State.OPEN:
            self._opened_at = self._clock()
            if previous is State.CLOSED:
                log.warning(
                    "%s breaker open: calls fail at once for %.3g s, then probe",
                    self.dependency,
                    self.policy.reset_s,
                )
        elif state is State.CLOSED:
            log.info("%s breaker closed: the dependency answers again", self.dependency)
        STATE.labels(self.dependency).set(state)
        TRANSITIONS.labels(self.dependency, state.name.lower().replace("_", "-")).inc()

    def __repr__(self) -> str:
        return f"Breaker({self.dependency!r}, {self.state.name.lower()})"
