"""Optimistic concurrency for whole-row writes, shared by every upsert-shaped resource.

A write either names the version it read (``expected_version``: update only that version),
asks to create (``create_only``: fail if the row exists), or is a blind upsert. The row's
version is bumped by the ``touch_row`` trigger, never by this code, so it is monotonic.
Table and column names come from our own constants, never from requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from retailsync.db.database import Connection
from retailsync.errors import AlreadyExists, NotFound, VersionConflict


def _key_text(key: Mapping[str, Any]) -> str:
    return "/".join(str(v) for v in key.values())


async def current_version(
    conn: Connection,
    *,
    table: str,
    key: Mapping[str, Any],
    lock: bool = False,
    versioned: bool = True,
) -> int | None:
    """The row's version (0 for tables without one), or None when the row does not exist."""
    where = " AND ".join(f"{col} = ${i}" for i, col in enumerate(key, 1))
    column = "version" if versioned else "0"
    suffix = " FOR NO KEY UPDATE" if lock else ""
    version: int | None = await conn.fetchval(
        f"SELECT {column} FROM {table} WHERE {where}{suffix}", *key.values()
    )
    return version


async def require_row(
    conn: Connection,
    *,
    table: str,
    kind: str,
    key: Mapping[str, Any],
    lock: bool = False,
    versioned: bool = True,
) -> int:
    """The row's version; NotFound when it does not exist."""
    version = await current_version(conn, table=table, key=key, lock=lock, versioned=versioned)
    if version is None:
        raise NotFound(kind, _key_text(key))
    return version


def check_expected(kind: str, key: Mapping[str, Any], expected: int | None, current: int) -> None:
    """Refuse a write that named a version other than the row's current one."""
    if expected is not None and expected != current:
        raise VersionConflict(kind, _key_text(key), expected, current)


async def write_versioned(
    conn: Connection,
    *,
    table: str,
    kind: str,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    expected_version: int | None = None,
    create_only: bool = False,
) -> tuple[asyncpg.Record, bool]:
    """Write one row; return it and whether it was created.

    Raises VersionConflict when ``expected_version`` is stale (or the row is absent), and
    AlreadyExists when ``create_only`` finds the row.
    """
    columns = [*key, *values]
    params = [*key.values(), *values.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    if expected_version is not None:
        sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(columns, 1) if col in values)
        where = " AND ".join(f"{col} = ${i}" for i, col in enumerate(key, 1))
        row = await conn.fetchrow(
            f"UPDATE {table} SET {sets} WHERE {where} AND version = ${len(columns) + 1} "
            "RETURNING *",
            *params,
            expected_version,
        )
        if row is None:
            current = await current_version(conn, table=table, key=key)
            raise VersionConflict(kind, _key_text(key), expected_version, current)
        return row, False
    conflict_target = ", ".join(key)
    if create_only:
        row = await conn.fetchrow(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
            f"ON CONFLICT ({conflict_target}) DO NOTHING RETURNING *",
            *params,
        )
        if row is None:
            current = await current_version(conn, table=table, key=key)
            raise AlreadyExists(kind, _key_text(key), current or 0)
        return row, True
    updates = ", ".join(f"{col} = EXCLUDED.{col}" for col in values)
    row = await conn.fetchrow(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({conflict_target}) DO UPDATE SET {updates} "
        "RETURNING *, (xmax = 0) AS created",
        *params,
    )
    assert row is not None
    return row, bool(row["created"])
