//! Sessions: login, refresh-token rotation with reuse detection, logout and
//! the live-session check every protected call makes.
//!
//! A session is a row with an absolute end; its refresh tokens are stored as
//! SHA-256 only and each works once. Presenting a used one means it was
//! stolen or replayed, so the whole session ends.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::Request;

use proto::auth::TokenResponse;
use shared::{
    CurrentUser,
    secret::{random_bytes, random_token, sha256},
    time::{Clock, Timestamp},
};

use crate::{
    error::{Error, Result},
    store::{NewSession, Rotation, Sessions, Store},
    tokens::AccessTokens,
};

/// Creates, rotates and ends sessions.
pub struct SessionManager {
    /// Where sessions live.
    store: Arc<dyn Store>,
    /// Signs access tokens.
    tokens: Arc<AccessTokens>,
    /// Absolute lifetime of a session (and so of its refresh tokens).
    ttl: Duration,
    /// Where the time comes from.
    clock: Clock,
}

impl SessionManager {
    /// A manager issuing sessions of `ttl`.
    pub fn new(
        store: Arc<dyn Store>,
        tokens: Arc<AccessTokens>,
        ttl: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            tokens,
            ttl,
            clock,
        }
    }

    /// Starts a session for an authenticated user.
    pub async fn start(&self, user_id: i64, username: &str) -> Result<TokenResponse> {
        let session_id = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
        let refresh_token = random_token();
        let expire_time = self.clock.now() + self.ttl;
        self.store
            .create_session(NewSession {
                id: &session_id,
                user_id,
                refresh_hash: &sha256(&refresh_token),
                expire_time,
            })
            .await?;
        self.respond(user_id, username, &session_id, expire_time, refresh_token)
    }

    /// Exchanges a refresh token for a new pair.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse> {
        let next = random_token();
        let rotation = self
            .store
            .rotate_refresh_token(&sha256(refresh_token), &sha256(&next), self.clock.now())
            .await?;
        match rotation {
            Rotation::Rotated(session) => self.respond(
                session.user_id,
                &session.username,
                &session.id,
                session.expire_time,
                next,
            ),
            Rotation::Reused => {
                tracing::warn!("refresh token reused: session revoked");
                Err(Error::InvalidRefreshToken)
            }
            Rotation::Expired | Rotation::Unknown => Err(Error::InvalidRefreshToken),
        }
    }

    /// Ends sessions of a user.
    pub async fn end(&self, user_id: i64, which: Sessions<'_>) -> Result<Vec<String>> {
        self.store.end_sessions(user_id, which).await
    }

    /// The caller, if their token verified *and* its session still exists:
    /// logout, a password change or account deletion take effect at once
    /// here, not when the token expires.
    pub async fn require_live<T>(&self, request: &Request<T>) -> Result<CurrentUser> {
        let user = CurrentUser::require(request).map_err(|_| Error::NotAuthenticated)?;
        if self
            .store
            .session_is_live(&user.session_id, user.id, self.clock.now())
            .await?
        {
            Ok(user)
        } else {
            Err(Error::InvalidToken)
        }
    }

    fn respond(
        &self,
        user_id: i64,
        username: &str,
        session_id: &str,
        expire_time: Timestamp,
        refresh_token: String,
    ) -> Result<TokenResponse> {
        let access = self
            .tokens
            .issue(user_id, username, session_id, expire_time)?;
        Ok(TokenResponse {
            access_token: access.token,
            token_type: "Bearer".into(),
            expires_in: access.expires_in,
            refresh_token,
            refresh_expires_in: expire_time.since(self.clock.now()).as_secs() as i64,
        })
    }
}
