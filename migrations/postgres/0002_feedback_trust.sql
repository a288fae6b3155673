-- Pointsman decision log on PostgreSQL, version 2: whether each feedback report was verified
-- (a replica of the fleet offered its model for its request id, and it is the first report on
-- that pair) and whether its model was offered. Training exports take verified reports only,
-- unless asked for all. Reports logged before this version count as unverified.
ALTER TABLE feedback
    ADD COLUMN verified boolean NOT NULL DEFAULT false,
    ADD COLUMN offered boolean NOT NULL DEFAULT false;
