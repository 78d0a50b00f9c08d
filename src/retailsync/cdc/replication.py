"""The streaming replication connection: pgoutput messages pushed by the server, read in a
thread, handed to the event loop in batches.

No maintained asyncio driver speaks the replication sub-protocol (CopyBoth), so the socket is
psycopg2's ``LogicalReplicationConnection`` (libpq: every auth method, TLS), read in one
thread. The thread never blocks the loop: it hands over a list of messages at a time through
``loop.call_soon_threadsafe``, and waits (bounded queue) when the loop falls behind, which
is the backpressure the server feels as a slower reader.

Positions flow back the other way: ``confirm(lsn)`` records that everything up to ``lsn`` is
durably in the event log; the thread reports it to the server as the flush position, and only
then may the server recycle the WAL before it. A crash before that replays from the last
confirmed position: nothing is lost, and the replayed events carry the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from retailsync.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_BATCH = 1000  # messages handed to the loop at once
_QUEUE_BATCHES = 16  # batches in flight before the reader waits for the loop
_POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class WalMessage:
    """One pgoutput message and the WAL position it starts at."""

    lsn: int
    payload: bytes


class ReplicationStream:
    """Read ``slot`` from ``start_lsn`` (0: from the slot's confirmed position)."""

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        start_lsn: int = 0,
        feedback_seconds: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._slot = slot
        self._publication = publication
        self._start_lsn = start_lsn
        self._feedback_seconds = feedback_seconds
        self._confirmed = start_lsn
        self._stop = threading.Event()
        self._batches: asyncio.Queue[list[WalMessage] | BaseException] = asyncio.Queue(
            _QUEUE_BATCHES
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def confirm(self, lsn: int) -> None:
        """Everything before ``lsn`` is durable downstream; the server may forget it."""
        self._confirmed = max(self._confirmed, lsn)

    async def __aenter__(self) -> ReplicationStream:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"wal-{self._slot}", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        # Free a reader waiting for queue space, then let it close its connection.
        while not self._batches.empty():
            self._batches.get_nowait()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def batches(self) -> AsyncIterator[list[WalMessage]]:
        """Batches of messages in WAL order, until the stream fails (raised here) or closes."""
        while True:
            item = await self._batches.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    # --- the reader thread -------------------------------------------------------------

    def _hand_over(self, item: list[WalMessage] | BaseException) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._batches.put(item), self._loop)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                future.result(timeout=_POLL_SECONDS)
                return
        future.cancel()

    def _run(self) -> None:
        try:
            self._read()
        except psycopg2.Error as exc:
            if not self._stop.is_set():
                message = str(exc).strip() or type(exc).__name__
                self._hand_over(DatabaseUnavailable(f"replication stream failed: {message}"))
        except BaseException as exc:
            self._hand_over(exc)

    def _read(self) -> None:
        conn = psycopg2.connect(
            self._dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection
        )
        try:
            cursor = conn.cursor()
            cursor.start_replication(
                slot_name=self._slot,
                decode=False,
                start_lsn=self._start_lsn,
                status_interval=max(1, round(self._feedback_seconds)),
                options={
                    "proto_version": "2",
                    "publication_names": self._publication,
                    "messages": "true",
                    "streaming": "on",
                },
            )
            self._pump(cursor)
        finally:
            conn.close()

    def _pump(self, cursor: psycopg2.extras.ReplicationCursor) -> None:
        reported = 0
        last_report = time.monotonic()
        while not self._stop.is_set():
            batch: list[WalMessage] = []
            while len(batch) < _BATCH:
                message = cursor.read_message()
                if message is None:
                    break
                batch.append(WalMessage(message.data_start, message.payload))
            if batch:
                self._hand_over(batch)
            confirmed = self._confirmed
            now = time.monotonic()
            if confirmed > reported or now - last_report >= self._feedback_seconds:
                # psycopg2's stubs leave send_feedback untyped.
                cursor.send_feedback(  # type: ignore[no-untyped-call]
                    flush_lsn=confirmed, write_lsn=confirmed, reply=False
                )
                reported, last_report = confirmed, now
            if not batch:
                select.select([cursor], [], [], _POLL_SECONDS)
