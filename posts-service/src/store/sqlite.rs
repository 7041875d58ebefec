//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database,
//! reads on a few connections and every write on one dedicated connection;
//! `GetPost` and `ListPosts` read on the caller's own thread
//! ([`shared::db::InlineReads`]), with the same statements.

use std::time::Duration;

use rusqlite::{Row, ToSql};
use shared::{
    db::{Backend, InlineReads},
    time::Timestamp,
};
use sqlx::{Connection, Sqlite, SqliteConnection};

use super::{
    ListedPost, Listing, PostRecord,
    sql::{
        GET_POST, GroupError, GroupWrite, HotReads, LIST_AUTHOR_POSTS, LIST_POSTS, QueuedPost,
        SqlStore,
    },
};
use crate::error::Result;

/// The posts-service's data in an SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pools = shared::db::open_sqlite(url, acquire_timeout).await?;
        pools
            .write
            .migrate(&sqlx::migrate!("./migrations/sqlite"))
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        Ok(Self::new(
            pools.read,
            pools.write,
            HotReads::Inline(InlinePosts(pools.inline)),
        ))
    }
}

/// A group is a transaction of one insert per post: SQLite runs one writer
/// at a time, so the statements cannot deadlock, and a statement costs no
/// round trip.
impl GroupWrite for Sqlite {
    async fn write_group(
        conn: &mut SqliteConnection,
        group: &[QueuedPost],
    ) -> std::result::Result<Vec<Option<PostRecord>>, GroupError> {
        let mut tx = conn
            .begin_with(<Sqlite as Backend>::BEGIN_WRITE)
            .await
            .map_err(GroupError::Transaction)?;
        let mut written = Vec::with_capacity(group.len());
        for post in group {
            let post =
                SqliteStore::insert_post(&mut *tx, post.author_id, &post.title, &post.content)
                    .await
                    .map_err(GroupError::Statement)?;
            written.push(post);
        }
        tx.commit().await.map_err(GroupError::Transaction)?;
        Ok(written)
    }
}

/// `GetPost` and `ListPosts` on the caller's thread: the statements of
/// [`super::sql`], their rows read as the sqlx path reads them. `None`:
/// not read here, take the usual way.
pub struct InlinePosts(InlineReads);

impl InlinePosts {
    /// The post `id`, if there is one.
    pub(super) async fn post(&self, id: i64) -> Option<Option<PostRecord>> {
        self.0
            .read(|conn| {
                let mut statement = conn.prepare_cached(GET_POST.as_str())?;
                let mut rows = statement.query([id])?;
                rows.next()?.map(post_record).transpose()
            })
            .await
    }

    /// A page of `listing`, each row with the total.
    pub(super) async fn page(&self, listing: &Listing) -> Option<Vec<ListedPost>> {
        let (time, id) = listing.start();
        let time = time.as_micros();
        self.0
            .read(|conn| {
                // By name: `$4` comes first in the author's statement.
                let mut named: Vec<(&str, &dyn ToSql)> =
                    vec![("$1", &time), ("$2", &id), ("$3", &listing.limit)];
                let sql = match &listing.author {
                    None => LIST_POSTS.as_str(),
                    Some(author) => {
                        named.push(("$4", author));
                        LIST_AUTHOR_POSTS.as_str()
                    }
                };
                let mut statement = conn.prepare_cached(sql)?;
                let rows = statement.query_map(named.as_slice(), |row| {
                    Ok(ListedPost {
                        post: post_record(row)?,
                        total_size: row.get(8)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }
}

/// A [`PostRecord`] from a row whose columns start with the post's, in the
/// order of `POST_COLUMNS` in [`super::sql`] (the test below compares every
/// field with what sqlx reads by name).
fn post_record(row: &Row<'_>) -> rusqlite::Result<PostRecord> {
    Ok(PostRecord {
        id: row.get(0)?,
        title: row.get(1)?,
        content: row.get(2)?,
        create_time: Timestamp::from_micros(row.get(3)?),
        update_time: Timestamp::from_micros(row.get(4)?),
        author_id: row.get(5)?,
        author_username: row.get(6)?,
        author_avatar_url: row.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use shared::CurrentUser;

    use super::*;
    use crate::{
        domain::{Content, Title},
        store::Store,
    };

    /// The hot reads answer on the caller's thread, and answer what the
    /// usual way (sqlx's read connections to the same file) answers.
    #[tokio::test]
    async fn the_hot_reads_answer_on_the_callers_thread_as_the_usual_way_does() {
        let db = testkit::TestDatabase::sqlite("posts");
        let store = SqliteStore::connect(&db.url, Duration::from_secs(5))
            .await
            .unwrap();
        let pools = shared::db::open_sqlite(&db.url, Duration::from_secs(5))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for (n, author) in [1, 2, 1, 1, 2, 1, 1].into_iter().enumerate() {
            let caller = CurrentUser {
                id: author,
                username: format!("author-{author}"),
                session_id: format!("session-{author}"),
                expires_at: i64::MAX,
            };
            let title = Title::parse(format!("post {n}")).unwrap();
            let content = Content::parse(format!("body {n}")).unwrap();
            ids.push(
                store
                    .create_post(&caller, &title, &content)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let HotReads::Inline(inline) = &store.hot else {
            panic!("an SQLite store reads on the caller's thread");
        };

        for id in ids.iter().copied().chain([0, 999]) {
            let here = inline
                .post(id)
                .await
                .expect("answered on the caller's thread");
            let usual = SqliteStore::post_from(&pools.read, id).await.unwrap();
            assert_eq!(here, usual, "post {id}");
        }
        for author in [None, Some(1), Some(2), Some(3)] {
            let mut after = None;
            loop {
                let listing = Listing {
                    author,
                    after,
                    limit: 2,
                };
                let here = inline
                    .page(&listing)
                    .await
                    .expect("answered on the caller's thread");
                let usual = SqliteStore::page(&pools.read, listing).await.unwrap();
                // Each row's post and the total it carries.
                let rows = |rows: &[ListedPost]| {
                    rows.iter()
                        .map(|row| (row.post.clone(), row.total_size))
                        .collect::<Vec<_>>()
                };
                assert_eq!(rows(&here), rows(&usual), "{listing:?}");
                match usual.last() {
                    Some(last) => after = Some((last.post.create_time, last.post.id)),
                    None => break,
                }
            }
        }
    }
}
