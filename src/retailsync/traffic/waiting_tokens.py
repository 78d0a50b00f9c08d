"""Queue tokens and passes of the waiting room: HMAC-SHA256, base64url, bound to one session.

A *queue token* says "session S holds position P in the queue of event E since T"; a *pass*
says "session S may use event E's pages until X". Both are ``base64url(body) "." base64url(mac)``
where the MAC covers the body and the session id. The session id travels apart from the token
(its own cookie or header), so a token copied to another session fails its MAC, and nothing in
a token can be altered without the key. The kind letter in the body keeps a queue token from
serving as a pass and the other way round.

The key is shared by every worker: RETAILSYNC_WAITING_ROOM_SECRET, or a random key the first
worker stores in PostgreSQL (``waiting_room_secret``) and every later one reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from retailsync.db.database import Database

SECRET_BYTES = 32
MAX_TOKEN_CHARS = 512  # far above any genuine token; refuses a large blob before any work
_SESSION = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_EVENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class TokenRefused(Exception):
    """The token is not one we issued for this session (bad MAC, malformed, wrong kind)."""


@dataclass(frozen=True, slots=True)
class QueueToken:
    event: str
    position: int
    issued_ms: int  # wall-clock milliseconds since the epoch


@dataclass(frozen=True, slots=True)
class Pass:
    event: str
    expires_ms: int


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


def valid_session_id(value: str) -> bool:
    return _SESSION.fullmatch(value) is not None


class TokenSigner:
    """Signs and verifies queue tokens and passes with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < SECRET_BYTES:
            raise ValueError(f"the key needs at least {SECRET_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "TokenSigner(key='**********')"

    def queue_token(self, token: QueueToken, session: str) -> str:
        return self._sign(f"q.{token.event}.{token.position}.{token.issued_ms}", session)

    def pass_(self, grant: Pass, session: str) -> str:
        return self._sign(f"p.{grant.event}.{grant.expires_ms}", session)

    def open_queue_token(self, token: str, session: str) -> QueueToken:
        fields = self._verify(token, session, "q", 4)
        return QueueToken(fields[1], _whole(fields[2]), _whole(fields[3]))

    def open_pass(self, token: str, session: str) -> Pass:
        fields = self._verify(token, session, "p", 3)
        return Pass(fields[1], _whole(fields[2]))

    def _mac(self, body: bytes, session: str) -> bytes:
        return hmac.new(self._key, body + b"|" + session.encode(), hashlib.sha256).digest()

    def _sign(self, body: str, session: str) -> str:
        raw = body.encode()
        return f"{_b64(raw)}.{_b64(self._mac(raw, session))}"

    def _verify(self, token: str, session: str, kind: str, count: int) -> list[str]:
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise TokenRefused("malformed token")
        body_part, dot, mac_part = token.partition(".")
        if not dot:
            raise TokenRefused("malformed token")
        body, mac = _unb64(body_part), _unb64(mac_part)
        if not hmac.compare_digest(mac, self._mac(body, session)):
            raise TokenRefused("the token was not issued to this session")
        # Only a body we signed gets this far, so what follows checks our own format.
        fields = body.decode("ascii", "replace").split(".")
        if len(fields) != count or fields[0] != kind or not _EVENT.fullmatch(fields[1]):
            raise TokenRefused("not a token of this kind")
        return fields


async def shared_key(db: Database) -> bytes:
    """The key stored in PostgreSQL, created by whichever worker asks first."""
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO waiting_room_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING",
            secrets.token_bytes(SECRET_BYTES),
        )
        key: bytes = await conn.fetchval("SELECT secret FROM waiting_room_secret")
    return key


def _whole(raw: str) -> int:
    if not raw.isdigit():
        raise TokenRefused("malformed token")
    return int(raw)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode, accepting only the one spelling ``_b64`` writes (no padding, no ``+/``, zero
    spare bits), so that no two token strings are the same token."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRefused("malformed token") from exc
    if _b64(raw) != text:
        raise TokenRefused("malformed token")
    return raw
