-- Back-channel logout: the provider's session id (`sid` of the ID token) and the ID token's
-- `sub` of each indexed session, so that a logout token naming either ends exactly those
-- sessions; and the `jti` of every logout token accepted, so that none is used twice (replicas
-- share this table). Rows older than a logout token can be are pruned.
ALTER TABLE identity_sessions ADD COLUMN sid TEXT;
ALTER TABLE identity_sessions ADD COLUMN id_sub TEXT;
CREATE INDEX IF NOT EXISTS identity_sessions_sid ON identity_sessions (issuer, sid);
CREATE TABLE IF NOT EXISTS logout_tokens (
    issuer  TEXT NOT NULL,
    jti     TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
);
