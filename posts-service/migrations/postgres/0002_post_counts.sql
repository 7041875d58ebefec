-- How many posts there are, kept by a trigger in the same transaction as
-- every insert and delete, so that a page's `total_size` reads a row or
-- sixteen instead of counting every post. Rows with a positive key count one
-- author's posts; the overall count is the sum of the sixteen rows keyed -1
-- to -16, so concurrent writers update different rows instead of queueing
-- on one row's lock until each commits. Every writer locks its author's row
-- first and its overall row second, so they cannot deadlock.
CREATE TABLE post_counts (
    author_id BIGINT PRIMARY KEY,
    posts     BIGINT NOT NULL
);
INSERT INTO post_counts (author_id, posts)
    SELECT author_id, COUNT(*) FROM posts GROUP BY author_id;
INSERT INTO post_counts (author_id, posts)
    SELECT -(id % 16) - 1, COUNT(*) FROM posts GROUP BY -(id % 16) - 1;

CREATE FUNCTION count_posts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO post_counts (author_id, posts) VALUES (NEW.author_id, 1)
            ON CONFLICT (author_id) DO UPDATE SET posts = post_counts.posts + 1;
        INSERT INTO post_counts (author_id, posts) VALUES (-(NEW.id % 16) - 1, 1)
            ON CONFLICT (author_id) DO UPDATE SET posts = post_counts.posts + 1;
    ELSE
        UPDATE post_counts SET posts = posts - 1 WHERE author_id = OLD.author_id;
        UPDATE post_counts SET posts = posts - 1 WHERE author_id = -(OLD.id % 16) - 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER posts_counted AFTER INSERT OR DELETE ON posts
    FOR EACH ROW EXECUTE FUNCTION count_posts();
