"""The entities services return. They are also the HTTP API's response schemas, so a field is
declared once; request bodies, which are stricter, live in ``api/schemas.py``."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LOCATION_PATTERN = SKU_PATTERN
REGION_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
CustomerIdPattern = re.compile(CUSTOMER_PATTERN)

Sku = Annotated[str, StringConstraints(pattern=SKU_PATTERN)]
LocationId = Annotated[str, StringConstraints(pattern=LOCATION_PATTERN)]
RegionId = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]
Currency = Annotated[str, StringConstraints(pattern=CURRENCY_PATTERN)]
AttributeValue = str | int | float


class Channel(StrEnum):
    WEB = "web"
    MOBILE = "mobile"
    POS = "pos"
    WAREHOUSE = "warehouse"
    ADMIN = "admin"


class LocationKind(StrEnum):
    STORE = "store"
    WAREHOUSE = "warehouse"


class OrderStatus(StrEnum):
    PLACED = "placed"
    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class Entity(BaseModel):
    model_config = ConfigDict(frozen=True)


class Product(Entity):
    sku: str
    title: str
    category: str
    attributes: dict[str, AttributeValue]
    version: int
    updated_at: datetime


class ProductPage(Entity):
    items: list[Product]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class Location(Entity):
    id: str
    region: str
    kind: LocationKind
    version: int
    updated_at: datetime


class Price(Entity):
    sku: str
    region: str
    currency: str
    amount_minor: int = Field(description="Amount in the currency's minor unit (cents)")
    version: int
    updated_at: datetime


class StockAtLocation(Entity):
    location: str
    region: str
    on_hand: int
    reserved: int
    available: int
    version: int


class StockLevel(Entity):
    sku: str
    available: int = Field(description="Sum of available over every location")
    locations: list[StockAtLocation]


class CartLine(Entity):
    sku: str
    quantity: int


class Cart(Entity):
    id: UUID
    customer_id: str
    region: str
    currency: str | None
    status: str
    lines: list[CartLine]
    version: int
    updated_at: datetime


class OrderLine(Entity):
    sku: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int


class StatusChange(Entity):
    from_status: OrderStatus | None
    to_status: OrderStatus
    channel: str
    at: datetime


class Order(Entity):
    id: UUID
    cart_id: UUID | None = Field(description="The cart checked out; null for a committed hold")
    hold_id: UUID | None = Field(description="The hold committed into this order, if any")
    customer_id: str
    region: str
    channel: str
    currency: str
    status: OrderStatus
    lines: list[OrderLine]
    total_minor: int
    history: list[StatusChange]
    version: int
    created_at: datetime
    updated_at: datetime


class ReservationPolicy(Entity):
    sku: str
    strategy: str
    per_customer_limit: int | None = Field(description="Units one customer may hold or buy")
    low_stock_threshold: int | None = Field(
        description="Below this, the sku's last units are sold from its row alone (no escrow); "
        "null: the server's default"
    )
    version: int = Field(description="0 while the sku has the default policy")
    updated_at: datetime | None


class ApiKey(Entity):
    id: UUID
    channel: Channel
    label: str
    created_at: datetime
    revoked_at: datetime | None
