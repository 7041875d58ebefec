-- Users, sessions, refresh tokens, signing keys and the event outbox.
-- Times are microseconds since the Unix epoch (UTC), as on SQLite, so that
-- both backends order and compare them identically.

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT   NOT NULL,
    -- Lowercased username: uniqueness regardless of case.
    username_key  TEXT   NOT NULL,
    email         TEXT   NOT NULL,
    password_hash TEXT   NOT NULL,
    avatar_key    TEXT,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_username_key ON users (username_key);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE sessions (
    id          TEXT   PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Every refresh token a session has had, as SHA-256; used ones stay so that
-- presenting one again is recognised as reuse.
CREATE TABLE refresh_tokens (
    token_hash BYTEA   PRIMARY KEY,
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    used       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid         TEXT   PRIMARY KEY,
    private_key BYTEA  NOT NULL,
    public_key  BYTEA  NOT NULL,
    create_time BIGINT NOT NULL
);

CREATE TABLE user_events (
    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time     BIGINT NOT NULL,
    payload  TEXT   NOT NULL
);
