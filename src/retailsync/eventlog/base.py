"""The event log's contract: what every backend offers, and the types they share.

The log is durable and ordered: ``append`` returns once the events are stored, each event is
kept once (by ``event.id``), and every reader sees them in append order under increasing
offsets. Consumer groups read at their own pace with durable progress, at least once: a
delivery not acknowledged within ``ack_wait`` is delivered again, and after ``max_deliveries``
tries the event is set aside as a dead letter so the group moves on.

The contracts are ``typing.Protocol``s rather than base classes: a backend is any object with
these methods (a test double included), and nothing is inherited that could hide a missing one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from retailsync.cdc.events import ChangeEvent

# Re-exported: the errors live in the package's tree, callers of the log find them here.
from retailsync.errors import EventLogError as EventLogError
from retailsync.errors import EventLogUnavailable as EventLogUnavailable

if TYPE_CHECKING:
    from retailsync.db.database import Connection, Database

# Group names become JetStream consumer names and a PostgreSQL key; this is what both accept.
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class LogRecord(NamedTuple):
    offset: int  # increases in append order; gaps are allowed
    event: ChangeEvent


class Lag(NamedTuple):
    """How far a group is behind the head of the log."""

    events: int  # events appended and not yet acknowledged (or dead-lettered) by the group
    seconds: float  # age of the oldest such event, from its append time; 0 when caught up


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to one worker of a group, to be acked or nacked."""

    offset: int
    event: ChangeEvent
    attempt: int  # 1 on first delivery
    # The backend's handle for acknowledging this delivery (JetStream: the message).
    receipt: object = field(default=None, repr=False, compare=False)


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event a group gave up on, with the last error its consumer reported."""

    group: str
    offset: int
    event: ChangeEvent
    error: str
    deliveries: int


class Consumer(Protocol):
    """One worker of a consumer group. Workers of the same group share its progress, and no
    two of them hold the same delivery at once."""

    @property
    def group(self) -> str: ...

    async def fetch(self, batch: int = 100, max_wait: float = 1.0) -> list[Delivery]:
        """Up to ``batch`` deliveries in offset order, waiting at most ``max_wait`` seconds for
        the first one; an empty list when none came."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """The event is handled; the group's server has taken the ack when this returns.

        PostgreSQL has committed it. JetStream writes consumer acks to disk a moment after
        confirming them, so a crash of the server right then may deliver the event again:
        at least once, never skipped.
        """
        ...

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """``ack`` for each, in one round trip where the backend can (a batch applied in one
        transaction is acknowledged at once, not one commit per event)."""
        ...

    def acks_in(self, db: Database) -> bool:
        """Whether the group's progress is kept in ``db``, so that ``ack_in`` can acknowledge
        inside a transaction of it (the PostgreSQL log in the application's database)."""
        ...

    async def ack_in(self, conn: Connection, deliveries: Sequence[Delivery]) -> None:
        """``ack_all`` inside the caller's transaction on ``conn`` (only where ``acks_in``):
        the acks commit or roll back with the caller's work, so a batch applied is never
        delivered again, and it costs no commit of its own."""
        ...

    async def nack(self, delivery: Delivery, error: str) -> None:
        """Handling failed: deliver the event again, or dead-letter it with ``error`` if this
        was its last allowed delivery."""
        ...

    async def close(self) -> None: ...


class EventLog(Protocol):
    async def append(self, events: Sequence[ChangeEvent]) -> None:
        """Store ``events`` after every event appended before, in order; an id already in the
        log is skipped. Durable when this returns."""
        ...

    async def read(self, after_offset: int = 0, limit: int = 100) -> list[LogRecord]:
        """Up to ``limit`` records with offsets above ``after_offset``, in order."""
        ...

    async def head(self) -> int:
        """The offset of the newest record (0 for an empty log): where a reader that wants only
        what comes next starts."""
        ...

    async def last_event_id(self, source: str) -> str | None:
        """The id of the last event ``source`` appended (where a restarted capture resumes)."""
        ...

    async def consumer(self, group: str, *, ack_wait: float, max_deliveries: int) -> Consumer:
        """A worker of ``group``, created on first use to start at the oldest retained event."""
        ...

    async def lag(self, group: str) -> Lag:
        """How far ``group`` is behind; a group never used is behind by the whole log."""
        ...

    async def groups(self) -> list[str]:
        """The consumer groups that exist, by name."""
        ...

    async def dead_letters(self, group: str, limit: int = 100) -> list[DeadLetter]:
        """The group's dead letters, in the order they were set aside."""
        ...

    async def close(self) -> None: ...


def check_consumer_args(group: str, ack_wait: float, max_deliveries: int) -> None:
    """Refuse arguments one backend would take and the other refuse, so consumers written
    against one backend run on the other."""
    if not _GROUP_NAME.match(group):
        raise ValueError(f"group {group!r}: use 1-64 letters, digits, '_' or '-'")
    if not ack_wait > 0:
        raise ValueError(f"ack_wait {ack_wait!r}: must be greater than 0 seconds")
    if max_deliveries < 1:
        raise ValueError(f"max_deliveries {max_deliveries!r}: must be at least 1")
