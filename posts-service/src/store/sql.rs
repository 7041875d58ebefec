//! The [`Store`](super::Store) implementation both backends share: PostgreSQL
//! and SQLite agree on every statement here (`$n` parameters, row-value
//! comparison, `ON CONFLICT`), so the SQL is written once.

/// Selects [`PostRecord`](super::PostRecord)s: append a `WHERE`.
macro_rules! select_posts {
    () => {
        "SELECT p.id, p.title, p.content, p.create_time, p.update_time, p.author_id, \
         a.username AS author_username, a.avatar_url AS author_avatar_url \
         FROM posts p JOIN authors a ON a.id = p.author_id "
    };
}
pub(super) use select_posts;

/// A `RETURNING` clause giving a written post as a
/// [`PostRecord`](super::PostRecord), author included: one round trip
/// writes the row and reads it back.
macro_rules! returning_post {
    () => {
        " RETURNING id, title, content, create_time, update_time, author_id, \
         (SELECT a.username FROM authors a WHERE a.id = posts.author_id) AS author_username, \
         (SELECT a.avatar_url FROM authors a WHERE a.id = posts.author_id) AS author_avatar_url"
    };
}
pub(super) use returning_post;

/// Implements [`Store`](super::Store) for `$store`, a struct with a `pool:
/// Pool<$db>` field for reads, an inherent `writer()` giving the pool for
/// single-statement writes, and an inherent `begin_write` for transactions.
macro_rules! sql_store {
    ($store:ident, $db:ty) => {
        impl $store {
            /// After a guarded write touched nothing: why not? (Asked after
            /// the write: if the post changes hands or goes in between, the
            /// answer is still one some order of the two calls gives.)
            async fn refusal(&self, id: i64, action: &'static str) -> $crate::error::Error {
                let owner: Result<Option<i64>, sqlx::Error> =
                    sqlx::query_scalar("SELECT author_id FROM posts WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await;
                match owner {
                    Ok(None) => $crate::error::Error::PostNotFound,
                    Ok(Some(_)) => $crate::error::Error::NotAuthor(action),
                    Err(e) => e.into(),
                }
            }

            /// Inserts a post by an author who must exist and must not have
            /// been deleted; `None` if they have been. The statement checks
            /// for a deletion that committed first; one committing later
            /// waits on the author row this insert holds, then cascades.
            async fn insert_post<'e, E: sqlx::Executor<'e, Database = $db>>(
                executor: E,
                author_id: i64,
                title: &$crate::domain::Title,
                content: &$crate::domain::Content,
            ) -> Result<Option<$crate::store::PostRecord>, sqlx::Error> {
                sqlx::query_as(concat!(
                    "INSERT INTO posts (author_id, title, content, create_time, update_time) \
                     SELECT $1, $2, $3, $4, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE user_id = $1)",
                    $crate::store::sql::returning_post!()
                ))
                .bind(author_id)
                .bind(title.as_str())
                .bind(content.as_str())
                .bind($crate::store::now_micros())
                .fetch_optional(executor)
                .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn ping(&self) -> $crate::error::Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn pool_status(&self) -> shared::db::PoolStatus {
                shared::db::PoolStatus::of(&self.pool)
            }

            async fn create_post(
                &self,
                caller: $crate::store::Caller<'_>,
                title: &$crate::domain::Title,
                content: &$crate::domain::Content,
            ) -> $crate::error::Result<$crate::store::PostRecord> {
                let is_unknown_author =
                    |e: &sqlx::Error| e.as_database_error().is_some_and(|d| d.is_foreign_key_violation());
                // Nearly always the author is known: one statement, one round
                // trip, committed on its own.
                match Self::insert_post(self.writer(), caller.id, title, content).await {
                    Ok(Some(post)) => return Ok(post),
                    Ok(None) => return Err($crate::error::Error::InvalidToken),
                    Err(e) if is_unknown_author(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                // The profile event has not arrived yet: the token's name
                // stands in until it does. A deleted user is never recreated.
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO authors (id, username, avatar_url) \
                     SELECT $1, $2, '' WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE user_id = $1) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(caller.id)
                .bind(caller.username)
                .execute(&mut *tx)
                .await?;
                let post = match Self::insert_post(&mut *tx, caller.id, title, content).await {
                    Ok(Some(post)) => post,
                    Ok(None) => return Err($crate::error::Error::InvalidToken),
                    Err(e) if is_unknown_author(&e) => return Err($crate::error::Error::InvalidToken),
                    Err(e) => return Err(e.into()),
                };
                tx.commit().await?;
                Ok(post)
            }

            async fn post(&self, id: i64) -> $crate::error::Result<Option<$crate::store::PostRecord>> {
                Ok(sqlx::query_as(concat!($crate::store::sql::select_posts!(), "WHERE p.id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_posts(
                &self,
                listing: $crate::store::Listing,
            ) -> $crate::error::Result<$crate::store::Page> {
                let (time, id) = listing.after.unwrap_or((i64::MAX, i64::MAX));
                // The total rides along as a column: an uncorrelated subquery,
                // evaluated once per statement, so one round trip per page.
                let query = if listing.author_id == 0 {
                    sqlx::query_as(
                        "SELECT p.id, p.title, p.content, p.create_time, p.update_time, p.author_id, \
                         a.username AS author_username, a.avatar_url AS author_avatar_url, \
                         (SELECT COUNT(*) FROM posts) AS total_size \
                         FROM posts p JOIN authors a ON a.id = p.author_id \
                         WHERE (p.create_time, p.id) < ($1, $2) \
                         ORDER BY p.create_time DESC, p.id DESC LIMIT $3",
                    )
                    .bind(time)
                    .bind(id)
                    .bind(listing.limit)
                } else {
                    sqlx::query_as(
                        "SELECT p.id, p.title, p.content, p.create_time, p.update_time, p.author_id, \
                         a.username AS author_username, a.avatar_url AS author_avatar_url, \
                         (SELECT COUNT(*) FROM posts WHERE author_id = $4) AS total_size \
                         FROM posts p JOIN authors a ON a.id = p.author_id \
                         WHERE p.author_id = $4 AND (p.create_time, p.id) < ($1, $2) \
                         ORDER BY p.create_time DESC, p.id DESC LIMIT $3",
                    )
                    .bind(time)
                    .bind(id)
                    .bind(listing.limit)
                    .bind(listing.author_id)
                };
                let rows: Vec<$crate::store::ListedPost> = query.fetch_all(&self.pool).await?;
                let total_size = match rows.first() {
                    Some(row) => row.total_size,
                    // An empty page carries no count: ask for it.
                    None => $crate::store::Store::count_posts(self, listing.author_id).await?,
                };
                Ok($crate::store::Page {
                    posts: rows.into_iter().map(|row| row.post).collect(),
                    total_size,
                })
            }

            async fn count_posts(&self, author_id: i64) -> $crate::error::Result<i64> {
                let count = if author_id == 0 {
                    sqlx::query_scalar("SELECT COUNT(*) FROM posts")
                        .fetch_one(&self.pool)
                        .await?
                } else {
                    sqlx::query_scalar("SELECT COUNT(*) FROM posts WHERE author_id = $1")
                        .bind(author_id)
                        .fetch_one(&self.pool)
                        .await?
                };
                Ok(count)
            }

            async fn author_exists(&self, id: i64) -> $crate::error::Result<bool> {
                let found: Option<i64> = sqlx::query_scalar("SELECT id FROM authors WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(found.is_some())
            }

            async fn update_post(
                &self,
                id: i64,
                author_id: i64,
                title: Option<&$crate::domain::Title>,
                content: Option<&$crate::domain::Content>,
            ) -> $crate::error::Result<$crate::store::PostRecord> {
                // The ownership check and the write are one statement.
                let updated: Option<$crate::store::PostRecord> = sqlx::query_as(concat!(
                    "UPDATE posts SET title = COALESCE($3, title), content = COALESCE($4, content), \
                     update_time = $5 WHERE id = $1 AND author_id = $2",
                    $crate::store::sql::returning_post!()
                ))
                .bind(id)
                .bind(author_id)
                .bind(title.map(|t| t.as_str()))
                .bind(content.map(|c| c.as_str()))
                .bind($crate::store::now_micros())
                .fetch_optional(self.writer())
                .await?;
                match updated {
                    Some(post) => Ok(post),
                    None => Err(self.refusal(id, "update").await),
                }
            }

            async fn delete_post(&self, id: i64, author_id: i64) -> $crate::error::Result<()> {
                let deleted = sqlx::query("DELETE FROM posts WHERE id = $1 AND author_id = $2")
                    .bind(id)
                    .bind(author_id)
                    .execute(self.writer())
                    .await?;
                if deleted.rows_affected() == 0 {
                    return Err(self.refusal(id, "delete").await);
                }
                Ok(())
            }

            async fn event_cursor(&self) -> $crate::error::Result<i64> {
                Ok(sqlx::query_scalar("SELECT sequence FROM event_cursor WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn apply_event(
                &self,
                sequence: i64,
                change: &$crate::store::ReplicaChange,
            ) -> $crate::error::Result<bool> {
                use $crate::store::ReplicaChange;
                let mut tx = self.begin_write().await?;
                // Advancing the cursor first both claims the event (another
                // replica applying it concurrently waits here, then finds the
                // cursor moved) and makes a replay a no-op.
                let claimed = sqlx::query("UPDATE event_cursor SET sequence = $1 WHERE id = 1 AND sequence < $1")
                    .bind(sequence)
                    .execute(&mut *tx)
                    .await?;
                if claimed.rows_affected() == 0 {
                    return Ok(false);
                }
                match change {
                    ReplicaChange::Profile { id, username, avatar_url } => {
                        sqlx::query(
                            "INSERT INTO authors (id, username, avatar_url) \
                             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE user_id = $1) \
                             ON CONFLICT (id) DO UPDATE SET username = excluded.username, avatar_url = excluded.avatar_url",
                        )
                        .bind(id)
                        .bind(username)
                        .bind(avatar_url)
                        .execute(&mut *tx)
                        .await?;
                    }
                    ReplicaChange::UserDeleted { id, time } => {
                        // Order matters against a CreatePost in flight: the
                        // author delete waits for any post insert holding its
                        // row (and cascades), and the posts delete after it
                        // sees whatever committed meanwhile.
                        sqlx::query(
                            "INSERT INTO deleted_users (user_id, delete_time) VALUES ($1, $2) \
                             ON CONFLICT (user_id) DO NOTHING",
                        )
                        .bind(id)
                        .bind(time)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("DELETE FROM authors WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("DELETE FROM posts WHERE author_id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    ReplicaChange::SessionsRevoked { user_id, session_ids, expire_time } => {
                        for session_id in session_ids {
                            sqlx::query(
                                "INSERT INTO revoked_sessions (session_id, user_id, expire_time) VALUES ($1, $2, $3) \
                                 ON CONFLICT (session_id) DO NOTHING",
                            )
                            .bind(session_id)
                            .bind(user_id)
                            .bind(expire_time)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn revocations(
                &self,
                now: i64,
                window: i64,
            ) -> $crate::error::Result<$crate::store::RevocationSnapshot> {
                let sessions = sqlx::query_as(
                    "SELECT session_id, expire_time FROM revoked_sessions WHERE expire_time > $1",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                let deleted_users =
                    sqlx::query_as("SELECT user_id, delete_time FROM deleted_users WHERE delete_time > $1")
                        .bind(now - window)
                        .fetch_all(&self.pool)
                        .await?;
                Ok($crate::store::RevocationSnapshot { sessions, deleted_users })
            }

            async fn prune_revocations(&self, now: i64) -> $crate::error::Result<u64> {
                let pruned = sqlx::query("DELETE FROM revoked_sessions WHERE expire_time <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(pruned.rows_affected())
            }

            async fn cached_jwks(&self) -> $crate::error::Result<Option<String>> {
                Ok(sqlx::query_scalar("SELECT jwks FROM auth_keys WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn save_jwks(&self, jwks: &str) -> $crate::error::Result<()> {
                sqlx::query(
                    "INSERT INTO auth_keys (id, jwks, fetch_time) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET jwks = excluded.jwks, fetch_time = excluded.fetch_time",
                )
                .bind(jwks)
                .bind($crate::store::now_micros())
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    };
}
pub(super) use sql_store;
