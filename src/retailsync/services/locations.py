"""Locations (stores and warehouses), each in one region. A region exists once a location
names it."""

from __future__ import annotations

import asyncpg

from retailsync.db.database import Connection
from retailsync.models import Location, LocationKind
from retailsync.services.versioned import require_row, write_versioned


def _location(row: asyncpg.Record) -> Location:
    return Location(
        id=row["id"],
        region=row["region"],
        kind=row["kind"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


async def put_location(
    conn: Connection,
    location_id: str,
    *,
    region: str,
    kind: LocationKind,
    expected_version: int | None = None,
    create_only: bool = False,
) -> tuple[Location, bool]:
    await conn.execute("INSERT INTO regions (id) VALUES ($1) ON CONFLICT DO NOTHING", region)
    row, created = await write_versioned(
        conn,
        table="locations",
        kind="location",
        key={"id": location_id},
        values={"region": region, "kind": str(kind)},
        expected_version=expected_version,
        create_only=create_only,
    )
    return _location(row), created


async def list_locations(conn: Connection, *, region: str | None = None) -> list[Location]:
    rows = await conn.fetch(
        "SELECT * FROM locations WHERE $1::text IS NULL OR region = $1 ORDER BY id", region
    )
    return [_location(row) for row in rows]


async def require_region(conn: Connection, region: str) -> None:
    await require_row(conn, table="regions", kind="region", key={"id": region}, versioned=False)
