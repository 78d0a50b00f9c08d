"""Incremental maintenance: change events applied to the view tables, in the caller's
transaction.

Idempotent and order-independent, whatever the batches and however workers interleave:

- products, stock and locations carry a monotonic ``version``; the view keeps the version it
  applied per source row and takes an event only when its version is newer. Within a batch,
  each row's newest event is the only one applied (the others count as skipped).
- ``escrow_allotments`` has no version (migration 0005), so its events are refresh notices:
  the batch re-reads the escrow total of the event's sku x location from the base table,
  after taking the sku's lock. The last worker to hold the lock reads the newest committed
  state, and every change to escrow is followed by its own event, so the view converges.
  Deletes need no version either: the re-read sum no longer counts the row.
- ATP per region and in total, and a listing's ``in_stock``, are recomputed per touched sku
  from the view's own per-location rows; facet counts and category sizes are adjusted by the
  difference between the view's stored copy of a product and its new state.

A delete of a product, stock row or location (no service does one; stock rows refuse it)
removes it from the views. An event older than the delete that arrives after it would bring
the row back until the row's next change: the version rule cannot order a delete, which
carries only the key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from retailsync.cdc.events import ChangeEvent
from retailsync.db.database import Connection
from retailsync.views import locks

PRODUCTS = "public.products"
STOCK = "public.stock"
LOCATIONS = "public.locations"
ESCROW = "public.escrow_allotments"
_UPSERTS = ("insert", "update", "snapshot")

Place = tuple[str, str]  # (sku, location)
K = TypeVar("K", str, Place)


@dataclass(slots=True)
class Outcome:
    """What a batch did with its events."""

    applied: int = 0  # the event changed the views (or refreshed them: escrow)
    skipped: int = 0  # a view table event superseded by a newer version, or a redelivery
    ignored: int = 0  # a table the views do not read, a logical message
    categories: set[str] = field(default_factory=set)  # whose pages or facets changed


@dataclass(slots=True)
class _Batch:
    """Each source row's deciding event in a batch: its newest version, or a later delete
    (None)."""

    products: dict[str, ChangeEvent | None] = field(default_factory=dict)
    stock: dict[Place, ChangeEvent | None] = field(default_factory=dict)
    locations: dict[str, ChangeEvent | None] = field(default_factory=dict)
    escrow: set[Place] = field(default_factory=set)
    relevant: int = 0


def _version(event: ChangeEvent | None) -> int:
    return -1 if event is None or event.after is None else int(event.after["version"])


def _keep(rows: dict[K, ChangeEvent | None], key: K, event: ChangeEvent) -> None:
    if event.op == "delete":
        rows[key] = None
    elif key not in rows or _version(event) > _version(rows[key]):
        rows[key] = event


def _row(event: ChangeEvent) -> dict[str, Any]:
    row = event.after if event.op in _UPSERTS else event.key
    if row is None:  # pragma: no cover - the capture always sends the key and new row
        raise ValueError(f"event {event.id} of {event.table} carries no row")
    return row


def _collect(events: Sequence[ChangeEvent]) -> _Batch:
    batch = _Batch()
    # Source order (commit LSN, index): a delete decides only over what came before it.
    for event in sorted(events, key=lambda e: (e.commit_lsn, e.index)):
        if event.op not in (*_UPSERTS, "delete") or event.table not in (
            PRODUCTS,
            STOCK,
            LOCATIONS,
            ESCROW,
        ):
            continue
        batch.relevant += 1
        row = _row(event)
        if event.table == PRODUCTS:
            _keep(batch.products, row["sku"], event)
        elif event.table == STOCK:
            _keep(batch.stock, (row["sku"], row["location"]), event)
        elif event.table == LOCATIONS:
            _keep(batch.locations, row["id"], event)
        else:
            batch.escrow.add((row["sku"], row["location"]))
    return batch


async def apply_events(conn: Connection, events: Sequence[ChangeEvent]) -> Outcome:
    """Apply ``events`` to the views in the caller's transaction (which must be one)."""
    batch = _collect(events)
    outcome = Outcome(ignored=len(events) - batch.relevant)
    if not batch.relevant:
        return outcome
    await locks.lock_batch(conn, exclusive=bool(batch.locations))
    skus = {*batch.products, *(s for s, _ in batch.stock), *(s for s, _ in batch.escrow)}
    await locks.lock_skus(conn, skus)
    moved_skus, applied_locations = await _apply_locations(conn, batch.locations)
    applied_places = await _apply_stock(conn, batch.stock)
    atp_skus = {s for s, _ in applied_places} | {s for s, _ in batch.escrow} | moved_skus
    await _refresh_escrow(conn, applied_places | batch.escrow)
    await _recompute_atp(conn, atp_skus)
    changed_categories: dict[str, int] = {}
    applied_products = await _apply_products(conn, batch.products, changed_categories)
    for category in await _refresh_in_stock(conn, atp_skus):
        changed_categories.setdefault(category, 0)
    await _bump_categories(conn, changed_categories)
    outcome.categories = set(changed_categories)
    outcome.applied = applied_locations + len(applied_places) + applied_products
    outcome.applied += sum(1 for e in events if e.table == ESCROW and e.op in (*_UPSERTS, "delete"))
    outcome.skipped = batch.relevant - outcome.applied
    return outcome


