//! Persistence for the auth-service: one [`Store`] trait, implemented for
//! PostgreSQL and SQLite with the same SQL where the dialects agree
//! ([`sql`]). All SQL of the service lives under this module.
//!
//! Every change other services must learn of writes its outbox row
//! ([`UserChange`]) in the same transaction as the change itself, so an event
//! exists if and only if its change committed.

mod postgres;
mod sql;
mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use shared::{db::Engine, time::Timestamp};
use tokio::sync::watch;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::{
    domain::{Email, LoginName, Username},
    error::{Error, Result},
    events::UserChange,
};

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    /// The user id.
    pub id: i64,
    /// Display form, as registered.
    pub username: String,
    /// Lowercased.
    pub email: String,
    /// The PHC string of the password.
    pub password_hash: String,
    /// Object key of the profile picture, if any.
    pub avatar_key: Option<String>,
    /// Creation time.
    pub create_time: Timestamp,
}

/// A user after an update, and the email it had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatedUser {
    /// The user as it is now.
    pub user: UserRecord,
    /// The email before the update.
    pub previous_email: String,
}

/// What a new account is made of.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// Parsed username.
    pub username: &'a Username,
    /// Parsed email.
    pub email: &'a Email,
    /// The PHC string of the password.
    pub password_hash: &'a str,
}

/// A session as created at login.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Random id, carried in access tokens as `sid`.
    pub id: &'a str,
    /// Whose session it is.
    pub user_id: i64,
    /// SHA-256 of the first refresh token.
    pub refresh_hash: &'a [u8],
    /// The absolute end of the session.
    pub expire_time: Timestamp,
}

/// A live session, as found when rotating its refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id.
    pub id: String,
    /// Whose session it is.
    pub user_id: i64,
    /// The user's current username.
    pub username: String,
    /// The absolute end of the session.
    pub expire_time: Timestamp,
}

/// What became of a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was current: it is now used, and `new_hash` is the session's token.
    Rotated(SessionRecord),
    /// It had been used already: the whole session has been revoked.
    Reused,
    /// Its session has ended (and has now been removed).
    Expired,
    /// No such token.
    Unknown,
}

/// Which sessions of a user to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions<'a> {
    /// Only this one.
    Only(&'a str),
    /// All of them.
    All,
    /// All but this one.
    AllBut(&'a str),
}

/// A signing key pair.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// The 32-byte Ed25519 seed.
    pub private_key: Vec<u8>,
    /// The 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Creation time.
    pub create_time: Timestamp,
    /// When it starts signing (see [`crate::keys`]).
    pub activate_time: Timestamp,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("create_time", &self.create_time)
            .finish_non_exhaustive()
    }
}

/// What every event up to `sequence` describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersSnapshot {
    /// The outbox sequence it is as of (0 before any event).
    pub sequence: i64,
    /// `(id, username, avatar_key)` of every user.
    pub users: Vec<(i64, String, Option<String>)>,
    /// `(user_id, session_ids)` revoked since the time asked for.
    pub revoked: Vec<(i64, Vec<String>)>,
    /// Users deleted since the time asked for.
    pub deleted: Vec<i64>,
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Position in the outbox; strictly increasing in commit order.
    pub sequence: i64,
    /// Commit time.
    pub time: Timestamp,
    /// What changed.
    pub change: UserChange,
}

