-- The system of record: catalog, prices, stock, reservations, carts, orders, customers, API keys.
-- Every mutable row has a monotonic `version` and `updated_at`, both maintained by `touch_row`
-- so no code path can forget them or move a version backwards.

CREATE FUNCTION touch_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

CREATE TABLE regions (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,31}$'),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE locations (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    region      text NOT NULL REFERENCES regions (id),
    kind        text NOT NULL CHECK (kind IN ('store', 'warehouse')),
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX locations_region ON locations (region);

CREATE TABLE products (
    sku         text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    category    text NOT NULL CHECK (length(category) BETWEEN 1 AND 200),
    attributes  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Category listing walks a subtree ('a/b' and 'a/b/...') in sku order.
CREATE INDEX products_category_sku ON products (category text_pattern_ops, sku);

CREATE TABLE prices (
    sku           text NOT NULL REFERENCES products (sku),
    region        text NOT NULL REFERENCES regions (id),
    currency      text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor  bigint NOT NULL CHECK (amount_minor >= 0),
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (sku, region, currency)
);

CREATE TABLE stock (
    sku         text NOT NULL REFERENCES products (sku),
    location    text NOT NULL REFERENCES locations (id),
    on_hand     bigint NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (sku, location),
    CONSTRAINT reserved_within_on_hand CHECK (reserved <= on_hand)
);
CREATE INDEX stock_location ON stock (location);

-- Every change to on_hand, with its reason: the audit trail the oversell check reads.
CREATE TABLE stock_movements (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL,
    location    text NOT NULL,
    delta       bigint NOT NULL CHECK (delta <> 0),
    reason      text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('receipt', 'adjustment', 'shipment')),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (sku, location) REFERENCES stock (sku, location)
);

CREATE TABLE customers (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE carts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  text NOT NULL REFERENCES customers (id),
    region       text NOT NULL REFERENCES regions (id),
    currency     text CHECK (currency ~ '^[A-Z]{3}$'),
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'checked_out')),
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE cart_lines (
    cart_id     uuid NOT NULL REFERENCES carts (id),
    sku         text NOT NULL REFERENCES products (sku),
    quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 999),
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (cart_id, sku)
);

CREATE TABLE order_statuses (
    status  text PRIMARY KEY
);
INSERT INTO order_statuses VALUES ('placed'), ('paid'), ('shipped'), ('delivered'), ('cancelled');

-- The order state machine as data; the trigger below refuses any other transition.
CREATE TABLE order_status_transitions (
    from_status  text NOT NULL REFERENCES order_statuses (status),
    to_status    text NOT NULL REFERENCES order_statuses (status),
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO order_status_transitions VALUES
    ('placed', 'paid'), ('placed', 'cancelled'),
    ('paid', 'shipped'), ('paid', 'cancelled'),
    ('shipped', 'delivered');

CREATE TABLE orders (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    cart_id      uuid NOT NULL UNIQUE REFERENCES carts (id),
    customer_id  text NOT NULL REFERENCES customers (id),
    region       text NOT NULL REFERENCES regions (id),
    channel      text NOT NULL,
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    total_minor  bigint NOT NULL CHECK (total_minor >= 0),
    status       text NOT NULL DEFAULT 'placed' REFERENCES order_statuses (status),
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX orders_status ON orders (status);

CREATE FUNCTION check_order_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM order_status_transitions
        WHERE from_status = OLD.status AND to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'order % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'order_status_transition';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_transition BEFORE UPDATE OF status ON orders
    FOR EACH ROW EXECUTE FUNCTION check_order_transition();

CREATE TABLE order_lines (
    order_id          uuid NOT NULL REFERENCES orders (id),
    sku               text NOT NULL REFERENCES products (sku),
    quantity          integer NOT NULL CHECK (quantity >= 1),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE order_status_history (
    order_id     uuid NOT NULL REFERENCES orders (id),
    seq          integer NOT NULL,
    from_status  text REFERENCES order_statuses (status),
    to_status    text NOT NULL REFERENCES order_statuses (status),
    channel      text NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (order_id, seq)
);

-- Stock held for an order line at one location. `held` counts in stock.reserved until it is
-- committed (part of an order), released (cancel, failure, expiry) or fulfilled (shipped).
CREATE TABLE reservations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sku         text NOT NULL,
    location    text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity >= 1),
    state       text NOT NULL CHECK (state IN ('held', 'committed', 'released', 'fulfilled')),
    order_id    uuid REFERENCES orders (id),
    expires_at  timestamptz,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (sku, location) REFERENCES stock (sku, location),
    CHECK (state <> 'committed' OR order_id IS NOT NULL),
    CHECK (state <> 'held' OR expires_at IS NOT NULL)
);
CREATE INDEX reservations_order ON reservations (order_id);
CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE state = 'held';

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key_hash    bytea NOT NULL UNIQUE,
    channel     text NOT NULL CHECK (channel IN ('web', 'mobile', 'pos', 'warehouse', 'admin')),
    label       text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    revoked_at  timestamptz,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- First answer to each Idempotency-Key, written in the same transaction as the effect itself.
CREATE TABLE idempotency_keys (
    api_key_id   uuid NOT NULL REFERENCES api_keys (id),
    key          text NOT NULL,
    fingerprint  bytea NOT NULL,
    status_code  smallint NOT NULL,
    body         bytea NOT NULL,
    etag         text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TRIGGER touch BEFORE UPDATE ON locations FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON products FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON prices FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON stock FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON carts FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON reservations FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER touch BEFORE UPDATE ON api_keys FOR EACH ROW EXECUTE FUNCTION touch_row();