async def _apply_locations(
    conn: Connection, rows: dict[str, ChangeEvent | None]
) -> tuple[set[str], int]:
    """Apply location changes; return the skus stocked where a region changed, and how many
    events applied."""
    upserts = [e.after for e in rows.values() if e is not None and e.after is not None]
    deleted = [key for key, e in rows.items() if e is None]
    applied: list[str] = []
    if upserts:
        applied = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO view_locations (id, region, version) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ORDER BY 1 "
                "ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region, version = "
                "EXCLUDED.version WHERE view_locations.version < EXCLUDED.version RETURNING id",
                [r["id"] for r in upserts],
                [r["region"] for r in upserts],
                [r["version"] for r in upserts],
            )
        ]
    if deleted:
        applied += [
            r["id"]
            for r in await conn.fetch(
                "DELETE FROM view_locations WHERE id = ANY($1) RETURNING id", deleted
            )
        ]
    if not applied:
        return set(), 0
    skus = await conn.fetch(
        "SELECT DISTINCT sku FROM view_atp_location WHERE location = ANY($1)", applied
    )
    return {r["sku"] for r in skus}, len(applied)


async def _apply_stock(conn: Connection, rows: dict[Place, ChangeEvent | None]) -> set[Place]:
    upserts = [e.after for e in rows.values() if e is not None and e.after is not None]
    deleted = [key for key, e in rows.items() if e is None]
    applied: set[Place] = set()
    if upserts:
        upserts.sort(key=lambda r: (r["sku"], r["location"]))
        returned = await conn.fetch(
            "INSERT INTO view_atp_location AS v "
            "(sku, location, on_hand, reserved, in_escrow, available, stock_version) "
            "SELECT u.sku, u.location, u.on_hand, u.reserved, 0, u.on_hand - u.reserved, u.version "
            "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) "
            "  AS u(sku, location, on_hand, reserved, version) "
            "ON CONFLICT (sku, location) DO UPDATE SET on_hand = EXCLUDED.on_hand, "
            "  reserved = EXCLUDED.reserved, stock_version = EXCLUDED.stock_version, "
            "  available = EXCLUDED.on_hand - EXCLUDED.reserved + v.in_escrow "
            "WHERE v.stock_version < EXCLUDED.stock_version RETURNING v.sku, v.location",
            [r["sku"] for r in upserts],
            [r["location"] for r in upserts],
            [r["on_hand"] for r in upserts],
            [r["reserved"] for r in upserts],
            [r["version"] for r in upserts],
        )
        applied = {(r["sku"], r["location"]) for r in returned}
    if deleted:
        returned = await conn.fetch(
            "DELETE FROM view_atp_location v USING unnest($1::text[], $2::text[]) AS x(s, l) "
            "WHERE v.sku = x.s AND v.location = x.l RETURNING v.sku, v.location",
            [s for s, _ in deleted],
            [loc for _, loc in deleted],
        )
        applied |= {(r["sku"], r["location"]) for r in returned}
    return applied


