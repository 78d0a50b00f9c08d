"""Open the event log a URL names (the setting ``RETAILSYNC_EVENT_LOG_URL``).

    postgres                the log tables in the app's own database (the default)
    postgresql://...        the log tables in that database, migrated on open; the options
                            are those of RETAILSYNC_DB_URL
    nats://host:port?...    a NATS JetStream stream; the options are in _NATS_OPTIONS

The scheme picks the opener from a table and NATS options are parsed by a table of parsers, so
a typo fails at start-up with a message naming the setting, not later as a driver error. The
NATS client is imported only for a nats:// URL: without the extra, only that URL fails.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from retailsync.config import ServerTarget, parse_db_url, positive_float, positive_int
from retailsync.db.database import Database
from retailsync.db.migrate import migrate
from retailsync.errors import ConfigError, DatabaseUnavailable
from retailsync.eventlog.base import EventLog, EventLogUnavailable
from retailsync.eventlog.postgres import PostgresEventLog

SETTING = "RETAILSYNC_EVENT_LOG_URL"
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _stream_name(raw: str) -> str:
    if not _STREAM_NAME.match(raw):
        raise ValueError("use 1-64 letters, digits, '_' or '-'")
    return raw


# Every option of a nats:// URL, its parser, and (in JetStreamConfig) its default.
_NATS_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "stream": _stream_name,
    "replicas": positive_int,
    "max_age": positive_float,  # seconds
    "max_bytes": positive_int,
    "max_msgs": positive_int,
    "duplicate_window": positive_float,  # seconds
    "connect_timeout": positive_float,  # seconds
    "ack_timeout": positive_float,  # seconds
}


async def _open_postgres_url(url: str, setting: str) -> EventLog:
    target = parse_db_url(url, setting=setting)
    assert isinstance(target, ServerTarget)  # the only kind a postgresql:// URL yields
    try:
        database = await Database.connect(target)
    except DatabaseUnavailable as exc:
        raise EventLogUnavailable(f"event log: {exc}") from exc
    try:
        async with database.connection() as conn:
            await migrate(conn)
    except BaseException:
        await database.close()
        raise
    return PostgresEventLog(database, owns_db=True)


def _nats_options(url: str, setting: str) -> tuple[str, dict[str, Any]]:
    """The server address and options of a nats:// URL, or ConfigError."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is what raises for a bad one
    except ValueError as exc:
        raise ConfigError(setting, url, f"bad port: {exc}") from exc
    if not parts.hostname:
        raise ConfigError(setting, url, "a nats:// URL needs a host")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(setting, url, "a nats:// URL takes no path or fragment")
    options: dict[str, Any] = {}
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        parser = _NATS_OPTIONS.get(name)
        if parser is None:
            known = ", ".join(_NATS_OPTIONS)
            raise ConfigError(setting, url, f"unknown option {name!r} (known: {known})")
        try:
            options[name] = parser(raw)
        except ValueError as exc:
            raise ConfigError(setting, url, f"option {name}={raw!r}: {exc}") from exc
    return urlunsplit(("nats", parts.netloc, "", "", "")), options


async def _open_nats(url: str, setting: str) -> EventLog:
    server, options = _nats_options(url, setting)
    try:
        from retailsync.eventlog.nats import JetStreamConfig, NatsEventLog
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "nats":
            raise
        raise ConfigError(
            setting, url, "the NATS backend needs the nats extra: pip install 'retailsync[nats]'"
        ) from exc
    return await NatsEventLog.connect(JetStreamConfig(server=server, **options))


_SCHEMES: Mapping[str, Callable[[str, str], Awaitable[EventLog]]] = {
    "postgres": _open_postgres_url,
    "postgresql": _open_postgres_url,
    "nats": _open_nats,
}


def check_event_log_url(url: str, setting: str = SETTING) -> None:
    """Refuse, with ConfigError, a URL ``open_event_log`` could not use: at start-up, before
    anything connects."""
    if url.lower() == "postgres":
        return
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(["postgres", *(f"{s}://" for s in _SCHEMES)])
        raise ConfigError(setting, url, f"unknown event log backend (expected one of {known})")
    if scheme.lower() == "nats":
        _nats_options(url, setting)
    else:
        parse_db_url(url, setting=setting)


async def open_event_log(
    url: str, *, db: Database | None = None, setting: str = SETTING
) -> EventLog:
    """Open the log ``url`` names; ``db`` is the app's database, which ``postgres`` means.

    Raises ConfigError naming ``setting`` for a URL it cannot use, EventLogUnavailable when
    the server cannot be reached.
    """
    check_event_log_url(url, setting)
    if url.lower() == "postgres":
        if db is None:
            raise ConfigError(setting, url, "'postgres' means the app's database; none was given")
        return PostgresEventLog(db)
    return await _SCHEMES[url.partition("://")[0].lower()](url, setting)
