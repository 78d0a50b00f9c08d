"""The API server as a child process: ``python -m retailsync serve`` on a free local port.

The demo talks to the same server a deployment runs, over real HTTP, rather than to an
in-process app: what it measures includes the HTTP stack and the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

from retailsync.errors import RetailsyncError

_HOST = "127.0.0.1"
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


class DemoError(RetailsyncError):
    """The demo could not run (the API server failed, or refused the setup)."""


def free_port() -> int:
    """A port nothing listens on now. Another process could take it before the server binds
    it; on a demo machine that race is rare enough, and the server would fail clearly."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with(parent: int) -> Callable[[], None] | None:
    """Linux only: the kernel sends the server SIGTERM if this process dies, even by kill -9,
    so no server outlives a demo. Runs in the child between fork and exec."""
    if sys.platform != "linux":
        return None

    def set_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_death_signal


class ApiServer:
    """``retailsync serve`` against ``dsn``; a context manager that always stops it."""

    def __init__(self, dsn: str, *, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://{_HOST}:{self.port}"
        self._args = [
            sys.executable,
            "-m",
            "retailsync",
            "--db-url",
            dsn,
            # Access logs would cost the server CPU the demo wants to spend on requests.
            "--log-level",
            "warning",
            "serve",
            "--host",
            _HOST,
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def __enter__(self) -> ApiServer:
        with tempfile.NamedTemporaryFile(
            prefix="retailsync-demo-server-", suffix=".log", delete=False
        ) as log:
            self.log_path = Path(log.name)
            self._process = subprocess.Popen(
                self._args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C reaches only us, and we stop it in order.
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes requests in flight), then SIGKILL if it lingers. The kill is
        in a finally so that even a second Ctrl-C during the wait leaves no server behind."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass  # the finally below kills it
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def exit_code(self) -> int | None:
        """None while the server runs."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def failure(self, what: str) -> DemoError:
        return DemoError(f"{what}; last lines of {self.log_path}:\n{self.log_tail()}")

    async def wait_ready(self) -> None:
        """Until GET /healthz answers 200 (the server is up and reaches the database)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while True:
                code = self.exit_code()
                if code is not None:
                    raise self.failure(f"the API server exited with code {code} while starting")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise self.failure(f"the API server was not ready after {_READY_TIMEOUT:.0f} s")
                await asyncio.sleep(0.1)
