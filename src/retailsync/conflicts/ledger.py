"""Recording, listing and resolving conflicts.

A conflict is recorded in the transaction of the merge that met it, so the ledger and the
merged state can never disagree. Its tier comes from the field's merge policy:

- automatic: the policy's own decision stands (an LWW winner, both values kept); recorded as
  resolved, for the audit trail and the conflict-rate metrics;
- reconciliation: business-critical (price, order); queued for the rules in ``reconcile.py``;
- manual: waits for a person (``POST /v1/conflicts/{id}/resolve``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict

from retailsync.db.database import Connection
from retailsync.errors import NotFound, Refused
from retailsync.observe.metrics import CONFLICTS


class Tier(StrEnum):
    AUTOMATIC = "automatic"
    RECONCILIATION = "reconciliation"
    MANUAL = "manual"


class ConflictKind(StrEnum):
    LWW_LOSER = "lww-loser"
    CONCURRENT_VALUES = "concurrent-values"
    REFUSED_DECREMENT = "refused-decrement"


_STATUS_FOR_TIER = {
    Tier.AUTOMATIC: "resolved",
    Tier.RECONCILIATION: "queued",
    Tier.MANUAL: "manual",
}


@dataclass(frozen=True, slots=True)
class ConflictVersion:
    """One side of a conflict: the value, the HLC stamp it was written at, and where from."""

    value: Any
    origin: str
    stamp: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "origin": self.origin, "stamp": self.stamp}


@dataclass(frozen=True, slots=True)
class ConflictReport:
    """What a merge met. When the policy kept one version (an LWW winner) it is ``versions[0]``
    and ``chosen`` is 0; ``chosen`` is None when it kept them all (a multi-value register) or
    none (a refusal)."""

    entity: str
    entity_key: str
    field: str
    policy: str
    kind: ConflictKind
    versions: list[ConflictVersion]
    chosen: int | None = None
    note: str = ""


class Conflict(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    entity: str
    entity_key: str
    field: str
    policy: str
    kind: str
    tier: str
    status: str
    versions: list[dict[str, Any]]
    decision: dict[str, Any] | None
    version: int
    created_at: datetime
    resolved_at: datetime | None


def _conflict(row: asyncpg.Record) -> Conflict:
    return Conflict(**dict(row))


def fingerprint(report: ConflictReport) -> str:
    """What makes two reports the same conflict: where, and the versions that lost (or, when
    the policy kept no single version, all of them). A write that lost is recorded once, even
    if a replica that has not yet heard the outcome sends it again against a newer winner."""
    versions = report.versions if report.chosen is None else report.versions[1:]
    texts = sorted(json.dumps(v.as_json(), sort_keys=True) for v in versions)
    identity = [report.entity, report.entity_key, report.field, str(report.kind), texts]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


async def record(conn: Connection, report: ConflictReport, tier: Tier) -> Conflict | None:
    """Write the conflict in the caller's transaction; automatic ones are resolved at once.

    Returns None when the ledger already holds it: the same conflict again (a replica re-sent
    a write that had lost), or a write that lost which an earlier conflict on the field already
    weighed (the replica had not yet heard that conflict's decision). A conflict is recorded,
    counted and decided once.
    """
    if report.chosen is not None and await _weighed(conn, report, report.versions[1:]):
        return None
    status = _STATUS_FOR_TIER[tier]
    decision = None
    if tier is Tier.AUTOMATIC:
        decision = {"by": f"policy:{report.policy}", "chosen": report.chosen, "note": report.note}
    row = await conn.fetchrow(
        "INSERT INTO conflicts (entity, entity_key, field, policy, kind, tier, status, versions, "
        "decision, fingerprint, resolved_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        "CASE WHEN $7 = 'resolved' THEN clock_timestamp() END) "
        "ON CONFLICT (fingerprint) DO NOTHING RETURNING *",
        report.entity,
        report.entity_key,
        report.field,
        report.policy,
        str(report.kind),
        str(tier),
        status,
        [version.as_json() for version in report.versions],
        decision,
        fingerprint(report),
    )
    if row is None:
        return None
    CONFLICTS.labels(report.kind, tier).inc()
    return _conflict(row)


async def _weighed(conn: Connection, report: ConflictReport, losers: list[ConflictVersion]) -> bool:
    """True when every loser already appears in a conflict on the same field."""
    for loser in losers:
        found = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM conflicts WHERE entity = $1 AND entity_key = $2 "
            "AND field = $3 AND versions @> $4)",
            report.entity,
            report.entity_key,
            report.field,
            [loser.as_json()],
        )
        if not found:
            return False
    return True


async def get_conflict(conn: Connection, conflict_id: int, *, lock: bool = False) -> Conflict:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT * FROM conflicts WHERE id = $1{suffix}", conflict_id)
    if row is None:
        raise NotFound("conflict", str(conflict_id))
    return _conflict(row)


async def list_conflicts(
    conn: Connection, *, status: str | None, entity: str | None, after: int, limit: int
) -> list[Conflict]:
    rows = await conn.fetch(
        "SELECT * FROM conflicts WHERE ($1::text IS NULL OR status = $1) "
        "AND ($2::text IS NULL OR entity = $2) AND id > $3 ORDER BY id LIMIT $4",
        status,
        entity,
        after,
        limit,
    )
    return [_conflict(row) for row in rows]


async def mark_resolved(
    conn: Connection, conflict: Conflict, *, by: str, chosen: int | None, value: Any, note: str
) -> Conflict:
    """Close an open conflict with its decision (the chosen value has been applied)."""
    if conflict.status == "resolved":
        raise Refused("already-resolved", f"conflict {conflict.id} is already resolved")
    decision = {"by": by, "chosen": chosen, "value": value, "note": note}
    row = await conn.fetchrow(
        "UPDATE conflicts SET status = 'resolved', decision = $2, resolved_at = clock_timestamp() "
        "WHERE id = $1 RETURNING *",
        conflict.id,
        decision,
    )
    assert row is not None
    return _conflict(row)


async def send_to_manual(conn: Connection, conflict: Conflict) -> Conflict:
    row = await conn.fetchrow(
        "UPDATE conflicts SET status = 'manual' WHERE id = $1 RETURNING *", conflict.id
    )
    assert row is not None
    return _conflict(row)
