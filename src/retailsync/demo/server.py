"""The API server as a child process: ``python -m retailsync serve`` on a free local port.

The demo talks to the same server a deployment runs, over real HTTP, rather than to an
in-process app: what it measures includes the HTTP stack and the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from retailsync.errors import RetailsyncError
from retailsync.process import die_with_parent, free_port, log_tail

_HOST = "127.0.0.1"
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


class DemoError(RetailsyncError):
    """The demo could not run (the API server failed, or refused the setup)."""


class ApiServer:
    """``retailsync serve`` against ``dsn``; a context manager that always stops it."""

    def __init__(self, dsn: str, *, workers: int) -> None:
        self.port = free_port(_HOST)
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
