"""Which tables a capture source reads, their keys, and the event type each change becomes.

retailsync's own tables are always captured. Tables retailsync does not own (a legacy ERP's
stock table, say) are added by a TOML file named by ``RETAILSYNC_CDC_TABLES_FILE``; their
writers change nothing:

    [[table]]
    name = "erp.stock_levels"          # schema.table
    key = ["item_no", "warehouse"]     # optional: the primary key by default
    type = "erp.stock.changed"         # optional: "<table>.changed" by default
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retailsync.errors import ConfigError

SETTING = "RETAILSYNC_CDC_TABLES_FILE"
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")

OWN_TABLES = (
    "products",
    "prices",
    "locations",
    "stock",
    "escrow_allotments",  # units in escrow count as available: caches and views need them
    "reservations",
    "carts",
    "cart_lines",
    "orders",
    "order_lines",
    "conflicts",
)


@dataclass(frozen=True, slots=True)
class CapturedTable:
    name: str  # "schema.table"
    type: str  # the event type its changes become
    key: tuple[str, ...] | None = None  # None: the primary key


def own_tables() -> list[CapturedTable]:
    return [CapturedTable(f"public.{table}", f"{table}.changed") for table in OWN_TABLES]


def _entry(index: int, raw: Any) -> CapturedTable:
    where = f"table #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(SETTING, raw, f"{where} is not a table")
    unknown = set(raw) - {"name", "key", "type"}
    if unknown:
        raise ConfigError(SETTING, sorted(unknown), f"{where} has unknown keys")
    name = raw.get("name")
    if not isinstance(name, str) or not _TABLE.match(name):
        raise ConfigError(SETTING, name, f"{where}: name must be schema.table in lower case")
    key = raw.get("key")
    if key is not None and (
        not isinstance(key, list)
        or not key
        or not all(isinstance(c, str) and _COLUMN.match(c) for c in key)
    ):
        raise ConfigError(SETTING, key, f"{where}: key must be a list of column names")
    event_type = raw.get("type", f"{name.partition('.')[2]}.changed")
    if not isinstance(event_type, str) or not _TYPE.match(event_type):
        raise ConfigError(SETTING, event_type, f"{where}: type must match {_TYPE.pattern}")
    return CapturedTable(name, event_type, tuple(key) if key else None)


def load_tables(path: Path | None) -> list[CapturedTable]:
    """Own tables, plus those of the file at ``path``; a bad file raises ConfigError."""
    tables = own_tables()
    if path is None:
        return tables
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(SETTING, str(path), f"cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(SETTING, str(path), f"is not valid TOML ({exc})") from None
    unknown = set(document) - {"table"}
    if unknown:
        raise ConfigError(SETTING, str(path), f"unknown sections {sorted(unknown)}")
    entries = document.get("table", [])
    if not isinstance(entries, list):
        raise ConfigError(SETTING, str(path), "[[table]] entries expected")
    tables += [_entry(i, raw) for i, raw in enumerate(entries)]
    names = [table.name for table in tables]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(SETTING, str(path), f"tables named twice: {duplicates}")
    return tables
