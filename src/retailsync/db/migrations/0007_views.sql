-- Materialized views fed by the change stream (retailsync.views). Only the view consumer
-- (ViewMaintainer) and rebuild() write these tables; nothing here runs inside the writing
-- transactions of the base tables (no triggers on them).
--
-- Copies of source rows keep the `version` applied, so an event applies only when it is newer
-- (redelivery, duplicates and reordering between workers are no-ops). Text that is sorted
-- or paged on is COLLATE "C": byte order, the same on every server, matches the cursors.

-- One row once the views were built (by rebuild(), run at bootstrap under an advisory lock).
CREATE TABLE view_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    built_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The view's own copy of each product: facet counts and listings are adjusted from it.
CREATE TABLE view_products (
    sku         text COLLATE "C" PRIMARY KEY,
    title       text NOT NULL,
    category    text NOT NULL,
    attributes  jsonb NOT NULL,
    version     bigint NOT NULL
);

CREATE TABLE view_locations (
    id       text PRIMARY KEY,
    region   text NOT NULL,
    version  bigint NOT NULL
);

-- Available-to-promise per sku x location, as `stock_levels` (0005) computes it:
-- available = on_hand - reserved + in_escrow.
CREATE TABLE view_atp_location (
    sku            text COLLATE "C" NOT NULL,
    location       text NOT NULL,
    on_hand        bigint NOT NULL,
    reserved       bigint NOT NULL,
    in_escrow      bigint NOT NULL,
    available      bigint NOT NULL,
    stock_version  bigint NOT NULL,
    PRIMARY KEY (sku, location)
);
CREATE INDEX view_atp_location_location ON view_atp_location (location);

CREATE TABLE view_atp_region (
    sku        text COLLATE "C" NOT NULL,
    region     text NOT NULL,
    available  bigint NOT NULL,
    PRIMARY KEY (sku, region)
);

CREATE TABLE view_atp (
    sku        text COLLATE "C" PRIMARY KEY,
    available  bigint NOT NULL
);

-- One row per product per category it is listed under (its own and every ancestor).
CREATE TABLE view_category_products (
    category    text COLLATE "C" NOT NULL,
    sku         text COLLATE "C" NOT NULL,
    title       text COLLATE "C" NOT NULL,
    attributes  jsonb NOT NULL,
    version     bigint NOT NULL,
    in_stock    boolean NOT NULL,
    PRIMARY KEY (category, sku)
);
CREATE INDEX view_category_products_title ON view_category_products (category, title, sku);
CREATE INDEX view_category_products_sku ON view_category_products (sku);

-- Counts are changed by upserts of signed deltas; no CHECK (count >= 0) here, as PostgreSQL
-- checks the row an upsert proposes (a negative delta) before it finds the conflict.

-- Products listed per category, and a counter bumped by every transaction of the consumer
-- that changes the category's listing or facets (the pages' ETag). Kept when the category
-- empties, so the counter never goes back.
CREATE TABLE view_categories (
    category  text COLLATE "C" PRIMARY KEY,
    products  bigint NOT NULL,
    version   bigint NOT NULL
);

CREATE TABLE view_facets (
    category  text COLLATE "C" NOT NULL,
    name      text COLLATE "C" NOT NULL,
    value     jsonb NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (category, name, value)
);
-- Rows a decrement took to zero, found without a scan and deleted in the same transaction.
CREATE INDEX view_facets_zero ON view_facets (category, name, value) WHERE count = 0;

-- A category path and its ancestors: 'a/b/c' -> 'a', 'a/b', 'a/b/c'.
CREATE FUNCTION view_category_paths(category text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT array_to_string((string_to_array(category, '/'))[1:n], '/')
    FROM generate_series(1, cardinality(string_to_array(category, '/'))) AS n
$$;

-- The (name, value) pairs a product counts under in the facets: each string, number or
-- boolean value; each distinct scalar element of an array value (a multi-valued attribute);
-- nothing for null, objects, or nested arrays and objects.
CREATE FUNCTION view_facet_values(attributes jsonb) RETURNS TABLE (name text, value jsonb)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT a.key, a.value FROM jsonb_each(attributes) AS a
    WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
    UNION
    SELECT a.key, e.value FROM jsonb_each(attributes) AS a
    CROSS JOIN LATERAL jsonb_array_elements(a.value) AS e(value)
    WHERE jsonb_typeof(a.value) = 'array'
      AND jsonb_typeof(e.value) IN ('string', 'number', 'boolean')
$$;
