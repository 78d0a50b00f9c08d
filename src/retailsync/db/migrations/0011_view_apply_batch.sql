-- One call per batch of the view consumer (retailsync.views.apply): the statements that apply
-- a batch ran one round trip each, about fifteen, and under load each waited on a busy event
-- loop, so the consumer spent its time waiting rather than working. The rules are those of
-- retailsync/views/apply.py's docstring; the Python side keeps each source row's deciding
-- event and hands the batch over as one document:
--
--   {"products":  [{sku, title, category, attributes, version, partial, deleted}],
--    "stock":     [{sku, location, on_hand, reserved, version, deleted}],
--    "locations": [{id, region, version, deleted}],
--    "escrow":    [{sku, location}]}
--
-- `partial`: the update left `attributes` in TOAST (not in the event): the base row, at least
-- as new, is read instead. A deleted row carries only its key.

-- A product whose copy in the views changes: its new state (NULL when deleted) and the old one.
CREATE TYPE view_product_change AS (
    sku             text COLLATE "C",  -- as the view tables' skus: their indexes then serve
    title           text,
    category        text,
    attributes      jsonb,
    version         bigint,
    old_category    text,   -- NULL when the views had no copy
    old_attributes  jsonb
);

CREATE FUNCTION view_apply_batch(
    batch jsonb, lock_class int, views_key int, sku_class int,
    OUT applied bigint, OUT categories text[]
) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    moved_locations text[];  -- locations whose region changed or that went
    place_skus text[] COLLATE "C";  -- sku x location rows applied, and escrow refreshes
    place_locations text[];
    applied_places bigint;
    atp_skus text[] COLLATE "C";
    changes view_product_change[];
    changed_skus text[] COLLATE "C";
    delta_paths text[];      -- categories whose size changed, with the change
    delta_sizes bigint[];
    facet_paths text[];
    stock_paths text[];
