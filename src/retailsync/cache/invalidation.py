"""Each worker keeps its L1 fresh by tailing the event log itself.

The tailer applies every change in log order: each key the change affects gets its floor
raised to the change's log offset, which drops what the worker holds for it. ``position`` is
the offset through which whole source transactions are applied; a load from the database is
tagged with the position read *before* the load began, so a change the load may have missed
comes later in the log, raises the floor above the tag and evicts the value (or refuses it,
if the load is still running). That is the one rule; ``writers`` covers the last gap (see
``reads``).

Event invalidation needs the capture (``retailsync cdc run``, or the one ``serve`` starts).
The tailer checks every ``liveness_s`` that the capture's replication slot is being read;
while it is not, ``live`` is False, L1 is emptied and event-invalidated classes are read
through, so a stopped capture costs speed, never freshness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from retailsync.cache import metrics
from retailsync.cache.keys import affected_keys
from retailsync.cache.l1 import L1Cache
from retailsync.chores import wait_set
from retailsync.db.database import Database
from retailsync.eventlog.base import EventLog, LogRecord

log = logging.getLogger(__name__)
_BATCH = 1000
_WRITERS_PER_KEY = 4
_WAKEUP_TIMEOUT = 0.05
_APPLIED_KEPT = 65_536
_SLOT_READ = (
    "SELECT active FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()"
)


class Invalidator:
    def __init__(
        self,
        event_log: EventLog,
        l1: L1Cache,
        db: Database,
        *,
        slot: str,
        poll_s: float = 0.005,
        liveness_s: float = 0.5,
        max_keys: int = 200_000,
    ) -> None:
        self._log = event_log
        self._l1 = l1
        self._db = db
        self._slot = slot
        self._poll_s = poll_s
        self._liveness_s = liveness_s
        self._max_keys = max_keys
        self._read = 0  # last offset read
        self.position = 0  # last offset of a whole transaction applied
        self._applied: OrderedDict[int, None] = OrderedDict()  # xids of the last transactions
        self._slot_active = False
        self._tailing = False
        # Bumped whenever changes may have gone unseen (invalidation stopped, or the tail
        # restarted at the head): a load that began in an older epoch is not stored.
        self.epoch = 0
        self.origin = 0  # where the tail (re)started: a value older than that is unknown
        self._writers: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.observer: Callable[[float], None] | None = None  # commit-to-applied, seconds

    @property
    def live(self) -> bool:
        return self._slot_active and self._tailing

    async def start(self) -> None:
        """Tail from the log's head (a new worker's L1 is empty: older changes cannot matter)."""
        try:
            self._read = self.position = self.origin = await self._log.head()
            self._tailing = True
        except Exception as exc:  # the tail loop keeps trying
            log.warning("cache invalidation: event log unavailable (%s); reading through", exc)
        await self._check_slot()
        self._tasks = [
            asyncio.create_task(self._tail(), name="cache-tail"),
            asyncio.create_task(self._watch_slot(), name="cache-slot-watch"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def writers(self, key: str) -> tuple[int, ...]:
        """Transaction ids (32-bit, as pgoutput sends them) of the last changes to ``key``."""
        return self._writers.get(key, ())

    async def wait_for(self, xid: int, within_s: float) -> bool:
        """Wait until the changes of transaction ``xid`` (a read-your-writes token) are
        applied; False if that did not happen within ``within_s`` seconds (or was too long
        ago to tell: the caller reads through)."""
        xid32 = xid & 0xFFFFFFFF
        deadline = time.monotonic() + within_s
        while xid32 not in self._applied:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.live:
                return False
            progress = self._progress
            await wait_set(progress, remaining)
        return True

    def apply(self, records: list[LogRecord]) -> None:
        """Apply records in log order; synchronous, so no reader sees half a transaction."""
        for offset, event in records:
            for key in affected_keys(event):
                self._l1.invalidate(key, offset)
                self._note_writer(key, event.xid)
            self._read = offset
            if event.last_in_tx:
                self.position = offset
                self._applied[event.xid] = None
                if len(self._applied) > _APPLIED_KEPT:
                    self._applied.popitem(last=False)
                lag = max(time.time() - event.commit_ts_us / 1e6, 0.0)
                metrics.FRESHNESS.labels("l1").observe(lag)
                if self.observer is not None:
                    self.observer(lag)
        if records:
            self._progress.set()
            self._progress = asyncio.Event()

    def _note_writer(self, key: str, xid: int) -> None:
        known = self._writers.get(key, ())
        if xid not in known:
            self._writers[key] = (*known[-(_WRITERS_PER_KEY - 1) :], xid)
        self._writers.move_to_end(key)
        if len(self._writers) > self._max_keys:
            self._writers.popitem(last=False)

    async def _tail(self) -> None:
        backoff = 0.1
        while True:
            try:
                if not self._tailing:  # the log was away at start or since
                    self._read = self.position = self.origin = await self._log.head()
                    self._set_tailing(True)
                waiter = await self._waiter()
                records = await self._log.read(self._read, _BATCH)
                self.apply(records)
                backoff = 0.1
                if len(records) < _BATCH:
                    if waiter is None:
                        await asyncio.sleep(self._poll_s)
                    else:
                        # NOTIFY wakes us at once; the timeout covers a lost listening
                        # connection (a database restart) within the freshness bound.
                        await wait_set(waiter, _WAKEUP_TIMEOUT)
            except Exception as exc:  # whatever it was, the caches must stop trusting events
                if self._tailing:
                    log.warning("cache invalidation: tailing the log failed (%r); reading through",
                                exc)  # fmt: skip
                self._set_tailing(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _waiter(self) -> asyncio.Event | None:
        """The PostgreSQL log's next-NOTIFY event (None for logs that have none: poll)."""
        listen = getattr(self._log, "listen", None)
        if listen is None:
            return None
        await listen()
        waiter: asyncio.Event = self._log.wakeup()  # type: ignore[attr-defined]
        return waiter

    def _set_tailing(self, tailing: bool) -> None:
        was = self.live
        self._tailing = tailing
        self._changed(was)

    async def _watch_slot(self) -> None:
        while True:
            await asyncio.sleep(self._liveness_s)
            await self._check_slot()

    async def _check_slot(self) -> None:
        was = self.live
        try:
            async with self._db.connection() as conn:
                self._slot_active = bool(await conn.fetchval(_SLOT_READ, self._slot))
        except Exception as exc:  # unknown is not active
            if self._slot_active:
                log.warning("cache invalidation: cannot see the capture's slot (%r)", exc)
            self._slot_active = False
        self._changed(was)

    def _changed(self, was: bool) -> None:
        if was == self.live:
            return
        metrics.INVALIDATION_LIVE.set(1 if self.live else 0)
        if not self.live:
            # Changes may now go unseen for a while: forget every value (floors stay), and
            # refuse what loads that began before now bring back.
            self.epoch += 1
            self._l1.clear()
            log.warning("cache invalidation stopped (capture or log away): reading through")
        else:
            log.info("cache invalidation live from log offset %d", self.position)
