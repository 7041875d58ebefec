-- Usernames are unique on their confusable skeleton (UTS #39, of the
-- lowercased name): names that differ only in case or look alike collide.
-- Rows from before this migration get theirs when the service starts.
ALTER TABLE users ADD COLUMN username_skeleton TEXT;
CREATE UNIQUE INDEX users_username_skeleton ON users (username_skeleton);
