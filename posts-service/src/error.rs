//! The posts-service's one error type, and the one place it becomes a gRPC
//! status. Internal failures are logged in full and answered generically.

use shared::status::{self, FieldErrors};
use tonic::Status;

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed, field by field.
    #[error("invalid request: {0:?}")]
    InvalidArgument(FieldErrors),
    /// No such post.
    #[error("post not found")]
    PostNotFound,
    /// No such author.
    #[error("user not found")]
    UserNotFound,
    /// The caller is not the post's author; the action is "update" or "delete".
    #[error("not the author")]
    NotAuthor(&'static str),
    /// The caller's account no longer exists.
    #[error("invalid token")]
    InvalidToken,
    /// The caller's post writes are over their rate: try again after this
    /// long.
    #[error("post writes rate limited")]
    WriteRateLimited(std::time::Duration),
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
            Error::PostNotFound => Status::not_found("Post not found"),
            Error::UserNotFound => Status::not_found("User not found"),
            Error::NotAuthor(action) => {
                Status::permission_denied(format!("Not authorized to {action} this post"))
            }
            Error::InvalidToken => status::invalid_token(),
            Error::WriteRateLimited(wait) => {
                status::resource_exhausted("Too many post writes; slow down", wait)
            }
            Error::Unavailable(e) => status::unavailable(&e),
            Error::Internal(e) => status::internal(&e),
        }
    }
}
