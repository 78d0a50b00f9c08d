-- A cold cart's checkout in one call (retailsync.services.orders). As three calls (checkout_cart,
-- the hold, order_place) with the transaction's BEGIN and COMMIT it was five round trips, and
-- at ten times capacity each waited its turn on a worker's event loop behind thousands of
-- refusals; the hold's general batch statement and order_place's second look at the cart and
-- its prices were also most of PostgreSQL's share. checkout_cart and order_place keep their
-- contracts and now share their parts with checkout_place.

-- Lock an open cart for this transaction; its customer, region, currency and lines (skus and
-- quantities, in sku order). An empty cart is refused.
CREATE FUNCTION checkout_lock_cart(
    p_cart uuid, OUT customer_id text, OUT region text, OUT currency text, OUT skus text[],
    OUT quantities int[]
) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    cart_status text;
BEGIN
    SELECT c.customer_id, c.region, c.currency, c.status
    INTO customer_id, region, currency, cart_status
    FROM carts c WHERE c.id = p_cart FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RSNF0', MESSAGE = 'cart', DETAIL = p_cart::text;
    END IF;
    IF cart_status <> 'open' THEN
        RAISE EXCEPTION USING ERRCODE = 'RSCNO', MESSAGE = p_cart::text, DETAIL = cart_status;
    END IF;
    SELECT array_agg(l.sku ORDER BY l.sku), array_agg(l.quantity ORDER BY l.sku)
    INTO skus, quantities FROM cart_lines l WHERE l.cart_id = p_cart;
    IF skus IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'empty-cart',
            DETAIL = 'the cart has no lines';
    END IF;
END
$$;

-- What checkout_cart answers for a cart locked by checkout_lock_cart.
CREATE FUNCTION checkout_cart_document(
    p_customer text, p_region text, p_skus text[], p_quantities int[]
) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'customer_id', p_customer, 'region', p_region, 'skus', p_skus,
        'quantities', p_quantities, 'supply', checkout_supply(p_region, p_skus));
$$;

CREATE OR REPLACE FUNCTION checkout_cart(p_cart uuid) RETURNS jsonb
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    cart record;
BEGIN
    SELECT * INTO cart FROM checkout_lock_cart(p_cart);
    PERFORM order_prices(cart.region, cart.currency, cart.skus);
    RETURN checkout_cart_document(cart.customer_id, cart.region, cart.skus, cart.quantities);
END
$$;

-- Write an order (its lines at `p_unit_prices`, order_prices' answer, and its first status)
-- and answer its id. An order from a cart is its customer's, who exists already; one from a
-- hold alone may name a customer seen for the first time.
CREATE FUNCTION order_insert(
    p_cart uuid, p_hold uuid, p_customer text, p_region text, p_channel text,
    p_currency text, p_unit_prices jsonb, p_skus text[], p_quantities int[]
) RETURNS uuid LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    placed uuid;
BEGIN
    IF p_cart IS NULL THEN
        INSERT INTO customers (id) VALUES (p_customer) ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO orders (cart_id, hold_id, customer_id, region, channel, currency, total_minor)
    SELECT p_cart, p_hold, p_customer, p_region, p_channel, p_currency,
           sum((p_unit_prices ->> x.sku)::bigint * x.quantity)
    FROM unnest(p_skus, p_quantities) AS x(sku, quantity)
    RETURNING id INTO placed;
    INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor)
    SELECT placed, x.sku, x.quantity, (p_unit_prices ->> x.sku)::bigint
    FROM unnest(p_skus, p_quantities) AS x(sku, quantity);
    PERFORM order_record_status(placed, NULL, 'placed', p_channel);
    RETURN placed;
END
$$;

CREATE OR REPLACE FUNCTION order_place(
    p_hold uuid, p_channel text, p_cart uuid, p_currency text, p_owner text, p_anonymous text
) RETURNS jsonb LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    hold record;
    cart record;
    found_at timestamptz;
    hold_regions text[];
    skus text[];
    quantities int[];
    cart_skus text[];
    cart_quantities int[];
    wanted_currency text := p_currency;
    priced record;
    customer text;
    placed uuid;
