"""Admission by criticality under an adaptive concurrency limit.

The limit is how many requests one worker should have in flight. It is not configured but
measured, gradient style (after Netflix's concurrency-limits "Gradient2" and TCP Vegas):
every answered request gives a latency sample; each class keeps a smoothed latency and its
minimum over the last windows (the latency with no queueing), and the limit moves by

    gradient = clamp(max(tolerance * minimum, slack) / smoothed, 0.5, 1)
    limit    = (1 - smoothing) * limit + smoothing * (limit * gradient + sqrt(limit))

so it grows by about sqrt(limit) while latency stays near its minimum and shrinks, at most
by half, as latency rises: it finds the concurrency past which requests only queue. Latency
is compared within a class (a cached product read and a checkout differ a hundredfold), and
a limit that is not being used (fewer than half of it in flight) is not grown. ``slack`` (20
ms) is latency no one minds: on a busy worker a request that took 0.3 ms idle takes 3 ms
because the loop is shared, not because the limit is too high, and shrinking the limit for
that only sheds requests that would have been served.

Each class may use up to its ``trigger`` share of the limit (see classes.py), so the lower
classes are shed first and can never take what is kept for the higher ones. A more critical
class is *pressed* when one of its requests had to wait for a slot or was shed (classes that
wait: checkout, cart), or when its smoothed latency is past its ``objective_ms`` on a worker
that is shedding; for ``HIGHER_PRESSED_HOLD_S`` after that every less critical class is shed,
then let back in gradually over its ``ramp_s``. So checkout is never refused while browsing
is still let in, the slots that free up while checkouts wait are theirs, and a checkout
slowed by the work of the classes below (at 10x capacity the event loop, not the limit, is
what it waits for) gets that work out of its way. A class that triggered stays shed until
in-flight falls under its ``release`` share, then is let back in gradually over ``ramp_s``
too. Classes with a ``queue_ms`` wait that long for a slot, the most critical first, before
they are shed; one that a ramp turned away does not wait.

Deciding costs a few dictionary and float operations and no I/O (measured by
``retailsync bench overload``: ``admission_decision_p99_us``).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
import random
import time
from dataclasses import dataclass, field

from retailsync.observe import tally
from retailsync.traffic import metrics
from retailsync.traffic.classes import Criticality

_EMA = 0.05  # weight of one sample in a class's smoothed latency
# A less critical class stays shed this long after a more critical one was pressed (then its
# ramp): held a whole second, the classes below came back all at once and pressed checkout
# again, so admission swung every second at 10x capacity.
HIGHER_PRESSED_HOLD_S = 0.25


@dataclass(slots=True)
class _Latency:
    """One class's smoothed latency and its minimum over the current and last windows."""

    smoothed: float = 0.0
    minimum: float = math.inf
    window_minimum: float = math.inf

    def add(self, seconds: float) -> None:
        self.smoothed = seconds if self.smoothed == 0.0 else (
            self.smoothed + _EMA * (seconds - self.smoothed)
        )  # fmt: skip
        self.window_minimum = min(self.window_minimum, self.smoothed)
        self.minimum = min(self.minimum, self.window_minimum)

    def roll(self) -> None:
        """Start a new window: the minimum forgets what is older than two windows, so a
        lasting change (a slower database) becomes the new normal."""
        self.minimum = self.window_minimum
        self.window_minimum = math.inf


