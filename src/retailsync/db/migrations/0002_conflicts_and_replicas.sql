-- Conflict resolution: replicated CRDT objects, the conflict ledger, and stock allotted to
-- offline replicas (POS terminals).

-- Replicas that sync (POS terminals, apps, regions), each bound to the API key that first
-- synced it, so one terminal cannot write as another.
CREATE TABLE sync_replicas (
    replica     text PRIMARY KEY CHECK (replica ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    key_id      uuid NOT NULL REFERENCES api_keys (id),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The server's replica of every CRDT object channels synchronise (carts, allotments, ...).
-- source_version: the version of the system-of-record row the state last agreed with, so a
-- change made through the plain API since then is merged in as a write of its own.
CREATE TABLE crdt_objects (
    key             text PRIMARY KEY CHECK (length(key) BETWEEN 3 AND 200),
    policy          text NOT NULL,
    state           bytea NOT NULL,
    source_version  bigint,
    version         bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TRIGGER touch BEFORE UPDATE ON crdt_objects FOR EACH ROW EXECUTE FUNCTION touch_row();

-- Every conflict a merge policy resolved or could not resolve, with every version involved.
CREATE TABLE conflicts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity       text NOT NULL,
    entity_key   text NOT NULL,
    field        text NOT NULL,
    policy       text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('lww-loser', 'concurrent-values', 'refused-decrement')),
    tier         text NOT NULL CHECK (tier IN ('automatic', 'reconciliation', 'manual')),
    status       text NOT NULL CHECK (status IN ('resolved', 'queued', 'manual')),
    versions     jsonb NOT NULL CHECK (jsonb_typeof(versions) = 'array'),
    decision     jsonb,
    -- The same conflict met twice (a replica re-sending a losing write) is recorded once.
    fingerprint  text NOT NULL UNIQUE,
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at  timestamptz,
    CHECK ((status = 'resolved') = (decision IS NOT NULL AND resolved_at IS NOT NULL))
);
CREATE INDEX conflicts_open ON conflicts (status, id) WHERE status <> 'resolved';
CREATE INDEX conflicts_entity ON conflicts (entity, entity_key);
CREATE TRIGGER touch BEFORE UPDATE ON conflicts FOR EACH ROW EXECUTE FUNCTION touch_row();

-- Stock allotted to an offline replica: reserved here, sold there without a round trip.
ALTER TABLE reservations ADD COLUMN replica text;
ALTER TABLE reservations DROP CONSTRAINT reservations_state_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_state_check
    CHECK (state IN ('held', 'committed', 'released', 'fulfilled', 'allotted'));
ALTER TABLE reservations ADD CONSTRAINT reservations_allotted_replica
    CHECK (state <> 'allotted' OR replica IS NOT NULL);
CREATE UNIQUE INDEX reservations_one_allotment
    ON reservations (replica, sku, location) WHERE state = 'allotted';
