-- Feature flags (retailsync.traffic.flags): a kill switch and a percentage rollout each.
-- Every worker holds all flags in memory and evaluates them there; this table is the truth
-- it reloads from. Any change to it, by the admin API or by hand in psql, ends in a NOTIFY on
-- `retailsync_flags` (sent at commit), so every worker reloads within milliseconds; the
-- workers' periodic reload covers a lost LISTEN connection.

CREATE TABLE feature_flags (
    name             text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9._-]{0,63}$'),
    -- The kill switch: false turns the flag off for everyone, whatever the percentage.
    enabled          boolean NOT NULL,
    -- Share of customers it is on for, in hundredths of a percent (a bucket of 10,000).
    rollout_percent  numeric(5, 2) NOT NULL CHECK (rollout_percent BETWEEN 0 AND 100),
    description      text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    version          bigint NOT NULL DEFAULT 1,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TRIGGER touch BEFORE UPDATE ON feature_flags FOR EACH ROW EXECUTE FUNCTION touch_row();

-- One notification per statement (the payload is empty: a worker reloads every flag, which
-- are few). NOTIFY is delivered at commit and folded with identical ones in a transaction.
CREATE FUNCTION notify_feature_flags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('retailsync_flags', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON feature_flags
    FOR EACH STATEMENT EXECUTE FUNCTION notify_feature_flags();
