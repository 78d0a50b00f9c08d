"""The event log in a NATS JetStream stream (``nats://host:port``): the backend for scale.

One stream holds the log (``?stream=NAME``) and its sequence is the offset, so offsets, reads
and lag mean what they mean on PostgreSQL. Subjects are ``NAME.<source>.<table>.<key hash>``:
the stream keeps every key's order, and a consumer may filter by source, table or key.
Retention is the stream's limits (``max_age``, ``max_bytes``, ``max_msgs`` options), which
JetStream applies whether or not consumer groups have read the events.

Dedup: every message carries ``Nats-Msg-Id: event.id`` and the stream drops an id seen within
its duplicate window (``?duplicate_window=``, default 120 s). An event appended again after
the window is stored twice; consumers must be idempotent by ``event.id`` to absorb that.

A batch is published pipelined, then every acknowledgement awaited. If one publish in it
fails, later ones may already be stored: ``append`` raises and the caller appends the batch
again, the duplicates are dropped, and only the failed events land after their successors.

Groups are durable pull consumers. The server's MaxDeliver is set one above
``max_deliveries``: that extra delivery only happens when a worker failed to ack the last
allowed one within ack_wait, and ``fetch`` dead-letters it instead of handing it out, so
crashes and nacks end the same way. Dead letters go to the stream ``NAME-dead``.

Calls go through a circuit breaker (``traffic.breaker``, dependency ``nats``): after a run of
calls the server did not answer, they raise EventLogUnavailable at once until a probe does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    Header,
    RawStreamMsg,
    StreamConfig,
)

from retailsync.cdc.events import ChangeEvent, decode_event, encode_event
from retailsync.db.database import Connection, Database
from retailsync.eventlog.base import (
    DeadLetter,
    Delivery,
    EventLogError,
    EventLogUnavailable,
    Lag,
    LogRecord,
    check_consumer_args,
)
from retailsync.eventlog.nats_publish import Publisher
from retailsync.traffic.breaker import Breaker

logger = logging.getLogger(__name__)

_UNSAFE_IN_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_TIMEOUT_ERROR = "not acknowledged within ack_wait"
_MSG_ID = Header.MSG_ID.value  # the stream drops a repeated id within its duplicate window
_DEAD_LETTER = msgspec.json.Decoder(DeadLetter)
# Errors that mean "the server is not there or did not answer", as opposed to "it refused".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.TooManyStalledMsgsError,
)


@dataclass(frozen=True, slots=True)
class JetStreamConfig:
    server: str  # nats://[user:password@]host:port
    stream: str = "retailsync-events"
    replicas: int = 1
    max_age: float | None = None  # seconds; None: no age limit
    max_bytes: int | None = None
    max_msgs: int | None = None
    duplicate_window: float = 120.0  # seconds
    connect_timeout: float = 5.0  # for the first connection; later drops reconnect forever
    ack_timeout: float = 10.0  # for each JetStream request, a batch's acknowledgements included

    @property
    def where(self) -> str:
        """The server without its credentials, for messages."""
        parts = urlsplit(self.server)
        return f"nats://{parts.hostname}:{parts.port or 4222}"


@contextmanager
def _translated(breaker: Breaker) -> Iterator[None]:
    """A call through the log's circuit breaker, with client errors mapped to the log's: at
    once EventLogUnavailable while it is open; an unavailable server counts against it, a
    refusal (EventLogError) does not."""
    if not breaker.allow():
        raise EventLogUnavailable(
            f"NATS is unavailable (breaker open; next probe in {breaker.retry_after_s():.2f} s)"
        )
    with breaker.judge(EventLogUnavailable), _translating():
        yield


@contextmanager
def _translating() -> Iterator[None]:
    """Map client errors to the log's errors where they enter."""
    try:
        yield
    except nats.js.errors.APIError as exc:
        raise EventLogError(f"JetStream refused the request: {exc.description or exc}") from exc
    except nats.errors.NoRespondersError as exc:
        raise EventLogUnavailable("no JetStream on the NATS server (started without -js?)") from exc
    except _UNAVAILABLE as exc:
        raise EventLogUnavailable(f"NATS did not answer: {exc or type(exc).__name__}") from exc


def _token(text: str) -> str:
    """``text`` as one subject token (no dots or wildcards)."""
    return _UNSAFE_IN_TOKEN.sub("_", text) or "_"


def _key_hash(event: ChangeEvent) -> str:
    if event.key is None:
        return "_"
    key = msgspec.json.encode(event.key, order="sorted")
    return hashlib.blake2b(key, digest_size=4).hexdigest()


def _stored(msg: RawStreamMsg) -> tuple[int, bytes]:
    if msg.seq is None or msg.data is None:
        raise EventLogError(f"JetStream returned a message without sequence or data: {msg}")
    return msg.seq, msg.data


