-- The post counters of 0002, kept once per statement instead of once per
-- row, so that many new posts can be written by one INSERT.
--
-- Each statement adds up what its rows change per counter row and updates
-- those rows in key order (the overall rows, keyed negative, first; then the
-- authors'). Every statement takes its counter locks in the same order, so a
-- statement writing posts by many authors cannot deadlock against another
-- writing or deleting posts, as two statements locking the same rows in
-- opposite orders could.
DROP TRIGGER posts_counted ON posts;
DROP FUNCTION count_posts();

CREATE FUNCTION count_new_posts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO post_counts (author_id, posts)
        SELECT key, n FROM (
            SELECT author_id AS key, COUNT(*) AS n FROM new_posts GROUP BY author_id
            UNION ALL
            SELECT -(id % 16) - 1, COUNT(*) FROM new_posts GROUP BY -(id % 16) - 1
        ) AS changed
        ORDER BY key
        ON CONFLICT (author_id) DO UPDATE SET posts = post_counts.posts + excluded.posts;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_old_posts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Locked in key order first, then changed.
    PERFORM 1 FROM post_counts
        WHERE author_id IN (SELECT author_id FROM old_posts)
           OR author_id IN (SELECT -(id % 16) - 1 FROM old_posts)
        ORDER BY author_id
        FOR UPDATE;
    UPDATE post_counts SET posts = post_counts.posts - changed.n
        FROM (
            SELECT author_id AS key, COUNT(*) AS n FROM old_posts GROUP BY author_id
            UNION ALL
            SELECT -(id % 16) - 1, COUNT(*) FROM old_posts GROUP BY -(id % 16) - 1
        ) AS changed
        WHERE post_counts.author_id = changed.key;
    RETURN NULL;
END
$$;

CREATE TRIGGER posts_counted_in AFTER INSERT ON posts
    REFERENCING NEW TABLE AS new_posts
    FOR EACH STATEMENT EXECUTE FUNCTION count_new_posts();

CREATE TRIGGER posts_counted_out AFTER DELETE ON posts
    REFERENCING OLD TABLE AS old_posts
    FOR EACH STATEMENT EXECUTE FUNCTION count_old_posts();
