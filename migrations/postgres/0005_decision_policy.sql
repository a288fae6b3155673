-- The policy behind each decision (issue 23): the propensity of the primary's choice (1 for a
-- deterministic choice, below 1 under exploration) and the policy that chose it (head id,
-- exploration setting, the shadow head's choice) as JSON. Rows from before: deterministic.
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS propensity double precision NOT NULL DEFAULT 1;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS policy jsonb;