async def _connect(config: JetStreamConfig) -> Client:
    last_error: Exception | None = None

    async def on_error(exc: Exception) -> None:
        # The client retries by itself; keep the cause for the message, log it without the
        # traceback the client's default handler prints.
        nonlocal last_error
        last_error = exc
        logger.warning("event log: NATS at %s: %s", config.where, exc)

    try:
        return await asyncio.wait_for(
            nats.connect(config.server, error_cb=on_error, max_reconnect_attempts=-1),
            config.connect_timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        reason = last_error or exc
        raise EventLogUnavailable(
            f"cannot connect to NATS at {config.where} within {config.connect_timeout} s: "
            f"{reason or type(reason).__name__}"
        ) from exc


class NatsEventLog:
    def __init__(self, client: Client, config: JetStreamConfig) -> None:
        self._nc = client
        self._js = client.jetstream(timeout=config.ack_timeout)
        self._config = config
        self._stream = config.stream
        self._subjects = f"{config.stream}.>"
        self._dead_stream = f"{config.stream}-dead"
        self._publisher = Publisher(
            config.server, connect_timeout=config.connect_timeout, ack_timeout=config.ack_timeout
        )
        # Every call of the log and its consumers goes through it (see ``_translated``): while
        # NATS is away they fail at once instead of each waiting out ack_timeout.
        self.breaker = Breaker("nats")

    @classmethod
    async def connect(cls, config: JetStreamConfig) -> NatsEventLog:
        """Connect, and create or update the streams to match ``config``."""
        log = cls(await _connect(config), config)
        try:
            with _translated(log.breaker):
                await log._declare(
                    StreamConfig(
                        name=config.stream,
                        subjects=[log._subjects],
                        num_replicas=config.replicas,
                        max_age=config.max_age,
                        max_bytes=config.max_bytes,
                        max_msgs=config.max_msgs,
                        duplicate_window=config.duplicate_window,
                    )
                )
                await log._declare(
                    StreamConfig(
                        name=log._dead_stream,
                        subjects=[f"{log._dead_stream}.>"],
                        num_replicas=config.replicas,
                        duplicate_window=config.duplicate_window,
                    )
                )
        except BaseException:
            await log.close()
            raise
        return log

    async def _declare(self, config: StreamConfig) -> None:
        assert config.name is not None
        try:
            await self._js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)
        else:  # the URL is the source of truth: a changed limit applies at the next start
            await self._js.update_stream(config)

    async def append(self, events: Sequence[ChangeEvent]) -> None:
        """Publish every event, in order, and return once JetStream has stored them all (see
        ``nats_publish.py`` for why this path is not nats-py's)."""
        if events:
            with _translated(self.breaker):
                await self._publisher.publish(
                    [
                        (
                            f"{self._stream}.{_token(e.source)}.{_token(e.table)}.{_key_hash(e)}",
                            e.id,
                            encode_event(e),
                        )
                        for e in events
                    ]
                )

    async def read(self, after_offset: int = 0, limit: int = 100) -> list[LogRecord]:
        # One request per record: `read` is for tools and replays; groups use consumers.
        records: list[LogRecord] = []
        with _translated(self.breaker):
            while len(records) < limit:
                try:
                    msg = await self._js.get_msg(
                        self._stream, seq=after_offset + 1, subject=self._subjects, next=True
                    )
                except nats.js.errors.NotFoundError:
                    break
                after_offset, data = _stored(msg)
                records.append(LogRecord(after_offset, decode_event(data)))
        return records

    async def head(self) -> int:
        with _translated(self.breaker):
            state = (await self._js.stream_info(self._stream)).state
        return int(state.last_seq)

    async def last_event_id(self, source: str) -> str | None:
        with _translated(self.breaker):
            try:
                msg = await self._js.get_last_msg(
                    self._stream, f"{self._stream}.{_token(source)}.>"
                )
            except nats.js.errors.NotFoundError:
                return None
        return decode_event(_stored(msg)[1]).id

    async def consumer(self, group: str, *, ack_wait: float, max_deliveries: int) -> NatsConsumer:
        check_consumer_args(group, ack_wait, max_deliveries)
        config = ConsumerConfig(
            durable_name=group,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliveries + 1,
        )
        with _translated(self.breaker):
            await self._js.add_consumer(self._stream, config)  # creates, or updates the limits
            subscription = await self._js.pull_subscribe_bind(durable=group, stream=self._stream)
        return NatsConsumer(self, group, subscription, max_deliveries, self._config.ack_timeout)

    async def lag(self, group: str) -> Lag:
        with _translated(self.breaker):
            try:
                info = await self._js.consumer_info(self._stream, group)
            except nats.js.errors.NotFoundError:  # a new group would start at the first event
                state = (await self._js.stream_info(self._stream)).state
                behind, oldest_seq = state.messages, state.first_seq
            else:
                behind = (info.num_pending or 0) + (info.num_ack_pending or 0)
                oldest_seq = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
            if behind == 0:
                return Lag(0, 0.0)
            oldest = await self._js.get_msg(
                self._stream, seq=oldest_seq, subject=self._subjects, next=True
            )
        age = (datetime.now(UTC) - oldest.time).total_seconds() if oldest.time else 0.0
        return Lag(behind, max(age, 0.0))

    async def groups(self) -> list[str]:
        with _translated(self.breaker):
            consumers = await self._js.consumers_info(self._stream)
        return sorted(info.name for info in consumers if info.name)

    async def dead_letters(self, group: str, limit: int = 100) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        seq = 0
        with _translated(self.breaker):
            while len(letters) < limit:
                try:
                    msg = await self._js.get_msg(
                        self._dead_stream, seq=seq + 1, subject=self._dead_subject(group), next=True
                    )
                except nats.js.errors.NotFoundError:
                    break
                seq, data = _stored(msg)
                letters.append(_DEAD_LETTER.decode(data))
        return letters

    async def close(self) -> None:
        await self._publisher.close()
        try:
            await self._nc.close()
        except OSError:
            # nats-py (2.16) flushes buffered publishes on close even when the connection is
            # lost, and stops half-way when that fails: close the socket it leaves open.
            if self._nc._transport is not None:
                self._nc._transport.close()  # type: ignore[no-untyped-call]

    def _dead_subject(self, group: str) -> str:
        return f"{self._dead_stream}.{group}"

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Store ``letter``; a repeat (a crash between this and the term) is dropped."""
        await self._js.publish(
            self._dead_subject(letter.group),
            msgspec.json.encode(letter),
            headers={_MSG_ID: f"{letter.group}:{letter.event.id}"},
        )


def _message(delivery: Delivery) -> Msg:
    if not isinstance(delivery.receipt, Msg):
        raise ValueError(f"delivery at offset {delivery.offset} did not come from a NATS consumer")
    return delivery.receipt


class NatsConsumer:
    def __init__(
        self,
        log: NatsEventLog,
        group: str,
        subscription: nats.js.JetStreamContext.PullSubscription,
        max_deliveries: int,
        ack_timeout: float,
    ) -> None:
        self._log = log
        self._group = group
        self._sub = subscription
        self._max_deliveries = max_deliveries
        self._ack_timeout = ack_timeout

    @property
    def group(self) -> str:
        return self._group

    async def fetch(self, batch: int = 100, max_wait: float = 1.0) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        with _translated(self._log.breaker):
            while (remaining := deadline - loop.time()) > 0:
                try:  # a pull request the server holds open: no polling while idle
                    messages = await self._sub.fetch(batch, timeout=remaining)
                except TimeoutError:
                    return []
                deliveries = [d for m in messages if (d := await self._deliver(m)) is not None]
                if deliveries:
                    return deliveries
        return []

    async def _deliver(self, msg: Msg) -> Delivery | None:
        """The delivery for ``msg``, or None if it came past the last allowed delivery."""
        meta = msg.metadata
        offset, attempt = meta.sequence.stream, meta.num_delivered
        event = decode_event(msg.data)
        if attempt <= self._max_deliveries:
            return Delivery(offset, event, attempt, msg)
        error = f"{_TIMEOUT_ERROR} ({attempt - 1} deliveries)"
        await self._log.dead_letter(
            DeadLetter(
                group=self._group, offset=offset, event=event, error=error, deliveries=attempt - 1
            )
        )
        await msg.term()
        return None

    async def ack(self, delivery: Delivery) -> None:
        # Waits for the server to take the ack: one lost on the way (a reconnect) fails here
        # instead of turning into a silent redelivery. The server writes it to disk a moment
        # later, so only a server crash in that moment can still bring the event back.
        with _translated(self._log.breaker), suppress(nats.errors.MsgAlreadyAckdError):
            await _message(delivery).ack_sync(timeout=self._ack_timeout)

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        await asyncio.gather(*(self.ack(delivery) for delivery in deliveries))

    def acks_in(self, db: Database) -> bool:
        return False  # JetStream keeps the group's progress itself

    async def ack_in(self, conn: Connection, deliveries: Sequence[Delivery]) -> None:
        raise EventLogError("JetStream acks cannot join a PostgreSQL transaction")

    async def nack(self, delivery: Delivery, error: str) -> None:
        msg = _message(delivery)
        with _translated(self._log.breaker), suppress(nats.errors.MsgAlreadyAckdError):
            if delivery.attempt < self._max_deliveries:
                await msg.nak()
                return
            await self._log.dead_letter(
                DeadLetter(
                    group=self._group,
                    offset=delivery.offset,
                    event=delivery.event,
                    error=error,
                    deliveries=delivery.attempt,
                )
            )
            await msg.term()

    async def close(self) -> None:
        """Stop this worker's subscription; the group and its progress stay on the server."""
        with suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
            await self._sub.unsubscribe()
