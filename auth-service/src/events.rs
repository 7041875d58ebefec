//! User events: what the outbox records, and how the internal
//! `WatchUserEvents` stream turns it into wire events, from a cursor, then
//! live.
//!
//! Revocation is by session id, never by time: token times are whole seconds
//! and cannot tell a revoked token from a new one of the same second.

use std::{pin::Pin, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use proto::auth::{self as pb, user_event::Event};

use crate::{avatars::Avatars, error::Error, store::Store};

/// A change recorded in the outbox, in its storage form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserChange {
    /// A user was created or their public profile changed.
    UserUpserted {
        /// The user id.
        user_id: i64,
        /// The new username.
        username: String,
        /// Object key of the profile picture, if any.
        avatar_key: Option<String>,
    },
    /// A user was deleted.
    UserDeleted {
        /// The user id.
        user_id: i64,
    },
    /// Sessions ended.
    SessionsRevoked {
        /// Whose sessions.
        user_id: i64,
        /// Which ones.
        session_ids: Vec<String>,
    },
}

impl UserChange {
    /// The outbox payload.
    pub fn to_json(&self) -> String {
        // Serialising a plain enum of strings and integers cannot fail.
        serde_json::to_string(self).expect("UserChange serialises")
    }

    /// Parses an outbox payload.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// How many events one database read fetches.
const BATCH: i64 = 256;
/// How often a caught-up stream looks for events committed by other replicas.
const POLL: Duration = Duration::from_millis(500);

/// The stream `WatchUserEvents` answers with.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::UserEvent, Status>> + Send>>;

/// Streams every event after `after`, then live ones, until the client goes
/// away or `shutdown` is cancelled. A database failure ends the stream with
/// `UNAVAILABLE`; the client resumes from its cursor.
pub fn watch(
    store: Arc<dyn Store>,
    after: i64,
    avatars: Arc<Avatars>,
    shutdown: CancellationToken,
) -> EventStream {
    let (tx, rx) = mpsc::channel(BATCH as usize);
    tokio::spawn(async move {
        let mut cursor = after;
        let mut commits = store.event_commits();
        loop {
            commits.mark_unchanged();
            let batch = match store.events_after(cursor, BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            let caught_up = (batch.len() as i64) < BATCH;
            for record in batch {
                cursor = record.sequence;
                let event = to_wire(record.sequence, record.time, record.change, &avatars);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if caught_up {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    _ = commits.changed() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            } else if shutdown.is_cancelled() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn to_wire(
    sequence: i64,
    time: shared::time::Timestamp,
    change: UserChange,
    avatars: &Avatars,
) -> pb::UserEvent {
    let event = match change {
        UserChange::UserUpserted {
            user_id,
            username,
            avatar_key,
        } => Event::UserUpserted(pb::UserProfile {
            id: user_id,
            username,
            avatar_url: avatars.url(avatar_key.as_deref()),
        }),
        UserChange::UserDeleted { user_id } => Event::UserDeleted(pb::UserDeleted { user_id }),
        UserChange::SessionsRevoked {
            user_id,
            session_ids,
        } => Event::SessionsRevoked(pb::SessionsRevoked {
            user_id,
            session_ids,
        }),
    };
    pb::UserEvent {
        sequence,
        time: Some(time.into()),
        event: Some(event),
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(anyhow::anyhow!("corrupt outbox payload: {e}"))
    }
}
