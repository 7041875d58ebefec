//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database,
//! reads on a few connections and every write on one dedicated connection.

use std::time::Duration;

use shared::db::Backend;
use sqlx::{Connection, Sqlite, SqliteConnection};

use super::{
    PostRecord,
    sql::{GroupError, GroupWrite, QueuedPost, SqlStore},
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
        Ok(Self::new(pools.read, pools.write))
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