BEGIN
    SELECT h.state, h.customer_id, h.order_id, h.key_scope, h.expires_at INTO hold
    FROM holds h WHERE h.id = p_hold FOR UPDATE;
    IF NOT FOUND OR hold.key_scope <> coalesce(p_owner, hold.key_scope) THEN
        RAISE EXCEPTION USING ERRCODE = 'RSNF0', MESSAGE = 'reservation', DETAIL = p_hold::text;
    END IF;
    IF hold.state = 'committed' AND p_cart IS NULL THEN
        RETURN order_document(hold.order_id);
    END IF;
    IF hold.state <> 'held' THEN
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'hold-' || hold.state,
            DETAIL = 'the hold is ' || hold.state;
    END IF;
    -- Read the clock once the row is ours: expiry, which takes the same lock, cannot pass now.
    found_at := clock_timestamp();
    IF hold.expires_at <= found_at THEN
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'hold-expired',
            DETAIL = 'the hold''s time ran out; its stock is being given back';
    END IF;
    SELECT array_agg(DISTINCT l.region ORDER BY l.region) INTO hold_regions
    FROM reservations r JOIN locations l ON l.id = r.location
    WHERE r.hold_id = p_hold AND r.state = 'held';
    IF coalesce(cardinality(hold_regions), 0) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'mixed-regions',
            DETAIL = format('an order is placed in one region; the hold spans (%s)',
                            array_to_string(hold_regions, ', '));
    END IF;
    SELECT array_agg(q.sku ORDER BY q.sku), array_agg(q.quantity ORDER BY q.sku)
    INTO skus, quantities
    FROM (SELECT r.sku, sum(r.quantity)::int AS quantity FROM reservations r
          WHERE r.hold_id = p_hold AND r.state = 'held' GROUP BY r.sku) q;
    customer := coalesce(hold.customer_id, p_anonymous);
    IF p_cart IS NOT NULL THEN
        SELECT c.customer_id, c.region, c.currency INTO cart FROM carts c WHERE c.id = p_cart;
        IF hold.customer_id <> cart.customer_id THEN
            -- Else a customer could check out another's hold past their own purchase limit.
            RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'hold-mismatch',
                DETAIL = 'the hold was taken for another customer';
        END IF;
        SELECT array_agg(l.sku ORDER BY l.sku), array_agg(l.quantity ORDER BY l.sku)
        INTO cart_skus, cart_quantities FROM cart_lines l WHERE l.cart_id = p_cart;
        IF cart.region <> hold_regions[1] OR cart_skus IS DISTINCT FROM skus
           OR cart_quantities IS DISTINCT FROM quantities THEN
            RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'hold-mismatch',
                DETAIL = 'the hold does not cover exactly the cart''s lines';
        END IF;
        wanted_currency := cart.currency;
        customer := cart.customer_id;
    END IF;
    SELECT * INTO priced FROM order_prices(hold_regions[1], wanted_currency, skus);
    placed := order_insert(p_cart, p_hold, customer, hold_regions[1], p_channel,
                           priced.currency, priced.unit_prices, skus, quantities);
    UPDATE reservations SET state = 'committed', order_id = placed
    WHERE hold_id = p_hold AND state = 'held';
    -- Ended when it was found unexpired, so the two can never disagree.
    UPDATE holds SET state = 'committed', order_id = placed, ended_at = found_at WHERE id = p_hold;
    IF p_cart IS NOT NULL THEN
        UPDATE carts SET status = 'checked_out', currency = priced.currency WHERE id = p_cart;
    END IF;
    RETURN order_document(placed);
END
$$;

-- Check a cart out whole, in the caller's transaction: lock it, hold its lines from the stock
-- rows of its region (fullest location first, as retailsync.services.allocation does) and
-- place its order, with the hold committed into it. Answers {"order": the order} or, leaving
-- the rest to the caller's slower way, {"cart": what checkout_cart answers, "locked": whether
-- stock rows are locked now}:
--   * before any stock row is locked, when a line's sku is in `p_engine_skus` (the skus the
--     reservation engine must hold now: hot, in escrow, or found low) or has a reservation
--     policy (a strategy, a purchase limit or a threshold of its own);
--   * after, when the rows alone do not cover a line (units may sit in escrow lanes, which
--     only the engine gives back).
-- The hold is written held and committed at once, under the checkout scope with a fresh key
-- (no request can repeat it), as inventory_hold_batch and order_place would have written it.
CREATE FUNCTION checkout_place(
    p_cart uuid, p_channel text, p_engine_skus text[], p_scope text, p_ttl_ms integer,
    p_strategy text
) RETURNS jsonb LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    cart record;
    priced record;
    row_skus text[];
    row_locations text[];
    row_free bigint[];
    take_skus text[];
    take_locations text[];
    take_quantities int[];
    hold uuid := gen_random_uuid();
    hold_key text := gen_random_uuid()::text;
    found_at timestamptz;
    placed uuid;
    i integer;
