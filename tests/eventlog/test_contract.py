"""The contract every backend keeps; each test runs on PostgreSQL and on NATS JetStream."""

from __future__ import annotations

import asyncio
import time

import pytest

from retailsync.db.database import Database
from retailsync.eventlog import Consumer, Delivery, EventLog, EventLogError
from tests.eventlog.conftest import ids, make_events


async def take(consumer: Consumer, count: int, *, max_wait: float = 3.0) -> list[Delivery]:
    """Fetch and ack until ``count`` deliveries came (or ``max_wait`` passed)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + max_wait
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        batch = await consumer.fetch(count - len(got), max_wait=left)
        for delivery in batch:
            await consumer.ack(delivery)
        got += batch
    return got


async def _ack_then_fail(db: Database, worker: Consumer, deliveries: list[Delivery]) -> None:
    async with db.transaction() as conn:
        await worker.ack_in(conn, deliveries)
        raise RuntimeError("the caller's work failed")


async def nothing_due(consumer: Consumer) -> bool:
    return await consumer.fetch(10, max_wait=0.1) == []


class TestAppendAndRead:
    """Appends are kept once each, in order, under increasing offsets."""

    async def test_order_within_and_across_appends(self, log: EventLog) -> None:
        events = make_events(12)
        await log.append(events[:5])
        await log.append(events[5:6])
        await log.append(events[6:])
        records = await log.read(0, limit=100)
        assert ids(records) == [e.id for e in events]
        assert records[0].event == events[0]
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets))
        assert ids(await log.read(records[4].offset, limit=3)) == [e.id for e in events[5:8]]

    async def test_duplicate_ids_are_stored_once(self, log: EventLog) -> None:
        a, b, c, d = make_events(4)
        await log.append([a, b, c])
        await log.append([b, c, d, d])  # a capture replaying after a crash, and a repeat
        await log.append([a])
        assert ids(await log.read(0)) == [a.id, b.id, c.id, d.id]

    async def test_last_event_id_per_source(self, log: EventLog) -> None:
        assert await log.last_event_id("retailsync") is None
        await log.append(make_events(3, first=10))
        await log.append(make_events(2, first=20, source="eu"))
        await log.append(make_events(1, first=13))
        assert await log.last_event_id("retailsync") == make_events(1, first=13)[0].id
        assert await log.last_event_id("eu") == make_events(1, first=21)[0].id
        assert await log.last_event_id("us") is None


class TestConsumerGroups:
    """Groups read at their own pace, at least once, and never stall on a poison event."""

    async def test_delivers_in_order_and_ack_is_remembered(self, log: EventLog) -> None:
        events = make_events(7)
        await log.append(events)
        worker = await log.consumer("indexer", ack_wait=5, max_deliveries=3)
        got = await take(worker, 7)
        assert ids(got) == [e.id for e in events]
        assert {d.attempt for d in got} == {1}
        assert await nothing_due(worker)
        await worker.close()
        # A new worker of the group (a restart) carries on after the acked events.
        (later,) = make_events(1, first=100)
        await log.append([later])
        restarted = await log.consumer("indexer", ack_wait=5, max_deliveries=3)
        assert ids(await take(restarted, 1)) == [later.id]
        assert await nothing_due(restarted)
        await restarted.close()

    async def test_a_batch_acked_at_once_is_remembered(self, log: EventLog) -> None:
        events = make_events(6)
        await log.append(events)
        worker = await log.consumer("batcher", ack_wait=0.5, max_deliveries=3)
        first = await worker.fetch(4, max_wait=3.0)
        await worker.ack_all(first)
        await worker.ack_all([])
        rest = await take(worker, 6 - len(first))
        assert ids(first + rest) == [e.id for e in events]
        await asyncio.sleep(0.7)  # past ack_wait: nothing acked comes back
        assert await nothing_due(worker)
        await worker.close()

    async def test_acks_inside_a_transaction_commit_or_roll_back_with_it(
        self, log: EventLog, db: Database
    ) -> None:
        events = make_events(3)
        await log.append(events)
        worker = await log.consumer("in-tx", ack_wait=0.5, max_deliveries=5)
        got = await worker.fetch(3, max_wait=3.0)
        if not worker.acks_in(db):  # JetStream: its own progress, never the database's
            with pytest.raises(EventLogError):
                async with db.transaction() as conn:
                    await worker.ack_in(conn, got)
            await worker.close()
            return
        with pytest.raises(RuntimeError):
            await _ack_then_fail(db, worker, got)
        await asyncio.sleep(0.7)  # past ack_wait: the rolled-back acks never were
        again = await take(worker, 3)
        assert ids(again) == [e.id for e in events]
        await log.append(make_events(1, first=50))
        (later,) = await worker.fetch(1, max_wait=3.0)
        async with db.transaction() as conn:
            await worker.ack_in(conn, [later])
        await asyncio.sleep(0.7)
        assert await nothing_due(worker)
        await worker.close()

    async def test_two_groups_at_their_own_pace(self, log: EventLog) -> None:
        events = make_events(10)
        await log.append(events)
        fast = await log.consumer("cache", ack_wait=5, max_deliveries=3)
        slow = await log.consumer("views", ack_wait=5, max_deliveries=3)
        assert ids(await take(fast, 10)) == [e.id for e in events]
        assert ids(await take(slow, 3)) == [e.id for e in events[:3]]
        assert await log.lag("cache") == (0, 0.0)
        assert (await log.lag("views")).events == 7
        assert ids(await take(slow, 7)) == [e.id for e in events[3:]]
        for worker in (fast, slow):
            await worker.close()

    async def test_workers_of_one_group_share_the_work(self, log: EventLog) -> None:
        events = make_events(40)
        await log.append(events)
        one = await log.consumer("mailer", ack_wait=5, max_deliveries=3)
        two = await log.consumer("mailer", ack_wait=5, max_deliveries=3)

        async def work(worker: Consumer) -> list[Delivery]:
            got: list[Delivery] = []
            while batch := await worker.fetch(5, max_wait=0.2):
                await asyncio.sleep(0.01)  # handling takes a moment: the other worker runs
                for delivery in batch:
                    await worker.ack(delivery)
                got += batch
            return got

        got_one, got_two = await asyncio.gather(work(one), work(two))
        assert sorted(ids(got_one) + ids(got_two)) == sorted(e.id for e in events)
        assert got_one, "the second worker took everything"
        assert got_two, "the first worker took everything"
        for worker in (one, two):
            await worker.close()

    async def test_fetch_wakes_up_on_append(self, log: EventLog) -> None:
        worker = await log.consumer("live", ack_wait=5, max_deliveries=3)
        started = time.monotonic()
        pending = asyncio.create_task(worker.fetch(10, max_wait=5))
        await asyncio.sleep(0.2)
        await log.append(make_events(1))
        got = await pending
        assert ids(got) == [make_events(1)[0].id]
        assert time.monotonic() - started < 2, "fetch should return on the append, not time out"
        await worker.close()

    async def test_unacked_delivery_comes_back_after_ack_wait(self, log: EventLog) -> None:
        first, second = make_events(2)
        await log.append([first, second])
        crashed = await log.consumer("billing", ack_wait=0.3, max_deliveries=3)
        assert ids(await crashed.fetch(1, max_wait=1)) == [first.id]
        await crashed.close()  # the worker dies holding the delivery
        survivor = await log.consumer("billing", ack_wait=0.3, max_deliveries=3)
        got = await take(survivor, 2)
        assert {d.event.id: d.attempt for d in got} == {first.id: 2, second.id: 1}
        assert await nothing_due(survivor)
        await survivor.close()

    async def test_dead_letter_after_max_nacks(self, log: EventLog) -> None:
        poison, healthy = make_events(2)
        await log.append([poison, healthy])
        worker = await log.consumer("webhooks", ack_wait=5, max_deliveries=3)
        poison_attempts, acked = [], []
        deadline = time.monotonic() + 3
        while len(poison_attempts) < 3 or not acked:
            assert time.monotonic() < deadline, (poison_attempts, acked)
            for delivery in await worker.fetch(10, max_wait=0.5):
                if delivery.event == poison:
                    poison_attempts.append(delivery.attempt)
                    await worker.nack(delivery, f"HTTP 500 on try {delivery.attempt}")
                else:
                    acked.append(delivery.event.id)
                    await worker.ack(delivery)
        assert (poison_attempts, acked) == ([1, 2, 3], [healthy.id])
        assert await nothing_due(worker)  # the group moved on
        (letter,) = await log.dead_letters("webhooks")
        assert letter.event == poison
        assert (letter.error, letter.deliveries, letter.group) == (
            "HTTP 500 on try 3",
            3,
            "webhooks",
        )
        assert await log.dead_letters("other") == []
        assert await log.lag("webhooks") == (0, 0.0)
        await worker.close()

    async def test_dead_letter_when_every_delivery_times_out(self, log: EventLog) -> None:
        stuck, healthy = make_events(2)
        await log.append([stuck, healthy])
        worker = await log.consumer("search", ack_wait=0.3, max_deliveries=1)
        assert ids(await worker.fetch(1, max_wait=1)) == [stuck.id]  # and never acked
        assert ids(await take(worker, 1)) == [healthy.id]
        await asyncio.sleep(0.3)
        assert await nothing_due(worker)
        (letter,) = await log.dead_letters("search")
        assert letter.event == stuck
        assert "not acknowledged within ack_wait" in letter.error
        await worker.close()

    async def test_lag_in_events_and_seconds(self, log: EventLog) -> None:
        assert await log.lag("reports") == (0, 0.0)
        await log.append(make_events(5))
        await asyncio.sleep(0.3)
        behind, seconds = await log.lag("reports")  # a group never used: the whole log
        assert behind == 5
        assert 0.25 < seconds < 10
        worker = await log.consumer("reports", ack_wait=5, max_deliveries=3)
        taken = await worker.fetch(2, max_wait=1)
        assert len(taken) == 2
        assert (await log.lag("reports")).events == 5  # delivered is not done
        for delivery in taken:
            await worker.ack(delivery)
        behind, seconds = await log.lag("reports")
        assert behind == 3
        assert seconds > 0.25
        await take(worker, 3)
        assert await log.lag("reports") == (0, 0.0)
        await worker.close()


async def test_consumer_arguments_are_checked_alike(log: EventLog) -> None:
    """What one backend would refuse, both refuse: consumers then run on either."""
    for group, ack_wait, max_deliveries in [("a.b", 1, 1), ("", 1, 1), ("ok", 0, 1), ("ok", 1, 0)]:
        with pytest.raises(ValueError, match=r"group|ack_wait|max_deliveries"):
            await log.consumer(group, ack_wait=ack_wait, max_deliveries=max_deliveries)
