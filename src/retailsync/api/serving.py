"""Running the application under uvicorn, in one process or several."""

from __future__ import annotations

import os
import socket
import tempfile

import uvicorn
from uvicorn.supervisors import Multiprocess

from retailsync.api.app import create_app
from retailsync.config import ENV_PREFIX, Settings
from retailsync.errors import ConfigError


def run_server(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM. ``settings.db_url`` must name a server, not embedded://."""
    if settings.workers == 1:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
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
    )
    listener = listening_socket(settings.host, settings.port)
    with tempfile.TemporaryDirectory(prefix="retailsync-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # metrics summed over workers
        Multiprocess(config, sockets=[listener]).run()


def listening_socket(host: str, port: int) -> socket.socket:
    """The workers' shared listening socket, created with an explicit IPPROTO_TCP.

    asyncio turns on TCP_NODELAY only for sockets whose ``proto`` is TCP. The socket uvicorn
    makes for its workers has proto 0, so every keep-alive response waited for a delayed ACK:
    44 ms per request with 2 workers against 1 ms with one, measured here (uvicorn #3149).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigError("RETAILSYNC_PORT", port, f"cannot listen on {host}: {exc}") from exc
    listener.set_inheritable(True)
    return listener
