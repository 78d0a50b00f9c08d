"""Redis for the cache tests: the machine's (127.0.0.1:6379) or RETAILSYNC_TEST_REDIS_URL,
with a key prefix of each test's own; and private redis-server processes on free ports for
the tests that kill one."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from retailsync.cache.l2 import L2Cache
from retailsync.process import free_port

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