BEGIN
    -- The locks of retailsync/views/locks.py: views shared (exclusive for a location change),
    -- then every sku touched, in key order.
    IF jsonb_array_length(batch->'locations') > 0 THEN
        PERFORM pg_advisory_xact_lock(lock_class, views_key);
    ELSE
        PERFORM pg_advisory_xact_lock_shared(lock_class, views_key);
    END IF;
    PERFORM pg_advisory_xact_lock(sku_class, k)
    FROM (SELECT DISTINCT hashtext(x.sku) AS k
          FROM (SELECT jsonb_array_elements(batch->'products')->>'sku'
                UNION ALL SELECT jsonb_array_elements(batch->'stock')->>'sku'
                UNION ALL SELECT jsonb_array_elements(batch->'escrow')->>'sku') AS x(sku)
          ORDER BY k) AS keys;

    -- Locations; a region move re-aggregates every sku stocked there.
    WITH given AS (
        SELECT * FROM jsonb_to_recordset(batch->'locations')
            AS g(id text, region text, version bigint, deleted boolean)
    ), upserted AS (
        INSERT INTO view_locations (id, region, version)
        SELECT id, region, version FROM given WHERE NOT deleted ORDER BY 1
        ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region, version = EXCLUDED.version
        WHERE view_locations.version < EXCLUDED.version
        RETURNING id
    ), removed AS (
        DELETE FROM view_locations WHERE id IN (SELECT id FROM given WHERE deleted)
        RETURNING id
    )
    SELECT coalesce(array_agg(id), '{}') INTO moved_locations
    FROM (SELECT id FROM upserted UNION ALL SELECT id FROM removed) AS moved;
    applied := cardinality(moved_locations);

    -- Stock rows: on hand and reserved, when newer; escrow is kept as it was.
    WITH given AS (
        SELECT * FROM jsonb_to_recordset(batch->'stock') AS g(
            sku text COLLATE "C", location text, on_hand bigint, reserved bigint, version bigint,
            deleted boolean)
    ), upserted AS (
        INSERT INTO view_atp_location AS v
            (sku, location, on_hand, reserved, in_escrow, available, stock_version)
        SELECT sku, location, on_hand, reserved, 0, on_hand - reserved, version
        FROM given WHERE NOT deleted ORDER BY sku COLLATE "C", location
        ON CONFLICT (sku, location) DO UPDATE SET on_hand = EXCLUDED.on_hand,
            reserved = EXCLUDED.reserved, stock_version = EXCLUDED.stock_version,
            available = EXCLUDED.on_hand - EXCLUDED.reserved + v.in_escrow
        WHERE v.stock_version < EXCLUDED.stock_version
        RETURNING v.sku, v.location
    ), removed AS (
        DELETE FROM view_atp_location v USING given g
        WHERE g.deleted AND v.sku = g.sku AND v.location = g.location
        RETURNING v.sku, v.location
    ), places AS (
        SELECT sku, location FROM upserted UNION ALL SELECT sku, location FROM removed
    )
    SELECT (SELECT count(*) FROM places),
           coalesce(array_agg(p.sku), '{}'), coalesce(array_agg(p.location), '{}')
    INTO STRICT applied_places, place_skus, place_locations
    FROM (SELECT sku, location FROM places
          UNION SELECT * FROM jsonb_to_recordset(batch->'escrow')
                            AS e(sku text COLLATE "C", location text)
         ) AS p;
    applied := applied + applied_places;

    -- Escrow re-read from the base table for every place touched.
    UPDATE view_atp_location v SET in_escrow = e.free, available = v.on_hand - v.reserved + e.free
    FROM (SELECT x.s, x.l, (SELECT coalesce(sum(a.free), 0) FROM escrow_allotments a
                            WHERE a.sku = x.s AND a.location = x.l)::bigint AS free
          FROM unnest(place_skus, place_locations) AS x(s, l)) AS e
    WHERE v.sku = e.s AND v.location = e.l AND v.in_escrow <> e.free;

    -- ATP per region and in total, for every sku touched or stocked where a region moved.
    SELECT array_agg(DISTINCT s ORDER BY s) INTO atp_skus
    FROM (SELECT unnest(place_skus)
          UNION ALL SELECT sku FROM view_atp_location
                    WHERE location = ANY(moved_locations)) AS x(s);
    atp_skus := coalesce(atp_skus, '{}');
    IF cardinality(atp_skus) > 0 THEN
        DELETE FROM view_atp_region WHERE sku = ANY(atp_skus);
        INSERT INTO view_atp_region (sku, region, available)
        SELECT v.sku, l.region, sum(v.available) FROM view_atp_location v
        JOIN view_locations l ON l.id = v.location WHERE v.sku = ANY(atp_skus) GROUP BY 1, 2;
        DELETE FROM view_atp WHERE sku = ANY(atp_skus);
        INSERT INTO view_atp (sku, available) SELECT sku, sum(available)
        FROM view_atp_location WHERE sku = ANY(atp_skus) GROUP BY 1;
    END IF;

    -- Products: each one's new state against the views' copy; a change replaces the copy and
    -- moves the facet counts and category sizes by the difference.
    WITH given AS (
        SELECT * FROM jsonb_to_recordset(batch->'products') AS g(
            sku text COLLATE "C", title text, category text, attributes jsonb, version bigint,
            partial boolean, deleted boolean)
    ), state AS (
        SELECT g.sku, g.deleted, s.title, s.category, s.attributes, s.version
        FROM given g LEFT JOIN LATERAL (
            SELECT g.title, g.category, g.attributes, g.version
            WHERE NOT g.deleted AND NOT g.partial
            UNION ALL
            SELECT p.title, p.category, p.attributes, p.version FROM products p
            WHERE g.partial AND p.sku = g.sku
        ) AS s ON true
    )
    SELECT array_agg(ROW(st.sku, st.title, st.category, st.attributes, st.version,
                         o.category, o.attributes)::view_product_change
                     ORDER BY st.sku COLLATE "C")
    INTO changes
    FROM state st LEFT JOIN view_products o ON o.sku = st.sku
    WHERE (st.version IS NULL AND st.deleted AND o.sku IS NOT NULL)
       OR (st.version IS NOT NULL AND (o.sku IS NULL OR o.version < st.version));
    changes := coalesce(changes, '{}');
    applied := applied + cardinality(changes);

    -- The difference, signed: -1 for every old state replaced, +1 for every new one.
    WITH signed AS (
        SELECT c.old_category AS category, c.old_attributes AS attributes, -1 AS sign
        FROM unnest(changes) AS c WHERE c.old_category IS NOT NULL
        UNION ALL
        SELECT c.category, c.attributes, 1 FROM unnest(changes) AS c WHERE c.version IS NOT NULL
    ), facets AS (
        INSERT INTO view_facets AS f (category, name, value, count)
        SELECT p.path, v.name, v.value, sum(x.sign)
        FROM signed x CROSS JOIN LATERAL view_category_paths(x.category) AS p(path)
        CROSS JOIN LATERAL view_facet_values(x.attributes) AS v
        GROUP BY 1, 2, 3 HAVING sum(x.sign) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (category, name, value) DO UPDATE SET count = f.count + EXCLUDED.count
        RETURNING f.category
    ), sizes AS (
        SELECT p.path, sum(x.sign)::bigint AS delta
        FROM signed x CROSS JOIN LATERAL view_category_paths(x.category) AS p(path) GROUP BY 1
    )
    SELECT (SELECT coalesce(array_agg(DISTINCT category), '{}') FROM facets),
           (SELECT coalesce(array_agg(path ORDER BY path), '{}') FROM sizes),
           (SELECT coalesce(array_agg(delta ORDER BY path), '{}') FROM sizes)
    INTO facet_paths, delta_paths, delta_sizes;
    DELETE FROM view_facets WHERE count = 0 AND category = ANY(facet_paths);

    changed_skus := ARRAY(SELECT c.sku FROM unnest(changes) AS c);
    DELETE FROM view_category_products WHERE sku = ANY(changed_skus);
    DELETE FROM view_products WHERE sku = ANY(changed_skus);
    INSERT INTO view_products (sku, title, category, attributes, version)
    SELECT c.sku, c.title, c.category, c.attributes, c.version
    FROM unnest(changes) AS c WHERE c.version IS NOT NULL;
    INSERT INTO view_category_products (category, sku, title, attributes, version, in_stock)
    SELECT p.path, c.sku, c.title, c.attributes, c.version, coalesce(a.available > 0, false)
    FROM unnest(changes) AS c CROSS JOIN LATERAL view_category_paths(c.category) AS p(path)
    LEFT JOIN view_atp a ON a.sku = c.sku WHERE c.version IS NOT NULL;

    -- Listings whose in_stock flipped with the ATP recomputed above.
    WITH flipped AS (
        UPDATE view_category_products c SET in_stock = x.in_stock
        FROM (SELECT s.sku, coalesce(a.available > 0, false) AS in_stock
              FROM unnest(atp_skus) AS s(sku) LEFT JOIN view_atp a ON a.sku = s.sku) AS x
        WHERE c.sku = x.sku AND c.in_stock <> x.in_stock
        RETURNING c.category
    )
    SELECT coalesce(array_agg(DISTINCT category), '{}') INTO stock_paths FROM flipped;

    -- Every changed category: its size moved and its counter bumped (the pages' ETag), in key
    -- order.
    INSERT INTO view_categories AS c (category, products, version)
    SELECT d.category, sum(d.delta), 1
    FROM (SELECT * FROM unnest(delta_paths, delta_sizes)
          UNION ALL SELECT unnest(stock_paths), 0) AS d(category, delta)
    GROUP BY 1 ORDER BY 1
    ON CONFLICT (category) DO UPDATE
    SET products = c.products + EXCLUDED.products, version = c.version + 1;

    SELECT coalesce(array_agg(DISTINCT x), '{}') INTO categories
    FROM unnest(delta_paths || stock_paths) AS x;
END
$$;
