"""Redis for the cache tests: the machine's (127.0.0.1:6379) or RETAILSYNC_TEST_REDIS_URL,
with a key prefix of each test's own; and private redis-server processes on free ports for
the tests that kill one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from fastapi import FastAPI

from retailsync.api.app import create_app
from retailsync.cache.l2 import L2Cache
from retailsync.cache.reads import CachedReads
from retailsync.config import load_settings
from retailsync.db.database import Database
from retailsync.demo.server import CaptureProcess
from retailsync.models import Channel
from retailsync.process import free_port
from retailsync.services.keys import create_key
from tests.cdc.test_capture import config
from tests.support import Api

REDIS_URL = os.environ.get("RETAILSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def l2() -> AsyncIterator[L2Cache]:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"rstest-{secrets.token_hex(4)}"
    cache = L2Cache(client, prefix=prefix)
    yield cache
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await cache.close()


class RedisServer:
    """A redis-server of the test's own on a free port, which the test may kill and restart."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


# The cached application needs the change stream: a server with logical decoding (the CDC
# tests' fixtures) and a capture running into its event log.
from tests.cdc.conftest import cdc_db, cdc_dsn, logical_admin_dsn  # noqa: E402, F401


class CachedApi(Api):
    def __init__(self, api: Api, app: FastAPI, slot: str) -> None:
        super().__init__(api.client, api.db, api.keys)
        self.app = app
        self.slot = slot

    def invalidation_live(self) -> bool:
        invalidator = self.reads.invalidator
        return invalidator is not None and invalidator.live

    @property
    def reads(self) -> CachedReads:
        reads: CachedReads = self.app.state.reads
        return reads


@contextlib.asynccontextmanager
async def cached_api(
    db: Database, dsn: str, *, capture: bool = True, **settings: Any
) -> AsyncIterator[CachedApi]:
    """The application in-process on ``db``, with a capture on a slot of its own feeding the
    caches (unless ``capture`` is False), and one API key per channel."""
    cfg = config()
    app = create_app(
        load_settings(
            {
                "db_url": dsn,
                "api_key_cache_seconds": 0,
                "reconcile_interval_seconds": 3600,
                "cdc_slot": cfg.slot,
                **settings,
            },
            environ={},
        ),
        db=db,
    )
    keys: dict[Channel, str] = {}
    async with db.transaction() as conn:
        for channel in Channel:
            keys[channel] = (await create_key(conn, channel, label="test"))[1]
    transport = httpx.ASGITransport(app=app)
    async with contextlib.AsyncExitStack() as stack:
        if capture:  # `retailsync cdc run`, a process of its own as in a deployment
            stack.enter_context(CaptureProcess(dsn, cfg.slot))
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://retailsync.test")
        )
        api = CachedApi(Api(client, db, keys), app, cfg.slot)
        if capture:
            await wait_until(
                lambda: api.reads.invalidator is not None and api.reads.invalidator.live
            )
        yield api


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