class AdaptiveLimit:
    def __init__(
        self,
        *,
        initial: float = 100.0,
        minimum: float = 16.0,
        maximum: float = 1000.0,
        tolerance: float = 2.0,
        slack_s: float = 0.020,
        smoothing: float = 0.1,
        window_s: float = 10.0,
    ) -> None:
        self.limit = initial
        self.minimum = minimum
        self.maximum = maximum
        self.tolerance = tolerance
        self.slack_s = slack_s
        self.smoothing = smoothing
        self.window_s = window_s
        self._latency: dict[int, _Latency] = collections.defaultdict(_Latency)
        self._window_ends = time.monotonic() + window_s

    def sample(self, rank: int, seconds: float, inflight: int, now: float) -> float:
        """Learn from one answered request; its class's smoothed latency, seconds."""
        if now >= self._window_ends:
            for latency in self._latency.values():
                latency.roll()
            self._window_ends = now + self.window_s
        latency = self._latency[rank]
        latency.add(seconds)
        smoothed = latency.smoothed
        if smoothed <= 0.0:
            return smoothed
        acceptable = max(self.tolerance * latency.minimum, self.slack_s)
        gradient = min(1.0, max(0.5, acceptable / smoothed))
        if gradient == 1.0 and inflight < self.limit / 2:
            return smoothed  # not limited by the limit: nothing learnt about it
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = (1 - self.smoothing) * self.limit + self.smoothing * target
        self.limit = min(self.maximum, max(self.minimum, limit))
        return smoothed


class _Decision(enum.Enum):
    ADMITTED = 1
    FULL = 2  # past its share, or shed for a more critical class
    RAMPING = 3  # turned away by a gradual release


@dataclass(slots=True)
class Ticket:
    """An admitted request: give it back with ``Admission.done`` when answered."""

    rank: int
    started: float


