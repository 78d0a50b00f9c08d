"""Materialized views kept by the change stream, for reads no base table index serves.

- Available-to-promise per sku x location, per region and in total (``view_atp*``);
- category listing pages: every product under its category and each ancestor, with
  ``in_stock`` (``view_category_products``), sorted by title or sku;
- search facets: products per (category incl. ancestors, attribute, value) (``view_facets``).

Only the consumer writes them (``ViewMaintainer``, group "views"), after the fact: nothing
runs inside the transactions that write the base tables. ``rebuild`` recomputes them all from
the base tables; the incremental result equals it once the consumer has caught up.
"""

from retailsync.views.apply import Outcome, apply_events
from retailsync.views.maintainer import GROUP, ViewMaintainer
from retailsync.views.queries import (
    CategoryFacets,
    CategoryPage,
    CategoryProduct,
    Facet,
    FacetCount,
    SortOrder,
    category_facets,
    category_products,
)
from retailsync.views.rebuild import ensure_built, is_built, rebuild

__all__ = [
    "GROUP",
    "CategoryFacets",
    "CategoryPage",
    "CategoryProduct",
    "Facet",
    "FacetCount",
    "Outcome",
    "SortOrder",
    "ViewMaintainer",
    "apply_events",
    "category_facets",
    "category_products",
    "ensure_built",
    "is_built",
    "rebuild",
]
