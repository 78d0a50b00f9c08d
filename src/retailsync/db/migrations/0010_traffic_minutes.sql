-- Requests per minute per criticality class, written by every worker's TrafficRecorder
-- (retailsync.traffic.recorder) and read by `retailsync capacity forecast`.
--
-- Workers add their counts for the same minute with INSERT .. ON CONFLICT DO UPDATE, so a
-- row is the sum over workers. `requests` counts every request offered to the service,
-- admitted or not (capacity is planned for demand, not for what was served); `shed` is the
-- part of it that admission refused.
CREATE TABLE traffic_minutes (
    minute    timestamptz NOT NULL,
    class     text NOT NULL CHECK (class <> ''),
    requests  bigint NOT NULL CHECK (requests >= 0),
    shed      bigint NOT NULL CHECK (shed >= 0 AND shed <= requests),
    PRIMARY KEY (minute, class)
);
