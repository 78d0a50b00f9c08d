"""Event log fixtures: ``log`` runs a test once per backend, on real servers.

PostgreSQL: the suite's session database (tables emptied per test). NATS: the server at
RETAILSYNC_TEST_NATS_URL, else the machine's at 127.0.0.1:4222, with a stream of its own per
test, deleted afterwards. Tests that kill the server start a private ``nats-server``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from retailsync.cdc.events import ChangeEvent, event_id
from retailsync.db.database import Database
from retailsync.eventlog import EventLog, open_event_log
from retailsync.process import free_port

NATS_URL = os.environ.get("RETAILSYNC_TEST_NATS_URL", "nats://127.0.0.1:4222")


def make_events(
    count: int, *, first: int = 1, source: str = "retailsync", table: str = "public.products"
) -> list[ChangeEvent]:
    """``count`` single-event transactions with LSNs ``first``, ``first + 1``, ..."""
    return [
        ChangeEvent(
            id=event_id(lsn, 0),
            source=source,
            table=table,
            type="products.changed",
            op="update",
            key={"sku": f"SKU-{lsn % 3}"},  # three keys, so subjects differ per key
            after={"sku": f"SKU-{lsn % 3}", "n": lsn},
            xid=lsn,
            commit_lsn=lsn,
            commit_ts_us=1_700_000_000_000_000 + lsn,
            index=0,
            last_in_tx=True,
        )
        for lsn in range(first, first + count)
    ]


def ids(items: Any) -> list[str]:
    """The event ids of log records, deliveries or dead letters, in order."""
    return [item.event.id for item in items]


def _reachable(url: str) -> bool:
    parts = url.removeprefix("nats://").split(":")
    try:
        with socket.create_connection((parts[0], int(parts[1]) if len(parts) > 1 else 4222), 2):
            return True
    except OSError:
        return False


async def delete_streams(url: str, stream: str) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for name in (stream, f"{stream}-dead"):
            await js.delete_stream(name)
    finally:
        await client.close()


@pytest.fixture(scope="session")
def nats_url() -> str:
    if not _reachable(NATS_URL):
        pytest.fail(f"no NATS server at {NATS_URL} (set RETAILSYNC_TEST_NATS_URL)")
    return NATS_URL


@pytest.fixture
async def postgres_log(db: Database) -> AsyncIterator[EventLog]:
    log = await open_event_log("postgres", db=db)
    yield log
    await log.close()


@pytest.fixture
async def nats_log(nats_url: str) -> AsyncIterator[EventLog]:
    stream = f"test-{secrets.token_hex(4)}"
    log = await open_event_log(f"{nats_url}?stream={stream}&ack_timeout=5")
    yield log
    await log.close()
    await delete_streams(nats_url, stream)


@pytest.fixture(params=["postgres", "nats"])
def log(request: pytest.FixtureRequest) -> EventLog:
    backend: EventLog = request.getfixturevalue(f"{request.param}_log")
    return backend


class NatsServer:
    """A private ``nats-server -js`` on a free port, storing in ``store``, that tests may kill."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.fail("nats-server is not installed")
        args = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _reachable(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"nats-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """kill -9: no chance to flush or close anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.kill()
