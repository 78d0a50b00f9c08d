"""The waiting room of named sale events: an ASGI-level gate in front of the app.

A sale event guards some paths. A session arriving there while the event's admission rate is
not used up (and nobody waits) goes straight in; otherwise it gets a position and a signed queue
token (``waiting_tokens``) and is told its place (``waiting_page``). Positions are admitted in
order at the event's rate by PostgreSQL functions (migration 0008) that take the event's row
lock, so one worker at a time moves the mark, any worker can admit any token, and a restart
loses nothing. An admitted session trades its token once for a pass; a second use is refused.
When none of the event's skus has stock available, the queue closes and everyone is told.

Each worker keeps a copy of every event's state, refreshed every ``tick_s`` (0.1 s): a poll from
a session whose turn cannot have come yet is answered from it without database work; only one
whose turn may have come asks the database. Paths no event guards cost one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
import msgspec
from prometheus_client import Counter, Gauge
from starlette.responses import Response
from starlette.types import Scope

from retailsync.api.problems import problem
from retailsync.chores import every
from retailsync.errors import ConfigError, DatabaseUnavailable
from retailsync.traffic.waiting_page import (
    ADMISSION_HEADERS,
    PASS_HEADER,
    TOKEN_HEADER,
    QueueView,
    RawHeaders,
    Visit,
    cookie,
    sold_out_response,
    waiting_response,
)
from retailsync.traffic.waiting_tokens import (
    SECRET_BYTES,
    Pass,
    QueueToken,
    TokenRefused,
    TokenSigner,
    shared_key,
)

if TYPE_CHECKING:
    from retailsync.config import Settings
    from retailsync.db.database import Database

log = logging.getLogger(__name__)
SETTING = "RETAILSYNC_WAITING_ROOMS"
SECRET_SETTING = "RETAILSYNC_WAITING_ROOM_SECRET"  # noqa: S105 (a setting name)
_OUTFLOW_WINDOW_S = 5.0
_SWEEP_EVERY_S = 60.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

LENGTH = Gauge(
    "retailsync_waiting_room_length",
    "Positions handed out and not yet admitted, by sale event",
    ["event"],
    multiprocess_mode="max",  # every worker reads the same number from PostgreSQL
)
ADMITTED = Counter(
    "retailsync_waiting_room_admitted_total",
    "Sessions let in to a sale event (directly or from the queue), by event",
    ["event"],
)
OUTFLOW = Gauge(
    "retailsync_waiting_room_outflow_per_second",
    "Sessions actually let in a second over the last 5 s, by sale event",
    ["event"],
    multiprocess_mode="max",
)


class SaleEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of RETAILSYNC_WAITING_ROOMS. A path ending in ``*`` guards every path that
    starts with what precedes the ``*``; others guard that exact path."""

    name: str
    paths: tuple[str, ...]
    skus: tuple[str, ...]
    rate_per_s: float  # sessions admitted a second
    burst: float | None = None  # let in at once after a quiet spell (default: max(1, rate))
    starts_at: datetime | None = None  # outside [starts_at, ends_at) the paths are not gated
    ends_at: datetime | None = None
    pass_ttl_s: int = 1800  # how long an admitted session keeps its pass
    token_ttl_s: int = 86_400  # how long a queue token holds its place

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} must match {_NAME.pattern}")
        if not self.paths or not self.skus:
            raise ValueError(f"{self.name}: paths and skus must not be empty")
        for path in self.paths:
            if not path.startswith("/") or "*" in path[:-1] or any(c.isspace() for c in path):
                raise ValueError(f"{self.name}: path {path!r} must start with / (* only last)")
        if not 0 < self.rate_per_s <= 100_000 or (self.burst is not None and self.burst < 1):
            raise ValueError(f"{self.name}: rate_per_s must be in (0, 100000], burst >= 1")
        if not 1 <= self.pass_ttl_s <= 7 * 86_400 or not 60 <= self.token_ttl_s <= 7 * 86_400:
            raise ValueError(f"{self.name}: pass_ttl_s in [1, 604800], token_ttl_s in [60, ...]")
        for when in (self.starts_at, self.ends_at):
            if when is not None and when.tzinfo is None:
                raise ValueError(f"{self.name}: starts_at/ends_at need a UTC offset")
        if self.starts_at and self.ends_at and self.starts_at >= self.ends_at:
            raise ValueError(f"{self.name}: ends_at must be after starts_at")

    @property
    def burst_size(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.rate_per_s)

    def active(self, now: float) -> bool:
        starts, ends = self.starts_at, self.ends_at
        return (starts is None or starts.timestamp() <= now) and (
            ends is None or now < ends.timestamp()
        )


