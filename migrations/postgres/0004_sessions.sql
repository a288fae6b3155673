-- Pointsman decision log on PostgreSQL, version 4: each decision's session, when its request
-- named one: the session's hash (32 hex digits of SHA-256 over the id, or the user and
-- conversation, as given; never the id itself), what the session did ("new", "kept", "moved")
-- and why (session::Reason). NULL for requests without a session and for older decisions.
ALTER TABLE decisions
    ADD COLUMN session_id text,
    ADD COLUMN session_verdict text,
    ADD COLUMN session_reason text;
CREATE INDEX decisions_session ON decisions (session_id) WHERE session_id IS NOT NULL;
