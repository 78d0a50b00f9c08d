"""Publishing events to JetStream over a connection of our own, acknowledgements counted.

Why not nats-py here (it serves everything else): its publish and its handling of each
acknowledgement cost about 40 us a message in Python (profiled), and the capture publishes one
message per change, so that was the capture's ceiling (23,000/s with nothing else running).
Here a batch is one write of pre-built ``HPUB`` frames, and acknowledgements are read by a
small parser of the few server messages a publisher receives (``MSG``, ``HMSG``, ``PING``,
``PONG``, ``+OK``, ``-ERR``). Plain TCP with optional user:password or token, as our
``nats://`` URLs allow; no TLS.

Each message's reply subject names its acknowledgement. A batch returns once every message is
acknowledged (stored, or dropped as a duplicate within the stream's window); a refusal or a
lost connection fails the batch, and the caller sends it again (ids make that safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from retailsync.errors import EventLogError, EventLogUnavailable

_CRLF = b"\r\n"


class Publisher:
    def __init__(self, server: str, *, connect_timeout: float, ack_timeout: float) -> None:
        self._server = server
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout  # for a whole batch's acknowledgements
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._inbox = f"_INBOX.{secrets.token_hex(11)}"
        self._waiting: dict[bytes, asyncio.Future[None]] = {}
        self._next = 0

    async def publish(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish ``(subject, message id, payload)`` in order; return once all are stored."""
        if self._writer is None or self._writer.is_closing():
            await self._connect()
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        frames: list[bytes] = []
        tokens: list[bytes] = []
        for subject, msg_id, payload in messages:
            self._next += 1
            token = str(self._next).encode()
            self._waiting[token] = loop.create_future()
            tokens.append(token)
            header = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id.encode() + b"\r\n\r\n"
            frames.append(
                b"HPUB %s %s.%s %d %d\r\n%s%s\r\n"
                % (
                    subject.encode(),
                    self._inbox.encode(),
                    token,
                    len(header),
                    len(header) + len(payload),
                    header,
                    payload,
                )
            )
        try:
            self._writer.writelines(frames)
            async with asyncio.timeout(self._ack_timeout):
                await self._writer.drain()
                await asyncio.gather(*(self._waiting[token] for token in tokens))
        except (OSError, ConnectionError) as exc:
            await self.close()
            raise EventLogUnavailable(f"NATS connection lost while publishing: {exc}") from exc
        except TimeoutError as exc:
            raise EventLogUnavailable(
                f"NATS did not acknowledge within {self._ack_timeout} s"
            ) from exc
        finally:
            for token in tokens:
                future = self._waiting.pop(token, None)
                if future is not None and future.done() and not future.cancelled():
                    future.exception()  # seen: a batch reports its first failure only

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
            self._reading = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
        self._fail_all(EventLogUnavailable("the NATS publishing connection closed"))

    async def _connect(self) -> None:
        parts = urlsplit(self._server)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
                info = json.loads((await reader.readline()).partition(b" ")[2] or b"{}")
                if info.get("tls_required"):
                    writer.close()
                    raise EventLogError(f"NATS at {host}:{port} requires TLS, not supported")
                options: dict[str, object] = {
                    "verbose": False,
                    "pedantic": False,
                    "headers": True,
                    "no_responders": True,
                    "protocol": 1,
                    "name": "retailsync-publisher",
                    "lang": "python",
                    "version": "retailsync",
                }
                if parts.username and parts.password is not None:
                    options["user"] = unquote(parts.username)
                    options["pass"] = unquote(parts.password)
                elif parts.username:
                    options["auth_token"] = unquote(parts.username)
                writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
                await writer.drain()
                answer = await reader.readline()
                while answer.startswith((b"+OK", b"INFO")):
                    answer = await reader.readline()
                if not answer.startswith(b"PONG"):
                    writer.close()
                    raise EventLogUnavailable(f"NATS refused the connection: {answer.strip()!r}")
                writer.write(b"SUB %s.* 1\r\n" % self._inbox.encode())
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            raise EventLogUnavailable(
                f"cannot connect to NATS at nats://{host}:{port}: {exc}"
            ) from exc
        self._reader, self._writer = reader, writer
        self._reading = asyncio.create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Route acknowledgements to their batches until the connection ends."""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(b"MSG "):  # MSG <subject> <sid> <size>
                    fields = line.split()
                    payload = await reader.readexactly(int(fields[-1]) + 2)
                    self._settle(fields[1], payload, None)
                elif line.startswith(b"HMSG "):  # HMSG <subject> <sid> <header size> <size>
                    fields = line.split()
                    block = await reader.readexactly(int(fields[-1]) + 2)
                    status = block[: int(fields[-2])].split(_CRLF, 1)[0]
                    self._settle(fields[1], block[int(fields[-2]) :], status)
                elif line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    self._fail_all(EventLogUnavailable(f"NATS: {line.decode().strip()}"))
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        self._fail_all(EventLogUnavailable("the NATS publishing connection was lost"))
        writer.close()

    def _settle(self, subject: bytes, payload: bytes, status: bytes | None) -> None:
        future = self._waiting.get(subject.rpartition(b".")[2])
        if future is None or future.done():
            return
        if status is not None and b"503" in status:
            future.set_exception(EventLogUnavailable("no JetStream stream answered (503)"))
        elif b'"error"' in payload:
            error = json.loads(payload.rstrip()).get("error", {})
            reason = error.get("description", error) if isinstance(error, dict) else error
            future.set_exception(EventLogError(f"JetStream refused an event: {reason}"))
        else:
            future.set_result(None)

    def _fail_all(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
