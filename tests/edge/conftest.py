"""A real Varnish (with the xkey vmod) in front of a backend, for any test that wants one:

    with varnish_in_front(backend_port) as edge:
        httpx.get(f"{edge.url}/item/1")
        await EdgePurger(edge.purge_url).purge(["item:1"])

``varnish_in_front`` starts ``varnishd -F`` on free ports with the VCL of
``retailsync.edge.vcl.render_vcl``, waits until it answers HTTP, and always stops the process
it started (SIGTERM, then SIGKILL). A missing varnishd fails the test: ``./scripts/test``'s
machine set-up installs it (apt-get install -y varnish varnish-modules).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retailsync.edge.vcl import render_vcl
from retailsync.process import die_with_parent, free_port, log_tail

VARNISHD_PATHS = ("/usr/sbin/varnishd", "/usr/local/sbin/varnishd")


@dataclass(frozen=True, slots=True)
class Edge:
    """A running Varnish: ``url`` for clients, ``purge_url`` for ``EdgePurger``."""

    url: str
    purge_url: str
    port: int
    admin_port: int
    folder: Path
    process: subprocess.Popen[bytes]


def varnishd_binary() -> str:
    found = shutil.which("varnishd") or next(
        (path for path in VARNISHD_PATHS if Path(path).exists()), None
    )
    if found is None:
        pytest.fail(
            "varnishd is not installed: apt-get install -y varnish varnish-modules",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def varnish_in_front(
    backend_port: int,
    *,
    backend_host: str = "127.0.0.1",
    purge_from: Sequence[str] = ("127.0.0.1", "::1"),
    start_timeout: float = 30.0,
) -> Iterator[Edge]:
    """A varnishd of this test's own in front of ``backend_host:backend_port``."""
    binary = varnishd_binary()
    folder = Path(tempfile.mkdtemp(prefix="rs-varnish-"))
    vcl = folder / "edge.vcl"
    vcl.write_text(render_vcl(backend_host, backend_port, purge_from))
    port, admin_port = free_port(), free_port()
    log = folder / "varnishd.log"
    args = [binary, "-F", "-n", str(folder / "work"), "-f", str(vcl)]
    args += ["-a", f"127.0.0.1:{port}", "-T", f"127.0.0.1:{admin_port}"]
    # -j none: no privilege separation, so a root run needs no varnish users able to read
    # the temporary folder; a small, quiet instance.
    args += ["-j", "none", "-s", "malloc,32m", "-p", "thread_pools=1"]
    args += ["-p", "thread_pool_min=10", "-p", "thread_pool_max=100", "-p", "vsl_space=1M"]
    args += ["-p", "default_grace=0", "-p", "timeout_idle=5"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM),  # fixtures run on the main thread
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(process, url, log, start_timeout)
        yield Edge(url, url, port, admin_port, folder, process)
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_answering(
    process: subprocess.Popen[bytes], url: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"varnishd exited ({process.returncode}):\n{log_tail(log)}")
            try:
                client.get(f"{url}/__varnish_ready")  # any answer will do, even a 503
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"varnishd did not answer in {timeout} s:\n{log_tail(log)}")
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def edge_backend() -> Iterator[Backend]:
    with Backend() as backend:
        yield backend


@pytest.fixture(scope="module")
def edge(edge_backend: Backend) -> Iterator[Edge]:
    """One Varnish per test module, in front of ``edge_backend``; tests keep out of each
    other's way with URLs and keys of their own."""
    with varnish_in_front(edge_backend.port) as running:
        yield running


class Backend:
    """A tiny ASGI app served by uvicorn in a thread, counting the requests that reach it.

    ``/item/{id}``: public for 300 s, ``ETag: "{id}-v{version}"``, ``Surrogate-Key:
    item:{id} group:{group}`` where the group is the id up to its first ``-``; a POST
    answers ``{"posted": id}``.
    ``/private/{id}`` (and ``/slow-private/{id}``, 0.3 s late), ``/nostore/{id}``,
    ``/bare/{id}`` (no Cache-Control), ``/cookie/{id}`` (public but with Set-Cookie): each
    answers with the caller's Authorization in its body.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def hit_count(self, path: str) -> int:
        with self._lock:
            return self.hits.get(path, 0)

    def bump(self, item: str) -> None:
        """A change to ``item``: its next answer carries a new version (and ETag)."""
        with self._lock:
            self.versions[item] = self.versions.get(item, 1) + 1

    def __enter__(self) -> Backend:
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="none",
            access_log=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="edge-backend", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert self._thread.is_alive(), "the test backend failed to start"
            assert time.monotonic() < deadline, "the test backend did not start in 10 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def _app(self) -> Starlette:
        def counted(request: Request) -> tuple[str, str, str]:
            with self._lock:
                self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1
            return (
                request.path_params["id"],
                request.headers.get("authorization", ""),
                request.headers.get("if-none-match", ""),
            )

        async def item(request: Request) -> Response:
            item_id, _, if_none_match = counted(request)
            if request.method == "POST":
                return JSONResponse({"posted": item_id})
            with self._lock:
                version = self.versions.get(item_id, 1)
            headers = {
                "Cache-Control": "public, max-age=300",
                "ETag": f'"{item_id}-v{version}"',
                "Surrogate-Key": f"item:{item_id} group:{item_id.split('-')[0]}",
            }
            if if_none_match == headers["ETag"]:
                return Response(status_code=304, headers=headers)
            return JSONResponse({"id": item_id, "version": version}, headers=headers)

        def echo(
            cache_control: str | None, *, cookie: bool = False, delay: float = 0.0
        ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                item_id, authorization, _ = counted(request)
                await asyncio.sleep(delay)
                headers = {"Surrogate-Key": f"item:{item_id}"}
                if cache_control is not None:
                    headers["Cache-Control"] = cache_control
                if cookie:
                    headers["Set-Cookie"] = "session=1; Path=/"
                return JSONResponse({"id": item_id, "for": authorization}, headers=headers)

            return endpoint

        return Starlette(
            routes=[
                Route("/item/{id}", item, methods=["GET", "HEAD", "POST"]),
                Route("/private/{id}", echo("private, max-age=300")),
                Route("/slow-private/{id}", echo("private, max-age=300", delay=0.3)),
                Route("/nostore/{id}", echo("no-store")),
                Route("/bare/{id}", echo(None)),
                Route("/cookie/{id}", echo("public, max-age=300", cookie=True)),
            ]
        )
