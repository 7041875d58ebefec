//! The [`Store`] both backends share: PostgreSQL and SQLite agree on every
//! statement here (`$n` parameters, row-value comparison, `ON CONFLICT`,
//! `RETURNING`), so the SQL is written once, over any [`Backend`]. What
//! differs (how a write transaction begins, which pools there are) comes
//! from the backend and from [`super::postgres`] and [`super::sqlite`].

use std::{sync::LazyLock, time::Duration};

use async_trait::async_trait;
use shared::{
    CurrentUser,
    db::{Backend, Connections, Tx, retry_read},
    lend,
    time::Timestamp,
};
use sqlx::{ColumnIndex, Encode, Executor, FromRow, IntoArguments, Type};
use tokio::sync::{mpsc, oneshot};

use super::{
    ListedPost, Listing, Page, PostRecord, ReplicaChange, ReplicaSnapshot, RevocationSnapshot,
    Store, batch::same_kind, postgres::BatchedReads, sqlite::InlinePosts,
};
use crate::{
    domain::{Content, Title},
    error::{Error, Result},
};

/// The columns of a [`PostRecord`], from `posts p` joined with `authors a`.
pub(super) const POST_COLUMNS: &str = "p.id, p.title, p.content, p.create_time, p.update_time, p.author_id, \
     a.username AS author_username, a.avatar_url AS author_avatar_url";

// Writes with `RETURNING` are fetched with `fetch_all`, never
// `fetch_optional`: that resets the statement after its first row, which
// commits it, but SQLite runs its WAL hook (the automatic checkpoint) only
// after a statement that steps to its end. With every write committed by a
// reset, no checkpoint ever ran and the WAL grew by every post written.

/// A `RETURNING` clause giving a written post as a [`PostRecord`], author
/// included: one round trip writes the row and reads it back.
pub(super) const RETURNING_POST: &str = " RETURNING id, title, content, create_time, update_time, author_id, \
     (SELECT a.username FROM authors a WHERE a.id = posts.author_id) AS author_username, \
     (SELECT a.avatar_url FROM authors a WHERE a.id = posts.author_id) AS author_avatar_url";

/// One post by id.
pub(super) static GET_POST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {POST_COLUMNS} FROM posts p JOIN authors a ON a.id = p.author_id WHERE p.id = $1"
    )
});

/// A post by an author who exists and has not been deleted.
static INSERT_POST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO posts (author_id, title, content, create_time, update_time) \
         SELECT $1, $2, $3, $4, $4 \
         WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE user_id = $1){RETURNING_POST}"
    )
});

/// How many posts there are: the sixteen overall rows of `post_counts`,
/// kept by triggers in each write's transaction (migration 0002).
const COUNT_ALL: &str =
    "SELECT CAST(COALESCE(SUM(posts), 0) AS BIGINT) FROM post_counts WHERE author_id < 0";

/// How many posts one author has, the author's id to follow.
const COUNT_AUTHOR: &str =
    "SELECT CAST(COALESCE(SUM(posts), 0) AS BIGINT) FROM post_counts WHERE author_id = ";

/// How many posts the author `$1` has.
static COUNT_AUTHOR_POSTS: LazyLock<String> = LazyLock::new(|| format!("{COUNT_AUTHOR}$1"));

/// A page of everyone's posts, the total riding along as a column: an
/// uncorrelated subquery, evaluated once per statement, so one round trip
/// per page.
pub(super) static LIST_POSTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {POST_COLUMNS}, ({COUNT_ALL}) AS total_size \
         FROM posts p JOIN authors a ON a.id = p.author_id \
         WHERE (p.create_time, p.id) < ($1, $2) \
         ORDER BY p.create_time DESC, p.id DESC LIMIT $3"
    )
});

