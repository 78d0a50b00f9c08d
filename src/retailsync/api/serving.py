"""Running the application under uvicorn, in one process or several."""

from __future__ import annotations

import os
import socket
import tempfile

import uvicorn
from uvicorn.config import Config
from uvicorn.supervisors import Multiprocess

from retailsync.api.app import create_app
from retailsync.config import ENV_PREFIX, Settings
from retailsync.errors import ConfigError

# httptools, refusing shed requests as soon as their head is parsed (api/protocol.py).
HTTP_PROTOCOL = "retailsync.api.protocol:EarlyRefusalProtocol"


def run_server(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM. ``settings.db_url`` must name a server, not embedded://."""
    if settings.workers == 1:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            http=HTTP_PROTOCOL,
        )
        return
    for name, value in settings.model_dump().items():  # worker processes read the environment
        if value is not None:  # unset: the default (None) again
            os.environ[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    config = uvicorn.Config(
        "retailsync.api.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        http=HTTP_PROTOCOL,
    )
    supervisor = SocketPerWorker(config, settings.host, settings.port)  # binds: fails early
    with tempfile.TemporaryDirectory(prefix="retailsync-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # metrics summed over workers
        supervisor.run()


class SocketPerWorker(Multiprocess):
    """uvicorn's supervisor, handing each worker a listening socket of its own.

    uvicorn gives all workers one socket, and whichever worker wakes first accepts every
    connection waiting: 64 keep-alive connections split 44/20 to 50/14 between two workers
    (measured here with ``ss``), so one worker was saturated while the other idled. Sockets
    bound with SO_REUSEPORT each have their own queue, and the kernel spreads new
    connections over them by address hash. (Linux lets only sockets of the same user join.)

    uvicorn reads ``self.sockets`` just before it creates each worker and starts it at once,
    so the property hands out a new socket on every read. The supervisor closes its own copy
    of the sockets already handed out, at the next read and before each liveness check
    (twice a second): a socket kept open here after its worker died would keep receiving
    connections that no one accepts.
    """

    def __init__(self, config: Config, host: str, port: int) -> None:
        self._handed: list[socket.socket] = []
        first = listening_socket(host, port, reuse_port=True)
        self._host, self._port = host, first.getsockname()[1]  # port 0: the one bound
        self._unused = [first]
        super().__init__(config, sockets=[])

    @property
    def sockets(self) -> list[socket.socket]:
        self._close_handed()
        sock = (
            self._unused.pop()
            if self._unused
            else listening_socket(self._host, self._port, reuse_port=True)
        )
        self._handed.append(sock)
        return [sock]

    @sockets.setter
    def sockets(self, value: list[socket.socket]) -> None:
        """Multiprocess.__init__ assigns the list it was given (empty): ours come from above."""

    def keep_subprocess_alive(self) -> None:
        self._close_handed()  # every worker started so far holds its own copy
        super().keep_subprocess_alive()

    def _close_handed(self) -> None:
        for sock in self._handed:
            sock.close()
        self._handed.clear()


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket for workers, created with an explicit IPPROTO_TCP.

    asyncio turns on TCP_NODELAY only for sockets whose ``proto`` is TCP. The socket uvicorn
    makes for its workers has proto 0, so every keep-alive response waited for a delayed ACK:
    44 ms per request with 2 workers against 1 ms with one, measured here (uvicorn #3149).
    ``reuse_port``: one of several on the same port (see ``SocketPerWorker``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigError("RETAILSYNC_PORT", port, f"cannot listen on {host}: {exc}") from exc
    listener.set_inheritable(True)
    return listener
