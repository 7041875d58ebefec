//! The auth-service's one error type, and the one place it becomes a gRPC
//! status. Internal failures are logged in full here and answered with a
//! generic message: no SQL, path or library detail ever reaches a caller.

use shared::status::{self, FieldErrors};
use tonic::Status;

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed, field by field.
    #[error("invalid request: {0:?}")]
    InvalidArgument(FieldErrors),
    /// Another account already has this username (any case).
    #[error("username taken")]
    UsernameTaken,
    /// Another account already has this email.
    #[error("email taken")]
    EmailTaken,
    /// No such user.
    #[error("user not found")]
    UserNotFound,
    /// A call that needs a token came without one.
    #[error("not authenticated")]
    NotAuthenticated,
    /// The token is bad, expired, or its session has ended.
    #[error("invalid token")]
    InvalidToken,
    /// Login with an unknown account or a wrong password.
    #[error("bad credentials")]
    BadCredentials,
    /// Too many failed logins: try again after this long.
    #[error("login throttled")]
    Throttled(std::time::Duration),
    /// A rate limit was reached (`what` says which): try again after this
    /// long.
    #[error("rate limited: {what}")]
    RateLimited {
        /// What was limited, as the client is told.
        what: &'static str,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// The limiter could not decide (its shared store is out of reach).
    #[error("limiter unavailable: {0}")]
    LimiterUnavailable(#[source] shared::limits::Unavailable),
    /// Password hashing is saturated: try again after this long.
    #[error("password hashing busy")]
    Busy(std::time::Duration),
    /// A refresh token that is unknown, used, or past its session's end.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// A password-reset token that is unknown, used, replaced or expired.
    #[error("invalid reset token")]
    InvalidResetToken,
    /// A profile picture that cannot be used.
    #[error("bad image: {0}")]
    BadImage(#[from] crate::images::ImageError),
    /// `DeleteAvatar` with no avatar.
    #[error("no avatar")]
    NoAvatar,
    /// The internal token is missing or wrong.
    #[error("bad internal token")]
    BadInternalToken,
    /// The database cannot be reached or is overloaded.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

/// The result of every fallible operation in the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<FieldErrors> for Error {
    fn from(errors: FieldErrors) -> Self {
        Error::InvalidArgument(errors)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if shared::db::is_unavailable(&e) {
            Error::Unavailable(e)
        } else {
            Error::Internal(e.into())
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(errors) => errors.into_status(),
            Error::UsernameTaken => Status::already_exists("Username already exists"),
            Error::EmailTaken => Status::already_exists("Email already registered"),
            Error::UserNotFound => Status::not_found("User not found"),
            Error::NotAuthenticated => status::not_authenticated(),
            Error::InvalidToken => status::invalid_token(),
            Error::BadCredentials => {
                Status::unauthenticated("Incorrect username/email or password")
            }
            Error::Throttled(wait) => status::resource_exhausted(
                format!(
                    "Too many failed attempts; try again in {} s",
                    status::whole_seconds(wait)
                ),
                wait,
            ),
            Error::RateLimited { what, retry_after } => status::resource_exhausted(
                format!(
                    "{what}; try again in {} s",
                    status::whole_seconds(retry_after)
                ),
                retry_after,
            ),
            Error::Busy(wait) => status::resource_exhausted("Server busy; try again shortly", wait),
            Error::InvalidRefreshToken => {
                Status::unauthenticated("Invalid or expired refresh token")
            }
            Error::InvalidResetToken => {
                FieldErrors::single("token", "Invalid or expired reset token").into_status()
            }
            Error::BadImage(e) => FieldErrors::single("image", &e.to_string()).into_status(),
            Error::NoAvatar => Status::failed_precondition("No profile picture to delete"),
            Error::BadInternalToken => Status::unauthenticated("Invalid internal token"),
            Error::Unavailable(e) => status::unavailable(&e),
            Error::LimiterUnavailable(e) => status::unavailable(&e),
            Error::Internal(e) => status::internal(&e),
        }
    }
}