/// A page of one author's posts, with their total.
pub(super) static LIST_AUTHOR_POSTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {POST_COLUMNS}, ({COUNT_AUTHOR}$4) AS total_size \
         FROM posts p JOIN authors a ON a.id = p.author_id \
         WHERE p.author_id = $4 AND (p.create_time, p.id) < ($1, $2) \
         ORDER BY p.create_time DESC, p.id DESC LIMIT $3"
    )
});

/// Changes what is given, if the caller wrote the post: the ownership
/// check and the write are one statement.
static UPDATE_POST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE posts SET title = COALESCE($3, title), content = COALESCE($4, content), \
         update_time = $5 WHERE id = $1 AND author_id = $2{RETURNING_POST}"
    )
});

/// The posts-service's data in a database: `read` for reads, `write` for
/// writes (on SQLite one dedicated connection, on PostgreSQL the same
/// connections).
pub struct SqlStore<DB: Backend> {
    /// Connections for reads.
    read: Connections<DB>,
    /// Connections for writes.
    write: Connections<DB>,
    /// New posts, to the writer that commits them in groups.
    queue: mpsc::Sender<QueuedPost>,
    /// How `GetPost` and `ListPosts` read.
    pub(super) hot: HotReads,
}

/// How a store reads for `GetPost` and `ListPosts`, the calls a blog
/// answers most.
pub enum HotReads {
    /// On the caller's own thread (SQLite); a read not done there goes to
    /// the read connections.
    Inline(InlinePosts),
    /// In batches (PostgreSQL): the calls that arrive while others are on
    /// their way share a statement.
    Batched(BatchedReads),
}

/// A post waiting for a writer, and who to tell once it has committed.
pub struct QueuedPost {
    pub(super) author_id: i64,
    pub(super) title: Title,
    pub(super) content: Content,
    done: oneshot::Sender<Result<Option<PostRecord>, sqlx::Error>>,
}

/// How a backend writes a group of new posts at once.
pub trait GroupWrite: Backend {
    /// Writes the posts of `group` atomically; what was written for each,
    /// in `group`'s order (`None`: its author has been deleted).
    fn write_group<'c>(
        conn: &'c mut Self::Connection,
        group: &'c [QueuedPost],
    ) -> impl Future<Output = Result<Vec<Option<PostRecord>>, GroupError>> + Send + 'c;
}

/// Why a group of new posts was not written together.
pub enum GroupError {
    /// A statement failed: nothing was written, and most posts of the
    /// group may well succeed alone.
    Statement(sqlx::Error),
    /// The transaction could not begin or commit: no post of the group can
    /// be written now. After a failed commit it is not known whether the
    /// posts were written (the connection may have broken on the way back),
    /// so they are not written again.
    Transaction(sqlx::Error),
}

/// The most new posts one transaction commits.
const MAX_GROUP: usize = 64;

/// New posts waiting for a writer before `create_post` waits to queue.
const QUEUE_DEPTH: usize = 1024;

