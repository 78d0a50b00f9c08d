"""Real `retailsync` processes for tests that stop, kill and restart them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from retailsync.process import free_port

RETAILSYNC = [sys.executable, "-c", "from retailsync.cli import main; main()"]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RETAILSYNC, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_clean_env(), **(env or {})},
        check=False,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RETAILSYNC_")}


def serve_env() -> dict[str, str]:
    """The environment of a `retailsync serve` under test: no capture beside it (it would
    leave a replication slot in the session's database); the cache tests start their own."""
    return {**_clean_env(), "RETAILSYNC_SERVE_CAPTURE": "false"}


def postgres_pids(data_dir: Path) -> list[int]:
    """PIDs of PostgreSQL processes serving ``data_dir`` (the postmaster names it in argv)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and str(data_dir).encode() in argv:
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


class Serve:
    """`retailsync serve` in a subprocess, stopped (or killed) by the test."""

    def __init__(self, db_url: str, *, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.env = {**serve_env(), **(env or {})}
        self.port = free_port()
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.base_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Serve:
        args = ["--db-url", self.db_url, "serve", "--port", str(self.port)]
        args += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(
            [*RETAILSYNC, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        if not wait_for(self._healthy, timeout=60) or self.process.poll() is not None:
            self.kill()
            self.log.seek(0)
            raise AssertionError(f"serve did not start: {self.log.read()!r}")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True  # reported by the caller's check below
        try:
            with httpx.Client(timeout=1) as client:
                return client.get(f"{self.base_url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def signal(self, signum: int, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
