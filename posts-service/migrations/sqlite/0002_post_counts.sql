-- How many posts there are, kept by triggers in the same transaction as
-- every insert and delete, so that a page's `total_size` reads a row or
-- sixteen instead of counting every post. Rows with a positive key count one
-- author's posts; the overall count is the sum of the sixteen rows keyed -1
-- to -16 (on PostgreSQL one row would serialise every writer on its lock;
-- the same layout here keeps the queries the same).
CREATE TABLE post_counts (
    author_id BIGINT PRIMARY KEY,
    posts     BIGINT NOT NULL
);
INSERT INTO post_counts (author_id, posts)
    SELECT author_id, COUNT(*) FROM posts GROUP BY author_id;
INSERT INTO post_counts (author_id, posts)
    SELECT -(id % 16) - 1, COUNT(*) FROM posts GROUP BY -(id % 16) - 1;

CREATE TRIGGER posts_counted_in AFTER INSERT ON posts BEGIN
    INSERT INTO post_counts (author_id, posts) VALUES (NEW.author_id, 1)
        ON CONFLICT (author_id) DO UPDATE SET posts = posts + 1;
    INSERT INTO post_counts (author_id, posts) VALUES (-(NEW.id % 16) - 1, 1)
        ON CONFLICT (author_id) DO UPDATE SET posts = posts + 1;
END;

CREATE TRIGGER posts_counted_out AFTER DELETE ON posts BEGIN
    UPDATE post_counts SET posts = posts - 1 WHERE author_id = OLD.author_id;
    UPDATE post_counts SET posts = posts - 1 WHERE author_id = -(OLD.id % 16) - 1;
END;
