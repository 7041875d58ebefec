//! The [`Store`](super::Store) both backends share: PostgreSQL and SQLite
//! agree on every statement here (`$n` parameters, `RETURNING`, `ON
//! CONFLICT`), so the SQL is written once, over any [`Backend`]. What
//! differs comes from the backend: how a write transaction begins, how
//! outbox writers are ordered, and (in [`super::postgres`] and
//! [`super::sqlite`]) which pools there are.

use async_trait::async_trait;
use shared::{
    db::{Backend, Connections, Tx},
    lend,
    time::Timestamp,
};
use sqlx::{ColumnIndex, Encode, Executor, FromRow, IntoArguments, Type};
use tokio::sync::watch;

use super::{
    EventRecord, KeyRecord, NewSession, NewUser, Rotation, Sessions, Store, UpdatedUser,
    UserRecord, UsersSnapshot,
};
use crate::{
    domain::{Email, LoginName, Username, skeleton},
    error::{Error, Result},
    events::UserChange,
};

/// The auth-service's data in a database: `read` for reads, `write` for
/// writes (on SQLite one dedicated connection, on PostgreSQL the same pool),
/// and the signal that wakes event streams when this process commits one.
pub struct SqlStore<DB: Backend> {
    /// Connections for reads.
    read: Connections<DB>,
    /// Connections for writes.
    write: Connections<DB>,
    /// Wakes event streams after this process commits an event.
    commits: watch::Sender<i64>,
}

impl<DB: Backend> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'e> Encode<'e, DB>,
    Timestamp: Type<DB> + for<'e> Encode<'e, DB>,
    String: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a str: Type<DB> + Encode<'a, DB>,
    for<'a> Option<&'a str>: Type<DB> + Encode<'a, DB>,
    Option<String>: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a [u8]: Type<DB> + Encode<'a, DB>,
    for<'a> &'a Vec<u8>: Type<DB> + Encode<'a, DB>,
    UserRecord: for<'r> FromRow<'r, DB::Row>,
    KeyRecord: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    (String,): for<'r> FromRow<'r, DB::Row>,
    (Option<String>,): for<'r> FromRow<'r, DB::Row>,
    (Option<i64>,): for<'r> FromRow<'r, DB::Row>,
    (i64, String, Option<String>): for<'r> FromRow<'r, DB::Row>,
    (bool, bool): for<'r> FromRow<'r, DB::Row>,
    (i64, Timestamp): for<'r> FromRow<'r, DB::Row>,
    (i64, String): for<'r> FromRow<'r, DB::Row>,
    (i64, Timestamp, String): for<'r> FromRow<'r, DB::Row>,
    (String, i64, String, Timestamp): for<'r> FromRow<'r, DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    /// A store over these pools, with every username given its skeleton.
    pub(super) async fn open(read: Connections<DB>, write: Connections<DB>) -> Result<Self> {
        let store = Self {
            read,
            write,
            commits: watch::Sender::new(0),
        };
        Store::backfill_username_skeletons(&store).await?;
        Ok(store)
    }

    async fn begin_write(&self) -> Result<Tx<DB>> {
        Ok(self.write.begin(DB::BEGIN_WRITE).await?)
    }

    /// Appends `change` to the outbox inside `tx`; returns its sequence.
    async fn record(tx: &mut Tx<DB>, change: &UserChange) -> Result<i64> {
        if let Some(lock) = DB::LOCK_LOG {
            sqlx::query(lock).execute(&mut **tx).await?;
        }
        let sequence = sqlx::query_scalar(
            "INSERT INTO user_events (time, payload) VALUES ($1, $2) RETURNING sequence",
        )
        .bind(Timestamp::now())
        .bind(change.to_json())
        .fetch_one(&mut **tx)
        .await?;
        Ok(sequence)
    }

    /// Commits, then wakes event streams if the transaction wrote an event.
    async fn commit(&self, tx: Tx<DB>, sequence: Option<i64>) -> Result<()> {
        tx.commit().await?;
        if let Some(sequence) = sequence {
            self.commits.send_replace(sequence);
        }
        Ok(())
    }

    /// Deletes sessions of `user_id` inside `tx` and records the
    /// revocation; returns the ended ids and the event's sequence.
    async fn end_sessions_in(
        tx: &mut Tx<DB>,
        user_id: i64,
        which: Sessions<'_>,
    ) -> Result<(Vec<String>, Option<i64>)> {
        let ended: Vec<String> = match which {
            Sessions::Only(id) => {
                sqlx::query_scalar(
                    "DELETE FROM sessions WHERE user_id = $1 AND id = $2 RETURNING id",
                )
                .bind(user_id)
                .bind(id)
                .fetch_all(&mut **tx)
                .await?
            }
            Sessions::AllBut(id) => {
                sqlx::query_scalar(
                    "DELETE FROM sessions WHERE user_id = $1 AND id <> $2 RETURNING id",
                )
                .bind(user_id)
                .bind(id)
                .fetch_all(&mut **tx)
                .await?
            }
            Sessions::All => {
                sqlx::query_scalar("DELETE FROM sessions WHERE user_id = $1 RETURNING id")
                    .bind(user_id)
                    .fetch_all(&mut **tx)
                    .await?
            }
        };
        if ended.is_empty() {
            return Ok((ended, None));
        }
        let change = UserChange::SessionsRevoked {
            user_id,
            session_ids: ended.clone(),
        };
        let sequence = Self::record(tx, &change).await?;
        Ok((ended, Some(sequence)))
    }
}

