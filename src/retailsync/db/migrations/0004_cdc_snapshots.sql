-- Progress of table snapshots taken by change data capture (retailsync.cdc.snapshot): one row
-- per source and table, the key the last durable chunk ended at, so a snapshot resumes after
-- a crash where it stopped.
CREATE TABLE cdc_snapshots (
    source        text NOT NULL,
    table_name    text NOT NULL,
    last_key      jsonb,
    rows_emitted  bigint NOT NULL DEFAULT 0,
    done          boolean NOT NULL DEFAULT false,
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source, table_name)
);
CREATE TRIGGER touch BEFORE UPDATE ON cdc_snapshots FOR EACH ROW EXECUTE FUNCTION touch_row();