@dataclass(slots=True)
class _ClassState:
    shedding: bool = False
    released_at: float = -math.inf
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class Admission:
    """One worker's admission controller (asyncio: every call from the event loop)."""

    def __init__(self, classes: tuple[Criticality, ...], limit: AdaptiveLimit) -> None:
        self.classes = classes
        self.limit = limit
        self.inflight = 0
        self._state = [_ClassState() for _ in classes]
        # Per class, the last ``note_pressed`` of any more critical class: updated on a wait or
        # a shed of checkout or cart, read on every request (a loop over classes cost 6% of a
        # worker's CPU at 10x capacity).
        self._pressed_above = [-math.inf] * len(classes)
        self._waiting = 0  # requests in ``_wait``, of every class
        # When this worker last shed a request, of any class. A class past its latency
        # objective presses the ones below only within the hold of a shed: with none, the
        # worker is not overloaded, a slow checkout is slow for reasons shedding cannot help
        # (a cold cache, a slow disk, a busy test machine), and shedding would refuse work
        # for nothing.
        self._shed_at = -math.inf
        self._counters = [
            {
                outcome: tally.counter(metrics.ADMISSIONS.labels(c.name, outcome))
                for outcome in metrics.OUTCOMES
            }
            for c in classes
        ]

    def try_admit(self, criticality: Criticality, now: float) -> bool:
        """Admit at once if the class may have a slot now (no waiting)."""
        return self._decide(criticality, now) is _Decision.ADMITTED

    def _decide(self, criticality: Criticality, now: float) -> _Decision:
        if self._over_share(criticality, now):
            return _Decision.FULL
        rank = criticality.rank
        # Let back in gradually after a release, and after a more critical class's pressure.
        ramped = now - max(
            self._state[rank].released_at, self._pressed_above[rank] + HIGHER_PRESSED_HOLD_S
        )
        if ramped < criticality.ramp_s and random.random() * criticality.ramp_s > ramped:
            return _Decision.RAMPING
        self.inflight += 1
        return _Decision.ADMITTED

    def shed_at_once(self, criticality: Criticality, now: float) -> bool:
        """Whether a request is refused now whatever else it carries, counted as shed if so:
        the one check a refusal answered as soon as the request's head is parsed may make
        (api/protocol.py). A class that waits for slots is refused here only while a more
        critical one is pressed (``admit`` would not let it wait then either). It leaves the
        random part of a gradual release to ``admit``, which the requests it lets pass still
        go through."""
        rank = criticality.rank
        if criticality.queue_s > 0:
            if not self._higher_pressed_since(rank, now - HIGHER_PRESSED_HOLD_S):
                return False
            self.note_pressed(rank, now)  # as ``admit`` does for a shed request of the class
        elif not self._over_share(criticality, now):
            return False
        self._count_shed(rank, now)
        return True

    def _over_share(self, criticality: Criticality, now: float) -> bool:
        """Past the class's share of the limit, or shed for a more critical class."""
        rank = criticality.rank
        state = self._state[rank]
        in_flight = self.inflight
        limit = self.limit.limit
        if self._higher_pressed_since(rank, now - HIGHER_PRESSED_HOLD_S):
            return True
        if state.shedding:
            if in_flight >= criticality.release * limit:
                return True
            state.shedding = False
            state.released_at = now
        elif in_flight >= criticality.trigger * limit:
            if criticality.queue_s == 0:
                state.shedding = True
            return True
        return False

    async def admit(self, criticality: Criticality) -> Ticket | None:
        """A ticket, or None: shed (answer 503 at once, nothing else done)."""
        now = time.monotonic()
        counters = self._counters[criticality.rank]
        decision = self._decide(criticality, now)
        if decision is _Decision.ADMITTED:
            counters["admitted"].inc()
            return Ticket(criticality.rank, now)
        if (
            decision is _Decision.FULL  # not one a ramp turned away: it would wait for a slot
            and criticality.queue_s > 0
            and not self._higher_pressed_since(criticality.rank, now - HIGHER_PRESSED_HOLD_S)
        ):
            # Having to wait is pressure too: the classes below yield from now on, so what
            # frees up goes to the waiters rather than to the next browse request.
            self.note_pressed(criticality.rank, now)
            counters["queued"].inc()
            if await self._wait(criticality):
                counters["admitted"].inc()
                return Ticket(criticality.rank, now)  # its latency includes the wait
        refused_at = time.monotonic()
        if criticality.queue_s > 0:  # refused even after waiting: the classes below yield
            self.note_pressed(criticality.rank, refused_at)
        self._count_shed(criticality.rank, refused_at)
        return None

    def _count_shed(self, rank: int, at: float) -> None:
        self._counters[rank]["shed"].inc()
        self._shed_at = at

    async def _wait(self, criticality: Criticality) -> bool:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._state[criticality.rank].waiters
        waiters.append(waiter)
        self._waiting += 1
        try:
            async with asyncio.timeout(criticality.queue_s):  # not wait_for: chores.wait_set
                await asyncio.shield(waiter)
            return True
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return True  # handed a slot as the wait ran out: keep it
            waiter.cancel()
            return False
        except asyncio.CancelledError:  # the client went away while it waited
            if waiter.done() and not waiter.cancelled():
                self.inflight -= 1  # the slot it was handed goes to the next in line
                self._hand_over()
            waiter.cancel()
            raise
        finally:
            self._waiting -= 1
            if waiter in waiters:
                waiters.remove(waiter)

    def done(self, ticket: Ticket) -> None:
        now = time.monotonic()
        rank = ticket.rank
        smoothed = self.limit.sample(rank, now - ticket.started, self.inflight, now)
        if (
            smoothed > self.classes[rank].objective_s
            and now - self._shed_at < HIGHER_PRESSED_HOLD_S
        ):
            self.note_pressed(rank, now)
        self.inflight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to waiting requests, the most critical class first."""
        if self._waiting == 0:
            return
        since = time.monotonic() - HIGHER_PRESSED_HOLD_S
        for criticality, state in zip(self.classes, self._state, strict=True):
            if state.waiters and self._higher_pressed_since(criticality.rank, since):
                return  # the classes above were refused a moment ago: they come first
            while state.waiters and self.inflight < criticality.trigger * self.limit.limit:
                waiter = state.waiters.popleft()
                if not waiter.done():
                    self.inflight += 1
                    waiter.set_result(None)

    def note_pressed(self, rank: int, at: float) -> None:
        """A class that waits for slots had to wait or shed a request, or a class was past its
        latency objective (for the others the thresholds keep the order)."""
        pressed_above = self._pressed_above
        for below in range(rank + 1, len(pressed_above)):
            pressed_above[below] = max(pressed_above[below], at)

    def _higher_pressed_since(self, rank: int, since: float) -> bool:
        """Whether a more critical class had to wait or shed after ``since``."""
        return self._pressed_above[rank] > since
