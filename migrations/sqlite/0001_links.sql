-- One row per linked @unikname: (issuer, subject) -> Matomo login, unique both ways.
CREATE TABLE IF NOT EXISTS links (
    id            TEXT PRIMARY KEY,
    issuer        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    matomo_login  TEXT NOT NULL COLLATE NOCASE,
    superuser     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    last_login_at INTEGER,
    UNIQUE (issuer, subject),
    UNIQUE (matomo_login)
);

-- Rate-limited attempts (link by password), counted per key in a sliding window.
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_key_at ON attempts (key, at);