#[async_trait]
impl<DB: Backend> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'e> Encode<'e, DB>,
    Timestamp: Type<DB> + for<'e> Encode<'e, DB>,
    String: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a str: Type<DB> + Encode<'a, DB>,
    for<'a> Option<&'a str>: Type<DB> + Encode<'a, DB>,
    Option<String>: Type<DB> + for<'e> Encode<'e, DB>,
    for<'a> &'a [u8]: Type<DB> + Encode<'a, DB>,
    for<'a> &'a Vec<u8>: Type<DB> + Encode<'a, DB>,
    UserRecord: for<'r> FromRow<'r, DB::Row>,
    KeyRecord: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    (String,): for<'r> FromRow<'r, DB::Row>,
    (Option<String>,): for<'r> FromRow<'r, DB::Row>,
    (Option<i64>,): for<'r> FromRow<'r, DB::Row>,
    (i64, String, Option<String>): for<'r> FromRow<'r, DB::Row>,
    (bool, bool): for<'r> FromRow<'r, DB::Row>,
    (i64, Timestamp): for<'r> FromRow<'r, DB::Row>,
    (i64, String): for<'r> FromRow<'r, DB::Row>,
    (i64, Timestamp, String): for<'r> FromRow<'r, DB::Row>,
    (String, i64, String, Timestamp): for<'r> FromRow<'r, DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    async fn ping(&self) -> Result<()> {
        lend!(self.read, |conn| sqlx::query("SELECT 1").execute(conn))?;
        Ok(())
    }

    fn pool_status(&self) -> shared::db::PoolStatus {
        self.read.status()
    }

    async fn create_user(&self, user: NewUser<'_>) -> Result<UserRecord> {
        let mut tx = self.begin_write().await?;
        let now = Timestamp::now();
        let created: UserRecord = sqlx::query_as("INSERT INTO users (username, username_key, username_skeleton, email, password_hash, create_time, update_time) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id, username, email, password_hash, avatar_key, create_time")
                .bind(user.username.as_str())
                .bind(user.username.key())
                .bind(user.username.skeleton())
                .bind(user.email.as_str())
                .bind(user.password_hash)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(on_unique_violation)?;
        let change = UserChange::UserUpserted {
            user_id: created.id,
            username: created.username.clone(),
            avatar_key: None,
        };
        let sequence = Self::record(&mut tx, &change).await?;
        self.commit(tx, Some(sequence)).await?;
        Ok(created)
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>> {
        Ok(lend!(self.read, |conn| {
            sqlx::query_as("SELECT id, username, email, password_hash, avatar_key, create_time FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
        })?)
    }

    async fn user_by_login(&self, login: &LoginName) -> Result<Option<UserRecord>> {
        Ok(lend!(self.read, |conn| {
            sqlx::query_as("SELECT id, username, email, password_hash, avatar_key, create_time FROM users WHERE username_key = $1 OR email = $1 LIMIT 1")
                .bind(login.as_str())
                .fetch_optional(conn)
        })?)
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>> {
        Ok(lend!(self.read, |conn| {
            sqlx::query_as("SELECT id, username, email, password_hash, avatar_key, create_time FROM users WHERE email = $1")
                .bind(email.as_str())
                .fetch_optional(conn)
        })?)
    }

    async fn taken(&self, username: &Username, email: &Email) -> Result<Option<Error>> {
        let (username_taken, email_taken): (bool, bool) = lend!(self.read, |conn| {
            sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE username_skeleton = $1 OR username_key = $2), \
                            EXISTS (SELECT 1 FROM users WHERE email = $3)",
                )
                .bind(username.skeleton())
                .bind(username.key())
                .bind(email.as_str())
                .fetch_one(conn)
        })?;
        Ok(if username_taken {
            Some(Error::UsernameTaken)
        } else if email_taken {
            Some(Error::EmailTaken)
        } else {
            None
        })
    }

    async fn update_user(
        &self,
        id: i64,
        username: Option<&Username>,
        email: Option<&Email>,
    ) -> Result<Option<UpdatedUser>> {
        let mut tx = self.begin_write().await?;
        let previous_email: Option<String> =
            sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(previous_email) = previous_email else {
            return Ok(None);
        };
        let updated: UserRecord = sqlx::query_as("UPDATE users SET username = COALESCE($2, username), \
                     username_key = COALESCE($3, username_key), \
                     username_skeleton = COALESCE($4, username_skeleton), email = COALESCE($5, email), \
                     update_time = $6 WHERE id = $1 RETURNING id, username, email, password_hash, avatar_key, create_time")
                .bind(id)
                .bind(username.map(|u| u.as_str()))
                .bind(username.map(|u| u.key()))
                .bind(username.map(|u| u.skeleton()))
                .bind(email.map(|e| e.as_str()))
                .bind(Timestamp::now())
                .fetch_one(&mut *tx)
                .await
                .map_err(on_unique_violation)?;
        // A reset link mailed to the old address must not outlive
        // the change of address.
        if updated.email != previous_email {
            sqlx::query("DELETE FROM password_resets WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        // Only the public profile is replicated; an email change is
        // nobody else's business.
        let mut sequence = None;
        if username.is_some() {
            let change = UserChange::UserUpserted {
                user_id: updated.id,
                username: updated.username.clone(),
                avatar_key: updated.avatar_key.clone(),
            };
            sequence = Some(Self::record(&mut tx, &change).await?);
        }
        self.commit(tx, sequence).await?;
        Ok(Some(UpdatedUser {
            user: updated,
            previous_email,
        }))
    }

    async fn delete_user(&self, id: i64) -> Result<Option<UserRecord>> {
        let mut tx = self.begin_write().await?;
        let deleted: Option<UserRecord> = sqlx::query_as("DELETE FROM users WHERE id = $1 RETURNING id, username, email, password_hash, avatar_key, create_time")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(deleted) = deleted else {
            return Ok(None);
        };
        let change = UserChange::UserDeleted { user_id: id };
        let sequence = Self::record(&mut tx, &change).await?;
        self.commit(tx, Some(sequence)).await?;
        Ok(Some(deleted))
    }

    async fn set_password(
        &self,
        user_id: i64,
        hash: &str,
        revoke: Sessions<'_>,
    ) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let updated =
            sqlx::query("UPDATE users SET password_hash = $2, update_time = $3 WHERE id = $1")
                .bind(user_id)
                .bind(hash)
                .bind(Timestamp::now())
                .execute(&mut *tx)
                .await?;
        if DB::rows_affected(&updated) == 0 {
            return Err(Error::UserNotFound);
        }
        sqlx::query("DELETE FROM password_resets WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let (ended, sequence) = Self::end_sessions_in(&mut tx, user_id, revoke).await?;
        self.commit(tx, sequence).await?;
        Ok(ended)
    }

    async fn add_reset_token(
        &self,
        user_id: i64,
        token_hash: &[u8],
        now: Timestamp,
        expire_time: Timestamp,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM password_resets WHERE user_id = $1 AND expire_time <= $2")
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
                    "INSERT INTO password_resets (token_hash, user_id, create_time, expire_time) VALUES ($1, $2, $3, $4)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(now)
                .bind(expire_time)
                .execute(&mut *tx)
                .await?;
        self.commit(tx, None).await
    }

    async fn reset_token_is_live(&self, token_hash: &[u8], now: Timestamp) -> Result<bool> {
        let found: Option<i64> = lend!(self.read, |conn| sqlx::query_scalar(
            "SELECT user_id FROM password_resets WHERE token_hash = $1 AND expire_time > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(conn))?;
        Ok(found.is_some())
    }

    async fn backfill_username_skeletons(&self) -> Result<usize> {
        let rows: Vec<(i64, String)> = lend!(self.read, |conn| sqlx::query_as(
            "SELECT id, username FROM users WHERE username_skeleton IS NULL"
        )
        .fetch_all(conn))?;
        let mut filled = 0;
        for (id, username) in rows {
            let result = lend!(self.write, |conn| {
                sqlx::query(
                        "UPDATE users SET username_skeleton = $2 WHERE id = $1 AND username_skeleton IS NULL",
                    )
                    .bind(id)
                    .bind(skeleton(&username))
                    .execute(conn)
            });
            match result {
                Ok(_) => filled += 1,
                Err(e)
                    if e.as_database_error()
                        .is_some_and(|d| d.is_unique_violation()) =>
                {
                    tracing::warn!(
                        user_id = id,
                        "username looks like another one: left without a skeleton"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(filled)
    }

    async fn reset_password(
        &self,
        token_hash: &[u8],
        now: Timestamp,
        new_hash: &str,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        // Taking the token out first makes it single-use even under
        // concurrent attempts.
        let claimed: Option<(i64, Timestamp)> = sqlx::query_as(
            "DELETE FROM password_resets WHERE token_hash = $1 RETURNING user_id, expire_time",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, expire_time)) = claimed else {
            return Ok(None);
        };
        if expire_time <= now {
            self.commit(tx, None).await?;
            return Ok(None);
        }
        sqlx::query("UPDATE users SET password_hash = $2, update_time = $3 WHERE id = $1")
            .bind(user_id)
            .bind(new_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM password_resets WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let (_, sequence) = Self::end_sessions_in(&mut tx, user_id, Sessions::All).await?;
        self.commit(tx, sequence).await?;
        Ok(Some(user_id))
    }

    async fn set_avatar(
        &self,
        user_id: i64,
        key: Option<&str>,
    ) -> Result<Option<(UserRecord, Option<String>)>> {
        let mut tx = self.begin_write().await?;
        let previous: Option<Option<String>> =
            sqlx::query_scalar("SELECT avatar_key FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(previous) = previous else {
            return Ok(None);
        };
        if key.is_none() && previous.is_none() {
            let user = sqlx::query_as("SELECT id, username, email, password_hash, avatar_key, create_time FROM users WHERE id = $1")
                    .bind(user_id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Ok(Some((user, None)));
        }
        let user: UserRecord = sqlx::query_as("UPDATE users SET avatar_key = $2, update_time = $3 WHERE id = $1 RETURNING id, username, email, password_hash, avatar_key, create_time")
                .bind(user_id)
                .bind(key)
                .bind(Timestamp::now())
                .fetch_one(&mut *tx)
                .await?;
        let change = UserChange::UserUpserted {
            user_id,
            username: user.username.clone(),
            avatar_key: user.avatar_key.clone(),
        };
        let sequence = Self::record(&mut tx, &change).await?;
        self.commit(tx, Some(sequence)).await?;
        Ok(Some((user, previous)))
    }

    async fn create_session(&self, session: NewSession<'_>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, create_time, expire_time) VALUES ($1, $2, $3, $4)",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(Timestamp::now())
        .bind(session.expire_time)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
            .bind(session.refresh_hash)
            .bind(session.id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, None).await
    }

    async fn session_is_live(
        &self,
        session_id: &str,
        user_id: i64,
        now: Timestamp,
    ) -> Result<bool> {
        let found: Option<String> = lend!(self.read, |conn| sqlx::query_scalar(
            "SELECT id FROM sessions WHERE id = $1 AND user_id = $2 AND expire_time > $3",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .fetch_optional(conn))?;
        Ok(found.is_some())
    }

    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        now: Timestamp,
    ) -> Result<Rotation> {
        use crate::store::{Rotation, SessionRecord, Sessions};
        let mut tx = self.begin_write().await?;
        // Claiming the token is the first statement, so two concurrent
        // refreshes with it cannot both win.
        let claimed: Option<String> = sqlx::query_scalar(
                    "UPDATE refresh_tokens SET used = TRUE WHERE token_hash = $1 AND used = FALSE RETURNING session_id",
                )
                .bind(old_hash)
                .fetch_optional(&mut *tx)
                .await?;

        let Some(session_id) = claimed else {
            let reused: Option<String> =
                sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(old_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(session_id) = reused else {
                return Ok(Rotation::Unknown);
            };
            let owner: Option<i64> =
                sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = $1")
                    .bind(&session_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let mut sequence = None;
            if let Some(user_id) = owner {
                sequence = Self::end_sessions_in(&mut tx, user_id, Sessions::Only(&session_id))
                    .await?
                    .1;
            }
            self.commit(tx, sequence).await?;
            return Ok(Rotation::Reused);
        };

        let session: Option<(String, i64, String, Timestamp)> = sqlx::query_as(
            "SELECT s.id, s.user_id, u.username, s.expire_time \
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        )
        .bind(&session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, user_id, username, expire_time)) = session else {
            return Ok(Rotation::Unknown);
        };
        if expire_time <= now {
            let sequence = Self::end_sessions_in(&mut tx, user_id, Sessions::Only(&id))
                .await?
                .1;
            self.commit(tx, sequence).await?;
            return Ok(Rotation::Expired);
        }
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
            .bind(new_hash)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, None).await?;
        Ok(Rotation::Rotated(SessionRecord {
            id,
            user_id,
            username,
            expire_time,
        }))
    }

    async fn end_sessions(&self, user_id: i64, which: Sessions<'_>) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let (ended, sequence) = Self::end_sessions_in(&mut tx, user_id, which).await?;
        self.commit(tx, sequence).await?;
        Ok(ended)
    }

    async fn signing_keys(&self) -> Result<Vec<KeyRecord>> {
        Ok(lend!(self.read, |conn| sqlx::query_as(
            "SELECT kid, private_key, public_key, create_time, activate_time FROM signing_keys \
                     ORDER BY activate_time DESC, kid DESC",
        )
        .fetch_all(conn))?)
    }

    async fn add_signing_key(&self, key: &KeyRecord) -> Result<()> {
        lend!(self.write, |conn| sqlx::query(
            "INSERT INTO signing_keys (kid, private_key, public_key, create_time, activate_time) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING",
        )
        .bind(&key.kid)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(key.create_time)
        .bind(key.activate_time)
        .execute(conn))?;
        Ok(())
    }

    async fn remove_signing_key(&self, kid: &str) -> Result<()> {
        lend!(self.write, |conn| sqlx::query(
            "DELETE FROM signing_keys WHERE kid = $1"
        )
        .bind(kid)
        .execute(conn))?;
        Ok(())
    }

    async fn events_after(&self, sequence: i64, limit: i64) -> Result<Vec<EventRecord>> {
        let rows: Vec<(i64, Timestamp, String)> = lend!(self.read, |conn| {
            sqlx::query_as(
                    "SELECT sequence, time, payload FROM user_events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                )
                .bind(sequence)
                .bind(limit)
                .fetch_all(conn)
        })?;
        rows.into_iter()
            .map(|(sequence, time, payload)| {
                Ok(EventRecord {
                    sequence,
                    time,
                    change: UserChange::from_json(&payload)?,
                })
            })
            .collect()
    }

    async fn oldest_event(&self) -> Result<Option<i64>> {
        let (oldest,): (Option<i64>,) = lend!(self.read, |conn| sqlx::query_as(
            "SELECT MIN(sequence) FROM user_events"
        )
        .fetch_one(conn))?;
        Ok(oldest)
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64> {
        let pruned = lend!(self.write, |conn| sqlx::query(
            "DELETE FROM user_events WHERE time < $1 \
             AND sequence < (SELECT MAX(sequence) FROM user_events)",
        )
        .bind(before)
        .execute(conn))?;
        Ok(DB::rows_affected(&pruned))
    }

    async fn snapshot(&self, revoked_since: Timestamp) -> Result<UsersSnapshot> {
        let mut tx = self.read.begin(DB::BEGIN_SNAPSHOT).await?;
        let (sequence,): (Option<i64>,) = sqlx::query_as("SELECT MAX(sequence) FROM user_events")
            .fetch_one(&mut *tx)
            .await?;
        let users: Vec<(i64, String, Option<String>)> =
            sqlx::query_as("SELECT id, username, avatar_key FROM users ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let recent: Vec<(i64, Timestamp, String)> = sqlx::query_as(
            "SELECT sequence, time, payload FROM user_events WHERE time >= $1 ORDER BY sequence",
        )
        .bind(revoked_since)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let (mut revoked, mut deleted) = (Vec::new(), Vec::new());
        for (_, _, payload) in recent {
            match UserChange::from_json(&payload)? {
                UserChange::SessionsRevoked {
                    user_id,
                    session_ids,
                } => revoked.push((user_id, session_ids)),
                UserChange::UserDeleted { user_id } => deleted.push(user_id),
                UserChange::UserUpserted { .. } => {}
            }
        }
        Ok(UsersSnapshot {
            sequence: sequence.unwrap_or(0),
            users,
            revoked,
            deleted,
        })
    }

    fn event_commits(&self) -> tokio::sync::watch::Receiver<i64> {
        self.commits.subscribe()
    }
}

/// Turns a unique-index violation into the matching client error; any other
/// error passes through. The index names (PostgreSQL) and column names
/// (SQLite's message) both say which field collided.
fn on_unique_violation(e: sqlx::Error) -> Error {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        let what = db.constraint().unwrap_or_else(|| db.message());
        if what.contains("email") {
            return Error::EmailTaken;
        }
        if what.contains("username") {
            return Error::UsernameTaken;
        }
    }
    e.into()
}