def load_waiting_rooms(rooms_json: str, secret: str = "") -> tuple[SaleEvent, ...]:
    """The sale events of RETAILSYNC_WAITING_ROOMS (a JSON list); ConfigError naming the
    setting on anything we cannot use, at start-up rather than at the first request."""
    if secret and len(secret.encode()) < SECRET_BYTES:
        raise ConfigError(SECRET_SETTING, "**********", f"needs at least {SECRET_BYTES} bytes")
    if not rooms_json.strip():
        return ()
    try:
        events = msgspec.json.decode(rooms_json, type=tuple[SaleEvent, ...])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(SETTING, rooms_json, str(exc)) from exc
    seen_names: set[str] = set()
    seen_paths: dict[str, str] = {}
    for event in events:
        if event.name in seen_names:
            raise ConfigError(SETTING, event.name, "two sale events share this name")
        seen_names.add(event.name)
        for path in event.paths:
            if path in seen_paths:
                raise ConfigError(SETTING, path, f"guarded by {seen_paths[path]} and {event.name}")
            seen_paths[path] = event.name
    return events


class _Routes:
    """Which event guards a path: exact paths by lookup, then prefixes longest first."""

    def __init__(self, events: tuple[SaleEvent, ...]) -> None:
        self._exact = {p: e for e in events for p in e.paths if not p.endswith("*")}
        prefixes = [(p[:-1], e) for e in events for p in e.paths if p.endswith("*")]
        self._prefixes = sorted(prefixes, key=lambda pe: -len(pe[0]))

    def match(self, path: str) -> SaleEvent | None:
        found = self._exact.get(path)
        if found is None:
            found = next((e for p, e in self._prefixes if path.startswith(p)), None)
        return found


@dataclass(slots=True)
class EventState:
    """One worker's copy of an event's state, as of ``seen_at`` (monotonic seconds): when the
    query that read it was sent, which is no later than when PostgreSQL computed it."""

    issued: int = 0
    admitted: int = 0
    credit: float = 0.0  # admissions earned and not yet used, as of seen_at
    sold_out: bool = False
    outflow: float = 0.0  # sessions let in a second, measured over the last 5 s
    seen_at: float = 0.0

    def take(self, answer: asyncpg.Record, sent_at: float) -> None:
        if answer["admitted"] >= self.admitted:  # answers can cross; the mark never goes back
            self.issued, self.admitted = answer["issued"], answer["admitted"]
            self.credit, self.sold_out = answer["credit"], answer["sold_out"]
            # Not when the answer came back: on a loaded machine that can be tens of ms after
            # the mark was read, time in which the mark moved and the bound below would miss.
            self.seen_at = sent_at
        if answer["outflow"] is not None:
            self.outflow = answer["outflow"]

    def may_have_come(self, position: int, rate: float) -> bool:
        """True unless this position's turn surely has not come: the mark moves no faster
        than the rate once anyone waits (one position of margin for rounding)."""
        elapsed = time.monotonic() - self.seen_at
        return position <= self.admitted + self.credit + rate * elapsed + 1


