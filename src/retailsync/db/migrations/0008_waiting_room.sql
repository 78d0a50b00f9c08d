-- The waiting room of named sale events (retailsync.traffic.waiting_room). Its state lives here
-- so that every worker sees one queue and a queue token outlives a worker restart.
--
-- Positions 1..issued were handed out, one per arriving session, in the order their arrivals
-- took the event's row lock; positions 1..admitted may come in. `admitted` moves forward at the
-- event's rate: `credit` is the fractional admissions earned at `advanced_at` and not yet used.
-- Every function below takes the row lock first, so one worker at a time moves the mark, and
-- each computes the mark from the elapsed time, so a worker that never ticks loses nothing.

-- The HMAC key of queue tokens and passes when RETAILSYNC_WAITING_ROOM_SECRET is not set:
-- created once by the first worker, then read by every worker and after every restart.
CREATE TABLE waiting_room_secret (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret      bytea NOT NULL CHECK (length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE waiting_room_events (
    event        text PRIMARY KEY CHECK (event ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    issued       bigint NOT NULL DEFAULT 0 CHECK (issued >= 0),
    admitted     bigint NOT NULL DEFAULT 0 CHECK (admitted >= 0 AND admitted <= issued),
    credit       double precision NOT NULL DEFAULT 0 CHECK (credit >= 0),
    advanced_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set by the stock check: none of the event's skus has a unit available.
    sold_out     boolean NOT NULL DEFAULT false,
    sold_out_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every session let in: directly on arrival, or by redeeming its queue token (the primary key
-- refuses a second redemption of one position: a replayed token). Also the measured outflow.
-- Rows are swept once no token naming their position can still be valid.
CREATE TABLE waiting_room_admissions (
    event        text NOT NULL REFERENCES waiting_room_events (event),
    position     bigint NOT NULL CHECK (position >= 1),
    direct       boolean NOT NULL,
    admitted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event, position)
);
CREATE INDEX waiting_room_admissions_recent ON waiting_room_admissions (event, admitted_at);

-- What each function answers. `outcome`: admitted | waiting | replayed | sold_out | state.
-- `credit` is as of the answer, so a worker can bound how far the mark can have moved since.
CREATE TYPE waiting_room_answer AS (
    outcome   text,
    position  bigint,
    issued    bigint,
    admitted  bigint,
    credit    double precision,
    sold_out  boolean,
    outflow   double precision
);

-- The row moved forward to `now_`: the earned admissions go to the positions waiting, in
-- order; an empty queue keeps at most `burst` of credit (the sessions let in at once).
CREATE FUNCTION waiting_room_advanced(
    r waiting_room_events, rate double precision, burst double precision, now_ timestamptz
) RETURNS waiting_room_events LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k bigint;
BEGIN
    r.credit := r.credit + rate * greatest(extract(epoch FROM now_ - r.advanced_at)::float8, 0);
    k := least(floor(r.credit)::bigint, r.issued - r.admitted);
    r.admitted := r.admitted + k;
    r.credit := r.credit - k;
    IF r.admitted = r.issued THEN
        r.credit := least(r.credit, burst);
    END IF;
    r.advanced_at := now_;
    RETURN r;
END
$$;

CREATE FUNCTION waiting_room_store(r waiting_room_events) RETURNS void LANGUAGE sql AS $$
    UPDATE waiting_room_events e
    SET issued = r.issued, admitted = r.admitted, credit = r.credit,
        advanced_at = r.advanced_at, sold_out = r.sold_out, sold_out_at = r.sold_out_at
    WHERE e.event = r.event
$$;

-- A new session: admitted at once when nobody waits and a credit is there, else queued.
CREATE FUNCTION waiting_room_arrive(
    p_event text, rate double precision, burst double precision
) RETURNS waiting_room_answer LANGUAGE plpgsql AS $$
DECLARE
    r waiting_room_events;
    pos bigint;
    outcome text := 'sold_out';
BEGIN
    SELECT * INTO STRICT r FROM waiting_room_events e WHERE e.event = p_event FOR UPDATE;
    r := waiting_room_advanced(r, rate, burst, clock_timestamp());
    IF NOT r.sold_out THEN
        r.issued := r.issued + 1;
        pos := r.issued;
        outcome := 'waiting';
        IF r.admitted = pos - 1 AND r.credit >= 1 THEN
            r.admitted := pos;
            r.credit := r.credit - 1;
            outcome := 'admitted';
            INSERT INTO waiting_room_admissions (event, position, direct)
            VALUES (p_event, pos, true);
        END IF;
    END IF;
    PERFORM waiting_room_store(r);
    RETURN ROW(outcome, pos, r.issued, r.admitted, r.credit, r.sold_out, NULL)::waiting_room_answer;
END
$$;

-- A queue token for `pos` comes back: let in once its position is reached, and only once.
CREATE FUNCTION waiting_room_redeem(
    p_event text, rate double precision, burst double precision, pos bigint
) RETURNS waiting_room_answer LANGUAGE plpgsql AS $$
DECLARE
    r waiting_room_events;
    outcome text := 'waiting';
BEGIN
    SELECT * INTO STRICT r FROM waiting_room_events e WHERE e.event = p_event FOR UPDATE;
    r := waiting_room_advanced(r, rate, burst, clock_timestamp());
    IF r.sold_out THEN
        outcome := 'sold_out';
    ELSIF pos <= r.admitted THEN
        INSERT INTO waiting_room_admissions (event, position, direct)
        VALUES (p_event, pos, false) ON CONFLICT DO NOTHING;
        outcome := CASE WHEN FOUND THEN 'admitted' ELSE 'replayed' END;
    END IF;
    PERFORM waiting_room_store(r);
    RETURN ROW(outcome, pos, r.issued, r.admitted, r.credit, r.sold_out, NULL)::waiting_room_answer;
END
$$;

-- The periodic look of each worker: move the mark, check the skus' stock, measure the outflow
-- (admissions a second over the last `window_s`). Whoever holds the row is moving it already:
-- then this only reads, and writes nothing when nothing changed.
CREATE FUNCTION waiting_room_tick(
    p_event text, rate double precision, burst double precision, skus text[],
    window_s double precision
) RETURNS waiting_room_answer LANGUAGE plpgsql AS $$
DECLARE
    r waiting_room_events;
    old waiting_room_events;
    now_ timestamptz := clock_timestamp();
    available bigint;
    recent bigint;
    span double precision;
BEGIN
    SELECT * INTO r FROM waiting_room_events e WHERE e.event = p_event FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        SELECT * INTO STRICT r FROM waiting_room_events e WHERE e.event = p_event;
        r := waiting_room_advanced(r, rate, burst, now_);
    ELSE
        old := r;
        r := waiting_room_advanced(r, rate, burst, now_);
        SELECT coalesce(sum(greatest(s.available, 0)), 0) INTO available
        FROM stock_levels s WHERE s.sku = ANY (skus);
        IF (available = 0) <> r.sold_out THEN
            r.sold_out := available = 0;
            r.sold_out_at := CASE WHEN r.sold_out THEN now_ END;
        END IF;
        IF r.admitted <> old.admitted OR r.sold_out <> old.sold_out THEN
            PERFORM waiting_room_store(r);
        END IF;
    END IF;
    SELECT count(*) INTO recent FROM waiting_room_admissions a
    WHERE a.event = p_event AND a.admitted_at > now_ - window_s * interval '1 second';
    span := least(window_s, greatest(extract(epoch FROM now_ - r.created_at)::float8, 0.001));
    RETURN ROW('state', NULL, r.issued, r.admitted, r.credit, r.sold_out, recent / span)
        ::waiting_room_answer;
END
$$;
