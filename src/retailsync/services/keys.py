"""API keys: random secrets shown once, stored as SHA-256 digests.

A key is 256 random bits, so a fast digest is enough: there is nothing to brute-force that a
slow password hash would protect. Verified keys are trusted for a few seconds in-process so a
request does not pay a database round trip; revocation therefore takes effect within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from uuid import UUID

import asyncpg

from retailsync.access import Principal
from retailsync.db.database import Connection, Database
from retailsync.errors import NotFound, Unauthorized
from retailsync.models import ApiKey, Channel

KEY_PREFIX = "rs_"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(conn: Connection, channel: Channel, *, label: str = "") -> tuple[ApiKey, str]:
    """Create a key; return it and its secret, which is never stored or shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        "INSERT INTO api_keys (key_hash, channel, label) VALUES ($1, $2, $3) RETURNING *",
        digest(secret),
        str(channel),
        label,
    )
    assert row is not None
    return _key(row), secret


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        channel=Channel(row["channel"]),
        label=row["label"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def list_keys(conn: Connection) -> list[ApiKey]:
    rows = await conn.fetch("SELECT * FROM api_keys ORDER BY created_at")
    return [_key(row) for row in rows]


async def revoke_key(conn: Connection, key_id: UUID) -> ApiKey:
    row = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, clock_timestamp()) "
        "WHERE id = $1 RETURNING *",
        key_id,
    )
    if row is None:
        raise NotFound("api key", str(key_id))
    return _key(row)


class KeyVerifier:
    """Turns a bearer secret into a Principal, caching hits for ``ttl`` seconds."""

    def __init__(self, db: Database, *, ttl: float) -> None:
        self._db = db
        self._ttl = ttl
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._by_header: dict[bytes, tuple[float, Principal]] = {}

    def cached(self, secret: str) -> Principal | None:
        """The principal of a key verified less than ``ttl`` ago, without a lookup; else None."""
        hit = self._fresh(secret, time.monotonic())
        return None if hit is None else hit[1]

    def _fresh(self, secret: str, now: float) -> tuple[float, Principal] | None:
        """The cached (expiry, principal) of ``secret``, if not expired at ``now``."""
        hit = self._cache.get(digest(secret))
        return None if hit is None or hit[0] <= now else hit

    def from_header(self, raw: bytes) -> Principal | None:
        """``cached`` for an Authorization header as received (``Bearer <secret>``): the
        header itself is remembered until the same expiry, so a hot path skips parsing and
        hashing it again."""
        now = time.monotonic()
        seen = self._by_header.get(raw)
        if seen is not None and seen[0] > now:
            return seen[1]
        if raw[:7].lower() != b"bearer ":
            return None
        hit = self._fresh(raw[7:].decode("latin-1").strip(), now)
        if hit is None:
            return None
        if len(raw) <= 100:  # padded variants of one key: not remembered
            if len(self._by_header) > 10_000:
                self._by_header.clear()
            self._by_header[raw] = hit
        return hit[1]

    async def verify(self, secret: str) -> Principal:
        principal = self.cached(secret)
        if principal is not None:
            return principal
        key_hash = digest(secret)
        now = time.monotonic()
        row = await self._db.fetchrow(
            "SELECT id, channel FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash,
        )
        if row is None:
            self._cache.pop(key_hash, None)
            raise Unauthorized("unknown or revoked API key")
        principal = Principal(key_id=row["id"], channel=Channel(row["channel"]))
        if self._ttl > 0:
            if len(self._cache) > 10_000:  # bound memory against a flood of distinct keys
                self._cache.clear()
            self._cache[key_hash] = (now + self._ttl, principal)
        return principal
