-- Checkout as two calls (retailsync.services.orders): it was about twenty statements, one round
-- trip apiece, and under load a worker's event loop made each of them wait; its driver's work
-- per statement was also most of a checkout's CPU. The rules are that module's docstring.
--
-- A refusal is raised with one of our SQLSTATEs; its message and detail are the two arguments
-- of the Python error it stands for (retailsync.services.sql_refusals):
--   RSNF0  NotFound(kind, key)   RSREF  Refused(reason, detail)   RSCNO  CartNotOpen(cart, status)

-- An order as the API shows it (retailsync.models.Order), or NULL.
CREATE FUNCTION order_document(p_order uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'id', o.id, 'cart_id', o.cart_id, 'hold_id', o.hold_id,
            'customer_id', o.customer_id, 'region', o.region, 'channel', o.channel,
            'currency', o.currency, 'status', o.status, 'total_minor', o.total_minor,
            'version', o.version, 'created_at', o.created_at, 'updated_at', o.updated_at,
            'lines', COALESCE((
                SELECT jsonb_agg(jsonb_build_object(
                    'sku', l.sku, 'quantity', l.quantity, 'unit_price_minor', l.unit_price_minor,
                    'line_total_minor', l.quantity * l.unit_price_minor) ORDER BY l.sku)
                FROM order_lines l WHERE l.order_id = o.id), '[]'),
            'history', COALESCE((
                SELECT jsonb_agg(jsonb_build_object(
                    'from_status', h.from_status, 'to_status', h.to_status,
                    'channel', h.channel, 'at', h.at) ORDER BY h.seq)
                FROM order_status_history h WHERE h.order_id = o.id), '[]'))
        FROM orders o WHERE o.id = p_order);
END
$$;

CREATE FUNCTION order_record_status(p_order uuid, p_from text, p_to text, p_channel text)
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    INSERT INTO order_status_history (order_id, seq, from_status, to_status, channel)
    SELECT p_order, coalesce(max(seq), 0) + 1, p_from, p_to, p_channel
    FROM order_status_history WHERE order_id = p_order;
END
$$;

-- The order's currency and each sku's unit price (an object sku -> amount) in a region:
-- `p_currency` when given, in which every sku must be priced, else the one currency every sku
-- is priced in. `p_skus` are distinct.
CREATE FUNCTION order_prices(
    p_region text, p_currency text, p_skus text[], OUT currency text, OUT unit_prices jsonb
) LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    complete text[];
    missing text[];
BEGIN
    SELECT array_agg(c.currency ORDER BY c.currency) INTO complete
    FROM (SELECT p.currency FROM prices p
          WHERE p.region = p_region AND p.sku = ANY (p_skus)
            AND (p_currency IS NULL OR p.currency = p_currency)
          GROUP BY p.currency HAVING count(*) = cardinality(p_skus)) c;
    IF complete IS NULL THEN
        SELECT array_agg(s ORDER BY s) INTO missing FROM unnest(p_skus) s
        WHERE NOT EXISTS (SELECT FROM prices p WHERE p.region = p_region AND p.sku = s
                          AND (p_currency IS NULL OR p.currency = p_currency));
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'unpriced',
            DETAIL = format('no price in the cart''s region and currency for: %s',
                            array_to_string(coalesce(missing, p_skus), ', '));
    END IF;
    IF cardinality(complete) > 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'ambiguous-currency',
            DETAIL = format('lines are priced in several currencies (%s); create the cart '
                            'with a currency', array_to_string(complete, ', '));
    END IF;
    currency := complete[1];
    SELECT jsonb_object_agg(p.sku, p.amount_minor) INTO unit_prices FROM prices p
    WHERE p.region = p_region AND p.sku = ANY (p_skus) AND p.currency = complete[1];
END
$$;

-- Stock a checkout may allocate from: each sku's available units at the region's locations,
-- as [sku, location, available] in (sku, location) order.
CREATE FUNCTION checkout_supply(p_region text, p_skus text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN (
        SELECT coalesce(jsonb_agg(jsonb_build_array(s.sku, s.location, s.available)
                                  ORDER BY s.sku, s.location), '[]')
        FROM stock_levels s JOIN locations l ON l.id = s.location
        WHERE l.region = p_region AND s.sku = ANY (p_skus));
END
$$;

-- Lock an open cart for this transaction and answer what its checkout needs: its customer,
-- region, lines (skus and quantities, in sku order) and the region's supply of them. An
-- empty or unpriced cart is refused here, before anything is held.
CREATE FUNCTION checkout_cart(p_cart uuid) RETURNS jsonb
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    cart record;
    skus text[];
    quantities int[];
BEGIN
    SELECT c.customer_id, c.region, c.currency, c.status INTO cart
    FROM carts c WHERE c.id = p_cart FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RSNF0', MESSAGE = 'cart', DETAIL = p_cart::text;
    END IF;
    IF cart.status <> 'open' THEN
        RAISE EXCEPTION USING ERRCODE = 'RSCNO', MESSAGE = p_cart::text, DETAIL = cart.status;
    END IF;
    SELECT array_agg(l.sku ORDER BY l.sku), array_agg(l.quantity ORDER BY l.sku)
    INTO skus, quantities FROM cart_lines l WHERE l.cart_id = p_cart;
    IF skus IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RSREF', MESSAGE = 'empty-cart',
            DETAIL = 'the cart has no lines';
    END IF;
    PERFORM order_prices(cart.region, cart.currency, skus);
    RETURN jsonb_build_object(
        'customer_id', cart.customer_id, 'region', cart.region,
        'skus', skus, 'quantities', quantities, 'supply', checkout_supply(cart.region, skus));
END
$$;

-- Commit a hold into an order, in the caller's transaction, and answer the order. With
-- `p_cart` (locked by checkout_cart), the hold must cover exactly the cart's lines in its
-- region, and the cart is closed; without, a hold already committed answers its order again.
-- `p_owner`: the API key scope the hold must have been taken under (NULL: any). `p_anonymous`:
-- the customer of an order from a hold that names none.
CREATE FUNCTION order_place(
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

    INSERT INTO customers (id) VALUES (customer) ON CONFLICT DO NOTHING;
    INSERT INTO orders (cart_id, hold_id, customer_id, region, channel, currency, total_minor)
    SELECT p_cart, p_hold, customer, hold_regions[1], p_channel, priced.currency,
           sum((priced.unit_prices ->> x.sku)::bigint * x.quantity)
    FROM unnest(skus, quantities) AS x(sku, quantity)
    RETURNING id INTO placed;
    INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor)
    SELECT placed, x.sku, x.quantity, (priced.unit_prices ->> x.sku)::bigint
    FROM unnest(skus, quantities) AS x(sku, quantity);
    UPDATE reservations SET state = 'committed', order_id = placed
    WHERE hold_id = p_hold AND state = 'held';
    -- Ended when it was found unexpired, so the two can never disagree.
    UPDATE holds SET state = 'committed', order_id = placed, ended_at = found_at WHERE id = p_hold;
    PERFORM order_record_status(placed, NULL, 'placed', p_channel);
    IF p_cart IS NOT NULL THEN
        UPDATE carts SET status = 'checked_out', currency = priced.currency WHERE id = p_cart;
    END IF;
    RETURN order_document(placed);
END
$$;
