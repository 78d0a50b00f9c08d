"""The PostgreSQL backend: durability, concurrent writers, retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from retailsync.cdc.events import ChangeEvent
from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.eventlog import Delivery
from retailsync.eventlog.postgres import PostgresEventLog
from tests.eventlog.conftest import ids, make_events


def _target(dsn: str) -> ServerTarget:
    return ServerTarget(dsn=dsn, pool_min=1, pool_max=4, command_timeout=10)


class TestDurability:
    """What append returned for is committed: a new pool finds it."""

    async def test_events_survive_closing_the_pool(self, db: Database, database_dsn: str) -> None:
        events = make_events(20)
        first = await Database.connect(_target(database_dsn))
        log = PostgresEventLog(first, owns_db=True)
        await log.append(events)
        await log.close()

        reopened = PostgresEventLog(await Database.connect(_target(database_dsn)), owns_db=True)
        assert ids(await reopened.read(0)) == [e.id for e in events]
        assert await reopened.last_event_id("retailsync") == events[-1].id
        await reopened.close()


class TestConcurrentWriters:
    """Offsets commit in order, so a consumer reading while many writers append misses none."""

    async def test_no_event_is_skipped(self, db: Database) -> None:
        log = PostgresEventLog(db)
        worker = await log.consumer("all", ack_wait=5, max_deliveries=3)
        writers = 4
        batches = [
            make_events(10, first=1000 * w + 10 * b) for w in range(writers) for b in range(8)
        ]

        async def write(mine: list[list[ChangeEvent]]) -> None:
            for batch in mine:
                await log.append(batch)

        got: list[Delivery] = []

        async def read() -> None:
            while len(got) < len(batches) * 10:
                for delivery in await worker.fetch(50, max_wait=2):
                    await worker.ack(delivery)
                    got.append(delivery)

        await asyncio.gather(read(), *(write(batches[w::writers]) for w in range(writers)))
        assert sorted(ids(got)) == sorted(e.id for batch in batches for e in batch)
        assert [d.offset for d in got] == sorted(d.offset for d in got)
        await log.close()


class TestTrim:
    """Retention deletes only what every group is done with."""

    async def test_keeps_what_a_group_has_not_finished(self, db: Database) -> None:
        log = PostgresEventLog(db)
        events = make_events(10)
        await log.append(events)
        ahead = await log.consumer("ahead", ack_wait=5, max_deliveries=1)
        behind = await log.consumer("behind", ack_wait=5, max_deliveries=1)
        for delivery in await ahead.fetch(10, max_wait=1):
            await ahead.ack(delivery)
        first_four = await behind.fetch(4, max_wait=1)
        for delivery in first_four[:3]:
            await behind.ack(delivery)
        # "behind" has acked 3 and still holds the 4th: only 3 may go.
        assert await log.trim(max_events=2) == 3
        assert ids(await log.read(0))[0] == events[3].id
        await behind.nack(first_four[3], "gave up")  # dead-lettered: done with, for trimming
        assert await log.trim(older_than=timedelta(hours=1)) == 0  # all too young
        assert await log.trim() == 1
        (letter,) = await log.dead_letters("behind")
        assert letter.event == events[3]  # the dead letter keeps its copy
        assert await log.last_event_id("retailsync") == events[-1].id
        await log.close()

    async def test_max_events_keeps_the_newest(self, db: Database) -> None:
        log = PostgresEventLog(db)
        events = make_events(10)
        await log.append(events)
        assert await log.trim(max_events=4) == 6  # no group: nothing holds events back
        assert ids(await log.read(0)) == [e.id for e in events[6:]]
        await log.close()
