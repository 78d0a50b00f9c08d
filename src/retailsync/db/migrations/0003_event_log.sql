-- The change-data-capture event log (backend `postgres`, retailsync.eventlog.postgres): the
-- events in append order, the last event each capture source appended, consumer groups with
-- their in-flight deliveries, and the dead letters they gave up on.

-- `seq` is the offset. Appends take a transaction-level advisory lock, so offsets are handed
-- out and committed in one order: a reader that has seen offset N never finds N-1 later.
-- `body` is the event as JSON (retailsync.cdc.events.encode_event), readable from psql.
CREATE TABLE event_log (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    source       text NOT NULL,
    body         json NOT NULL,
    appended_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Kept apart from event_log so that trimming the log never makes the capture process forget
-- what it already appended (it asks at restart, and would otherwise append duplicates).
CREATE TABLE event_log_sources (
    source         text PRIMARY KEY,
    last_event_id  text NOT NULL,
    last_seq       bigint NOT NULL
);

-- `cursor`: the highest offset ever handed to the group; everything above it is undelivered.
-- What lies at or below it is done, except the offsets still in event_log_deliveries.
CREATE TABLE event_log_groups (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    cursor      bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Deliveries handed out and not yet acknowledged, each leased to one worker until
-- `lease_until`; an expired lease makes the event due again (redelivery).
CREATE TABLE event_log_deliveries (
    group_name   text NOT NULL REFERENCES event_log_groups (name) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    deliveries   integer NOT NULL CHECK (deliveries >= 1),
    lease_until  timestamptz NOT NULL,
    last_error   text,
    PRIMARY KEY (group_name, seq)
);
CREATE INDEX event_log_deliveries_lease ON event_log_deliveries (group_name, lease_until);

-- Events a group gave up on, with a copy of the event so trimming the log keeps it.
CREATE TABLE event_log_dead_letters (
    group_name  text NOT NULL REFERENCES event_log_groups (name) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    body        json NOT NULL,
    error       text NOT NULL,
    deliveries  integer NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (group_name, seq)
);
