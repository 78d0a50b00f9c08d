"""What the reservation engine takes and gives: hold requests, holds, strategies, policies.

A hold promises ``quantity`` of a sku at a location for ``ttl_ms`` milliseconds, under an
idempotency key: the same key with the same request is the same hold, whenever it is
retried; the same key with another request is refused. Every line or none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

import msgspec

from retailsync.errors import RequestInvalid
from retailsync.models import CustomerIdPattern
from retailsync.services.idempotency import validate_key

MAX_LINES = 100
MAX_QUANTITY = 1_000_000
TTL_MIN_MS = 100
TTL_MAX_MS = 24 * 3600 * 1000
MAX_SCOPE_LENGTH = 64


class HoldState(StrEnum):
    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


# Holds are msgspec structs, not pydantic models: the engine makes thousands a second, and a
# struct costs a fraction of a microsecond to build and to encode (the API sends them as is).
class HoldLine(msgspec.Struct, frozen=True):
    sku: str
    location: str
    quantity: int


class Hold(msgspec.Struct, frozen=True):
    id: UUID
    state: HoldState
    lines: tuple[HoldLine, ...]
    customer_id: str | None
    expires_at: datetime  # when an uncommitted hold gives its stock back
    strategy: str  # the path that took its stock
    order_id: UUID | None  # the order a committed hold became
    replayed: bool = False  # this answer is the hold an earlier request with the key made


class StrategyName(StrEnum):
    """How a sku's holds take stock (see the package docstring)."""

    AUTO = "auto"
    PESSIMISTIC = "pessimistic"
    OPTIMISTIC = "optimistic"
    ATOMIC = "atomic"
    BATCHED = "batched"
    ESCROW = "escrow"


@dataclass(frozen=True, slots=True)
class Policy:
    """A sku's reservation policy; ``None`` fields take the engine's defaults."""

    strategy: StrategyName = StrategyName.AUTO
    per_customer_limit: int | None = None
    low_stock_threshold: int | None = None


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """A validated request for a hold. Build it with :meth:`create`."""

    scope: str
    key: str
    lines: tuple[HoldLine, ...]
    ttl_ms: int
    customer_id: str | None
    fingerprint: bytes

    @classmethod
    def create(
        cls,
        *,
        scope: str,
        key: str,
        lines: list[tuple[str, str, int]],
        ttl_ms: int,
        customer_id: str | None = None,
        variant: str = "",
    ) -> HoldRequest:
        """Raise RequestInvalid (nothing written) unless every field is usable. ``variant``:
        anything else the caller's request carried that makes it a different request under
        the same key (the API's ``commit`` flag)."""
        if not 1 <= len(scope) <= MAX_SCOPE_LENGTH:
            raise RequestInvalid("scope", f"must be 1 to {MAX_SCOPE_LENGTH} characters")
        validate_key(key)
        if not 1 <= len(lines) <= MAX_LINES:
            raise RequestInvalid("lines", f"a hold has 1 to {MAX_LINES} lines")
        places = {(sku, location) for sku, location, _ in lines}
        if len(places) != len(lines):
            raise RequestInvalid("lines", "each sku x location may appear once")
        for _, _, quantity in lines:
            if not 1 <= quantity <= MAX_QUANTITY:
                raise RequestInvalid("quantity", f"must be 1 to {MAX_QUANTITY}")
        if not TTL_MIN_MS <= ttl_ms <= TTL_MAX_MS:
            raise RequestInvalid("ttl_ms", f"must be {TTL_MIN_MS} to {TTL_MAX_MS} milliseconds")
        if customer_id is not None and not CustomerIdPattern.match(customer_id):
            raise RequestInvalid("customer_id", f"must match {CustomerIdPattern.pattern}")
        ordered = sorted(lines)
        fingerprint = hashlib.sha256(
            msgspec.msgpack.encode((ordered, ttl_ms, customer_id, variant))
        ).digest()
        return cls(
            scope=scope,
            key=key,
            lines=tuple(HoldLine(sku, location, quantity) for sku, location, quantity in lines),
            ttl_ms=ttl_ms,
            customer_id=customer_id,
            fingerprint=fingerprint,
        )

    @property
    def places(self) -> list[tuple[str, str]]:
        return [(line.sku, line.location) for line in self.lines]
