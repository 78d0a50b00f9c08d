"""The traffic recorder against the real PostgreSQL: workers adding to the same minute, counts
kept through database errors (and bounded), flushing in the background and on close."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.errors import DatabaseUnavailable
from retailsync.traffic.recorder import TrafficRecorder, minute_start

T0 = 29_000_000  # an epoch minute (2025-02-20 05:20 UTC)


class Clock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self, minute: int = T0) -> None:
        self.now = minute * 60.0 + 1.5

    def __call__(self) -> float:
        return self.now

    def to_minute(self, minute: int) -> None:
        self.now = minute * 60.0 + 1.5


async def _rows(db: Database) -> dict[tuple[int, str], tuple[int, int]]:
    rows = await db.fetch("SELECT minute, class, requests, shed FROM traffic_minutes")
    return {
        (int(r["minute"].timestamp()) // 60, r["class"]): (r["requests"], r["shed"]) for r in rows
    }


@asynccontextmanager
async def _table_away(db: Database) -> AsyncIterator[None]:
    """A real database error for the recorder's upsert: its table is gone for a while."""
    await db.execute("ALTER TABLE traffic_minutes RENAME TO traffic_minutes_away")
    try:
        yield
    finally:
        await db.execute("ALTER TABLE traffic_minutes_away RENAME TO traffic_minutes")


class TestAdding:
    """Counts from several workers add up in the same rows."""

    async def test_two_workers_add_to_the_same_minute(self, db: Database) -> None:
        clock = Clock()
        one, two = TrafficRecorder(db, clock=clock), TrafficRecorder(db, clock=clock)
        for _ in range(5):
            one.count("checkout")
            two.count("checkout")
        one.count("browse", shed=True)
        two.count("browse")
        two.count("browse", shed=True)
        await asyncio.gather(one.flush(), two.flush())
        one.count("checkout")  # a second flush of the same minute adds to it
        await one.flush()
        assert await _rows(db) == {(T0, "checkout"): (11, 0), (T0, "browse"): (3, 2)}
        assert (one.pending_requests, two.pending_requests) == (0, 0)

    async def test_concurrent_flushes_of_overlapping_minutes(self, db: Database) -> None:
        """Many workers flushing the same rows at once: sorted keys, so no deadlock."""
        clock = Clock()
        recorders = [TrafficRecorder(db, clock=clock) for _ in range(8)]
        for minute in range(T0, T0 + 30):
            clock.to_minute(minute)
            for k, recorder in enumerate(recorders):
                for cls in (*("checkout", "cart", "browse")[k % 3 :], "product"):
                    recorder.count(cls)
        await asyncio.gather(*(r.flush() for r in recorders))
        rows = await _rows(db)
        assert len(rows) == 30 * 4
        assert sum(requests for requests, _ in rows.values()) == 30 * (8 + 8 + 6 + 3)

    async def test_count_is_cheap(self, db: Database) -> None:
        recorder = TrafficRecorder(db)
        started = time.perf_counter()
        for _ in range(100_000):
            recorder.count("browse")
        # 10 us a call at most, on a loaded 2-core machine: 1 % of the admission budget.
        assert time.perf_counter() - started < 1.0
        assert recorder.pending_requests == 100_000


