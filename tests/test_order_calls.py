"""The checkout's SQL functions (migration 0013) against a model of their rules, and the way
their refusals come back to Python as the domain's errors."""

from __future__ import annotations

import itertools

import asyncpg
import pytest

from retailsync.db.database import Database
from retailsync.errors import CartNotOpen, DomainError, NotFound, Refused
from retailsync.services.sql_refusals import sql_refusals

SKUS = ("A", "B", "C")
CURRENCIES = ("EUR", "USD")
PRICE_SLOTS = [(sku, currency) for sku in SKUS for currency in CURRENCIES]


def expected_prices(
    priced: set[tuple[str, str]], skus: tuple[str, ...], currency: str | None
) -> str | tuple[str, dict[str, int]]:
    """The rule, as the Python checkout had it: the given currency, or the one currency every
    sku is priced in; a refusal's reason otherwise."""
    candidates = [currency] if currency else list(CURRENCIES)
    complete = [c for c in candidates if all((sku, c) in priced for sku in skus)]
    if not complete:
        return "unpriced"
    if len(complete) > 1:
        return "ambiguous-currency"
    return complete[0], {sku: amount(sku, complete[0]) for sku in skus}


def amount(sku: str, currency: str) -> int:
    return 100 * (SKUS.index(sku) + 1) + CURRENCIES.index(currency)


async def test_order_prices_follows_the_currency_rule_in_every_case(db: Database) -> None:
    """Every table of prices over three skus and two currencies, every cart of those skus,
    with and without a currency: 64 x 7 x 3 cases."""
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO regions (id) VALUES ('r1') ON CONFLICT DO NOTHING")
        await conn.executemany(
            "INSERT INTO products (sku, title, category) VALUES ($1, $1, 'c')",
            [(sku,) for sku in SKUS],
        )
    carts = [c for n in range(1, 4) for c in itertools.combinations(SKUS, n)]
    checked = 0
    async with db.transaction() as conn:
        for mask in range(2 ** len(PRICE_SLOTS)):
            priced = {slot for bit, slot in enumerate(PRICE_SLOTS) if mask >> bit & 1}
            await conn.execute("DELETE FROM prices")
            await conn.executemany(
                "INSERT INTO prices (sku, region, currency, amount_minor) "
                "VALUES ($1, 'r1', $2, $3)",
                [(sku, currency, amount(sku, currency)) for sku, currency in priced],
            )
            for skus, currency in itertools.product(carts, (None, *CURRENCIES)):
                want = expected_prices(priced, skus, currency)
                try:
                    with sql_refusals():
                        async with conn.transaction():  # a savepoint: a refusal aborts it
                            row = await conn.fetchrow(
                                "SELECT * FROM order_prices('r1', $1, $2)", currency, list(skus)
                            )
                    assert row is not None
                    got: str | tuple[str, dict[str, int]] = (row["currency"], row["unit_prices"])
                except Refused as refused:
                    got = refused.reason
                assert got == want, (priced, skus, currency)
                checked += 1
    assert checked == 64 * 7 * 3


@pytest.mark.parametrize(
    ("sqlstate", "error", "fields"),
    [
        ("RSNF0", NotFound, {"kind": "cart", "key": "k-1"}),
        ("RSREF", Refused, {"reason": "cart", "detail": "k-1"}),
        ("RSCNO", CartNotOpen, {"cart_id": "cart", "status": "k-1"}),
    ],
)
async def test_a_refusal_raised_in_sql_is_its_domain_error(
    db: Database, sqlstate: str, error: type[DomainError], fields: dict[str, str]
) -> None:
    raise_it = (
        f"DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = 'cart', "
        "DETAIL = 'k-1'; END$$"
    )
    async with db.connection() as conn:
        with pytest.raises(error) as raised, sql_refusals():
            await conn.execute(raise_it)
    assert type(raised.value) is error
    assert {name: getattr(raised.value, name) for name in fields} == fields


async def test_any_other_database_error_passes_unchanged(db: Database) -> None:
    async with db.connection() as conn:
        with pytest.raises(asyncpg.UniqueViolationError), sql_refusals():
            await conn.execute("INSERT INTO regions (id) VALUES ('r2'), ('r2')")
        with pytest.raises(asyncpg.PostgresError) as raised, sql_refusals():
            await conn.execute("DO $$BEGIN RAISE EXCEPTION USING ERRCODE = 'RSXXX'; END$$")
        assert raised.value.sqlstate == "RSXXX"
