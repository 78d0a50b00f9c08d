"""The NATS JetStream backend: durability across kill -9, stream settings, dedup window."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import nats
import pytest

from retailsync.eventlog import EventLog, EventLogUnavailable, open_event_log
from retailsync.process import free_port
from tests.eventlog.conftest import NatsServer, delete_streams, ids, make_events


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[str]:
    name = f"test-{secrets.token_hex(4)}"
    yield name
    await delete_streams(nats_url, name)


@pytest.mark.slow
class TestDurability:
    """What append returned for, and what a group acked, survive kill -9 of the server."""

    async def test_events_and_progress_survive_kill_9(self, nats_server: NatsServer) -> None:
        url = f"{nats_server.url}?stream=durable&connect_timeout=5"
        events = make_events(30)
        log = await open_event_log(url)
        await log.append(events)
        worker = await log.consumer("g", ack_wait=0.5, max_deliveries=3)
        for delivery in await worker.fetch(10, max_wait=1):
            await worker.ack(delivery)
        await log.close()
        nats_server.kill()

        nats_server.start()  # same port, same store folder
        log = await open_event_log(url)
        assert ids(await log.read(0)) == [e.id for e in events]
        assert await log.last_event_id("retailsync") == events[-1].id
        # JetStream writes a consumer's acks to disk shortly after, not before, confirming
        # them: a crash right after may undo the last acks, never skip an unacked event.
        worker = await log.consumer("g", ack_wait=0.5, max_deliveries=3)
        seen: set[str] = set()
        while batch := await worker.fetch(30, max_wait=1):
            for delivery in batch:
                await worker.ack(delivery)
                seen.add(delivery.event.id)
        assert seen >= {e.id for e in events[10:]}
        assert await log.lag("g") == (0, 0.0)
        await log.close()


class TestStreamSettings:
    """The URL's options become the stream's limits; JetStream applies them."""

    async def test_options_reach_the_stream(self, nats_url: str, stream: str) -> None:
        log = await open_event_log(
            f"{nats_url}?stream={stream}&max_age=3600&max_msgs=1000&duplicate_window=30"
        )
        client = await nats.connect(nats_url)
        config = (await client.jetstream().stream_info(stream)).config
        await client.close()
        assert (config.max_age, config.max_msgs, config.duplicate_window) == (3600, 1000, 30)
        assert config.subjects == [f"{stream}.>"]
        await log.close()

    async def test_duplicates_beyond_the_window_are_stored_again(
        self, nats_url: str, stream: str
    ) -> None:
        """Documented limit: past the window, dedup is the consumers' job (by event id)."""
        log: EventLog = await open_event_log(f"{nats_url}?stream={stream}&duplicate_window=0.3")
        (event,) = make_events(1)
        await log.append([event])
        await log.append([event])
        await asyncio.sleep(0.5)
        await log.append([event])
        assert ids(await log.read(0)) == [event.id, event.id]
        await log.close()


class TestUnreachable:
    async def test_append_fails_when_the_server_is_gone(self, nats_server: NatsServer) -> None:
        log = await open_event_log(f"{nats_server.url}?stream=gone&ack_timeout=0.5")
        nats_server.kill()
        with pytest.raises(EventLogUnavailable, match="NATS"):
            await log.append(make_events(3))
        await log.close()

    async def test_no_server_is_a_clear_error(self) -> None:
        url = f"nats://127.0.0.1:{free_port()}?connect_timeout=0.5"
        with pytest.raises(EventLogUnavailable) as caught:
            await open_event_log(url)
        message = str(caught.value)
        assert message.startswith("cannot connect to NATS at nats://127.0.0.1:")
        assert "within 0.5 s" in message
        assert "Traceback" not in message
