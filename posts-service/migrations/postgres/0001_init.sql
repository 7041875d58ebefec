-- Posts, the replica of public author profiles and revocations fed by the
-- auth-service's user events, the event cursor and the last fetched keys.
-- Times are microseconds since the Unix epoch (UTC), as on SQLite.

CREATE TABLE authors (
    id         BIGINT PRIMARY KEY,
    username   TEXT   NOT NULL,
    avatar_url TEXT   NOT NULL DEFAULT ''
);

CREATE TABLE posts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id   BIGINT NOT NULL REFERENCES authors (id) ON DELETE CASCADE,
    title       TEXT   NOT NULL,
    content     TEXT   NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
-- Keyset pagination, newest first, overall and per author.
CREATE INDEX posts_newest ON posts (create_time DESC, id DESC);
CREATE INDEX posts_author_newest ON posts (author_id, create_time DESC, id DESC);

-- Sessions whose access tokens must be refused until `expire_time`.
CREATE TABLE revoked_sessions (
    session_id  TEXT   PRIMARY KEY,
    user_id     BIGINT NOT NULL,
    expire_time BIGINT NOT NULL
);

-- Deleted users: their tokens are refused, and no late write resurrects them.
CREATE TABLE deleted_users (
    user_id     BIGINT PRIMARY KEY,
    delete_time BIGINT NOT NULL
);

-- The last applied event of the auth-service's stream (one row).
CREATE TABLE event_cursor (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    sequence BIGINT  NOT NULL
);
INSERT INTO event_cursor (id, sequence) VALUES (1, 0);

-- The auth-service's public keys as last fetched (one row), so a restart
-- while it is down still verifies tokens.
CREATE TABLE auth_keys (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    jwks       TEXT    NOT NULL,
    fetch_time BIGINT  NOT NULL
);
