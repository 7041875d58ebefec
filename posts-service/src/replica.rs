//! The consumer of the auth-service's `WatchUserEvents` stream: keeps the
//! `authors` replica, deletes a deleted user's posts, and records
//! revocations (`docs/architecture.md`). Each event's effect and the cursor commit in one
//! transaction, so across crashes and restarts every event is applied exactly
//! once in effect; the in-memory revocations are updated for every event
//! seen, applied here or by another replica sharing the database.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use shared::{time::Timestamp, trace::TraceContext};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

use proto::auth::{
    SnapshotUsersRequest, UserEvent, WatchUserEventsRequest, user_event::Event,
    user_event_service_client::UserEventServiceClient,
};

use crate::{
    backoff,
    revocations::Revocations,
    store::{ReplicaChange, ReplicaSnapshot, Store},
};

/// The most events applied in one transaction.
const BATCH: usize = 512;

/// How the stream is doing, for health reports and metrics.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    /// Whether a stream is open now.
    pub connected: AtomicBool,
    /// Sequence of the last event applied or seen: where the stream
    /// resumes. Starts at the stored cursor the revocations were loaded at.
    pub last_sequence: AtomicI64,
    /// Commit time of that event, microseconds since the epoch.
    pub last_event_time: AtomicI64,
}

/// Everything the consumer needs.
pub struct Replica {
    /// Client of the auth-service's event stream.
    pub client: UserEventServiceClient<Channel>,
    /// The shared internal token.
    pub internal_token: secrecy::SecretString,
    /// Where effects and the cursor are written.
    pub store: Arc<dyn Store>,
    /// The in-memory revocations the interceptor reads.
    pub revocations: Arc<Revocations>,
    /// How long after a revocation its tokens may still be presented
    /// (token lifetime plus leeway).
    pub window: Duration,
    /// Shared status.
    pub status: Arc<ReplicaStatus>,
}

impl Replica {
    /// Follows the stream until `shutdown`, reconnecting with backoff from
    /// the stored cursor whenever it breaks.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut delays = backoff::delays(Duration::from_secs(5));
        loop {
            let result = self.follow(&shutdown).await;
            let had_connected = self.status.connected.swap(false, Ordering::Relaxed);
            let Err(e) = result else {
                return;
            };
            if had_connected {
                // The stream had worked: back off from the start again.
                delays = backoff::delays(Duration::from_secs(5));
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(error = %e, retry_in = ?delay, "user event stream interrupted");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// `message` as a call with the internal token and `trace`.
    fn internal<T>(&self, message: T, trace: &TraceContext) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "x-internal-token",
            secrecy::ExposeSecret::expose_secret(&self.internal_token).parse()?,
        );
        trace.inject(request.metadata_mut());
        Ok(request)
    }

