//! The status messages clients are written against (`docs/contract.md`), and the one
//! way to answer bad input: `INVALID_ARGUMENT` with a `google.rpc.BadRequest`
//! field violation per bad field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// No token on a call that needs one.
pub const NOT_AUTHENTICATED: &str = "Not authenticated";
/// A token that is malformed, badly signed, expired or revoked.
pub const INVALID_TOKEN: &str = "Invalid or expired token";
/// Keys not loaded yet: we cannot tell a good token from a bad one.
pub const KEYS_UNAVAILABLE: &str = "Token verification is not available yet; try again shortly";
/// A dependency (the database) is unreachable.
pub const SERVICE_UNAVAILABLE: &str = "Service temporarily unavailable; try again shortly";
/// Anything unexpected: the detail goes to the log, never to the caller.
pub const INTERNAL: &str = "Internal error";

/// `UNAUTHENTICATED "Not authenticated"`.
pub fn not_authenticated() -> Status {
    Status::unauthenticated(NOT_AUTHENTICATED)
}

/// `UNAUTHENTICATED "Invalid or expired token"`.
pub fn invalid_token() -> Status {
    Status::unauthenticated(INVALID_TOKEN)
}

/// `UNAVAILABLE` for a dependency that cannot be reached; `cause` is logged,
/// never sent.
pub fn unavailable(cause: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %cause, "dependency unavailable");
    Status::unavailable(SERVICE_UNAVAILABLE)
}

/// `INTERNAL "Internal error"`; `cause` is logged in full, never sent.
pub fn internal(cause: &dyn std::fmt::Debug) -> Status {
    tracing::error!(error = ?cause, "internal error");
    Status::internal(INTERNAL)
}

/// `wait` in whole seconds, rounded up: what a `RetryInfo` says, so that a
/// client never retries early.
pub fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` saying when to try
/// again, in whole seconds rounded up so that a client never retries early.
pub fn resource_exhausted(message: impl Into<String>, retry_after: std::time::Duration) -> Status {
    let retry_after = std::time::Duration::from_secs(whole_seconds(retry_after));
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// Collects what is wrong with a request, field by field, so a client learns
/// every problem in one round trip. Becomes `INVALID_ARGUMENT` with a
/// `google.rpc.BadRequest` detail.
#[derive(Debug, Default, Clone)]
pub struct FieldErrors {
    /// One entry per bad field, in request order.
    violations: Vec<FieldViolation>,
    /// The status message; by default the violations, joined.
    message: Option<String>,
}

impl FieldErrors {
    /// One bad field, with `message` as both the status message and the
    /// violation's description.
    pub fn single(field: &str, message: &str) -> Self {
        let mut errors = Self::default();
        errors.add(field, message);
        errors.message = Some(message.to_owned());
        errors
    }

    /// Records that `field` is bad because of `description`.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description.into()));
    }

    /// Keeps the value of a parse, or records its error against `field`.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        parsed: Result<T, E>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    /// The parsed values when nothing was recorded, else these errors:
    /// `parsed` is what [`FieldErrors::check`] returned, one `Option` or a
    /// tuple of them.
    pub fn finish_with<P: Parsed>(self, parsed: P) -> Result<P::Values, Self> {
        if !self.violations.is_empty() {
            return Err(self);
        }
        // `check` records every `None` it returns, so with no violation
        // every value is there.
        parsed.values().ok_or(self)
    }

    /// `Ok(())` when nothing was recorded, else these errors.
    pub fn finish(self) -> Result<(), Self> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The `INVALID_ARGUMENT` status.
    pub fn into_status(self) -> Status {
        let message = self.message.unwrap_or_else(|| {
            self.violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(self.violations),
        )
    }
}

/// The results of [`FieldErrors::check`]: all there, or not.
pub trait Parsed {
    /// The values, once all are there.
    type Values;
    /// The values if every one is there.
    fn values(self) -> Option<Self::Values>;
}

impl<A> Parsed for Option<A> {
    type Values = A;
    fn values(self) -> Option<A> {
        self
    }
}

impl<A, B> Parsed for (Option<A>, Option<B>) {
    type Values = (A, B);
    fn values(self) -> Option<(A, B)> {
        Some((self.0?, self.1?))
    }
}

impl<A, B, C> Parsed for (Option<A>, Option<B>, Option<C>) {
    type Values = (A, B, C);
    fn values(self) -> Option<(A, B, C)> {
        Some((self.0?, self.1?, self.2?))
    }
}

impl From<FieldErrors> for Status {
    fn from(errors: FieldErrors) -> Self {
        errors.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishing_hands_back_the_parsed_values_or_every_violation() {
        let mut errors = FieldErrors::default();
        let a = errors.check("a", Ok::<_, &str>(1));
        let b = errors.check("b", Ok::<_, &str>("two"));
        assert_eq!(errors.finish_with((a, b)).unwrap(), (1, "two"));

        let mut errors = FieldErrors::default();
        let a = errors.check("a", Err::<i32, _>("bad a"));
        let b = errors.check("b", Ok::<_, &str>(2));
        let refused = errors.finish_with((a, b)).unwrap_err();
        assert_eq!(refused.into_status().message(), "a: bad a");
    }
}
