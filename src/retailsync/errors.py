"""One exception tree for the whole package.

    RetailsyncError
     +-- ConfigError                 a setting has a bad value (names the setting)
     +-- DatabaseError               the database could not do what was asked
     |    +-- DatabaseUnavailable    cannot connect, or the connection dropped
     |    +-- EmbeddedServerError    the embedded PostgreSQL failed to start or stop
     |    +-- MigrationError         a migration failed or was changed after it was applied
     +-- EventLogError               the event log could not do what was asked
     |    +-- EventLogUnavailable    its server cannot be reached or did not answer in time
     +-- DomainError                 a request the domain refuses; nothing was written
          +-- RequestInvalid         a parameter is malformed (names the parameter)
          +-- NotFound               an entity named by the request does not exist
          +-- VersionConflict        a conditional write named a stale version
          +-- InsufficientStock      checkout or adjustment would take stock below zero
          +-- InvalidTransition      an order status change the state machine forbids
          +-- CartNotOpen            the cart was already checked out
          +-- Refused                a business rule says no (empty cart, unpriced line...)
          +-- AlreadyExists          a create-only write found the entity present
          +-- Unauthorized           no or unknown API key
          +-- Forbidden              the key's channel lacks the scope
          +-- IdempotencyKeyReused   same Idempotency-Key, different request
          |    +-- HoldKeyReused      ... for a hold, whose key is its identity (409)
          +-- IdempotencyKeyInvalid  the Idempotency-Key header is malformed

Driver errors (asyncpg, OS) are translated where they enter, chained with ``raise ... from exc``.
The HTTP layer maps each DomainError subclass to a status and a stable problem ``type``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class RetailsyncError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RetailsyncError):
    """A setting has a value we cannot use; the message names the setting."""

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"setting {setting} has value {value!r}: {reason}")


class DatabaseError(RetailsyncError):
    """The database could not do what was asked."""


class DatabaseUnavailable(DatabaseError):
    """No connection could be made, or it was lost."""


class EmbeddedServerError(DatabaseError):
    """The embedded PostgreSQL server failed to start or stop."""


class MigrationError(DatabaseError):
    """A migration failed, or an applied migration's file has changed since."""


class EventLogError(RetailsyncError):
    """The event log could not do what was asked."""


class EventLogUnavailable(EventLogError):
    """The log's server cannot be reached, or did not answer in time; retrying may succeed."""


class DomainError(RetailsyncError):
    """A request the domain refuses. Carries structured fields for the client."""

    detail: str

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)

    def extras(self) -> Mapping[str, Any]:
        """Machine-readable fields added to the problem document."""
        return {}


class RequestInvalid(DomainError):
    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}")

    def extras(self) -> Mapping[str, Any]:
        return {"field": self.field}


class NotFound(DomainError):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} does not exist")

    def extras(self) -> Mapping[str, Any]:
        return {"resource": self.kind, "key": self.key}


class AlreadyExists(DomainError):
    def __init__(self, kind: str, key: str, current_version: int) -> None:
        self.kind = kind
        self.key = key
        self.current_version = current_version
        super().__init__(f"{kind} {key!r} already exists at version {current_version}")

    def extras(self) -> Mapping[str, Any]:
        return {"resource": self.kind, "key": self.key, "current_version": self.current_version}


class VersionConflict(DomainError):
    """A write named version ``expected`` but the row is at ``current`` (None: row absent)."""

    def __init__(self, kind: str, key: str, expected: int, current: int | None) -> None:
        self.kind = kind
        self.key = key
        self.expected = expected
        self.current = current
        now = "does not exist" if current is None else f"is at version {current}"
        super().__init__(f"{kind} {key!r} {now}; the write expected version {expected}")

    def extras(self) -> Mapping[str, Any]:
        return {
            "resource": self.kind,
            "key": self.key,
            "expected_version": self.expected,
            "current_version": self.current,
        }


class Shortage:
    """One line that could not be covered: what was asked and what was available (at one
    location, when the request named it)."""

    __slots__ = ("available", "location", "requested", "sku")

    def __init__(
        self, sku: str, requested: int, available: int, location: str | None = None
    ) -> None:
        self.sku = sku
        self.requested = requested
        self.available = available
        self.location = location

    def as_dict(self) -> dict[str, Any]:
        place = {} if self.location is None else {"location": self.location}
        return {"sku": self.sku, **place, "requested": self.requested, "available": self.available}


class InsufficientStock(DomainError):
    def __init__(self, shortages: Sequence[Shortage]) -> None:
        self.shortages = list(shortages)
        skus = ", ".join(s.sku for s in self.shortages)
        super().__init__(f"not enough stock for: {skus}")

    def extras(self) -> Mapping[str, Any]:
        return {"shortages": [s.as_dict() for s in self.shortages]}


class InvalidTransition(DomainError):
    def __init__(self, order_id: str, current: str, requested: str) -> None:
        self.order_id = order_id
        self.current = current
        self.requested = requested
        super().__init__(f"order {order_id} cannot go from {current!r} to {requested!r}")

    def extras(self) -> Mapping[str, Any]:
        return {"current_status": self.current, "requested_status": self.requested}


class CartNotOpen(DomainError):
    def __init__(self, cart_id: str, status: str) -> None:
        self.cart_id = cart_id
        self.status = status
        super().__init__(f"cart {cart_id} is {status} and can no longer change")

    def extras(self) -> Mapping[str, Any]:
        return {"cart_status": self.status}


class Refused(DomainError):
    """A business rule refuses the request; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)

    def extras(self) -> Mapping[str, Any]:
        return {"reason": self.reason}


class Unauthorized(DomainError):
    pass


class Forbidden(DomainError):
    def __init__(self, channel: str, scope: str) -> None:
        self.channel = channel
        self.scope = scope
        super().__init__(f"a {channel} key may not {scope}")

    def extras(self) -> Mapping[str, Any]:
        return {"channel": self.channel, "required_scope": self.scope}


class IdempotencyKeyReused(DomainError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request")


class HoldKeyReused(IdempotencyKeyReused):
    """A hold's idempotency key is the hold's identity: reusing it for another request
    conflicts with a resource that exists (409), unlike a replayed answer (422)."""


class IdempotencyKeyInvalid(DomainError):
    pass
