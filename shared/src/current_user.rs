//! Who is calling: the interceptor that verifies a bearer token whenever one is
//! present, and [`CurrentUser`], the one-line way for a handler to require one.
//!
//! A present but bad token is refused on every method, even public ones: a
//! client with broken credentials learns at once rather than silently being
//! treated as anonymous.

use std::sync::Arc;

use tonic::{Request, Status, metadata::MetadataMap, service::Interceptor};

use crate::{
    observe::Metrics,
    status,
    verify::{Verifier, VerifyError},
};

/// The verified caller: who a token speaks for, as [`Verifier::verify`]
/// finds it, put in the request extensions by [`AuthInterceptor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentUser {
    /// The user id.
    pub id: i64,
    /// The username the token was issued with.
    pub username: String,
    /// The session the token belongs to.
    pub session_id: String,
    /// When the token expires, seconds since the epoch.
    pub expires_at: i64,
}

impl CurrentUser {
    /// The caller, or `UNAUTHENTICATED "Not authenticated"` when the request
    /// carried no token.
    pub fn require<T>(request: &Request<T>) -> Result<Self, Status> {
        Self::optional(request).ok_or_else(status::not_authenticated)
    }

    /// The caller, when the request carried a token.
    pub fn optional<T>(request: &Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }
}

/// Answers whether a verified token has been revoked since it was issued,
/// from memory: the interceptor runs on every call and must not wait.
pub trait RevocationCheck: Send + Sync {
    /// Whether calls with this identity must be refused.
    fn is_revoked(&self, user: &CurrentUser) -> bool;
}

/// Verifies `authorization: Bearer <token>` when present and records the caller.
#[derive(Clone)]
pub struct AuthInterceptor {
    /// The shared verifier and its keys.
    verifier: Arc<Verifier>,
    /// Revoked sessions and deleted users, where the service tracks them.
    revocations: Option<Arc<dyn RevocationCheck>>,
    /// Told when a token names a key we do not hold, so keys can be refetched.
    on_unknown_key: Option<Arc<tokio::sync::Notify>>,
    /// Where refusals are counted.
    metrics: Option<Arc<Metrics>>,
}

impl AuthInterceptor {
    /// An interceptor that trusts `verifier` alone.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            revocations: None,
            on_unknown_key: None,
            metrics: None,
        }
    }

    /// Also counts refusals, by reason, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn refused(&self, reason: &'static str) {
        tracing::debug!(reason, "token refused");
        if let Some(metrics) = &self.metrics {
            metrics.token_rejected(reason);
        }
    }

    /// Also refuses tokens that `revocations` says are revoked.
    pub fn with_revocations(mut self, revocations: Arc<dyn RevocationCheck>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Also notifies `notify` whenever a token names an unknown key.
    pub fn with_unknown_key_notify(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.on_unknown_key = Some(notify);
        self
    }

    /// The verified caller of a request with these headers: `Ok(None)` when no
    /// token was sent.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Option<CurrentUser>, Status> {
        let Some(token) =
            bearer_token(metadata).inspect_err(|_| self.refused("malformed_header"))?
        else {
            return Ok(None);
        };
        let user = self.verifier.verify(token).map_err(|e| {
            self.refused(e.reason());
            match e {
                VerifyError::NoKeys => Status::unavailable(status::KEYS_UNAVAILABLE),
                VerifyError::UnknownKey => {
                    if let Some(notify) = &self.on_unknown_key {
                        notify.notify_one();
                    }
                    status::invalid_token()
                }
                _ => status::invalid_token(),
            }
        })?;
        if self
            .revocations
            .as_ref()
            .is_some_and(|r| r.is_revoked(&user))
        {
            self.refused("revoked");
            return Err(status::invalid_token());
        }
        Ok(Some(user))
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(user) = self.authenticate(request.metadata())? {
            // The call's span (see `observe`) names the caller from here on.
            tracing::Span::current().record("user_id", user.id);
            request.extensions_mut().insert(user);
        }
        Ok(request)
    }
}

/// The token of an `authorization: Bearer <token>` header: `Ok(None)` when
/// there is no such header, an error when there are several or it is not a
/// well-formed bearer credential.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let mut values = metadata.get_all("authorization").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(status::invalid_token());
    }
    let value = value.to_str().map_err(|_| status::invalid_token())?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(status::invalid_token)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(status::invalid_token());
    }
    Ok(Some(token))
}
