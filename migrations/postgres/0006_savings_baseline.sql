-- Pointsman decision log on PostgreSQL, version 4 (savings): what each decision would have cost
-- on the baseline model (`[savings]`, the best single model by default) at the same predicted
-- tokens, the baseline's predicted quality and the predicted saving; and for each feedback
-- report, the realised cost (the reported cost, else the model's list price at the reported
-- tokens) and the baseline's list price at the same reported tokens. Rows logged before this
-- version keep NULL: no baseline was known then.
ALTER TABLE decisions
    ADD COLUMN baseline_model text,
    ADD COLUMN baseline_cost_usd double precision,
    ADD COLUMN baseline_quality double precision,
    ADD COLUMN baseline_saving_usd double precision;
ALTER TABLE feedback
    ADD COLUMN baseline_model text,
    ADD COLUMN baseline_cost_usd double precision,
    ADD COLUMN baseline_realised_cost_usd double precision;
