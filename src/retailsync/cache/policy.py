"""The cache policy table: data classes, and which class each domain's reads belong to.

A *class* says how long a value may be served and how it is kept fresh; a *domain* (product,
price, stock, ...) names the class its reads use and its consistency. Both tables are data:
the defaults below, overridden by two JSON settings,

    RETAILSYNC_CACHE_CLASSES='{"volatile": {"ttl_s": 2}}'
    RETAILSYNC_CACHE_DOMAINS='{"price": {"cls": "volatile"}}'

and documented in the README. Strong domains are never served from a cache: carts and orders
read the database, and stock at or below the low-stock threshold is never stored.
"""

from __future__ import annotations

import enum
import math
import random
from typing import Any, TypeVar

import msgspec

from retailsync.errors import ConfigError

_T = TypeVar("_T")


class Consistency(enum.StrEnum):
    STRONG = "strong"  # never served stale: read through
    EVENTUAL = "eventual"  # served from cache within the class's bound


class DataClass(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How values of one volatility are cached."""

    ttl_s: float  # how long a value lives in L1/L2 without an event
    events: bool  # evicted by the change stream (else TTL only)
    swr_s: float = 0.0  # after expiry, served this long while one refresh runs
    early_beta: float = 1.0  # probabilistic early refresh (0: off); see ``refresh_early``
    edge_s: int = 0  # s-maxage for a shared cache (Varnish, purged by events); 0: not shared
    browser_s: int = 0  # max-age for browsers and apps (they revalidate with the ETag)

    def __post_init__(self) -> None:
        if not 0 < self.ttl_s <= 86_400:
            raise ValueError("ttl_s must be in (0, 86400]")
        if not 0 <= self.swr_s <= 86_400 or not 0 <= self.early_beta <= 10:
            raise ValueError("swr_s must be in [0, 86400] and early_beta in [0, 10]")
        if not 0 <= self.edge_s <= 86_400 or not 0 <= self.browser_s <= 86_400:
            raise ValueError("edge_s and browser_s must be in [0, 86400]")

    def cache_control(self) -> str:
        if self.edge_s == 0 and self.browser_s == 0:
            return "no-cache"
        return f"public, max-age={self.browser_s}, s-maxage={self.edge_s}"


class Domain(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cls: str | None  # a class name, or None: not cached
    consistency: Consistency = Consistency.EVENTUAL


DEFAULT_CLASSES: dict[str, DataClass] = {
    # Locations and regions: changes are rare and harmless to see a little late.
    "static": DataClass(ttl_s=3600, events=False, swr_s=600, edge_s=3600, browser_s=300),
    # Catalog pages and prices: event invalidation keeps them fresh; TTL is the safety net.
    "semi-static": DataClass(ttl_s=300, events=True, swr_s=30, edge_s=300),
    # Stock: evicted on every change, never served past its TTL.
    "volatile": DataClass(ttl_s=5, events=True, edge_s=1),
}
DEFAULT_DOMAINS: dict[str, Domain] = {
    "location": Domain("static"),
    "product": Domain("semi-static"),
    "category": Domain("semi-static"),
    "price": Domain("semi-static"),
    "stock": Domain("volatile"),  # at or below the low-stock threshold: read through
    "cart": Domain(None, Consistency.STRONG),
    "order": Domain(None, Consistency.STRONG),
    "checkout": Domain(None, Consistency.STRONG),
}


class PolicyTable:
    def __init__(self, classes: dict[str, DataClass], domains: dict[str, Domain]) -> None:
        self.classes = classes
        self.domains = domains

    def of(self, domain: str) -> DataClass | None:
        """The class of ``domain``'s reads, or None when they are never cached."""
        entry = self.domains[domain]
        if entry.cls is None or entry.consistency is Consistency.STRONG:
            return None
        return self.classes[entry.cls]


def load_policies(classes_json: str, domains_json: str) -> PolicyTable:
    """The default table with the settings' overrides; ConfigError on anything unknown."""
    classes = dict(DEFAULT_CLASSES)
    for name, raw in _object("RETAILSYNC_CACHE_CLASSES", classes_json).items():
        base = msgspec.to_builtins(classes.get(name, DataClass(ttl_s=60, events=True)))
        classes[name] = _convert(
            "RETAILSYNC_CACHE_CLASSES", name, {**base, **_dict(raw)}, DataClass
        )
    domains = dict(DEFAULT_DOMAINS)
    for name, raw in _object("RETAILSYNC_CACHE_DOMAINS", domains_json).items():
        if name not in DEFAULT_DOMAINS:
            known = ", ".join(DEFAULT_DOMAINS)
            raise ConfigError("RETAILSYNC_CACHE_DOMAINS", name, f"unknown domain (known: {known})")
        base = msgspec.to_builtins(domains[name])
        domains[name] = _convert("RETAILSYNC_CACHE_DOMAINS", name, {**base, **_dict(raw)}, Domain)
    for name, domain in domains.items():
        if domain.cls is not None and domain.cls not in classes:
            raise ConfigError("RETAILSYNC_CACHE_DOMAINS", name, f"unknown class {domain.cls!r}")
    return PolicyTable(classes, domains)


def refresh_early(expires_at: float, cost_s: float, beta: float, now: float) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh before expiry with a probability that grows
    as expiry nears and with the cost of a load, so a hot key is reloaded by one reader shortly
    before it expires instead of by every reader at once after."""
    if beta <= 0 or cost_s <= 0:
        return False
    return now - cost_s * beta * math.log(1.0 - random.random()) >= expires_at


def _object(setting: str, raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(setting, raw, f"not JSON: {exc}") from exc
    return _dict(value, setting)


def _dict(value: Any, setting: str = "cache policy") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(setting, value, "expected a JSON object")
    return value


def _convert(setting: str, name: str, raw: dict[str, Any], kind: type[_T]) -> _T:
    try:
        return msgspec.convert(raw, kind)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(setting, name, str(exc)) from exc
