"""L2: Redis, shared by every worker (``RETAILSYNC_CACHE_URL=redis://...``).

Writes and invalidations are compare-and-set in Lua, atomic in Redis, under the version rules
of ``entry`` (a value key, and a floor key that outlives it). Versions travel as zero-padded
decimal strings, compared as strings, so they are exact for any 64-bit version (Lua numbers
are doubles). A key's value and floor share a hash tag, so the script works on Redis Cluster.

Redis is a cache: when it cannot be reached, reads miss and writes are dropped (counted),
never errors to shoppers. The first failure opens its circuit breaker (``traffic.breaker``,
dependency ``redis``): for ``retry_after`` seconds no call is tried at all, so a dead Redis
costs nothing per request (a timeout per request would cost more than the database read it
saves); then one probe call, whose success closes it.
"""

from __future__ import annotations

import dataclasses
import logging

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from retailsync.cache.entry import Entry
from retailsync.traffic.breaker import Breaker, BreakerPolicy, State

log = logging.getLogger(__name__)

# The rules of ``entry``: KEYS[1] holds the value (hash: v = its version, d = the entry),
# KEYS[2] the floor. ARGV[1] is the version; versions compare as strings of equal length.
_PUT = """
local floor = redis.call('GET', KEYS[2])
if floor and ARGV[1] < floor then return 0 end
local held = redis.call('HGET', KEYS[1], 'v')
if held and ARGV[1] < held then return 0 end
if not floor or ARGV[1] > floor then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4]) end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_INVALIDATE = """
local floor = redis.call('GET', KEYS[2])
if floor and ARGV[1] <= floor then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local held = redis.call('HGET', KEYS[1], 'v')
if held and held < ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
FLOOR_TTL_MS = 24 * 3600 * 1000  # a floor outlives any value's TTL
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Entry)


def _version(version: int) -> str:
    return f"{version:020d}"


class L2Cache:
    def __init__(self, client: redis.Redis, *, prefix: str = "rs", retry_after: float = 1.0):
        self._client = client
        self._prefix = prefix
        self.breaker = Breaker("redis", BreakerPolicy(failures=1, reset_s=retry_after))
        self._put = client.register_script(_PUT)
        self._invalidate = client.register_script(_INVALIDATE)
        self.errors = 0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.1, retry_after: float = 1.0) -> L2Cache:
        """``timeout``: how long one call may wait before it counts as Redis being away."""
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        return cls(client, retry_after=retry_after)

    async def close(self) -> None:
        await self._client.aclose()

    @property
    def available(self) -> bool:
        """Whether a call would be tried now (closed, or due for a probe)."""
        return self.breaker.ready

    @property
    def _retry_after(self) -> float:
        return self.breaker.policy.reset_s

    @_retry_after.setter
    def _retry_after(self, seconds: float) -> None:
        self.breaker.policy = dataclasses.replace(self.breaker.policy, reset_s=seconds)

    def _keys(self, key: str) -> list[str]:
        return [f"{self._prefix}:{{{key}}}:v", f"{self._prefix}:{{{key}}}:f"]

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if self.breaker.state is State.CLOSED:
            log.warning("redis %s failed (%s); L1 and the database carry on", what, exc)
        self.breaker.failed()

    async def get(self, key: str) -> Entry | None:
        if not self.breaker.allow():
            return None
        try:
            raw = await self._client.hget(self._keys(key)[0], "d")
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        if raw is None:
            return None
        try:
            return _DECODER.decode(raw if isinstance(raw, bytes) else raw.encode())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # not ours, or damaged
            self.errors += 1
            log.warning("redis value of %s cannot be read (%s): treated as a miss", key, exc)
            return None

    async def put(self, key: str, entry: Entry, ttl_s: float) -> bool:
        """Store unless Redis has seen a newer version (or is away)."""
        if not self.breaker.allow():
            return False
        ttl_ms = max(1, int(ttl_s * 1000))
        args: list[bytes | str | int] = [
            _version(entry.version), _ENCODER.encode(entry), ttl_ms, FLOOR_TTL_MS
        ]  # fmt: skip
        try:
            stored = bool(await self._put(keys=self._keys(key), args=args))
        except (RedisError, OSError) as exc:
            self._failed("put", exc)
            return False
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        return stored

    async def invalidate_strict(self, key: str, version: int) -> bool:
        """Like ``invalidate``, but True once Redis has the floor (now or before) and False only
        when Redis could not be reached: the invalidation consumer retries those. Tried even
        while the breaker is open (the consumer paces its own retries)."""
        try:
            await self._invalidate(keys=self._keys(key), args=[_version(version), FLOOR_TTL_MS])
        except (RedisError, OSError) as exc:
            self._failed("invalidate", exc)
            return False
        self.breaker.succeeded()
        return True

    async def invalidate(self, key: str, version: int) -> bool:
        """The source is at ``version`` now: drop an older value (False if already seen)."""
        if not self.breaker.allow():
            return False
        try:
            done = await self._invalidate(
                keys=self._keys(key), args=[_version(version), FLOOR_TTL_MS]
            )
        except (RedisError, OSError) as exc:
            self._failed("invalidate", exc)
            return False
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        return bool(done)
