-- When each signing key starts signing: keys rotate by time (see keys.rs).
-- Existing keys were active from their creation.
ALTER TABLE signing_keys ADD COLUMN activate_time BIGINT NOT NULL DEFAULT 0;
UPDATE signing_keys SET activate_time = create_time;
