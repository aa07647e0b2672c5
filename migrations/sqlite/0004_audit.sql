-- The audit trail, read back by `unikgate audit list` and the superusers' page: every audit event
-- (sign-ins, links, refusals, admin actions), kept for `audit.retention`.
CREATE TABLE IF NOT EXISTS audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    event        TEXT NOT NULL,
    subject      TEXT,
    matomo_login TEXT,
    client_ip    TEXT,
    reason       TEXT,
    details      TEXT,
    actor        TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, at);
-- The address a session signed in from (the superusers' page shows it).
ALTER TABLE identity_sessions ADD COLUMN client_ip TEXT;
-- The superusers' page reads each link's sessions by subject.
CREATE INDEX IF NOT EXISTS identity_sessions_subject ON identity_sessions (subject);
