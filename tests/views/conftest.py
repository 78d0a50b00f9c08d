"""The views' tests run on a real PostgreSQL with logical decoding and the real capture: the
fixtures are those of the CDC tests (one fresh migrated database per test)."""

from __future__ import annotations

from tests.cdc.conftest import cdc_db, cdc_dsn, logical_admin_dsn

__all__ = ["cdc_db", "cdc_dsn", "logical_admin_dsn"]
