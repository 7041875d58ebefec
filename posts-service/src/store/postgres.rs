//! The PostgreSQL backend: the shared SQL of [`super::sql`] over one set of connections.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use shared::{
    db::{Connections, retry_read},
    lend,
    time::Timestamp,
};
use sqlx::{PgConnection, Postgres};

use super::{
    ListedPost, Listing, PostRecord,
    batch::{Batches, same_kind},
    sql::{GroupError, GroupWrite, HotReads, POST_COLUMNS, QueuedPost, RETURNING_POST, SqlStore},
};
use crate::error::Result;

/// The posts-service's data in PostgreSQL.
pub type PgStore = SqlStore<Postgres>;

impl PgStore {
    /// Connects and applies the migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let connections = shared::db::open_postgres(url, acquire_timeout)?;
        connections
            .migrate(&sqlx::migrate!("./migrations/postgres"))
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        let batched = BatchedReads::new(&connections);
        Ok(Self::new(
            connections.clone(),
            connections,
            HotReads::Batched(batched),
        ))
    }
}

/// `GetPost` and `ListPosts` in batches: the server parses, plans and
/// answers one statement for the posts of many calls, rather than one each,
/// and calls for the same page share it.
pub struct BatchedReads {
    posts: Batches<i64, Option<PostRecord>>,
    pages: Batches<Listing, Vec<ListedPost>>,
}

/// The posts whose ids are in `$1`, in no order.
static GET_POSTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {POST_COLUMNS} FROM posts p JOIN authors a ON a.id = p.author_id \
         WHERE p.id = ANY($1)"
    )
});

impl BatchedReads {
    fn new(read: &Connections<Postgres>) -> Self {
        let posts = Batches::new({
            let read = read.clone();
            move |ids: Vec<i64>| {
                let read = read.clone();
                async move {
                    let rows: Vec<PostRecord> = match retry_read(|| async {
                        lend!(read, |conn| sqlx::query_as(GET_POSTS.as_str())
                            .bind(&ids)
                            .fetch_all(conn))
                    })
                    .await
                    {
                        Ok(rows) => rows,
                        // One statement for all: each caller gets its error.
                        Err(e) => {
                            return ids
                                .iter()
                                .map(|_| Err(same_kind(&e, "reading posts")))
                                .collect();
                        }
                    };
                    let mut found: HashMap<i64, PostRecord> =
                        rows.into_iter().map(|post| (post.id, post)).collect();
                    ids.iter().map(|id| Ok(found.remove(id))).collect()
                }
            }
        });
        // Pages differ in their bounds: one statement each, side by side, so
        // a page that fails fails only its own callers.
        let pages = Batches::new({
            let read = read.clone();
            move |listings: Vec<Listing>| {
                let read = read.clone();
                async move {
                    futures::future::join_all(
                        listings
                            .into_iter()
                            .map(|listing| PgStore::page(&read, listing)),
                    )
                    .await
                }
            }
        });
        Self { posts, pages }
    }

    /// The post `id`, if there is one.
    pub(super) async fn post(
        &self,
        id: i64,
    ) -> std::result::Result<Option<PostRecord>, sqlx::Error> {
        self.posts.get(id).await
    }

    /// A page of `listing`, each row with the total.
    pub(super) async fn page(
        &self,
        listing: Listing,
    ) -> std::result::Result<Vec<ListedPost>, sqlx::Error> {
        self.pages.get(listing).await
    }
}

/// The posts of a group, by authors who exist and have not been deleted,
/// in one statement, in author order: the foreign key checks lock author
/// rows in that order, and the counter trigger (migration 0003) locks its
/// rows in key order, so two writers cannot wait on each other.
static INSERT_POSTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO posts (author_id, title, content, create_time, update_time) \
         SELECT g.author_id, g.title, g.content, $4, $4 \
         FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS g (author_id, title, content) \
         WHERE NOT EXISTS (SELECT 1 FROM deleted_users d WHERE d.user_id = g.author_id) \
         ORDER BY g.author_id{RETURNING_POST}"
    )
});

/// A group is one statement: one round trip, committed on its own.
impl GroupWrite for Postgres {
    async fn write_group(
        conn: &mut PgConnection,
        group: &[QueuedPost],
    ) -> std::result::Result<Vec<Option<PostRecord>>, GroupError> {
        let authors: Vec<i64> = group.iter().map(|post| post.author_id).collect();
        let titles: Vec<&str> = group.iter().map(|post| post.title.as_str()).collect();
        let contents: Vec<&str> = group.iter().map(|post| post.content.as_str()).collect();
        let rows: Vec<PostRecord> = sqlx::query_as(INSERT_POSTS.as_str())
            .bind(&authors)
            .bind(&titles)
            .bind(&contents)
            .bind(Timestamp::now())
            .fetch_all(conn)
            .await
            .map_err(|e| match shared::db::is_unavailable(&e) {
                // Sent, perhaps committed: not to be written again.
                true => GroupError::Transaction(e),
                false => GroupError::Statement(e),
            })?;
        // The rows come back in no promised order: each caller takes a post
        // with its author, title and content (posts alike in all three are
        // alike to their callers too). A caller left without one was not
        // written, as its author has been deleted.
        let mut written: Vec<Option<PostRecord>> = group.iter().map(|_| None).collect();
        for row in rows {
            let caller = group.iter().zip(&written).position(|(post, taken)| {
                taken.is_none()
                    && post.author_id == row.author_id
                    && post.title.as_str() == row.title
                    && post.content.as_str() == row.content
            });
            if let Some(i) = caller {
                written[i] = Some(row);
            }
        }
        Ok(written)
    }
}