async def _refresh_escrow(conn: Connection, places: Iterable[Place]) -> None:
    """Re-read the escrow total of ``places`` from the base table (see the module's notes)."""
    ordered = sorted(places)
    if not ordered:
        return
    await conn.execute(
        "UPDATE view_atp_location v SET in_escrow = e.free, "
        "  available = v.on_hand - v.reserved + e.free "
        "FROM (SELECT x.s, x.l, (SELECT coalesce(sum(a.free), 0) FROM escrow_allotments a "
        "                       WHERE a.sku = x.s AND a.location = x.l)::bigint AS free "
        "      FROM unnest($1::text[], $2::text[]) AS x(s, l)) AS e "
        "WHERE v.sku = e.s AND v.location = e.l AND v.in_escrow <> e.free",
        [s for s, _ in ordered],
        [loc for _, loc in ordered],
    )


async def _recompute_atp(conn: Connection, skus: set[str]) -> None:
    """ATP per region and in total of ``skus``, from the view's per-location rows."""
    if not skus:
        return
    ordered = sorted(skus)
    await conn.execute("DELETE FROM view_atp_region WHERE sku = ANY($1)", ordered)
    await conn.execute(
        "INSERT INTO view_atp_region (sku, region, available) "
        "SELECT v.sku, l.region, sum(v.available) FROM view_atp_location v "
        "JOIN view_locations l ON l.id = v.location WHERE v.sku = ANY($1) GROUP BY 1, 2",
        ordered,
    )
    await conn.execute("DELETE FROM view_atp WHERE sku = ANY($1)", ordered)
    await conn.execute(
        "INSERT INTO view_atp (sku, available) SELECT sku, sum(available) "
        "FROM view_atp_location WHERE sku = ANY($1) GROUP BY 1",
        ordered,
    )


async def _refresh_in_stock(conn: Connection, skus: set[str]) -> list[str]:
    """Set ``in_stock`` on the listing rows of ``skus``; return the categories changed."""
    if not skus:
        return []
    rows = await conn.fetch(
        "UPDATE view_category_products c SET in_stock = x.in_stock "
        "FROM (SELECT s.sku, coalesce(a.available > 0, false) AS in_stock "
        "      FROM unnest($1::text[]) AS s(sku) LEFT JOIN view_atp a ON a.sku = s.sku) AS x "
        "WHERE c.sku = x.sku AND c.in_stock <> x.in_stock RETURNING c.category",
        sorted(skus),
    )
    return [r["category"] for r in rows]


async def _current_products(
    conn: Connection, rows: dict[str, ChangeEvent | None]
) -> dict[str, dict[str, Any] | None]:
    """Each product's new state; an update whose attributes stayed in TOAST (left out of the
    event) takes the base row, which is at least as new (the sku's lock is held)."""
    states: dict[str, dict[str, Any] | None] = {}
    partial = []
    for sku, event in rows.items():
        if event is None or event.after is None:
            states[sku] = None
        elif event.unchanged_toast:
            partial.append(sku)
        else:
            states[sku] = event.after
    if partial:
        base = await conn.fetch(
            "SELECT sku, title, category, attributes, version FROM products WHERE sku = ANY($1)",
            partial,
        )
        states.update({r["sku"]: dict(r) for r in base})
    return states