class WaitingRoom:
    """The gate of every configured sale event, with its refresher task."""

    def __init__(self, db: Database, events: tuple[SaleEvent, ...], signer: TokenSigner) -> None:
        self._db = db
        self._events = events
        self._routes = _Routes(events)
        self._signer = signer
        self._state = {event.name: EventState() for event in events}
        self._swept_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, settings: Settings, db: Database, *, tick_s: float = 0.1
    ) -> WaitingRoom | None:
        """The waiting room of the settings' events (None when there are none), its state
        loaded and its refresher running."""
        secret = settings.waiting_room_secret
        events = load_waiting_rooms(settings.waiting_rooms, secret)
        if not events:
            return None
        key = secret.encode() if secret else await shared_key(db)
        await db.execute(
            "INSERT INTO waiting_room_events (event, credit) "
            "SELECT * FROM unnest($1::text[], $2::float8[]) ON CONFLICT DO NOTHING",
            [e.name for e in events],
            [e.burst_size for e in events],
        )
        room = cls(db, events, TokenSigner(key))
        await room.tick()
        room._task = asyncio.create_task(every(tick_s, "waiting room", room.tick))
        return room

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def state(self, event: str) -> EventState:
        """This worker's latest copy of ``event``'s state (outflow included)."""
        return self._state[event]

    async def tick(self) -> None:
        """Move every event's mark, check its stock, measure its outflow, publish metrics."""
        for event in self._events:
            await self._read(
                event,
                "SELECT * FROM waiting_room_tick($1, $2, $3, $4, $5)",
                event.name,
                event.rate_per_s,
                event.burst_size,
                list(event.skus),
                _OUTFLOW_WINDOW_S,
            )
        if time.monotonic() - self._swept_at >= _SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            for event in self._events:  # no token naming these positions is still valid
                await self._db.execute(
                    "DELETE FROM waiting_room_admissions WHERE event = $1 "
                    "AND admitted_at < clock_timestamp() - $2 * interval '1 second'",
                    event.name,
                    float(event.token_ttl_s),
                )

    def guards(self, path: str) -> bool:
        """Whether a sale event's waiting room stands in front of the path (active or not)."""
        return self._routes.match(path) is not None

    async def gate(self, scope: Scope) -> Response | None:
        """None: let the request through (adding ``scope[ADMISSION_HEADERS]``, if set, to its
        response). Otherwise the answer to send instead: waiting, sold out or refused."""
        if scope["type"] != "http":
            return None
        event = self._routes.match(scope["path"])
        if event is None or not event.active(time.time()):
            return None
        try:
            return await self._gate(scope, event)
        except DatabaseUnavailable as exc:
            log.warning("waiting room %s: %s", event.name, exc)
            return problem(
                503, "unavailable", "the waiting room is unavailable", headers={"Retry-After": "1"}
            )

    async def _gate(self, scope: Scope, event: SaleEvent) -> Response | None:
        visit = Visit(scope, event.name)
        if visit.session is None:
            return problem(
                400,
                "invalid-parameter",
                "Retailsync-Session: not a session id",
                field="Retailsync-Session",
            )
        session, now_ms = visit.session, int(time.time() * 1000)
        if visit.pass_token and not visit.new_session:
            try:
                grant = self._signer.open_pass(visit.pass_token, session)
            except TokenRefused as exc:
                return _refused("queue-pass-invalid", f"pass refused: {exc}")
            if grant.event == event.name and grant.expires_ms > now_ms:
                return None
        token: QueueToken | None = None
        if visit.queue_token:
            try:
                token = self._signer.open_queue_token(visit.queue_token, session)
            except TokenRefused as exc:
                return _refused("queue-token-invalid", f"queue token refused: {exc}")
            if token.event != event.name or now_ms - token.issued_ms > event.token_ttl_s * 1000:
                token = None  # another event's, or too old to hold a place: queue again
        state = self._state[event.name]
        if token is not None and not state.sold_out:
            if not state.may_have_come(token.position, event.rate_per_s):
                return self._answer(event, visit, token.position, [])
            answer = await self._call("waiting_room_redeem", event, token.position)
        elif state.sold_out:
            return self._answer(event, visit, token.position if token else None, [])
        else:
            answer = await self._call("waiting_room_arrive", event)
        outcome, position = answer["outcome"], answer["position"]
        if outcome == "admitted":
            ADMITTED.labels(event.name).inc()
            scope[ADMISSION_HEADERS] = self._pass_headers(event, visit, now_ms)
            return None
        if outcome == "replayed":
            return _refused("queue-token-replayed", "this queue token was already redeemed")
        issued: RawHeaders = []
        if token is None and position is not None:  # a new place in the queue
            text = self._signer.queue_token(QueueToken(event.name, position, now_ms), session)
            age = event.token_ttl_s
            issued = [
                cookie(visit.token_cookie, text, max_age=age, secure=visit.secure),
                (TOKEN_HEADER.encode(), text.encode()),
            ]
        return self._answer(event, visit, position, issued)

    async def _call(self, function: str, event: SaleEvent, *position: int) -> asyncpg.Record:
        args = ", $4" if position else ""
        return await self._read(
            event,
            f"SELECT * FROM {function}($1, $2, $3{args})",
            event.name,
            event.rate_per_s,
            event.burst_size,
            *position,
        )

    async def _read(self, event: SaleEvent, query: str, *args: object) -> asyncpg.Record:
        """Run one of the room's functions, whose answer is the event's state, and keep that
        state as of when the query was sent."""
        sent_at = time.monotonic()
        answer = await self._db.fetchrow(query, *args)
        assert answer is not None
        state = self._state[event.name]
        state.take(answer, sent_at)
        LENGTH.labels(event.name).set(state.issued - state.admitted)
        OUTFLOW.labels(event.name).set(state.outflow)
        return answer

    def _answer(
        self, event: SaleEvent, visit: Visit, position: int | None, issued: RawHeaders
    ) -> Response:
        state = self._state[event.name]
        extra = [*visit.session_headers(), *issued]
        if state.sold_out or position is None:
            view = QueueView(event.name, position, 0, None, "sold_out")
            return sold_out_response(view, html_page=visit.html, extra=extra)
        ahead = max(0, position - 1 - state.admitted)
        left = max(0.0, position - state.admitted - state.credit)
        view = QueueView(event.name, position, ahead, math.ceil(left / event.rate_per_s), "waiting")
        return waiting_response(view, html_page=visit.html, extra=extra)

    def _pass_headers(self, event: SaleEvent, visit: Visit, now_ms: int) -> RawHeaders:
        assert visit.session is not None
        grant = Pass(event.name, now_ms + event.pass_ttl_s * 1000)
        text = self._signer.pass_(grant, visit.session)
        return [
            *visit.session_headers(),
            cookie(visit.pass_cookie, text, max_age=event.pass_ttl_s, secure=visit.secure),
            cookie(visit.token_cookie, "", max_age=0, secure=visit.secure),
            (PASS_HEADER.encode(), text.encode()),
        ]


def _refused(slug: str, detail: str) -> Response:
    return problem(403, slug, detail)
