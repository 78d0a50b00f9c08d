"""The API server and the capture as child processes (``python -m retailsync serve`` on a free
local port, ``retailsync cdc run``).

The demo talks to the same server a deployment runs, over real HTTP, rather than to an
in-process app: what it measures includes the HTTP stack and the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from retailsync.errors import RetailsyncError
from retailsync.process import die_with_parent, free_port, log_tail

_HOST = "127.0.0.1"
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


class DemoError(RetailsyncError):
    """The demo could not run (the API server failed, or refused the setup)."""


class Child:
    """A ``retailsync`` command against ``dsn`` as a child process; a context manager that
    always stops it."""

    name = "child"

    def __init__(self, dsn: str, command: list[str], env: dict[str, str] | None = None) -> None:
        # Warnings only: access logs would cost CPU the demo wants to spend on requests.
        self._args = [sys.executable, "-m", "retailsync", "--db-url", dsn, "--log-level"]
        self._args += ["warning", *command]
        self._env = None if env is None else {**os.environ, **env}
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def __enter__(self) -> Self:
        with tempfile.NamedTemporaryFile(
            prefix=f"retailsync-demo-{self.name}-", suffix=".log", delete=False
        ) as log:
            self.log_path = Path(log.name)
            self._process = subprocess.Popen(
                self._args,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C reaches only us, and we stop it in order.
                start_new_session=True,
                # No server outlives a demo, even one killed with kill -9.
                preexec_fn=die_with_parent(signal.SIGTERM),
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
            self._forget_empty_log()

    def _forget_empty_log(self) -> None:
        """An empty log (the server logs warnings and errors only) is not worth keeping."""
        if self.log_path is not None and self.log_path.stat().st_size == 0:
            self.log_path.unlink()
            self.log_path = None

    def exit_code(self) -> int | None:
        """None while the server runs."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server logged; empty if it logged nothing."""
        return "" if self.log_path is None else log_tail(self.log_path, lines)

    def failure(self, what: str) -> DemoError:
        tail = self.log_tail()
        if not tail:
            return DemoError(f"{what}; it logged nothing")
        return DemoError(f"{what}; last lines of {self.log_path}:\n{tail}")


class ApiServer(Child):
    """``retailsync serve`` on a free local port."""

    name = "server"

    def __init__(self, dsn: str, *, workers: int, env: dict[str, str] | None = None) -> None:
        self.port = free_port(_HOST)
        self.url = f"http://{_HOST}:{self.port}"
        command = ["serve", "--host", _HOST, "--port", str(self.port)]
        super().__init__(dsn, [*command, "--workers", str(workers)], env)

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


class CaptureProcess(Child):
    """``retailsync cdc run`` on a slot of the demo's own, starting from now."""

    name = "capture"

    def __init__(self, dsn: str, slot: str) -> None:
        env = {
            "RETAILSYNC_CDC_SLOT": slot,
            "RETAILSYNC_CDC_PUBLICATION": slot,
            "RETAILSYNC_CDC_SOURCE": slot,
            "RETAILSYNC_CDC_METRICS_PORT": "0",
        }
        super().__init__(dsn, ["cdc", "run", "--no-snapshot"], env)