    /// One stream, from where this replica is: `Ok` only on shutdown. An
    /// empty replica, or one further behind than the events the
    /// auth-service keeps, first loads a snapshot.
    ///
    /// The position is this replica's own (the last event it saw, or the
    /// shared cursor its revocations were loaded at), not the shared
    /// cursor: another replica may have moved that past events whose
    /// revocations this one still has to learn. Events already applied to
    /// the database are then only noted in memory.
    async fn follow(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // The auth-service logs the stream under this trace too.
        let trace = TraceContext::root();
        if self.position() == 0 {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                loaded = self.load_snapshot(&trace) => loaded?,
            }
        }
        let mut stream = loop {
            let request = self.internal(
                WatchUserEventsRequest {
                    after_sequence: self.position(),
                },
                &trace,
            )?;
            let opened = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                opened = self.client.watch_user_events(request) => opened,
            };
            match opened {
                Ok(stream) => break stream.into_inner(),
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    tracing::info!(
                        position = self.position(),
                        "events after this replica's position are gone: loading a snapshot"
                    );
                    self.load_snapshot(&trace).await?;
                }
                Err(status) => return Err(status.into()),
            }
        };
        self.status.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            after = self.position(),
            trace_id = trace.trace_id(),
            "following user events"
        );
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = stream.message() => next?,
            };
            let Some(event) = event else {
                anyhow::bail!("the auth-service ended the stream");
            };
            // Events already received go with it, in one transaction: a
            // backlog is caught up in batches, not one commit per event.
            let mut batch = vec![event];
            while batch.len() < BATCH {
                match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                    Ok(Ok(Some(event))) => batch.push(event),
                    Ok(Err(status)) => {
                        self.apply(batch).await?;
                        return Err(status.into());
                    }
                    // Nothing waiting, or the end (the next read reports it).
                    Ok(Ok(None)) | Err(_) => break,
                }
            }
            self.apply(batch).await?;
        }
    }

    /// Brings the store to the auth-service's `SnapshotUsers`.
    async fn load_snapshot(&mut self, trace: &TraceContext) -> anyhow::Result<()> {
        let request = self.internal(SnapshotUsersRequest {}, trace)?;
        let mut parts = self.client.snapshot_users(request).await?.into_inner();
        let now = Timestamp::now();
        let mut sequence = None;
        let mut changes = Vec::new();
        while let Some(part) = parts.message().await? {
            if *sequence.get_or_insert(part.sequence) != part.sequence {
                anyhow::bail!("a snapshot's parts disagree on its sequence");
            }
            changes.extend(part.users.into_iter().map(|user| ReplicaChange::Profile {
                id: user.id,
                username: user.username,
                avatar_url: user.avatar_url,
            }));
            changes.extend(
                part.deleted
                    .into_iter()
                    .map(|deleted| ReplicaChange::UserDeleted {
                        id: deleted.user_id,
                        time: now,
                    }),
            );
            changes.extend(part.revoked.into_iter().map(|revoked| {
                ReplicaChange::SessionsRevoked {
                    user_id: revoked.user_id,
                    session_ids: revoked.session_ids,
                    expire_time: now + self.window,
                }
            }));
        }
        let sequence = sequence.ok_or_else(|| anyhow::anyhow!("an empty snapshot"))?;
        let snapshot = ReplicaSnapshot {
            sequence,
            time: now,
            changes,
        };
        let deleted = self.store.apply_snapshot(&snapshot).await?;
        for change in &snapshot.changes {
            self.hold(change);
        }
        for id in &deleted {
            self.revocations.user_deleted(*id, now + self.window);
        }
        self.status.last_sequence.store(sequence, Ordering::Relaxed);
        tracing::info!(
            sequence,
            changes = snapshot.changes.len(),
            deleted = deleted.len(),
            "caught up through a snapshot"
        );
        Ok(())
    }

    /// The last sequence this replica has seen.
    fn position(&self) -> i64 {
        self.status.last_sequence.load(Ordering::Relaxed)
    }

    /// Applies `events` (in sequence order) to the store in one
    /// transaction, and notes each in memory, applied here or before.
    async fn apply(&self, events: Vec<UserEvent>) -> anyhow::Result<()> {
        let Some(last) = events.last().map(|e| e.sequence) else {
            return Ok(());
        };
        let mut last_time = None;
        let mut changes = Vec::with_capacity(events.len());
        for event in events {
            let time = event.time.map_or_else(Timestamp::now, Timestamp::from);
            last_time = Some(time);
            match event.event {
                Some(e) => changes.push((event.sequence, self.change(e, time))),
                None => tracing::warn!(
                    sequence = event.sequence,
                    "event of an unknown kind skipped"
                ),
            }
        }
        let applied = self.store.apply_events(&changes).await?;
        for (_, change) in &changes {
            self.hold(change);
        }
        self.status.last_sequence.store(last, Ordering::Relaxed);
        if let Some(time) = last_time {
            self.status
                .last_event_time
                .store(time.as_micros(), Ordering::Relaxed);
        }
        tracing::debug!(last, events = changes.len(), applied, "user events");
        Ok(())
    }

    /// Puts what `change` refuses into the in-memory revocations.
    fn hold(&self, change: &ReplicaChange) {
        match change {
            ReplicaChange::SessionsRevoked {
                session_ids,
                expire_time,
                ..
            } => self.revocations.revoke_sessions(session_ids, *expire_time),
            ReplicaChange::UserDeleted { id, time } => {
                self.revocations.user_deleted(*id, *time + self.window)
            }
            ReplicaChange::Profile { .. } => {}
        }
    }

    fn change(&self, event: Event, time: Timestamp) -> ReplicaChange {
        match event {
            Event::UserUpserted(profile) => ReplicaChange::Profile {
                id: profile.id,
                username: profile.username,
                avatar_url: profile.avatar_url,
            },
            Event::UserDeleted(deleted) => ReplicaChange::UserDeleted {
                id: deleted.user_id,
                time,
            },
            Event::SessionsRevoked(revoked) => ReplicaChange::SessionsRevoked {
                user_id: revoked.user_id,
                session_ids: revoked.session_ids,
                expire_time: time + self.window,
            },
        }
    }
}