impl<DB: GroupWrite> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'e> Encode<'e, DB>,
    Timestamp: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a str: Type<DB> + Encode<'a, DB>,
    PostRecord: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    /// A store over these connections. New posts go to one writer task
    /// that commits them in groups (it stops when the store is dropped).
    pub(super) fn new(read: Connections<DB>, write: Connections<DB>, hot: HotReads) -> Self {
        let (queue, queued) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(Self::commit_in_groups(write.clone(), queued));
        Self {
            read,
            write,
            queue,
            hot,
        }
    }

    /// Group commit: takes every new post queued (up to [`MAX_GROUP`]) and
    /// writes them in one transaction, so a burst of posts costs one commit
    /// instead of one each. Each caller is answered after the commit that
    /// holds its post. A post the group could not take (its author is not
    /// known yet, or its statement failed) sends the group back to be
    /// written one post at a time, so no caller gets another's error; a
    /// transaction that cannot begin or commit fails the whole group.
    async fn commit_in_groups(write: Connections<DB>, mut queued: mpsc::Receiver<QueuedPost>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        loop {
            if queued.recv_many(&mut group, MAX_GROUP).await == 0 {
                return;
            }
            // A caller that stopped waiting (its deadline passed, its client
            // went away) has had its call fail: writing its post now would
            // only invite a duplicate when the client tries again.
            group.retain(|post| !post.done.is_closed());
            // Awaited, not spawned: posts arriving while this commits
            // make up the next group.
            if group.len() <= 1 {
                if let Some(post) = group.pop() {
                    Self::commit_alone(&write, post).await;
                }
                continue;
            }
            match Self::commit_group(&write, &group).await {
                Ok(written) => {
                    for (post, written) in group.drain(..).zip(written) {
                        let _ = post.done.send(Ok(written));
                    }
                }
                Err(GroupError::Transaction(e)) => {
                    tracing::warn!(error = %e, posts = group.len(), "a group of new posts failed");
                    for post in group.drain(..) {
                        let _ = post
                            .done
                            .send(Err(same_kind(&e, "writing a group of new posts")));
                    }
                }
                Err(GroupError::Statement(e)) => {
                    tracing::debug!(error = %e, "a group of new posts is written one by one");
                    for post in group.drain(..) {
                        Self::commit_alone(&write, post).await;
                    }
                }
            }
        }
    }

    /// Writes one new post in a statement of its own, answering when done.
    async fn commit_alone(write: &Connections<DB>, post: QueuedPost) {
        let written = lend!(write, |conn| Self::insert_post(
            conn,
            post.author_id,
            &post.title,
            &post.content
        ));
        let _ = post.done.send(written);
    }

    /// The posts of `group`, written at once; what was written for each
    /// (`None`: its author has been deleted).
    async fn commit_group(
        write: &Connections<DB>,
        group: &[QueuedPost],
    ) -> Result<Vec<Option<PostRecord>>, GroupError> {
        let mut conn = write.get().await.map_err(GroupError::Transaction)?;
        let written = DB::write_group(&mut conn, group).await;
        conn.end(match &written {
            Ok(_) => None,
            Err(GroupError::Statement(e) | GroupError::Transaction(e)) => Some(e),
        })
        .await;
        written
    }

    /// The post `id` from the `read` connections, if there is one.
    pub(super) async fn post_from(
        read: &Connections<DB>,
        id: i64,
    ) -> Result<Option<PostRecord>, sqlx::Error> {
        retry_read(|| async {
            lend!(read, |conn| sqlx::query_as(GET_POST.as_str())
                .bind(id)
                .fetch_optional(conn))
        })
        .await
    }

    /// A page of `listing` from the `read` connections, each row with the
    /// total.
    pub(super) async fn page(
        read: &Connections<DB>,
        listing: Listing,
    ) -> Result<Vec<ListedPost>, sqlx::Error>
    where
        ListedPost: for<'r> FromRow<'r, DB::Row>,
    {
        let (time, id) = listing.start();
        retry_read(|| async {
            let query = match listing.author {
                None => sqlx::query_as(LIST_POSTS.as_str())
                    .bind(time)
                    .bind(id)
                    .bind(listing.limit),
                Some(author) => sqlx::query_as(LIST_AUTHOR_POSTS.as_str())
                    .bind(time)
                    .bind(id)
                    .bind(listing.limit)
                    .bind(author),
            };
            lend!(read, |conn| query.fetch_all(conn))
        })
        .await
    }

    async fn begin_write(&self) -> Result<Tx<DB>> {
        Ok(self.write.begin(DB::BEGIN_WRITE).await?)
    }

    /// After a guarded write touched nothing: why not? (Asked after the
    /// write: if the post changes hands or goes in between, the answer is
    /// still one some order of the two calls gives.)
    async fn refusal(&self, id: i64, action: &'static str) -> Error {
        let owner: Result<Option<i64>, sqlx::Error> = lend!(self.read, |conn| {
            sqlx::query_scalar("SELECT author_id FROM posts WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
        });
        match owner {
            Ok(None) => Error::PostNotFound,
            Ok(Some(_)) => Error::NotAuthor(action),
            Err(e) => e.into(),
        }
    }

    /// The effect of one change, inside `tx`.
    async fn apply_change(
        tx: &mut DB::Connection,
        change: &ReplicaChange,
    ) -> Result<(), sqlx::Error> {
        match change {
            ReplicaChange::Profile {
                id,
                username,
                avatar_url,
            } => {
                sqlx::query(
                    "INSERT INTO authors (id, username, avatar_url) \
                     SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE user_id = $1) \
                     ON CONFLICT (id) DO UPDATE SET username = excluded.username, avatar_url = excluded.avatar_url",
                )
                .bind(*id)
                .bind(username.as_str())
                .bind(avatar_url.as_str())
                .execute(&mut *tx)
                .await?;
            }
            ReplicaChange::UserDeleted { id, time } => {
                // Order matters against a CreatePost in flight: the author
                // delete waits for any post insert holding its row (and
                // cascades), and the posts delete after it sees whatever
                // committed meanwhile.
                sqlx::query(
                    "INSERT INTO deleted_users (user_id, delete_time) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(*id)
                .bind(*time)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM authors WHERE id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM posts WHERE author_id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
            ReplicaChange::SessionsRevoked {
                user_id,
                session_ids,
                expire_time,
            } => {
                for session_id in session_ids {
                    sqlx::query(
                        "INSERT INTO revoked_sessions (session_id, user_id, expire_time) \
                         VALUES ($1, $2, $3) ON CONFLICT (session_id) DO NOTHING",
                    )
                    .bind(session_id.as_str())
                    .bind(*user_id)
                    .bind(*expire_time)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl<DB: Backend> SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'e> Encode<'e, DB>,
    Timestamp: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a str: Type<DB> + Encode<'a, DB>,
    PostRecord: for<'r> FromRow<'r, DB::Row>,
{
    /// Inserts a post by an author who must exist and must not have been
    /// deleted; `None` if they have been. The statement checks for a
    /// deletion that committed first; one committing later waits on the
    /// author row this insert holds, then cascades.
    pub(super) async fn insert_post<'e, E: Executor<'e, Database = DB>>(
        executor: E,
        author_id: i64,
        title: &Title,
        content: &Content,
    ) -> Result<Option<PostRecord>, sqlx::Error> {
        let written = sqlx::query_as(INSERT_POST.as_str())
            .bind(author_id)
            .bind(title.as_str())
            .bind(content.as_str())
            .bind(Timestamp::now())
            .fetch_all(executor)
            .await?;
        Ok(written.into_iter().next())
    }
}

#[async_trait]
impl<DB: GroupWrite> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'e> Encode<'e, DB>,
    Timestamp: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a str: Type<DB> + Encode<'a, DB>,
    for<'a> Option<&'a str>: Type<DB> + Encode<'a, DB>,
    PostRecord: for<'r> FromRow<'r, DB::Row>,
    ListedPost: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    (String,): for<'r> FromRow<'r, DB::Row>,
    (String, Timestamp): for<'r> FromRow<'r, DB::Row>,
    (i64, Timestamp): for<'r> FromRow<'r, DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    async fn ping(&self) -> Result<()> {
        lend!(self.read, |conn| sqlx::query("SELECT 1").execute(conn))?;
        Ok(())
    }

    fn pool_status(&self) -> shared::db::PoolStatus {
        self.read.status()
    }

    async fn create_post(
        &self,
        caller: &CurrentUser,
        title: &Title,
        content: &Content,
    ) -> Result<PostRecord> {
        let is_unknown_author = |e: &sqlx::Error| {
            e.as_database_error()
                .is_some_and(|d| d.is_foreign_key_violation())
        };
        // Nearly always the author is known: the post is committed with
        // whatever other new posts are waiting.
        let (done, written) = oneshot::channel();
        let queued = QueuedPost {
            author_id: caller.id,
            title: title.clone(),
            content: content.clone(),
            done,
        };
        let closed = || Error::Unavailable(sqlx::Error::PoolClosed);
        self.queue.send(queued).await.map_err(|_| closed())?;
        let written = written.await.map_err(|_| closed())?;
        match written {
            Ok(Some(post)) => return Ok(post),
            Ok(None) => return Err(Error::InvalidToken),
            Err(e) if is_unknown_author(&e) => {}
            Err(e) => return Err(e.into()),
        }
        // The profile event has not arrived yet: the token's name stands in
        // until it does. A deleted user is never recreated.
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO authors (id, username, avatar_url) \
             SELECT $1, $2, '' WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE user_id = $1) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(caller.id)
        .bind(caller.username.as_str())
        .execute(&mut *tx)
        .await?;
        let post = match Self::insert_post(&mut *tx, caller.id, title, content).await {
            Ok(Some(post)) => post,
            Ok(None) => return Err(Error::InvalidToken),
            Err(e) if is_unknown_author(&e) => return Err(Error::InvalidToken),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(post)
    }

    async fn post(&self, id: i64) -> Result<Option<PostRecord>> {
        match &self.hot {
            HotReads::Inline(inline) => {
                if let Some(found) = inline.post(id).await {
                    return Ok(found);
                }
            }
            HotReads::Batched(batched) => return Ok(batched.post(id).await?),
        }
        Ok(Self::post_from(&self.read, id).await?)
    }

    async fn list_posts(&self, listing: Listing) -> Result<Page> {
        let found = match &self.hot {
            HotReads::Inline(inline) => inline.page(&listing).await,
            HotReads::Batched(batched) => Some(batched.page(listing).await?),
        };
        let rows = match found {
            Some(rows) => rows,
            None => Self::page(&self.read, listing).await?,
        };
        let total_size = match rows.first() {
            Some(row) => row.total_size,
            // An empty page carries no count: ask for it.
            None => self.count_posts(listing.author).await?,
        };
        Ok(Page {
            posts: rows.into_iter().map(|row| row.post).collect(),
            total_size,
        })
    }

    async fn count_posts(&self, author: Option<i64>) -> Result<i64> {
        let count = match author {
            None => lend!(self.read, |conn| sqlx::query_scalar(COUNT_ALL)
                .fetch_one(conn))?,
            Some(author) => lend!(self.read, |conn| {
                sqlx::query_scalar(COUNT_AUTHOR_POSTS.as_str())
                    .bind(author)
                    .fetch_one(conn)
            })?,
        };
        Ok(count)
    }

    async fn author_exists(&self, id: i64) -> Result<bool> {
        let found: Option<i64> = lend!(self.read, |conn| {
            sqlx::query_scalar("SELECT id FROM authors WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
        })?;
        Ok(found.is_some())
    }

    async fn update_post(
        &self,
        id: i64,
        author_id: i64,
        title: Option<&Title>,
        content: Option<&Content>,
    ) -> Result<PostRecord> {
        let updated: Vec<PostRecord> = lend!(self.write, |conn| {
            sqlx::query_as(UPDATE_POST.as_str())
                .bind(id)
                .bind(author_id)
                .bind(title.map(|t| t.as_str()))
                .bind(content.map(|c| c.as_str()))
                .bind(Timestamp::now())
                .fetch_all(conn)
        })?;
        match updated.into_iter().next() {
            Some(post) => Ok(post),
            None => Err(self.refusal(id, "update").await),
        }
    }

    async fn delete_post(&self, id: i64, author_id: i64) -> Result<()> {
        let deleted = lend!(self.write, |conn| {
            sqlx::query("DELETE FROM posts WHERE id = $1 AND author_id = $2")
                .bind(id)
                .bind(author_id)
                .execute(conn)
        })?;
        if DB::rows_affected(&deleted) == 0 {
            return Err(self.refusal(id, "delete").await);
        }
        Ok(())
    }

    async fn event_cursor(&self) -> Result<i64> {
        Ok(lend!(self.read, |conn| {
            sqlx::query_scalar("SELECT sequence FROM event_cursor WHERE id = 1").fetch_one(conn)
        })?)
    }

    async fn apply_events(&self, events: &[(i64, ReplicaChange)]) -> Result<usize> {
        let Some(&(last, _)) = events.last() else {
            return Ok(0);
        };
        let mut tx = self.begin_write().await?;
        // Locking the cursor first makes another replica applying the same
        // events wait here, and then find them applied.
        sqlx::query("UPDATE event_cursor SET sequence = sequence WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let (cursor,): (i64,) = sqlx::query_as("SELECT sequence FROM event_cursor WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if last <= cursor {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut applied = 0;
        for (_, change) in events.iter().filter(|(sequence, _)| *sequence > cursor) {
            Self::apply_change(&mut tx, change).await?;
            applied += 1;
        }
        sqlx::query("UPDATE event_cursor SET sequence = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn apply_snapshot(&self, snapshot: &ReplicaSnapshot) -> Result<Vec<i64>> {
        let mut tx = self.begin_write().await?;
        let claimed =
            sqlx::query("UPDATE event_cursor SET sequence = $1 WHERE id = 1 AND sequence < $1")
                .bind(snapshot.sequence)
                .execute(&mut *tx)
                .await?;
        if DB::rows_affected(&claimed) == 0 {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let present: std::collections::HashSet<i64> = snapshot
            .changes
            .iter()
            .filter_map(|change| match change {
                &ReplicaChange::Profile { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        let known: Vec<(i64,)> = sqlx::query_as("SELECT id FROM authors")
            .fetch_all(&mut *tx)
            .await?;
        // Authors the snapshot does not know were deleted in the history
        // that is gone.
        let deleted: Vec<i64> = known
            .into_iter()
            .map(|(id,)| id)
            .filter(|id| !present.contains(id))
            .collect();
        for change in &snapshot.changes {
            Self::apply_change(&mut tx, change).await?;
        }
        for id in &deleted {
            let change = ReplicaChange::UserDeleted {
                id: *id,
                time: snapshot.time,
            };
            Self::apply_change(&mut tx, &change).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn revocations(&self, now: Timestamp, window: Duration) -> Result<RevocationSnapshot> {
        let sessions = lend!(self.read, |conn| {
            sqlx::query_as(
                "SELECT session_id, expire_time FROM revoked_sessions WHERE expire_time > $1",
            )
            .bind(now)
            .fetch_all(conn)
        })?;
        let deleted_users = lend!(self.read, |conn| {
            sqlx::query_as("SELECT user_id, delete_time FROM deleted_users WHERE delete_time > $1")
                .bind(now - window)
                .fetch_all(conn)
        })?;
        Ok(RevocationSnapshot {
            sessions,
            deleted_users,
        })
    }

    async fn prune_revocations(&self, now: Timestamp) -> Result<u64> {
        let pruned = lend!(self.write, |conn| {
            sqlx::query("DELETE FROM revoked_sessions WHERE expire_time <= $1")
                .bind(now)
                .execute(conn)
        })?;
        Ok(DB::rows_affected(&pruned))
    }

    async fn cached_jwks(&self) -> Result<Option<String>> {
        Ok(lend!(self.read, |conn| {
            sqlx::query_scalar("SELECT jwks FROM auth_keys WHERE id = 1").fetch_optional(conn)
        })?)
    }

    async fn save_jwks(&self, jwks: &str) -> Result<()> {
        lend!(self.write, |conn| {
            sqlx::query(
                "INSERT INTO auth_keys (id, jwks, fetch_time) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET jwks = excluded.jwks, fetch_time = excluded.fetch_time",
            )
            .bind(jwks)
            .bind(Timestamp::now())
            .execute(conn)
        })?;
        Ok(())
    }
}
