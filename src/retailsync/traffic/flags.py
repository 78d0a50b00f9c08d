"""Feature flags: a percentage rollout by a stable hash of the customer, and a kill switch.

Evaluation is pure and in memory (about a microsecond): each customer falls in one of 10,000
buckets, ``blake2b("<flag>:<customer>") mod 10000``, and a flag at p percent is on for the
buckets below ``p * 100``. So a customer keeps their answer from request to request and worker
to worker, raising the percentage only adds customers (one that was on stays on), and each flag
draws its own sample (the 10% of one flag are not the 10% of another). ``enabled = false`` is
the kill switch: off for everyone at once, the percentage kept for when it is switched back.

Without a customer only the two definite answers exist: a flag at 100% is on, anything less is
off, since a request nobody can be bucketed for must not see a feature still being tried out.
An unknown flag is off (or the caller's default), so code can ship before its flag.

Every worker holds a :class:`FlagStore`. The table's trigger NOTIFies ``retailsync_flags`` at
each commit that changes it; the store LISTENs and reloads all flags (they are few), so a change
reaches every worker in milliseconds, well within the one second a kill switch is allowed. A
periodic reload (every 5 s) covers a lost LISTEN connection, which is taken again; while the
database is away the last flags loaded stay in force.

No counter of evaluations: one costs about as much as the evaluation itself and a request may
evaluate many flags, while the share of customers a flag is on for is known from its gauge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client import Gauge

from retailsync.chores import wait_set
from retailsync.db.database import Connection, Database
from retailsync.errors import DatabaseUnavailable, NotFound
from retailsync.models import Entity
from retailsync.services.versioned import check_expected, require_row, write_versioned

log = logging.getLogger(__name__)

FLAG_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"
BUCKETS = 10_000  # a percentage with two decimals picks a whole number of buckets
CHANNEL = "retailsync_flags"  # NOTIFYed by the feature_flags trigger (migration 0009)
_COLUMNS = "name, enabled, rollout_percent, description, version, updated_at"

ROLLOUT_PERCENT = Gauge(
    "retailsync_flag_rollout_percent",
    "Share of customers a feature flag is rolled out to (0 to 100), as this worker holds it",
    ["flag"],
    multiprocess_mode="livemostrecent",
)
FLAG_ENABLED = Gauge(
    "retailsync_flag_enabled",
    "1 while a feature flag is enabled, 0 when its kill switch is off",
    ["flag"],
    multiprocess_mode="livemostrecent",
)


class Flag(Entity):
    name: str
    enabled: bool
    rollout_percent: float
    description: str
    version: int
    updated_at: datetime


def bucket(flag: str, customer: str) -> int:
    """The customer's bucket for ``flag``, in 0..9999: the same on every worker and release
    (changing this function would move customers in and out of every rollout)."""
    digest = hashlib.blake2b(f"{flag}:{customer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def threshold(rollout_percent: Decimal | float) -> int:
    """Buckets below this are on: 12.5% -> 1250."""
    return int(Decimal(str(rollout_percent)) * 100)


@dataclass(frozen=True, slots=True)
class Rule:
    """What evaluating one flag needs: its kill switch and how many buckets it is on for."""

    enabled: bool
    threshold: int  # 0..10000

    @classmethod
    def of(cls, enabled: bool, rollout_percent: Decimal | float) -> Rule:
        return cls(enabled, threshold(rollout_percent))

    def on_for(self, flag: str, customer: str | None) -> bool:
        if not self.enabled or self.threshold <= 0:
            return False
        if self.threshold >= BUCKETS:
            return True
        return customer is not None and bucket(flag, customer) < self.threshold


def _flag(row: asyncpg.Record) -> Flag:
    return Flag(
        name=row["name"],
        enabled=row["enabled"],
        rollout_percent=float(row["rollout_percent"]),
        description=row["description"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


async def list_flags(conn: Connection) -> list[Flag]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM feature_flags ORDER BY name")
    return [_flag(row) for row in rows]


async def get_flag(conn: Connection, name: str) -> Flag:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM feature_flags WHERE name = $1", name)
    if row is None:
        raise NotFound("flag", name)
    return _flag(row)


async def put_flag(
    conn: Connection,
    name: str,
    *,
    enabled: bool,
    rollout_percent: Decimal,
    description: str,
    expected_version: int | None = None,
    create_only: bool = False,
) -> tuple[Flag, bool]:
    """Create or replace a flag; return it and whether it was created."""
    row, created = await write_versioned(
        conn,
        table="feature_flags",
        kind="flag",
        key={"name": name},
        values={
            "enabled": enabled,
            "rollout_percent": rollout_percent,
            "description": description,
        },
        expected_version=expected_version,
        create_only=create_only,
    )
    return _flag(row), created


async def delete_flag(conn: Connection, name: str, *, expected_version: int | None = None) -> Flag:
    """Delete a flag (it is then off, or the callers' default); return it as it was."""
    current = await require_row(
        conn, table="feature_flags", kind="flag", key={"name": name}, lock=True
    )
    check_expected("flag", {"name": name}, expected_version, current)
    row = await conn.fetchrow(
        f"DELETE FROM feature_flags WHERE name = $1 RETURNING {_COLUMNS}", name
    )
    assert row is not None  # locked above
    return _flag(row)


class FlagStore:
    """One worker's copy of every flag, kept current by LISTEN/NOTIFY and a periodic reload."""

    def __init__(self, db: Database, *, refresh_interval: float = 5.0) -> None:
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval {refresh_interval!r}: must be positive")
        self._db = db
        self._interval = refresh_interval
        self._rules: dict[str, Rule] = {}
        self._flags: dict[str, Flag] = {}
        self._changed = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._listening: AsyncExitStack | None = None
        self._listen_lost = False
        self._task: asyncio.Task[None] | None = None

    def enabled(self, name: str, customer: str | None = None, *, default: bool = False) -> bool:
        """Whether ``name`` is on for ``customer``; ``default`` for a flag that does not exist."""
        rule = self._rules.get(name)
        if rule is None:
            return default
        return rule.on_for(name, customer)

    def flags(self) -> Mapping[str, Flag]:
        """The flags as last loaded."""
        return self._flags

    @property
    def listening(self) -> bool:
        return self._listening is not None and not self._listen_lost

    async def start(self) -> None:
        """Load the flags, then keep them current. A worker starts even if they cannot be
        read yet (every flag is then off): the refresh loop tries again."""
        try:
            await self.reload()
            await self._listen()
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning("feature flags not loaded yet (all off until they are): %s", exc)
        self._task = asyncio.create_task(self._refresh(), name="feature flag refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._stop_listening()

    async def reload(self) -> None:
        """Read every flag and replace this worker's copy at once. Serialised, so a reload that
        read older rows can never replace a newer copy."""
        async with self._reload_lock:
            async with self._db.connection() as conn:
                flags = {flag.name: flag for flag in await list_flags(conn)}
            rules = {
                name: Rule.of(flag.enabled, flag.rollout_percent) for name, flag in flags.items()
            }
            gone = self._flags.keys() - flags.keys()
            self._flags, self._rules = flags, rules
        for name, flag in flags.items():
            ROLLOUT_PERCENT.labels(name).set(flag.rollout_percent)
            FLAG_ENABLED.labels(name).set(1 if flag.enabled else 0)
        for name in gone:
            for gauge in (ROLLOUT_PERCENT, FLAG_ENABLED):
                with suppress(KeyError):
                    gauge.remove(name)

    async def _refresh(self) -> None:
        while True:
            await wait_set(self._changed, self._interval)
            self._changed.clear()  # before reading: a change committed meanwhile wakes us again
            try:
                if not self.listening:
                    await self._listen()
                await self.reload()
            except DatabaseUnavailable as exc:
                log.warning("feature flags not reloaded (the last ones loaded stay): %s", exc)
            except Exception:
                log.exception("feature flags not reloaded")

    async def _listen(self) -> None:
        await self._stop_listening()
        self._listen_lost = False
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(self._db.connection(held=True))
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException as exc:
            # The connection goes back to the pool whatever failed: a pool closes only when
            # every connection is back.
            with suppress(Exception):
                await stack.aclose()
            if isinstance(exc, asyncpg.PostgresError | OSError):
                raise DatabaseUnavailable(f"cannot LISTEN for flag changes: {exc}") from exc
            raise
        stack.push_async_callback(conn.remove_listener, CHANNEL, self._notified)
        conn.add_termination_listener(self._lost)
        self._listening = stack

    def _notified(self, *_: Any) -> None:
        self._changed.set()

    def _lost(self, *_: Any) -> None:
        self._listen_lost = True
        self._changed.set()  # listen again and reload: changes may have been missed

    async def _stop_listening(self) -> None:
        stack, self._listening = self._listening, None
        if stack is not None:
            # A lost connection cannot unlisten nor be released cleanly: nothing to undo.
            with suppress(asyncpg.InterfaceError, DatabaseUnavailable, OSError):
                await stack.aclose()
