//! `blog.auth.v1.UserEventService`: the internal event stream, guarded by
//! the shared internal token.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use proto::auth::{WatchUserEventsRequest, user_event_service_server::UserEventService};
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
}

#[tonic::async_trait]
impl UserEventService for UserEventsApi {
    type WatchUserEventsStream = EventStream;

    #[tracing::instrument(skip_all)]
    async fn watch_user_events(
        &self,
        request: Request<WatchUserEventsRequest>,
    ) -> Result<Response<Self::WatchUserEventsStream>, Status> {
        let presented = request
            .metadata()
            .get(INTERNAL_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !constant_time_eq(presented, self.state.internal_token.expose_secret()) {
            return Err(Error::BadInternalToken.into());
        }
        let after = request.into_inner().after_sequence;
        if after < 0 {
            return Err(Error::from(FieldErrors::single(
                "after_sequence",
                "must not be negative",
            ))
            .into());
        }
        tracing::info!(after, "event stream opened");
        Ok(Response::new(events::watch(
            self.state.store.clone(),
            after,
            self.state.avatars.clone(),
            self.state.shutdown.clone(),
        )))
    }
}
