//! Persistence for the posts-service: one [`Store`] trait, implemented for
//! PostgreSQL and SQLite with the same SQL ([`sql`]). All SQL of the service
//! lives under this module.
//!
//! Besides posts it keeps what the auth-service's events teach it: author
//! profiles, revoked sessions, deleted users, and the cursor of the last
//! applied event, written in the same transaction as the event's effect.

mod batch;
mod postgres;
mod sql;
mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use shared::{CurrentUser, db::Engine, time::Timestamp};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::{
    domain::{Content, Title},
    error::Result,
};

/// A post with its author's public profile.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PostRecord {
    /// Post id.
    pub id: i64,
    /// Title, as given.
    pub title: String,
    /// Body, as given.
    pub content: String,
    /// Creation time.
    pub create_time: Timestamp,
    /// Last change.
    pub update_time: Timestamp,
    /// The author's user id.
    pub author_id: i64,
    /// The author's current username.
    pub author_username: String,
    /// The author's current avatar URL, or empty.
    pub author_avatar_url: String,
}

/// A page of posts and how many match over all pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The posts, newest first.
    pub posts: Vec<PostRecord>,
    /// How many posts the listing's filter matches, counted in the same
    /// statement (so from the same snapshot) as the page.
    pub total_size: i64,
}

/// A listed post with the count its statement computed once.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ListedPost {
    /// The post.
    #[sqlx(flatten)]
    pub post: PostRecord,
    /// Matching posts over all pages.
    pub total_size: i64,
}

/// Which posts a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listing {
    /// Only this author's posts, or everyone's.
    pub author: Option<i64>,
    /// Start after this `(create_time, id)`; `None` for the first page.
    pub after: Option<(Timestamp, i64)>,
    /// At most this many posts.
    pub limit: i64,
}

impl Listing {
    /// The `(create_time, id)` the page starts after: the given key, or one
    /// past every post for the first page.
    pub fn start(&self) -> (Timestamp, i64) {
        self.after
            .unwrap_or((Timestamp::from_micros(i64::MAX), i64::MAX))
    }
}

/// A change from the auth-service, as the replica applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaChange {
    /// A user's public profile, new or changed.
    Profile {
        /// User id.
        id: i64,
        /// Username.
        username: String,
        /// Avatar URL or empty.
        avatar_url: String,
    },
    /// A user was deleted: their posts go, their tokens stop working.
    UserDeleted {
        /// User id.
        id: i64,
        /// When.
        time: Timestamp,
    },
    /// Sessions ended: refuse their tokens until `expire_time`.
    SessionsRevoked {
        /// Whose sessions.
        user_id: i64,
        /// Which.
        session_ids: Vec<String>,
        /// When every token of theirs has expired.
        expire_time: Timestamp,
    },
}

/// The state the auth-service's events describe up to `sequence`, for a
/// replica whose cursor is older than the events the auth-service keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    /// The sequence it is as of.
    pub sequence: i64,
    /// When it was taken (the deletion time of users found gone).
    pub time: Timestamp,
    /// A [`ReplicaChange::Profile`] for every user, and the revocations
    /// still in force.
    pub changes: Vec<ReplicaChange>,
}

/// Revocations still in force, to load into memory at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSnapshot {
    /// `(session_id, expire_time)`.
    pub sessions: Vec<(String, Timestamp)>,
    /// `(user_id, delete_time)`.
    pub deleted_users: Vec<(i64, Timestamp)>,
}

/// Everything the posts-service keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails when the database cannot be reached.
    async fn ping(&self) -> Result<()>;
    /// How busy the connection pool is.
    fn pool_status(&self) -> shared::db::PoolStatus;

    /// Creates a post by `caller`, creating their author row from the
    /// token's username if absent (the profile event has not arrived yet).
    /// [`InvalidToken`](crate::error::Error::InvalidToken) if the caller has been deleted.
    async fn create_post(
        &self,
        caller: &CurrentUser,
        title: &Title,
        content: &Content,
    ) -> Result<PostRecord>;
    /// The post with this id.
    async fn post(&self, id: i64) -> Result<Option<PostRecord>>;
    /// A page of posts, newest first, with the number matching in all.
    async fn list_posts(&self, listing: Listing) -> Result<Page>;
    /// How many posts `author` (or everyone, for `None`) has.
    async fn count_posts(&self, author: Option<i64>) -> Result<i64>;
    /// Whether an author is known.
    async fn author_exists(&self, id: i64) -> Result<bool>;
    /// Changes what is `Some`, if `author_id` wrote the post: the check and
    /// the write are one statement. [`PostNotFound`](crate::error::Error::PostNotFound) first, then
    /// [`NotAuthor`](crate::error::Error::NotAuthor).
    async fn update_post(
        &self,
        id: i64,
        author_id: i64,
        title: Option<&Title>,
        content: Option<&Content>,
    ) -> Result<PostRecord>;
    /// Deletes the post if `author_id` wrote it, in one statement.
    async fn delete_post(&self, id: i64, author_id: i64) -> Result<()>;

    /// The sequence of the last applied event.
    async fn event_cursor(&self) -> Result<i64>;
    /// Applies event `sequence` and advances the cursor in one transaction;
    /// `false` (and no change) if it was applied before.
    async fn apply_event(&self, sequence: i64, change: &ReplicaChange) -> Result<bool> {
        let events = [(sequence, change.clone())];
        Ok(self.apply_events(&events).await? == 1)
    }
    /// Applies the events of `events` (in increasing sequence) not applied
    /// before, and advances the cursor to the last, in one transaction.
    /// Returns how many it applied.
    async fn apply_events(&self, events: &[(i64, ReplicaChange)]) -> Result<usize>;
    /// Applies `snapshot` and moves the cursor to its sequence in one
    /// transaction: profiles upserted, revocations added, and every author
    /// it does not know deleted (with their posts), as their deletion event
    /// would have. Returns the authors deleted; nothing happens (and none
    /// are returned) if the cursor is already at or past the sequence.
    async fn apply_snapshot(&self, snapshot: &ReplicaSnapshot) -> Result<Vec<i64>>;
    /// Revocations in force at `now`: revoked sessions not yet expired, and
    /// users deleted less than `window` ago (older ones hold no live token).
    async fn revocations(&self, now: Timestamp, window: Duration) -> Result<RevocationSnapshot>;
    /// Forgets revoked sessions whose tokens have all expired by `now`.
    async fn prune_revocations(&self, now: Timestamp) -> Result<u64>;

    /// The JWK set last fetched from the auth-service, as JSON.
    async fn cached_jwks(&self) -> Result<Option<String>>;
    /// Keeps `jwks` (JSON) as the last fetched set.
    async fn save_jwks(&self, jwks: &str) -> Result<()>;
}

/// Connects to `url` (`postgres://…` or `sqlite://…`) and brings the schema
/// up to date.
pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Arc<dyn Store>> {
    Ok(match Engine::of(url)? {
        Engine::Postgres => Arc::new(PgStore::connect(url, acquire_timeout).await?),
        Engine::Sqlite => Arc::new(SqliteStore::connect(url, acquire_timeout).await?),
    })
}
