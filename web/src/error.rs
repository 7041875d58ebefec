//! What a person sees when something fails: each gRPC status becomes the
//! page they expect. A form's own `INVALID_ARGUMENT` never gets here (the
//! form is shown again with its field errors); everything else does.

use askama::Template;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{Shared, session::Session, visitor::Nav};

/// Why a page could not be shown.
#[derive(Debug)]
pub enum PageError {
    /// A call to a service failed.
    Status(tonic::Status),
    /// A form came without this session's CSRF token.
    Csrf,
    /// No such page.
    NotFound,
    /// The request itself is malformed (a bad id in the path, say).
    BadRequest,
    /// An upload larger than the site takes.
    TooLarge,
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// An error page to render, left in the response's extensions for the
/// outermost layer, which knows the request id and the visitor.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    status: StatusCode,
    title: &'static str,
    message: &'static str,
    /// Send the visitor to log in (and back) instead.
    login: bool,
    /// Seconds to wait, for a 429.
    retry_after: Option<u64>,
    /// Say the request id (for a 500).
    quote_id: bool,
}

impl ErrorPage {
    fn new(status: StatusCode, title: &'static str, message: &'static str) -> Self {
        Self {
            status,
            title,
            message,
            login: false,
            retry_after: None,
            quote_id: false,
        }
    }

    /// A form posted from another site.
    pub fn forbidden_cross_site() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "This form was not sent from this site.",
        )
    }

    /// The finished response; `back` is where to return after logging in.
    pub fn render(
        &self,
        app: &Shared,
        back: &str,
        request_id: &str,
        session: Option<Session>,
    ) -> Response {
        if self.login {
            // The tokens no longer work: forget them, log in, come back.
            let mut session = session.unwrap_or_default();
            session.tokens = None;
            let mut response =
                Redirect::to(&format!("/login?next={}", encode_component(back))).into_response();
            if let Ok(cookie) = HeaderValue::from_str(&app.sealer.set_cookie(&session)) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            return response;
        }
        let session = session.unwrap_or_default();
        let page = ErrorTemplate {
            nav: Nav {
                user: session
                    .tokens
                    .as_ref()
                    .map(|t| (t.username.clone(), t.user_id)),
                csrf: session.csrf.clone(),
            },
            code: self.status.as_u16(),
            title: self.title,
            message: self.message,
            request_id: self.quote_id.then_some(request_id),
        };
        let body = page.render().unwrap_or_else(|_| self.message.to_owned());
        let mut response = (self.status, axum::response::Html(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate<'a> {
    nav: Nav,
    code: u16,
    title: &'a str,
    message: &'a str,
    request_id: Option<&'a str>,
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = match &self {
            Self::Csrf => ErrorPage::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This form has expired. Go back, reload the page and try again.",
            ),
            Self::NotFound => not_found(),
            Self::BadRequest => ErrorPage::new(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "This address does not lead anywhere.",
            ),
            Self::TooLarge => ErrorPage::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "That file is too large: a picture may be at most 12 MiB.",
            ),
            Self::Status(status) => from_status(status),
        };
        if let Self::Status(status) = &self
            && page.status.is_server_error()
        {
            tracing::warn!(code = ?status.code(), message = status.message(), "a call failed");
        }
        page.into_response()
    }
}

fn not_found() -> ErrorPage {
    ErrorPage::new(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing here. It may have been deleted.",
    )
}

fn from_status(status: &tonic::Status) -> ErrorPage {
    match status.code() {
        Code::Unauthenticated => ErrorPage {
            login: true,
            ..ErrorPage::new(StatusCode::UNAUTHORIZED, "Log in", "Please log in.")
        },
        Code::PermissionDenied => ErrorPage::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "You are not allowed to do that.",
        ),
        Code::NotFound => not_found(),
        Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request was not valid.",
        ),
        Code::ResourceExhausted => ErrorPage {
            retry_after: Some(
                status
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            ),
            ..ErrorPage::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "Too many requests in a short time. Wait a moment, then try again.",
            )
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorPage::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The blog is unavailable for a moment. Try again shortly.",
        ),
        _ => ErrorPage {
            quote_id: true,
            ..ErrorPage::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Something went wrong on our side.",
            )
        },
    }
}

/// `value` as a URL query component.
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_the_pages_a_person_expects() {
        let page = |code, message: &str| from_status(&tonic::Status::new(code, message));
        assert!(page(Code::Unauthenticated, "").login);
        assert_eq!(
            page(Code::PermissionDenied, "").status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(page(Code::NotFound, "").status, StatusCode::NOT_FOUND);
        assert_eq!(
            page(Code::Unavailable, "").status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let limited = page(Code::ResourceExhausted, "");
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.retry_after, Some(1));
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
            Code::Unimplemented,
        ] {
            let failed = page(code, "a secret detail");
            assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(failed.quote_id, "a 500 quotes the request id");
            assert!(!failed.message.contains("secret"), "and shows no detail");
        }
    }

    #[test]
    fn retry_after_rounds_the_delay_up_to_whole_seconds() {
        use tonic_types::{ErrorDetails, StatusExt};
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(2500))),
        );
        assert_eq!(from_status(&status).retry_after, Some(3));
    }
}