async def _apply_products(
    conn: Connection, rows: dict[str, ChangeEvent | None], categories: dict[str, int]
) -> int:
    """Apply product changes; add each changed category's size delta to ``categories``;
    return how many events applied."""
    if not rows:
        return 0
    states = await _current_products(conn, rows)
    stored = {
        r["sku"]: r
        for r in await conn.fetch(
            "SELECT sku, category, attributes, version FROM view_products WHERE sku = ANY($1)",
            sorted(rows),
        )
    }
    new: list[dict[str, Any]] = []
    gone: list[str] = []
    for sku in sorted(rows):
        state, old = states.get(sku), stored.get(sku)
        if state is None and old is not None and rows[sku] is None:
            gone.append(sku)
        elif state is not None and (old is None or old["version"] < state["version"]):
            new.append(state)
    if not new and not gone:
        return 0
    # The difference, signed: -1 for every old state replaced, +1 for every new state.
    olds = [stored[s] for s in (*gone, *(r["sku"] for r in new)) if s in stored]
    signed = (
        [o["category"] for o in olds] + [r["category"] for r in new],
        [json.dumps(o["attributes"]) for o in olds] + [json.dumps(r["attributes"]) for r in new],
        [-1] * len(olds) + [1] * len(new),
    )
    await _adjust_facets(conn, *signed)
    for r in await conn.fetch(
        "SELECT c.path, sum(x.sign)::bigint AS delta "
        "FROM unnest($1::text[], $2::int[]) AS x(category, sign) "
        "CROSS JOIN LATERAL view_category_paths(x.category) AS c(path) GROUP BY 1",
        signed[0],
        signed[2],
    ):
        categories[r["path"]] = categories.get(r["path"], 0) + r["delta"]
    changed = [*gone, *(r["sku"] for r in new)]
    await conn.execute("DELETE FROM view_category_products WHERE sku = ANY($1)", changed)
    await conn.execute("DELETE FROM view_products WHERE sku = ANY($1)", changed)
    await conn.execute(
        "INSERT INTO view_products (sku, title, category, attributes, version) "
        "SELECT u.sku, u.title, u.category, u.attributes::jsonb, u.version "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) "
        "  AS u(sku, title, category, attributes, version)",
        [r["sku"] for r in new],
        [r["title"] for r in new],
        [r["category"] for r in new],
        [json.dumps(r["attributes"]) for r in new],
        [r["version"] for r in new],
    )
    await conn.execute(
        "INSERT INTO view_category_products "
        "(category, sku, title, attributes, version, in_stock) "
        "SELECT c.path, p.sku, p.title, p.attributes, p.version, coalesce(a.available > 0, false) "
        "FROM view_products p CROSS JOIN LATERAL view_category_paths(p.category) AS c(path) "
        "LEFT JOIN view_atp a ON a.sku = p.sku WHERE p.sku = ANY($1)",
        [r["sku"] for r in new],
    )
    # Events for rows that ended up changed: the deciding event of each.
    return len(changed)


async def _adjust_facets(
    conn: Connection, categories: list[str], attributes: list[str], signs: list[int]
) -> None:
    """Add the signed facet pairs of these (category, attributes) states to the counts, in key
    order; drop the counts that reach zero."""
    touched = await conn.fetch(
        "INSERT INTO view_facets AS f (category, name, value, count) "
        "SELECT c.path, v.name, v.value, sum(x.sign) "
        "FROM unnest($1::text[], $2::text[], $3::int[]) AS x(category, attributes, sign) "
        "CROSS JOIN LATERAL view_category_paths(x.category) AS c(path) "
        "CROSS JOIN LATERAL view_facet_values(x.attributes::jsonb) AS v "
        "GROUP BY 1, 2, 3 HAVING sum(x.sign) <> 0 ORDER BY 1, 2, 3 "
        "ON CONFLICT (category, name, value) DO UPDATE SET count = f.count + EXCLUDED.count "
        "RETURNING f.category",
        categories,
        attributes,
        signs,
    )
    if touched:
        await conn.execute(
            "DELETE FROM view_facets WHERE count = 0 AND category = ANY($1)",
            sorted({r["category"] for r in touched}),
        )


async def _bump_categories(conn: Connection, deltas: dict[str, int]) -> None:
    """Add the size deltas and bump the counter of every changed category, in key order."""
    if not deltas:
        return
    ordered = sorted(deltas)
    await conn.execute(
        "INSERT INTO view_categories AS c (category, products, version) "
        "SELECT * , 1 FROM unnest($1::text[], $2::bigint[]) ORDER BY 1 "
        "ON CONFLICT (category) DO UPDATE "
        "SET products = c.products + EXCLUDED.products, version = c.version + 1",
        ordered,
        [deltas[c] for c in ordered],
    )
