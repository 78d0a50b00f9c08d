"""Refuse request bodies over a size limit (413) before they are read into memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retailsync.api.problems import BodyTooLarge, problem


class BodyLimit:
    """Plain ASGI middleware. A declared Content-Length over the limit is refused at once; a
    streamed body is counted as it arrives and refused when it passes the limit."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                too_large = BodyTooLarge(self.limit)
                response = problem(
                    413, "payload-too-large", too_large.detail, limit_bytes=self.limit
                )
                await response(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)
