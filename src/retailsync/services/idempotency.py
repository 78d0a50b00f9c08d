"""Idempotency-Key: the first answer to a key is stored in the same transaction as the write
it answers, so a retry either finds that answer or finds nothing happened, never half.

A concurrent duplicate blocks on the primary-key insert until the first transaction ends, then
replays its answer (or proceeds, if the first rolled back). Failed requests are not stored:
nothing was written, so retrying them is safe and may succeed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

from retailsync.db.database import Connection
from retailsync.errors import IdempotencyKeyInvalid, IdempotencyKeyReused

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    body: bytes
    etag: str | None


def validate_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise IdempotencyKeyInvalid(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        )
    return key


def fingerprint(method: str, target: str, body: bytes) -> bytes:
    return hashlib.sha256(b"\0".join([method.encode(), target.encode(), body])).digest()


async def claim(
    conn: Connection, api_key_id: UUID, key: str, request_fingerprint: bytes
) -> StoredAnswer | None:
    """Claim ``key`` for this transaction; or return the answer already stored for it."""
    claimed = await conn.fetchval(
        "INSERT INTO idempotency_keys (api_key_id, key, fingerprint, status_code, body) "
        "VALUES ($1, $2, $3, 0, '') ON CONFLICT DO NOTHING RETURNING true",
        api_key_id,
        key,
        request_fingerprint,
    )
    if claimed:
        return None
    row = await conn.fetchrow(
        "SELECT fingerprint, status_code, body, etag FROM idempotency_keys "
        "WHERE api_key_id = $1 AND key = $2",
        api_key_id,
        key,
    )
    assert row is not None  # the conflicting row committed, or our insert would have won
    if row["fingerprint"] != request_fingerprint:
        raise IdempotencyKeyReused(key)
    return StoredAnswer(row["status_code"], row["body"], row["etag"])


async def record(conn: Connection, api_key_id: UUID, key: str, answer: StoredAnswer) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, body = $4, etag = $5 "
        "WHERE api_key_id = $1 AND key = $2",
        api_key_id,
        key,
        answer.status_code,
        answer.body,
        answer.etag,
    )


async def forget_expired(conn: Connection, ttl_seconds: int) -> int:
    """Delete answers older than the TTL; return how many."""
    deleted: int = await conn.fetchval(
        "WITH gone AS (DELETE FROM idempotency_keys "
        "WHERE created_at < clock_timestamp() - make_interval(secs => $1) RETURNING 1) "
        "SELECT count(*) FROM gone",
        ttl_seconds,
    )
    return deleted
