"""Which cached documents a row change affects.

One name per document serves as the L1/L2 key and as the edge cache's surrogate key: a row of
``prices`` affects ``prices:SKU`` (the price list of its sku), a row of ``stock`` or of
``escrow_allotments`` affects ``stock:SKU`` (availability across locations). Category pages
and facets are views; their keys come from the view maintainer, which knows a product's old
category as well as its new one.
"""

from __future__ import annotations

from retailsync.cdc.events import ChangeEvent


def product_key(sku: str) -> str:
    return f"product:{sku}"


def prices_key(sku: str) -> str:
    return f"prices:{sku}"


def stock_key(sku: str) -> str:
    return f"stock:{sku}"


def category_key(category: str) -> str:
    return f"category:{category}"


_BY_SKU = {
    "public.products": product_key,
    "public.prices": prices_key,
    "public.stock": stock_key,
    "public.escrow_allotments": stock_key,
}


def affected_keys(event: ChangeEvent) -> list[str]:
    """The document keys whose content ``event`` may change (empty for other tables)."""
    to_key = _BY_SKU.get(event.table)
    if to_key is None:
        return []
    row = event.after or event.before or event.key or {}
    sku = row.get("sku")
    return [] if sku is None else [to_key(str(sku))]
