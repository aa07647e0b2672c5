-- Which sessions belong to which @unikname, so that unlinking (on any replica, or with the CLI)
-- ends them all. Rows older than the absolute session lifetime are pruned.
CREATE TABLE IF NOT EXISTS identity_sessions (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject, session_id)
);
CREATE INDEX IF NOT EXISTS identity_sessions_created ON identity_sessions (created_at);
