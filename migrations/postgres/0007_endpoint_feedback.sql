-- Pointsman decision log on PostgreSQL, version 4: the endpoint of each feedback report (the
-- provider the attempt went to, when the report names it) and what it measured there: time to
-- first token and generation time, ms. Reports logged before this version have none.
ALTER TABLE feedback
    ADD COLUMN endpoint_provider text,
    ADD COLUMN endpoint_ttft_ms double precision,
    ADD COLUMN endpoint_generation_ms double precision;
