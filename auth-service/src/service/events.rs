//! `blog.auth.v1.UserEventService`: the internal event stream, guarded by
//! the shared internal token.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use proto::auth::{
    SessionsRevoked, SnapshotUsersRequest, UserDeleted, UserProfile, UserSnapshot,
    WatchUserEventsRequest, user_event_service_server::UserEventService,
};
use shared::{secret::constant_time_eq, status::FieldErrors};

use crate::{
    AppState,
    error::Error,
    events::{self, EventStream},
};

/// The metadata key carrying the internal token.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// Handlers of `UserEventService`.
pub struct UserEventsApi {
    /// Shared service state.
    state: Arc<AppState>,
}

impl UserEventsApi {
    /// Handlers over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Refuses a call without the internal token.
    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get(INTERNAL_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if constant_time_eq(presented, self.state.internal_token.expose_secret()) {
            Ok(())
        } else {
            Err(Error::BadInternalToken.into())
        }
    }
}

/// Users per part of a snapshot.
const SNAPSHOT_PART: usize = 1000;

/// The stream `SnapshotUsers` answers with.
pub type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<UserSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl UserEventService for UserEventsApi {
    type WatchUserEventsStream = EventStream;

    type SnapshotUsersStream = SnapshotStream;

    #[tracing::instrument(skip_all)]
    async fn watch_user_events(
        &self,
        request: Request<WatchUserEventsRequest>,
    ) -> Result<Response<Self::WatchUserEventsStream>, Status> {
        self.check_token(&request)?;
        let after = request.into_inner().after_sequence;
        if after < 0 {
            return Err(Error::from(FieldErrors::single(
                "after_sequence",
                "must not be negative",
            ))
            .into());
        }
        // Events after `after` that are no longer kept cannot be replayed.
        if let Some(oldest) = self.state.store.oldest_event().await?
            && after < oldest - 1
        {
            return Err(Status::failed_precondition(format!(
                "events after {after} are no longer kept (the oldest is {oldest}): \
                 load SnapshotUsers, then watch from its sequence"
            )));
        }
        tracing::info!(after, "event stream opened");
        Ok(Response::new(events::watch(
            self.state.store.clone(),
            after,
            self.state.avatars.clone(),
            self.state.shutdown.clone(),
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn snapshot_users(
        &self,
        request: Request<SnapshotUsersRequest>,
    ) -> Result<Response<Self::SnapshotUsersStream>, Status> {
        self.check_token(&request)?;
        let since = self.state.clock.now() - self.state.token_lifetime;
        let snapshot = self.state.store.snapshot(since).await?;
        let sequence = snapshot.sequence;
        let avatars = self.state.avatars.clone();
        let users: Vec<UserProfile> = snapshot
            .users
            .into_iter()
            .map(|(id, username, avatar_key)| UserProfile {
                id,
                username,
                avatar_url: avatars.url(avatar_key.as_deref()),
            })
            .collect();
        let revoked: Vec<SessionsRevoked> = snapshot
            .revoked
            .into_iter()
            .map(|(user_id, session_ids)| SessionsRevoked {
                user_id,
                session_ids,
            })
            .collect();
        tracing::info!(sequence, users = users.len(), "snapshot sent");
        let deleted = snapshot
            .deleted
            .into_iter()
            .map(|user_id| UserDeleted { user_id })
            .collect();
        let mut parts = vec![UserSnapshot {
            sequence,
            users: Vec::new(),
            revoked,
            deleted,
        }];
        for chunk in users.chunks(SNAPSHOT_PART) {
            parts.push(UserSnapshot {
                sequence,
                users: chunk.to_vec(),
                revoked: Vec::new(),
                deleted: Vec::new(),
            });
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            parts.into_iter().map(Ok),
        ))))
    }
}
