"""The capture beside ``retailsync serve``: ``retailsync cdc run`` as a child process,
restarted if it exits, stopped with the server (and by the kernel if the server is killed).

Caches are kept fresh from the change stream, so the server that caches starts the stream.
A deployment that runs the capture elsewhere sets ``RETAILSYNC_SERVE_CAPTURE=false``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Self

from retailsync.process import die_with_parent

log = logging.getLogger(__name__)
_RESTART_DELAY, _RESTART_DELAY_MAX = 1.0, 30.0
_STOP_TIMEOUT = 10.0


class CaptureChild:
    def __init__(self, dsn: str, log_level: str) -> None:
        # The URL travels in the environment: a command line is readable by every local user.
        self._env = {**os.environ, "RETAILSYNC_DB_URL": dsn}
        self._args = [sys.executable, "-m", "retailsync", "--log-level", log_level, "cdc", "run"]
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="capture", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(_STOP_TIMEOUT)

    def _supervise(self) -> None:
        delay = _RESTART_DELAY / 2
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process = subprocess.Popen(
                    self._args,
                    stdin=subprocess.DEVNULL,
                    env=self._env,
                    start_new_session=True,  # Ctrl-C reaches the server, which stops us in order
                    preexec_fn=die_with_parent(signal.SIGTERM),
                )
                process = self._process
            started = time.monotonic()
            code = process.wait()
            if not self._stopping.is_set():
                # Quick exits (the slot held by another capture, the server away) back off.
                delay = delay * 2 if time.monotonic() - started < 10 else _RESTART_DELAY
                delay = min(delay, _RESTART_DELAY_MAX)
                log.warning("the capture exited with code %s; restarting in %.0f s", code, delay)
                self._stopping.wait(delay)
