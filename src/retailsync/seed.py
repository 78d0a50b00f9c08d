"""A realistic, deterministic catalog: departments > categories > ranges, three regions with a
warehouse and a store each, a price per region and stock per location.

Rows are generated in Python from one seeded ``random.Random`` (same seed, same data), bulk
loaded with COPY into temporary tables, then upserted, so re-seeding is safe: the catalog and
prices are updated in place (versions bump only where something changed), and stock rows that
already exist are left alone, because their quantities belong to the live system by then.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.progress import Progress

from retailsync.db.database import Connection, Database

REGIONS = {"eu": "EUR", "us": "USD", "uk": "GBP"}
# Price in each region relative to the base (EUR) price.
REGION_PRICE_FACTOR = {"eu": 1.0, "us": 1.08, "uk": 0.86}
DEPARTMENTS = {
    "electronics": ["audio", "computers", "phones", "cameras", "television"],
    "home": ["kitchen", "furniture", "lighting", "bedding", "storage"],
    "fashion": ["womens", "mens", "kids", "shoes", "accessories"],
    "sports": ["running", "cycling", "fitness", "outdoor", "team-sports"],
    "toys": ["building", "dolls", "games", "outdoor-play", "baby"],
    "grocery": ["pantry", "beverages", "snacks", "household", "personal-care"],
}
RANGES = ["essentials", "premium", "bundles"]
BRANDS = ["Acme", "Northwind", "Contoso", "Fabrikam", "Globex", "Initech", "Umbrella", "Vandelay"]
ADJECTIVES = ["Compact", "Classic", "Ultra", "Eco", "Smart", "Pro", "Lite", "Deluxe", "Everyday"]
NOUNS = ["Kit", "Set", "Pack", "Edition", "Model", "Series", "Collection", "Bundle"]
COLORS = ["black", "white", "red", "blue", "green", "grey", "navy", "beige"]


@dataclass(frozen=True, slots=True)
class SeedPlan:
    seed: int = 7
    products: int = 10_000


def locations() -> list[tuple[str, str, str]]:
    """(id, region, kind): a distribution centre and a store per region."""
    return [
        (f"{region}-{name}", region, kind)
        for region in REGIONS
        for name, kind in (("dc1", "warehouse"), ("store1", "store"))
    ]


def categories() -> list[str]:
    return [
        f"{dept}/{cat}/{rng}"
        for dept, cats in DEPARTMENTS.items()
        for cat in cats
        for rng in RANGES
    ]


def sku_for(index: int) -> str:
    return f"SKU-{index:06d}"


Row = tuple[object, ...]


def _rows(
    plan: SeedPlan,
) -> Iterator[tuple[Row, list[Row], list[Row]]]:
    """Per product: its row, its price rows and its stock rows."""
    rng = random.Random(plan.seed)
    cats = categories()
    places = locations()
    for index in range(1, plan.products + 1):
        sku = sku_for(index)
        brand, color = rng.choice(BRANDS), rng.choice(COLORS)
        title = f"{brand} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {index}"
        attributes = {
            "brand": brand,
            "color": color,
            "rating": round(rng.uniform(1.0, 5.0), 1),
            "weight_g": rng.randint(50, 5000),
        }
        product: Row = (sku, title, rng.choice(cats), json.dumps(attributes))
        base = rng.randint(199, 49_999)
        prices: list[Row] = [
            (sku, region, currency, round(base * REGION_PRICE_FACTOR[region]))
            for region, currency in REGIONS.items()
        ]
        stock: list[Row] = []
        for location_id, _, _ in places:
            roll = rng.random()
            on_hand = (
                0 if roll < 0.1 else rng.randint(1, 20) if roll < 0.5 else rng.randint(21, 200)
            )
            stock.append((sku, location_id, on_hand))
        yield product, prices, stock


async def _stage(conn: Connection, plan: SeedPlan, progress: Progress) -> None:
    await conn.execute(
        "CREATE TEMP TABLE seed_products (sku text, title text, category text, attributes text) "
        "ON COMMIT DROP;"
        "CREATE TEMP TABLE seed_prices (sku text, region text, currency text, amount_minor bigint) "
        "ON COMMIT DROP;"
        "CREATE TEMP TABLE seed_stock (sku text, location text, on_hand bigint) ON COMMIT DROP"
    )
    task = progress.add_task("generating catalog", total=plan.products)
    products: list[Row] = []
    prices: list[Row] = []
    stock: list[Row] = []
    for product, product_prices, product_stock in _rows(plan):
        products.append(product)
        prices.extend(product_prices)
        stock.extend(product_stock)
        progress.advance(task)
    copy = progress.add_task("loading", total=3)
    for table, records in (
        ("seed_products", products),
        ("seed_prices", prices),
        ("seed_stock", stock),
    ):
        await conn.copy_records_to_table(table, records=records)
        progress.advance(copy)


_UPSERT = """
INSERT INTO products (sku, title, category, attributes)
    SELECT sku, title, category, attributes::jsonb FROM seed_products
    ON CONFLICT (sku) DO UPDATE SET title = EXCLUDED.title, category = EXCLUDED.category,
        attributes = EXCLUDED.attributes
    WHERE (products.title, products.category, products.attributes)
        IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.category, EXCLUDED.attributes);
INSERT INTO prices (sku, region, currency, amount_minor)
    SELECT sku, region, currency, amount_minor FROM seed_prices
    ON CONFLICT (sku, region, currency) DO UPDATE SET amount_minor = EXCLUDED.amount_minor
    WHERE prices.amount_minor <> EXCLUDED.amount_minor;
WITH added AS (
    INSERT INTO stock (sku, location, on_hand) SELECT sku, location, on_hand FROM seed_stock
    ON CONFLICT (sku, location) DO NOTHING RETURNING sku, location, on_hand)
INSERT INTO stock_movements (sku, location, delta, kind, reason)
    SELECT sku, location, on_hand, 'receipt', 'seed' FROM added WHERE on_hand > 0;
"""


async def load_seed(db: Database, plan: SeedPlan, *, console: Console | None = None) -> str:
    """Generate and load the catalog; return a one-line summary."""
    with Progress(console=console, transient=True) as progress:
        async with db.transaction() as conn:
            # One seed at a time; a concurrent one would interleave upserts to no purpose.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('retailsync.seed'))")
            await conn.executemany(
                "INSERT INTO regions (id) VALUES ($1) ON CONFLICT DO NOTHING",
                [(region,) for region in REGIONS],
            )
            await conn.executemany(
                "INSERT INTO locations (id, region, kind) VALUES ($1, $2, $3) "
                "ON CONFLICT (id) DO NOTHING",
                locations(),
            )
            await _stage(conn, plan, progress)
            upsert = progress.add_task("upserting", total=1)
            await conn.execute(_UPSERT)
            progress.advance(upsert)
    return (
        f"seeded {plan.products} products in {len(categories())} categories, "
        f"{len(REGIONS)} regions, {len(locations())} locations (seed {plan.seed})"
    )
