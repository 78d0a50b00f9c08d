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

from collections.abc import Callable, Sequence
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


def _document(batch: _Batch) -> dict[str, list[dict[str, Any]]]:
    """The batch as ``view_apply_batch`` takes it (migration 0011): each row's deciding
    event's columns the views keep, a delete as its key alone."""

    def rows(
        decided: dict[Any, ChangeEvent | None], key: Callable[[Any], dict[str, str]], *kept: str
    ) -> list[dict[str, Any]]:
        out = []
        for k, event in decided.items():
            if event is None or event.after is None:
                out.append({**key(k), "deleted": True})
            else:
                row = {name: event.after.get(name) for name in kept}
                out.append({**row, "deleted": False, "partial": bool(event.unchanged_toast)})
        return out

    def place(key: Place) -> dict[str, str]:
        return {"sku": key[0], "location": key[1]}

    return {
        "products": rows(
            batch.products,
            lambda sku: {"sku": sku},
            *("sku", "title", "category", "attributes", "version"),
        ),
        "stock": rows(batch.stock, place, "sku", "location", "on_hand", "reserved", "version"),
        "locations": rows(batch.locations, lambda id_: {"id": id_}, "id", "region", "version"),
        "escrow": [place(p) for p in batch.escrow],
    }


async def apply_events(conn: Connection, events: Sequence[ChangeEvent]) -> Outcome:
    """Apply ``events`` to the views in the caller's transaction (which must be one), in one
    round trip: the statements are in ``view_apply_batch``."""
    batch = _collect(events)
    outcome = Outcome(ignored=len(events) - batch.relevant)
    if not batch.relevant:
        return outcome
    result = await conn.fetchrow(
        "SELECT applied, categories FROM view_apply_batch($1::jsonb, $2, $3, $4)",
        _document(batch),
        *locks.BATCH_KEYS,
    )
    assert result is not None  # a function's OUT parameters: always one row
    outcome.categories = set(result["categories"])
    outcome.applied = result["applied"]
    outcome.applied += sum(1 for e in events if e.table == ESCROW and e.op in (*_UPSERTS, "delete"))
    outcome.skipped = batch.relevant - outcome.applied
    return outcome