class TestDatabaseErrors:
    """A failed flush keeps its counts for the next one, within a bound."""

    async def test_counts_survive_a_failed_flush(self, db: Database) -> None:
        clock = Clock()
        recorder = TrafficRecorder(db, clock=clock)
        recorder.count("cart")
        recorder.count("cart", shed=True)
        async with _table_away(db):
            with pytest.raises(Exception, match="traffic_minutes"):
                await recorder.flush()
            assert recorder.pending_requests == 2
            clock.to_minute(T0 + 1)
            recorder.count("cart")
        await recorder.flush()
        assert await _rows(db) == {(T0, "cart"): (2, 1), (T0 + 1, "cart"): (1, 0)}
        assert recorder.dropped_requests == 0

    async def test_a_closed_pool_keeps_the_counts(self, db: Database, database_dsn: str) -> None:
        other = await Database.connect(
            ServerTarget(dsn=database_dsn, pool_min=1, pool_max=2, command_timeout=10.0)
        )
        recorder = TrafficRecorder(other, clock=Clock())
        recorder.count("checkout")
        await other.close()
        with pytest.raises(DatabaseUnavailable):
            await recorder.flush()
        assert recorder.pending_requests == 1
        await recorder.close()  # the last flush fails too: logged, not raised
        assert recorder.pending_requests == 1
        assert await _rows(db) == {}

    async def test_the_oldest_minutes_are_dropped_past_the_bound(self, db: Database) -> None:
        clock = Clock()
        recorder = TrafficRecorder(db, clock=clock, max_pending_minutes=2)
        async with _table_away(db):
            for minute in range(T0, T0 + 4):
                clock.to_minute(minute)
                for _ in range(minute - T0 + 1):  # 1, 2, 3 and 4 requests
                    recorder.count("browse")
                with pytest.raises(Exception, match="traffic_minutes"):
                    await recorder.flush()
        assert recorder.dropped_requests == 1 + 2
        await recorder.flush()
        assert await _rows(db) == {(T0 + 2, "browse"): (3, 0), (T0 + 3, "browse"): (4, 0)}

    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["count", "count", "flush", "fail"]),
                st.integers(0, 3),
                st.sampled_from(["checkout", "cart", "browse"]),
                st.booleans(),
            ),
            max_size=40,
        )
    )
    def test_nothing_is_lost_or_doubled(
        self, database_dsn: str, ops: list[tuple[str, int, str, bool]]
    ) -> None:
        """Any interleaving of counts, good flushes and failed flushes ends, after one good
        flush, with exactly the counts made."""

        async def scenario() -> None:
            db = await Database.connect(
                ServerTarget(dsn=database_dsn, pool_min=1, pool_max=2, command_timeout=10.0)
            )
            try:
                await db.execute("TRUNCATE traffic_minutes")
                clock = Clock()
                recorder = TrafficRecorder(db, clock=clock)
                made: Counter[tuple[int, str, str]] = Counter()
                for kind, offset, cls, shed in ops:
                    if kind == "count":
                        clock.to_minute(T0 + offset)
                        recorder.count(cls, shed=shed)
                        made[(T0 + offset, cls, "requests")] += 1
                        made[(T0 + offset, cls, "shed")] += shed
                    elif kind == "flush":
                        await recorder.flush()
                    elif recorder.pending_requests:  # a flush of nothing touches no table
                        async with _table_away(db):
                            with pytest.raises(Exception, match="traffic_minutes"):
                                await recorder.flush()
                await recorder.flush()
                want = {
                    (minute, cls): (made[(minute, cls, "requests")], made[(minute, cls, "shed")])
                    for minute, cls, _ in made
                }
                assert await _rows(db) == want
            finally:
                await db.close()

        asyncio.run(scenario())


class TestBackground:
    """The background task flushes on its interval, and close writes what is left."""

    async def test_flushes_on_its_interval(self, db: Database) -> None:
        recorder = TrafficRecorder(db, flush_seconds=0.05)
        recorder.start()
        try:
            recorder.count("product")
            for _ in range(100):
                if await _rows(db):
                    break
                await asyncio.sleep(0.05)
            rows = await _rows(db)
            assert [value for (_, cls), value in rows.items() if cls == "product"] == [(1, 0)]
        finally:
            await recorder.close()

    async def test_close_flushes_what_is_left(self, db: Database) -> None:
        recorder = TrafficRecorder(db, flush_seconds=3600, clock=Clock())
        recorder.start()
        await asyncio.sleep(0)  # the task is asleep on its long interval
        recorder.count("analytics")
        recorder.count("analytics", shed=True)
        await recorder.close()
        assert await _rows(db) == {(T0, "analytics"): (2, 1)}
        assert recorder.pending_requests == 0

    async def test_close_waits_for_a_flush_in_progress(self, db: Database) -> None:
        """Close while the background flush is mid-statement: its counts land once."""
        recorder = TrafficRecorder(db, flush_seconds=0.01, clock=Clock())
        async with db.transaction() as conn:
            # Hold the row's lock so the background upsert blocks mid-flush.
            await conn.execute(
                "INSERT INTO traffic_minutes VALUES ($1, 'cart', 0, 0)", minute_start(T0)
            )
            recorder.count("cart")
            recorder.start()
            await asyncio.sleep(0.3)
            assert recorder.pending_requests == 0  # taken by the flush, which is waiting
            closing = asyncio.create_task(recorder.close())
            await asyncio.sleep(0.1)
            assert not closing.done()
        await closing
        assert await _rows(db) == {(T0, "cart"): (1, 0)}