BEGIN
    SELECT * INTO cart FROM checkout_lock_cart(p_cart);
    SELECT * INTO priced FROM order_prices(cart.region, cart.currency, cart.skus);
    IF cart.skus && p_engine_skus
       OR EXISTS (SELECT FROM reservation_policies p WHERE p.sku = ANY (cart.skus)) THEN
        RETURN jsonb_build_object('locked', false, 'cart', checkout_cart_document(
            cart.customer_id, cart.region, cart.skus, cart.quantities));
    END IF;
    -- The region's rows with units free, locked in (sku, location) order, the order every
    -- writer of stock rows uses. Each row is a LATERAL probe with LIMIT 1, so it is found by
    -- its key whatever plan this function's cached statement settles on (as in 0005).
    SELECT array_agg(x.sku), array_agg(x.location), array_agg(t.free)
    INTO row_skus, row_locations, row_free
    FROM (SELECT s.sku, l.id AS location
          FROM unnest(cart.skus) AS s(sku) CROSS JOIN locations l
          WHERE l.region = cart.region ORDER BY s.sku, l.id OFFSET 0) AS x
    CROSS JOIN LATERAL (
        SELECT t.on_hand - t.reserved AS free FROM stock t
        WHERE t.sku = x.sku AND t.location = x.location AND t.on_hand > t.reserved
        LIMIT 1 FOR NO KEY UPDATE
    ) AS t;
    IF EXISTS (
        SELECT FROM unnest(cart.skus, cart.quantities) AS w(sku, quantity)
        WHERE w.quantity > (SELECT coalesce(sum(u.free), 0)
                            FROM unnest(row_skus, row_free) AS u(sku, free) WHERE u.sku = w.sku)
    ) THEN
        RETURN jsonb_build_object('locked', true, 'cart', checkout_cart_document(
            cart.customer_id, cart.region, cart.skus, cart.quantities));
    END IF;
    -- Each line from its fullest locations: a location is used while the fuller ones before
    -- it leave some of the line uncovered. Ties go by location in code point order, as in
    -- Python's allocate.
    SELECT array_agg(a.sku ORDER BY a.sku, a.location),
           array_agg(a.location ORDER BY a.sku, a.location),
           array_agg(a.take ORDER BY a.sku, a.location)
    INTO take_skus, take_locations, take_quantities
    FROM (SELECT r.sku, r.location, least(r.free, w.quantity - r.before)::int AS take
          FROM (SELECT u.sku, u.location, u.free,
                       coalesce(sum(u.free) OVER (
                           PARTITION BY u.sku ORDER BY u.free DESC, u.location COLLATE "C"
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                FROM unnest(row_skus, row_locations, row_free) AS u(sku, location, free)) r
          JOIN unnest(cart.skus, cart.quantities) AS w(sku, quantity) ON w.sku = r.sku
          WHERE r.before < w.quantity) a;

    found_at := clock_timestamp();
    INSERT INTO holds (id, key_scope, idempotency_key, fingerprint, customer_id, state,
                       strategy, expires_at, created_at)
    VALUES (hold, p_scope, hold_key, sha256(convert_to(hold_key, 'UTF8')), cart.customer_id,
            'held', p_strategy, found_at + p_ttl_ms * interval '1 millisecond', found_at);
    placed := order_insert(p_cart, hold, cart.customer_id, cart.region, p_channel,
                           priced.currency, priced.unit_prices, cart.skus, cart.quantities);
    INSERT INTO reservations (hold_id, sku, location, quantity, state, counted, order_id)
    SELECT hold, x.sku, x.location, x.quantity, 'committed', false, placed
    FROM unnest(take_skus, take_locations, take_quantities) AS x(sku, location, quantity);
    -- One statement per row, by its key: a join with the arrays may be planned as a scan.
    FOR i IN 1..cardinality(take_skus) LOOP
        UPDATE stock SET reserved = reserved + take_quantities[i]
        WHERE sku = take_skus[i] AND location = take_locations[i];
    END LOOP;
    UPDATE holds SET state = 'committed', order_id = placed, ended_at = found_at WHERE id = hold;
    UPDATE carts SET status = 'checked_out', currency = priced.currency WHERE id = p_cart;
    RETURN jsonb_build_object('order', order_document(placed));
END
$$;
