-- Users, sessions, refresh tokens, signing keys and the event outbox.
-- Times are microseconds since the Unix epoch (UTC), as on PostgreSQL.
-- AUTOINCREMENT: ids of deleted users and events are never reused.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL,
    -- Lowercased username: uniqueness regardless of case.
    username_key  TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    avatar_key    TEXT,
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL
);
CREATE UNIQUE INDEX users_username_key ON users (username_key);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE sessions (
    id          TEXT    PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time INTEGER NOT NULL,
    expire_time INTEGER NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash BLOB    PRIMARY KEY,
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    used       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid         TEXT    PRIMARY KEY,
    private_key BLOB    NOT NULL,
    public_key  BLOB    NOT NULL,
    create_time INTEGER NOT NULL
);

CREATE TABLE user_events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    time     INTEGER NOT NULL,
    payload  TEXT    NOT NULL
);
