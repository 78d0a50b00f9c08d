-- Append and take as one call each (retailsync.eventlog.postgres): each was a transaction of
-- four to six statements, one round trip apiece, and a consumer on a busy event loop waited
-- out every one. The rules are those of that module's docstring.

-- Append a batch of encoded events (duplicates by event_id are dropped), move each source's
-- last event, and wake the consumers that LISTEN; the lock makes offsets commit in order.
CREATE FUNCTION event_log_append(
    event_ids text[], sources text[], bodies json[], lock_key bigint, channel text
) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    WITH inserted AS (
        INSERT INTO event_log (event_id, source, body)
        SELECT b.event_id, b.source, b.body
        FROM unnest(event_ids, sources, bodies) WITH ORDINALITY AS b(event_id, source, body, n)
        ORDER BY b.n
        ON CONFLICT (event_id) DO NOTHING
        RETURNING seq, event_id, source
    )
    INSERT INTO event_log_sources (source, last_event_id, last_seq)
    SELECT DISTINCT ON (source) source, event_id, seq FROM inserted ORDER BY source, seq DESC
    ON CONFLICT (source) DO UPDATE SET last_event_id = excluded.last_event_id,
                                       last_seq = excluded.last_seq;
    PERFORM pg_notify(channel, '');
END
$$;

-- Lease up to `max_batch` due events of a group: leases that expired on their last allowed
-- delivery go to the dead letters, then expired leases are handed out again, then new events
-- above the cursor. The group's row is locked for the call, so no two workers of the group
-- take the same event. With nothing due, one row of NULLs but `next_expiry`: the seconds
-- until the group's next lease runs out (NULL when it holds none).
CREATE FUNCTION event_log_take(
    consumer_group text, max_batch int, lease interval, max_deliveries int, timeout_error text
) RETURNS TABLE (seq bigint, deliveries int, body json, next_expiry float8)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    taken bigint;
    more bigint;
BEGIN
    PERFORM FROM event_log_groups WHERE name = consumer_group FOR UPDATE;

    WITH dead AS (
        DELETE FROM event_log_deliveries
        WHERE group_name = consumer_group AND lease_until <= clock_timestamp()
          AND deliveries >= max_deliveries
        RETURNING seq, deliveries, last_error
    )
    INSERT INTO event_log_dead_letters (group_name, seq, body, error, deliveries)
    SELECT consumer_group, dead.seq, e.body,
           timeout_error || COALESCE('; last error: ' || dead.last_error, ''), dead.deliveries
    FROM dead JOIN event_log e USING (seq);

    RETURN QUERY
    WITH due AS (
        UPDATE event_log_deliveries d
        SET deliveries = d.deliveries + 1, lease_until = clock_timestamp() + lease
        FROM (SELECT seq FROM event_log_deliveries
              WHERE group_name = consumer_group AND lease_until <= clock_timestamp()
              ORDER BY seq LIMIT max_batch) AS expired
        WHERE d.group_name = consumer_group AND d.seq = expired.seq
        RETURNING d.seq, d.deliveries
    )
    SELECT due.seq, due.deliveries, e.body, NULL::float8
    FROM due JOIN event_log e USING (seq) ORDER BY due.seq;
    GET DIAGNOSTICS taken = ROW_COUNT;

    IF taken < max_batch THEN
        RETURN QUERY
        WITH fresh AS (
            SELECT seq, body FROM event_log
            WHERE seq > (SELECT cursor FROM event_log_groups WHERE name = consumer_group)
            ORDER BY seq LIMIT max_batch - taken
        ), leased AS (
            INSERT INTO event_log_deliveries (group_name, seq, deliveries, lease_until)
            SELECT consumer_group, seq, 1, clock_timestamp() + lease FROM fresh
        ), moved AS (
            UPDATE event_log_groups SET cursor = (SELECT max(seq) FROM fresh)
            WHERE name = consumer_group AND EXISTS (SELECT 1 FROM fresh)
        )
        SELECT seq, 1, body, NULL::float8 FROM fresh ORDER BY seq;
        GET DIAGNOSTICS more = ROW_COUNT;
        taken := taken + more;
    END IF;

    IF taken = 0 THEN
        RETURN QUERY
        SELECT NULL::bigint, NULL::int, NULL::json,
               EXTRACT(epoch FROM min(lease_until) - clock_timestamp())::float8
        FROM event_log_deliveries WHERE group_name = consumer_group;
    END IF;
END
$$;
