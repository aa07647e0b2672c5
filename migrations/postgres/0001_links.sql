-- One row per linked @unikname: (issuer, subject) -> Matomo login, unique both ways (logins
-- compared without case, as Matomo does).
CREATE TABLE IF NOT EXISTS links (
    id            TEXT PRIMARY KEY,
    issuer        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    matomo_login  TEXT NOT NULL,
    superuser     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    last_login_at BIGINT,
    UNIQUE (issuer, subject)
);
CREATE UNIQUE INDEX IF NOT EXISTS links_matomo_login ON links (lower(matomo_login));

-- Rate-limited attempts, shared by every replica.
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_key_at ON attempts (key, at);
