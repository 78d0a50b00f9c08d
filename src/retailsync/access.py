"""Who may do what: each API key belongs to one channel, each channel has a set of scopes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from retailsync.errors import Forbidden
from retailsync.models import Channel, OrderStatus


class Scope(StrEnum):
    READ = "read"  # catalog, prices, stock, locations, carts, orders
    SELL = "sell"  # carts, checkout, paid, cancelled
    FULFIL = "fulfil"  # shipped, delivered
    STOCK_WRITE = "stock:write"  # receipts, adjustments
    CATALOG_WRITE = "catalog:write"  # products, prices, locations
    CONFLICTS = "conflicts"  # read and resolve the conflict ledger
    SYNC = "sync"  # exchange CRDT deltas as an offline replica
    FLAGS = "flags"  # manage feature flags (rollouts and kill switches)


CHANNEL_SCOPES: Mapping[Channel, frozenset[Scope]] = {
    Channel.WEB: frozenset({Scope.READ, Scope.SELL}),
    # The app keeps a local replica (cart, wishlist) and syncs it when back online.
    Channel.MOBILE: frozenset({Scope.READ, Scope.SELL, Scope.SYNC}),
    # A store sells and hands the goods over at the till.
    Channel.POS: frozenset({Scope.READ, Scope.SELL, Scope.FULFIL, Scope.SYNC}),
    Channel.WAREHOUSE: frozenset({Scope.READ, Scope.STOCK_WRITE, Scope.FULFIL}),
    Channel.ADMIN: frozenset(Scope),
}

STATUS_SCOPE: Mapping[OrderStatus, Scope] = {
    OrderStatus.PAID: Scope.SELL,
    OrderStatus.CANCELLED: Scope.SELL,
    OrderStatus.SHIPPED: Scope.FULFIL,
    OrderStatus.DELIVERED: Scope.FULFIL,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as proven by its API key."""

    key_id: UUID
    channel: Channel

    def require(self, scope: Scope) -> None:
        if scope not in CHANNEL_SCOPES[self.channel]:
            raise Forbidden(self.channel, scope)
