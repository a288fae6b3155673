-- Pointsman decision log on PostgreSQL, version 3: rows the server refused for good (a value a
-- column or constraint does not accept), set aside so that the rest of their batch lands and
-- the log never stops on them. `record` is the row as JSON text (not jsonb, which refuses some
-- of what made the row fail, such as \u0000); `error` and `sqlstate` say why it was refused.
CREATE TABLE dead_letters (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    request_id text NOT NULL,
    ts_ms bigint NOT NULL,
    sqlstate text,
    error text NOT NULL,
    record text NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_request ON dead_letters (request_id);
-- Retention deletes by age, as for the other tables.
CREATE INDEX dead_letters_ts ON dead_letters (ts_ms);
