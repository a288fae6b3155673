-- Pointsman decision log on PostgreSQL, version 1: the same records as the SQLite log.
-- Every row has a UUIDv7 id made by the replica that logged it, so a batch written twice (a
-- commit whose answer was lost, then replayed from the spill file) lands once.
CREATE TABLE decisions (
    id uuid PRIMARY KEY,
    request_id text NOT NULL,
    ts_ms bigint NOT NULL,
    routing_text text,
    embedding bytea,
    encoder text NOT NULL,
    router_version text NOT NULL,
    cost_weight double precision NOT NULL,
    profile text,
    constraints jsonb NOT NULL,
    input_tokens integer NOT NULL,
    candidates jsonb NOT NULL
);
CREATE INDEX decisions_request ON decisions (request_id);
-- Retention deletes by age.
CREATE INDEX decisions_ts ON decisions (ts_ms);

CREATE TABLE feedback (
    id uuid PRIMARY KEY,
    request_id text NOT NULL,
    ts_ms bigint NOT NULL,
    model text NOT NULL,
    outcome text NOT NULL,
    latency_ms double precision,
    input_tokens integer,
    output_tokens integer,
    cost_usd double precision,
    quality double precision
);
CREATE INDEX feedback_request ON feedback (request_id);
CREATE INDEX feedback_ts ON feedback (ts_ms);
