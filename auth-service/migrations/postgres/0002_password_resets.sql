-- Password-reset tokens, as SHA-256 only; at most one live per user (a new
-- request replaces the old), each usable once.
CREATE TABLE password_resets (
    token_hash  BYTEA  PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL
);
CREATE INDEX password_resets_user_id ON password_resets (user_id);
