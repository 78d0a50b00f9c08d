"""A bare ASGI hello-world, served the way ``retailsync serve`` serves the API (same uvicorn
settings, same listening socket, same worker count): the ceiling a cached GET is compared
with. ``python -m retailsync.bench.hello PORT WORKERS``."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from retailsync.api.serving import SocketPerWorker

_BODY = b'{"hello":"world"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"17")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    if workers == 1:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        return
    config = uvicorn.Config(
        "retailsync.bench.hello:app", host="127.0.0.1", port=port, workers=workers,
        log_level="warning",
    )  # fmt: skip
    SocketPerWorker(config, "127.0.0.1", port).run()


if __name__ == "__main__":
    main()
