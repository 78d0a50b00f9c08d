"""The merge policy of every replicated field, in one registry.

Channel sync (``POST /v1/sync/{replica}``) and, later, region replication find how to merge a
field, who may write it and how its conflicts are resolved here and nowhere else. An object
is named ``<entity>.<field>:<entity key>``, e.g. ``stock.units:SKU-1@store-berlin``; the
entity key's shape is declared with the policy, so a malformed name is refused before any
state is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from retailsync.access import Scope
from retailsync.conflicts.ledger import Tier
from retailsync.crdt import AWSet, BoundedCounter, Cart, Crdt, LWWRegister, MVRegister
from retailsync.errors import RequestInvalid

_SKU = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_LOCATION = _SKU
_REGION = r"[a-z0-9][a-z0-9-]{0,31}"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """How one field is replicated.

    ``merge`` names the rule for people (the README's table and the conflict ledger);
    ``crdt`` is the type that implements it. ``tier`` is where conflicts go: automatic
    (the merge's decision stands, recorded for audit), reconciliation (business-critical:
    rules decide asynchronously) or manual (a person decides). ``scope`` is what a key
    needs to sync the field.
    """

    entity: str
    field: str
    merge: str
    crdt: type[Crdt]
    tier: Tier
    scope: Scope
    key_pattern: str  # the entity key, with named groups the sync code reads
    make: Callable[[str, Mapping[str, str]], Crdt]  # a blank replica, from id and key parts

    @property
    def name(self) -> str:
        return f"{self.entity}.{self.field}"

    def parse_key(self, entity_key: str) -> dict[str, str]:
        match = re.fullmatch(self.key_pattern, entity_key)
        if match is None:
            raise RequestInvalid("key", f"{entity_key!r} is not a {self.entity} key of {self.name}")
        return match.groupdict()


def _lww(replica: str, parts: Mapping[str, str]) -> Crdt:
    # The server writes a field on behalf of the field's own region (or of no region).
    return LWWRegister(replica, region_priority={parts.get("region", "global"): HOME_PRIORITY})


HOME_PRIORITY = 0

POLICIES: Mapping[str, FieldPolicy] = {
    policy.name: policy
    for policy in (
        FieldPolicy(
            "product", "title", "lww-hlc", LWWRegister, Tier.AUTOMATIC,
            Scope.CATALOG_WRITE, rf"(?P<sku>{_SKU})", _lww,
        ),
        FieldPolicy(
            "product", "attributes", "multi-value", MVRegister, Tier.MANUAL,
            Scope.CATALOG_WRITE, rf"(?P<sku>{_SKU})", lambda replica, _: MVRegister(replica),
        ),
        FieldPolicy(
            "price", "amount_minor", "lww-hlc-region-priority", LWWRegister, Tier.RECONCILIATION,
            Scope.CATALOG_WRITE, rf"(?P<sku>{_SKU})@(?P<region>{_REGION})/(?P<currency>[A-Z]{{3}})",
            _lww,
        ),
        FieldPolicy(
            "stock", "units", "bounded-counter", BoundedCounter, Tier.AUTOMATIC,
            Scope.SYNC, rf"(?P<sku>{_SKU})@(?P<location>{_LOCATION})",
            lambda replica, _: BoundedCounter(replica),
        ),
        FieldPolicy(
            "wishlist", "items", "add-wins-set", AWSet, Tier.AUTOMATIC,
            Scope.SYNC, r"(?P<customer>[A-Za-z0-9][A-Za-z0-9._@-]{0,127})",
            lambda replica, _: AWSet(replica),
        ),
        # A line's quantity merges as a counter: two tills adding one each sell two.
        FieldPolicy(
            "cart", "lines", "cart-counter", Cart, Tier.AUTOMATIC, Scope.SYNC,
            rf"(?P<cart>{_UUID})", lambda replica, _: Cart(replica, rule="counter"),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ObjectName:
    """A parsed object name: its policy and the parts of its entity key."""

    key: str
    policy: FieldPolicy
    entity_key: str
    parts: Mapping[str, str]

    def blank(self, replica: str) -> Crdt:
        """An empty replica of this object, as ``replica``."""
        return self.policy.make(replica, self.parts)


def parse_object_key(key: str) -> ObjectName:
    """``stock.units:SKU-1@store-berlin`` -> its policy and key parts, or RequestInvalid."""
    name, sep, entity_key = key.partition(":")
    policy = POLICIES.get(name)
    if not sep or policy is None:
        known = ", ".join(POLICIES)
        raise RequestInvalid("key", f"{key!r} does not name a replicated field ({known})")
    return ObjectName(key, policy, entity_key, policy.parse_key(entity_key))
