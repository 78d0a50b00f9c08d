"""Asynchronous reconciliation: rules that decide queued business-critical conflicts.

A rule looks at one queued conflict and either decides it (which version to keep, and why) or
abstains. The first rule that decides wins; a conflict no rule decides goes to the manual
queue. Rules are plain functions in a table keyed by (entity, field), so adding one is data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from retailsync.conflicts import ledger
from retailsync.conflicts.ledger import Conflict
from retailsync.db.database import Connection, Database
from retailsync.observe.metrics import CONFLICT_RESOLUTIONS
from retailsync.sync.policies import POLICIES


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str
    chosen: int
    note: str


Rule = Callable[[Conflict], Decision | None]
# Writes the decided value back to the system of record (and to the replicated object).
Applier = Callable[[Connection, Conflict, Any], Awaitable[None]]


def _amounts(conflict: Conflict) -> list[int]:
    return [int(version["value"]) for version in conflict.versions]


def price_home_region(conflict: Conflict) -> Decision | None:
    """A price set in its own region beats one set from elsewhere: the region owns it."""
    region = POLICIES["price.amount_minor"].parse_key(conflict.entity_key)["region"]
    home = [i for i, v in enumerate(conflict.versions) if v["origin"] == region]
    if len(home) == 1 and len(conflict.versions) > 1:
        return Decision("price-home-region", home[0], f"set in its own region {region}")
    return None


def price_small_difference(conflict: Conflict, *, tolerance: float = 0.01) -> Decision | None:
    """Prices within 1% of each other: the last writer's stands, no one needs to look."""
    amounts = _amounts(conflict)
    high, low = max(amounts), min(amounts)
    if high == 0 or (high - low) / high <= tolerance:
        # versions[0] is the one the merge policy kept (see ledger.ConflictReport).
        return Decision("price-small-difference", 0, f"within {tolerance:.0%}")
    return None


RULES: Mapping[tuple[str, str], Sequence[Rule]] = {
    ("price", "amount_minor"): (price_home_region, price_small_difference),
}


async def reconcile_queued(
    db: Database, appliers: Mapping[tuple[str, str], Applier], *, batch: int = 100
) -> tuple[int, int]:
    """Decide what the rules can among queued conflicts; return (resolved, sent to manual).

    Each conflict is decided in its own transaction under a row lock taken with SKIP LOCKED,
    so several workers may reconcile at once without deciding anything twice.
    """
    resolved = manual = 0
    while True:
        async with db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT id FROM conflicts WHERE status = 'queued' ORDER BY id "
                "LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
            if row is None:
                return resolved, manual
            conflict = await ledger.get_conflict(conn, row["id"])
            decision = _decide(conflict)
            if decision is None:
                await ledger.send_to_manual(conn, conflict)
                manual += 1
            else:
                await apply_choice(
                    conn,
                    appliers,
                    conflict,
                    decision.chosen,
                    by=f"rule:{decision.rule}",
                    note=decision.note,
                )
                resolved += 1
        if resolved + manual >= batch:
            return resolved, manual


def _decide(conflict: Conflict) -> Decision | None:
    for rule in RULES.get((conflict.entity, conflict.field), ()):
        decision = rule(conflict)
        if decision is not None:
            return decision
    return None


async def apply_choice(
    conn: Connection,
    appliers: Mapping[tuple[str, str], Applier],
    conflict: Conflict,
    chosen: int,
    *,
    by: str,
    note: str = "",
) -> Conflict:
    """Make version ``chosen`` the outcome: write it back, then close the conflict."""
    value = conflict.versions[chosen]["value"]
    applier = appliers.get((conflict.entity, conflict.field))
    if applier is not None:
        await applier(conn, conflict, value)
    closed = await ledger.mark_resolved(
        conn, conflict, by=by, chosen=chosen, value=value, note=note
    )
    CONFLICT_RESOLUTIONS.labels(by.partition(":")[0]).inc()
    return closed
