"""Criticality classes and which class each route belongs to.

A class says how much of a worker's measured capacity its requests may use and whether they
may wait for a slot. Classes are listed from the most critical down; each has

- ``trigger``: the share of the concurrency limit past which its requests are shed. The most
  critical class has 1.0, every lower one less, so a lower class can never take the capacity
  kept for the classes above it;
- ``release``: the share in-flight requests must fall back under before the class is
  admitted again (hysteresis: a class at its threshold does not flap);
- ``ramp_s``: once released, the share of the class admitted grows linearly from nothing to
  all of it over this long, so that returning traffic does not overload the worker again;
- ``queue_ms``: how long a request of the class may wait for a slot before it is shed;
- ``objective_ms``: the class's latency objective (0: none). While its smoothed latency is
  past it, the class counts as pressed, as when it has to wait: every less critical class is
  shed. Waiting for a slot comes late: on a worker whose event loop is the bottleneck, a
  checkout is slow long before the concurrency limit makes it wait.

Both tables are data, overridden by two JSON settings and documented in the README:

    RETAILSYNC_TRAFFIC_CLASSES='[{"name": "checkout", "queue_ms": 500}, {"name": "browse"}]'
    RETAILSYNC_TRAFFIC_ROUTES='[{"method": "GET", "path": "^/v1/search", "class": "browse"}]'

Routes given are tried before the defaults; the first whose method and path regex match
decides. A request that matches none is ``browse``; operations routes (health, metrics,
admin) are never managed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from retailsync.errors import ConfigError

_T = TypeVar("_T")


class ClassSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    trigger: float | None = None  # None: the default for its rank
    release: float | None = None
    ramp_s: float = 1.0
    queue_ms: float = 0.0
    objective_ms: float = 0.0


class RouteSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"cls": "class"}):
    path: str
    cls: str
    method: str = "*"


@dataclass(frozen=True, slots=True)
class Criticality:
    name: str
    rank: int  # 0: the most critical
    trigger: float
    release: float
    ramp_s: float
    queue_s: float
    objective_s: float  # math.inf: no objective


DEFAULT_CLASSES = (
    ClassSpec("checkout", trigger=1.0, release=0.9, ramp_s=0.0, queue_ms=400, objective_ms=150),
    ClassSpec("cart", trigger=0.9, release=0.8, queue_ms=100),
    ClassSpec("product", trigger=0.75, release=0.65),
    ClassSpec("browse", trigger=0.6, release=0.5),
    ClassSpec("analytics", trigger=0.4, release=0.3),
)
DEFAULT_ROUTES = (
    RouteSpec(r"^/v1/orders$", "checkout", "POST"),
    RouteSpec(r"^/v1/orders/[^/]+/status$", "checkout", "POST"),
    RouteSpec(r"^/v1/reservations(/.*)?$", "checkout"),
    RouteSpec(r"^/v1/carts(/.*)?$", "cart"),
    RouteSpec(r"^/v1/orders/[^/]+$", "cart", "GET"),
    RouteSpec(r"^/v1/(products|prices|stock)/[^/]+$", "product", "GET"),
    RouteSpec(r"^/v1/events/clicks$", "analytics"),
    RouteSpec(r"^/v1/changes", "analytics"),
)
FALLBACK_CLASS = "browse"
_SEEN_MAX = 50_000  # remembered answers of classify, then forgotten all at once
# Never managed: a load balancer's health check and the metrics scrape must get through an
# overload, and the admin API is how an operator acts on it.
EXEMPT = re.compile(r"^/(healthz|metrics)$|^/v1/admin(/|$)")


def _default_share(rank: int, count: int) -> float:
    """Triggers for classes without one: 1.0 for the top, evenly down to 0.4."""
    return 1.0 if count == 1 else round(1.0 - 0.6 * rank / (count - 1), 3)


def _classes(specs: tuple[ClassSpec, ...] | list[ClassSpec]) -> tuple[Criticality, ...]:
    names = [spec.name for spec in specs]
    if not specs or len(set(names)) != len(names):
        raise ValueError("classes must be a non-empty list of distinct names")
    built: list[Criticality] = []
    for rank, spec in enumerate(specs):
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", spec.name):
            raise ValueError(f"class name {spec.name!r}: lowercase letters, digits, - or _")
        trigger = _default_share(rank, len(specs)) if spec.trigger is None else spec.trigger
        release = round(trigger - 0.1, 3) if spec.release is None else spec.release
        if rank == 0 and trigger != 1.0:
            raise ValueError(f"{spec.name}: the most critical class's trigger must be 1.0")
        if not 0 < release < trigger <= 1.0:
            raise ValueError(f"{spec.name}: need 0 < release < trigger <= 1")
        if built and trigger > built[-1].trigger:
            raise ValueError(f"{spec.name}: a trigger may not exceed the class above it")
        if not 0 <= spec.ramp_s <= 600 or not 0 <= spec.queue_ms <= 10_000:
            raise ValueError(f"{spec.name}: ramp_s in [0, 600], queue_ms in [0, 10000]")
        if not 0 <= spec.objective_ms <= 60_000:
            raise ValueError(f"{spec.name}: objective_ms in [0, 60000]")
        objective_s = spec.objective_ms / 1000 if spec.objective_ms else math.inf
        built.append(
            Criticality(
                spec.name, rank, trigger, release, spec.ramp_s, spec.queue_ms / 1000, objective_s
            )
        )
    return tuple(built)


class RouteTable:
    """Assigns each request its class: a few regex matches, microseconds."""

    def __init__(self, classes: tuple[Criticality, ...], routes: list[RouteSpec]) -> None:
        self.classes = classes
        by_name = {c.name: c for c in classes}
        self.fallback = by_name.get(FALLBACK_CLASS, classes[-1])
        self._rules: list[tuple[str, re.Pattern[str], Criticality]] = []
        for route in routes:
            if route.cls not in by_name:
                raise ValueError(f"route {route.path!r}: unknown class {route.cls!r}")
            method = route.method.upper()
            if method != "*" and not re.fullmatch(r"[A-Z]{3,7}", method):
                raise ValueError(f"route {route.path!r}: bad method {route.method!r}")
            try:
                pattern = re.compile(route.path)
            except re.error as exc:
                raise ValueError(f"route {route.path!r}: {exc}") from exc
            self._rules.append((method, pattern, by_name[route.cls]))
        self._seen: dict[tuple[str, str], Criticality | None] = {}

    def classify(self, method: str, path: str) -> Criticality | None:
        """The request's class, or None for an operations route (never managed). Answers
        are remembered: the same few thousand pages are asked for again and again."""
        key = (method, path)
        try:
            return self._seen[key]
        except KeyError:
            pass
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        found = self._seen[key] = self._classify(method, path)
        return found

    def _classify(self, method: str, path: str) -> Criticality | None:
        if EXEMPT.match(path):
            return None
        for rule_method, pattern, criticality in self._rules:
            if (rule_method == "*" or rule_method == method) and pattern.match(path):
                return criticality
        return self.fallback


def load_route_table(classes_json: str, routes_json: str) -> RouteTable:
    """The defaults, overridden by the two settings' JSON; ConfigError names the setting."""
    try:
        specs = _decode(classes_json, list[ClassSpec]) if classes_json.strip() else DEFAULT_CLASSES
        classes = _classes(specs)
    except ValueError as exc:
        raise ConfigError("RETAILSYNC_TRAFFIC_CLASSES", classes_json, str(exc)) from exc
    names = {c.name for c in classes}
    routes = [route for route in DEFAULT_ROUTES if route.cls in names]
    try:
        if routes_json.strip():
            routes = _decode(routes_json, list[RouteSpec]) + routes
        return RouteTable(classes, routes)
    except ValueError as exc:
        raise ConfigError("RETAILSYNC_TRAFFIC_ROUTES", routes_json, str(exc)) from exc


def _decode(text: str, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(text, type=kind)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
