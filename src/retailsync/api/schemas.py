"""Request bodies. Unknown fields are refused (422); numbers and strings are strict, so "5",
5.0 and true are not a quantity."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict, StringConstraints

from retailsync.inventory.model import MAX_LINES, MAX_QUANTITY, TTL_MAX_MS, TTL_MIN_MS
from retailsync.models import (
    CUSTOMER_PATTERN,
    Currency,
    LocationId,
    LocationKind,
    RegionId,
    Sku,
)

StrictText = Annotated[str, Strict()]
AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AttributeValue = (
    Annotated[str, Strict(), StringConstraints(max_length=1000)]
    | Annotated[int, Strict(), Field(ge=-(2**53), le=2**53)]
    | Annotated[float, Strict(), Field(allow_inf_nan=False)]
)
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9-]*(/[a-z0-9][a-z0-9-]*)*$"
Category = Annotated[str, StringConstraints(pattern=CATEGORY_PATTERN, max_length=200)]
CustomerId = Annotated[str, StringConstraints(pattern=CUSTOMER_PATTERN)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProductBody(Body):
    title: Annotated[StrictText, StringConstraints(min_length=1, max_length=200)]
    category: Annotated[Category, Strict()] = Field(
        description="Slash-separated path, e.g. electronics/audio/headphones"
    )
    attributes: Annotated[dict[AttributeKey, AttributeValue], Field(max_length=64)] = {}


class LocationBody(Body):
    region: Annotated[RegionId, Strict()]
    kind: LocationKind


class PriceBody(Body):
    currency: Annotated[Currency, Strict()]
    amount_minor: Annotated[int, Strict(), Field(ge=0, le=10**12)] = Field(
        description="Amount in minor units (cents); never a float"
    )


class ReceiptBody(Body):
    quantity: Annotated[int, Strict(), Field(gt=0, le=1_000_000)]


class AdjustmentBody(Body):
    delta: Annotated[int, Strict(), Field(ge=-1_000_000, le=1_000_000)] = Field(
        description="Change to on_hand; not zero"
    )
    reason: Annotated[StrictText, StringConstraints(min_length=1, max_length=200)]


class NewCartBody(Body):
    customer_id: Annotated[CustomerId, Strict()]
    region: Annotated[RegionId, Strict()]
    currency: Annotated[Currency | None, Strict()] = None


class CartLineBody(Body):
    quantity: Annotated[int, Strict(), Field(ge=1, le=999)]


class OrderBody(Body):
    cart_id: UUID
    hold_id: UUID | None = Field(
        None,
        description="A hold of exactly the cart's lines, taken earlier; none: one is taken now",
    )


class HoldLineBody(Body):
    sku: Annotated[Sku, Strict()]
    location: Annotated[LocationId, Strict()]
    quantity: Annotated[int, Strict(), Field(ge=1, le=MAX_QUANTITY)]


class HoldBody(Body):
    lines: Annotated[list[HoldLineBody], Field(min_length=1, max_length=MAX_LINES)]
    ttl_ms: Annotated[int, Strict(), Field(ge=TTL_MIN_MS, le=TTL_MAX_MS)] = Field(
        15 * 60 * 1000, description="Milliseconds until an uncommitted hold gives its stock back"
    )
    customer_id: Annotated[CustomerId | None, Strict()] = Field(
        None, description="Needed for skus under a purchase limit"
    )
    commit: Annotated[bool, Strict()] = Field(
        False, description="Commit at once into an order (a POS sale)"
    )
    currency: Annotated[Currency | None, Strict()] = Field(
        None, description="The order's currency when committing; default: the one priced"
    )


class CommitBody(Body):
    currency: Annotated[Currency | None, Strict()] = None


class PolicyBody(Body):
    strategy: Literal["auto", "pessimistic", "optimistic", "atomic", "batched", "escrow"] = "auto"
    per_customer_limit: Annotated[int | None, Strict(), Field(ge=1, le=1_000_000)] = None
    low_stock_threshold: Annotated[int | None, Strict(), Field(ge=0, le=1_000_000_000)] = None


class StatusBody(Body):
    status: Literal["paid", "shipped", "delivered", "cancelled"]


class ResolveBody(Body):
    choose: Annotated[int, Strict(), Field(ge=0, le=1000)] = Field(
        description="Index of the version to keep, in the conflict's `versions`"
    )
    note: Annotated[StrictText, StringConstraints(max_length=500)] = ""


ObjectKey = Annotated[StrictText, StringConstraints(min_length=3, max_length=200)]
Base64State = Annotated[
    StrictText,
    StringConstraints(max_length=65536, pattern=r"^[A-Za-z0-9+/]*={0,2}$"),
]


class SyncObjectBody(Body):
    key: ObjectKey = Field(description="<entity>.<field>:<entity key>, e.g. stock.units:SKU@LOC")
    state: Base64State | None = Field(
        None, description="The replica's delta or state (retailsync.crdt.codec), base64"
    )


class AllotBody(Body):
    key: ObjectKey = Field(description="A stock.units object")
    quantity: Annotated[int, Strict(), Field(ge=1, le=1_000_000)]


class RefusalBody(Body):
    key: ObjectKey = Field(description="The stock.units object the sale was refused on")
    requested: Annotated[int, Strict(), Field(ge=1, le=1_000_000)]
    available: Annotated[int, Strict(), Field(ge=0, le=1_000_000)]
    at: Annotated[StrictText, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The replica's HLC stamp of the refusal: a resent report is recorded once"
    )


class SyncBody(Body):
    objects: Annotated[list[SyncObjectBody], Field(max_length=200)] = []
    allot: Annotated[list[AllotBody], Field(max_length=200)] = []
    refused: Annotated[list[RefusalBody], Field(max_length=200)] = []


SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class ClickBody(Body):
    session_id: Annotated[SessionId, Strict()]
    kind: Literal["view", "click", "add_to_cart", "search"]
    sku: Annotated[Sku | None, Strict()] = None
    at: AwareDatetime | None = Field(None, description="When it happened; default: on arrival")


class ClicksBody(Body):
    events: Annotated[list[ClickBody], Field(min_length=1, max_length=500)]
