-- Behavioural events (views, clicks, searches): high volume, low value each, written back in
-- batches from each worker's buffer (see retailsync/clicks.py for the loss window).
CREATE TABLE click_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id   text NOT NULL CHECK (length(session_id) BETWEEN 1 AND 64),
    kind         text NOT NULL CHECK (kind IN ('view', 'click', 'add_to_cart', 'search')),
    sku          text CHECK (length(sku) BETWEEN 1 AND 64),
    at           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX click_events_at ON click_events (at);