/// Everything the auth-service keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails when the database cannot be reached.
    async fn ping(&self) -> Result<()>;
    /// How busy the connection pool is.
    fn pool_status(&self) -> shared::db::PoolStatus;

    /// Inserts a user (and its `user_upserted` event). A taken username or
    /// email is [`Error::UsernameTaken`] / [`Error::EmailTaken`], decided by
    /// the unique indexes.
    async fn create_user(&self, user: NewUser<'_>) -> Result<UserRecord>;
    /// The user with this id.
    async fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>>;
    /// The user whose username (any case) or email is `login`.
    async fn user_by_login(&self, login: &LoginName) -> Result<Option<UserRecord>>;
    /// The user with this email.
    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>>;
    /// Whether `username` (or one that looks like it) or `email` is taken,
    /// as the error a registration would meet: a cheap check before the
    /// expensive work. The unique indexes still decide.
    async fn taken(&self, username: &Username, email: &Email) -> Result<Option<Error>>;
    /// Changes what is `Some` (a username change is an event; an email
    /// change voids the user's reset tokens). `None` when the user does not
    /// exist.
    async fn update_user(
        &self,
        id: i64,
        username: Option<&Username>,
        email: Option<&Email>,
    ) -> Result<Option<UpdatedUser>>;
    /// Deletes a user with their sessions (a `user_deleted` event). Returns
    /// the deleted row.
    async fn delete_user(&self, id: i64) -> Result<Option<UserRecord>>;
    /// Replaces a user's password hash, voids their reset tokens and ends
    /// `revoke` of their sessions, in one transaction. Returns the ended
    /// session ids.
    async fn set_password(
        &self,
        user_id: i64,
        hash: &str,
        revoke: Sessions<'_>,
    ) -> Result<Vec<String>>;

    /// Adds a password-reset token valid until `expire_time`, beside the
    /// user's other live ones (each mailed link works for its whole hour);
    /// the user's expired tokens go.
    async fn add_reset_token(
        &self,
        user_id: i64,
        token_hash: &[u8],
        now: Timestamp,
        expire_time: Timestamp,
    ) -> Result<()>;
    /// Whether a reset token exists and has not expired by `now`.
    async fn reset_token_is_live(&self, token_hash: &[u8], now: Timestamp) -> Result<bool>;
    /// Gives users stored before skeletons existed theirs; returns how many.
    async fn backfill_username_skeletons(&self) -> Result<usize>;
    /// Uses a reset token: if it exists and has not expired by `now`, sets
    /// the password, voids every reset token of the user and ends all their
    /// sessions, in one transaction. Returns the user id; `None` (and the
    /// token gone, if it had expired) otherwise.
    async fn reset_password(
        &self,
        token_hash: &[u8],
        now: Timestamp,
        new_hash: &str,
    ) -> Result<Option<i64>>;
    /// Sets (`Some`) or clears (`None`) a user's avatar key; a change is an
    /// event. Returns the user after the change and the key it replaced;
    /// `None` if the user does not exist. Clearing an absent avatar changes
    /// nothing and returns `(user, None)`.
    async fn set_avatar(
        &self,
        user_id: i64,
        key: Option<&str>,
    ) -> Result<Option<(UserRecord, Option<String>)>>;

    /// Records a new session and its first refresh token.
    async fn create_session(&self, session: NewSession<'_>) -> Result<()>;
    /// Whether this session of this user exists and has not ended by `now`.
    async fn session_is_live(&self, session_id: &str, user_id: i64, now: Timestamp)
    -> Result<bool>;
    /// Uses the refresh token with hash `old_hash` and makes `new_hash` the
    /// session's next one, detecting reuse.
    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        now: Timestamp,
    ) -> Result<Rotation>;
    /// Ends sessions of a user (a `sessions_revoked` event when any ended).
    async fn end_sessions(&self, user_id: i64, which: Sessions<'_>) -> Result<Vec<String>>;

    /// Every signing key, newest first.
    async fn signing_keys(&self) -> Result<Vec<KeyRecord>>;
    /// Adds a signing key; a key with the same id already there is kept.
    async fn add_signing_key(&self, key: &KeyRecord) -> Result<()>;
    /// Deletes a signing key (one no live token was signed with).
    async fn remove_signing_key(&self, kid: &str) -> Result<()>;

    /// Up to `limit` outbox events after `sequence`, in order.
    async fn events_after(&self, sequence: i64, limit: i64) -> Result<Vec<EventRecord>>;
    /// The sequence of the oldest event kept, if any.
    async fn oldest_event(&self) -> Result<Option<i64>>;
    /// Deletes the events committed before `before`, always keeping the
    /// newest (the high-water mark); returns how many went.
    async fn prune_events(&self, before: Timestamp) -> Result<u64>;
    /// The users and the sessions revoked since `revoked_since`, as of one
    /// outbox sequence, read in one snapshot.
    async fn snapshot(&self, revoked_since: Timestamp) -> Result<UsersSnapshot>;
    /// Receives the sequence of each event this process commits, to wake
    /// event streams without polling. Other replicas' events are found by
    /// polling.
    fn event_commits(&self) -> watch::Receiver<i64>;
}

/// Connects to `url` (`postgres://…` or `sqlite://…`) and brings the schema
/// up to date.
pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Arc<dyn Store>> {
    Ok(match Engine::of(url)? {
        Engine::Postgres => Arc::new(PgStore::connect(url, acquire_timeout).await?),
        Engine::Sqlite => Arc::new(SqliteStore::connect(url, acquire_timeout).await?),
    })
}
