//! The pages, one module per family, and what their forms share.

mod account;
mod auth;
mod posts;

use askama::Template;
use axum::{
    Router,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tonic_types::StatusExt;

use crate::{Shared, error::PageError, visitor::Nav, visitor::Visitor};

/// Every route of the site.
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/", get(posts::home))
        .route("/posts/new", get(posts::new_form).post(posts::create))
        .route("/posts/{id}", get(posts::show))
        .route(
            "/posts/{id}/edit",
            get(posts::edit_form).post(posts::update),
        )
        .route("/posts/{id}/delete", post(posts::delete))
        .route("/users/{id}/posts", get(posts::by_user))
        .route("/register", get(auth::register_form).post(auth::register))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route(
            "/forgot-password",
            get(auth::forgot_form).post(auth::forgot),
        )
        .route("/reset-password", get(auth::reset_form).post(auth::reset))
        .merge(account::router())
        .route("/static/style.css", get(stylesheet))
        .route("/healthz", get(crate::healthz))
        .route("/readyz", get(crate::readyz))
        .fallback(|| async { crate::error::PageError::NotFound })
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/style.css"),
    )
}

/// A form with only the CSRF token (a button).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Plain {
    csrf_token: String,
}

impl Plain {
    /// The form's CSRF token is the visitor's, or the request is refused.
    pub fn check(&self, visitor: &Visitor) -> Result<(), PageError> {
        visitor.check_csrf(&self.csrf_token)
    }
}

#[derive(Template)]
#[template(path = "form.html")]
struct FormPage {
    nav: Nav,
    form: FormView,
}

/// A page of one form, answered with `status`.
pub fn form_page(
    app: &Shared,
    mut visitor: Visitor,
    form: FormView,
    status: StatusCode,
) -> Result<Response, PageError> {
    let page = FormPage {
        nav: visitor.nav(),
        form,
    };
    Ok(visitor.respond(app, (status, Html(page.render().map_err(internal)?))))
}

/// A template that failed to render: a bug, shown as a 500.
pub fn internal(e: askama::Error) -> PageError {
    PageError::Status(tonic::Status::internal(format!("rendering: {e}")))
}

/// One labelled form field.
#[derive(Debug, Clone)]
pub struct Field {
    /// The `name` (the proto field's name).
    pub name: &'static str,
    /// The label.
    pub label: &'static str,
    /// `text`, `email`, `password` or `textarea`.
    pub kind: &'static str,
    /// What to show in it (never a password).
    pub value: String,
    /// Whether it must be filled in.
    pub required: bool,
    /// The `autocomplete` hint, or empty.
    pub autocomplete: &'static str,
    /// What is wrong with it.
    pub error: Option<String>,
}

impl Field {
    /// A required field.
    pub fn new(name: &'static str, label: &'static str, kind: &'static str) -> Self {
        Self {
            name,
            label,
            kind,
            value: String::new(),
            required: true,
            autocomplete: "",
            error: None,
        }
    }

    /// The same, showing `value` (kept out of password fields).
    pub fn value(mut self, value: &str) -> Self {
        if self.kind != "password" {
            self.value = value.to_owned();
        }
        self
    }

    /// The same, with this `autocomplete` hint.
    pub fn autocomplete(mut self, hint: &'static str) -> Self {
        self.autocomplete = hint;
        self
    }

    /// The same, optional.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

/// A form page (or a form section of the account page).
#[derive(Debug, Clone)]
pub struct FormView {
    /// Heading.
    pub title: &'static str,
    /// A sentence under it.
    pub intro: Option<&'static str>,
    /// An error for the whole form.
    pub error: Option<String>,
    /// Where it posts.
    pub action: String,
    /// The button.
    pub submit: &'static str,
    /// The fields.
    pub fields: Vec<Field>,
    /// Links under it: `(href, text)`.
    pub links: Vec<(&'static str, &'static str)>,
}

impl FormView {
    /// A form posting to `action`.
    pub fn new(title: &'static str, action: impl Into<String>, submit: &'static str) -> Self {
        Self {
            title,
            intro: None,
            error: None,
            action: action.into(),
            submit,
            fields: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Shows a refused call on the form: each `BadRequest` violation next to
    /// its field, anything else above the fields.
    pub fn refused(mut self, status: &tonic::Status) -> Self {
        let mut unplaced = Vec::new();
        if let Some(bad) = status.get_details_bad_request() {
            for violation in bad.field_violations {
                match self.fields.iter_mut().find(|f| f.name == violation.field) {
                    Some(field) => field.error = Some(violation.description),
                    None => unplaced.push(violation.description),
                }
            }
        } else {
            unplaced.push(status.message().to_owned());
        }
        if !unplaced.is_empty() {
            self.error = Some(unplaced.join(" "));
        }
        self
    }
}

/// Whether a refused call belongs on the form (the person can fix it)
/// rather than on an error page.
pub fn is_form_error(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
    ) || (status.code() == tonic::Code::Unauthenticated
        && status.get_details_bad_request().is_some())
}

/// A protobuf timestamp as the pages show it, in UTC. Kept as numbers and
/// written straight into the page ([`Moment::iso`] for `datetime`,
/// `Display` for people): a listing has one per post, and formatting each
/// into a `String` first was a twentieth of a page's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moment(Option<Civil>);

/// A calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl Moment {
    /// `time` in UTC; nothing shown for no time.
    pub fn of(time: Option<&prost_types::Timestamp>) -> Self {
        Self(time.map(|time| {
            let days = time.seconds.div_euclid(86_400);
            let secs = time.seconds.rem_euclid(86_400);
            let (year, month, day) = civil_from_days(days);
            Civil {
                year,
                month,
                day,
                hour: secs / 3600,
                minute: secs % 3600 / 60,
                second: secs % 60,
            }
        }))
    }

    /// ISO 8601 (`2024-02-29T13:05:09Z`), for machines.
    pub fn iso(&self) -> impl std::fmt::Display + '_ {
        struct Iso<'a>(&'a Moment);
        impl std::fmt::Display for Iso<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let Some(c) = self.0.0 else { return Ok(()) };
                match c.iso() {
                    Some(iso) => f.write_str(ascii(&iso)),
                    None => {
                        let (y, m, d) = (c.year, c.month, c.day);
                        let (h, min, s) = (c.hour, c.minute, c.second);
                        write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
                    }
                }
            }
        }
        Iso(self)
    }
}

impl Civil {
    /// `2024-02-29T13:05:09Z`, written digit by digit rather than through
    /// eleven padded `write!`s (a listing shows two per post); `None` for
    /// years outside 0-9999, which take the slow way.
    fn iso(&self) -> Option<[u8; 20]> {
        if !(0..=9999).contains(&self.year) {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00Z";
        for (at, value) in [
            (0..4, self.year),
            (5..7, self.month),
            (8..10, self.day),
            (11..13, self.hour),
            (14..16, self.minute),
            (17..19, self.second),
        ] {
            let mut value = value;
            for digit in out[at].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(out)
    }
}

/// Digits and punctuation as text.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("ASCII")
}

/// For people: `2024-02-29 13:05 UTC`.
impl std::fmt::Display for Moment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(c) = self.0 else { return Ok(()) };
        match c.iso() {
            Some(iso) => {
                let mut out = *b"0000-00-00 00:00 UTC";
                out[..10].copy_from_slice(&iso[..10]);
                out[11..16].copy_from_slice(&iso[11..16]);
                f.write_str(ascii(&out))
            }
            None => {
                let (y, m, d, h, min) = (c.year, c.month, c.day, c.hour, c.minute);
                write!(f, "{y:04}-{m:02}-{d:02} {h:02}:{min:02} UTC")
            }
        }
    }
}

/// Year, month and day of a day number counted from 1970-01-01 (the
/// proleptic Gregorian calendar, by eras of 400 years).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn moments_read_the_same_for_people_and_machines() {
        let leap_day = prost_types::Timestamp {
            seconds: 19_782 * 86_400 + 13 * 3600 + 5 * 60 + 9,
            nanos: 0,
        };
        let moment = Moment::of(Some(&leap_day));
        assert_eq!(moment.to_string(), "2024-02-29 13:05 UTC");
        assert_eq!(moment.iso().to_string(), "2024-02-29T13:05:09Z");
        let before_1970 = prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(
            Moment::of(Some(&before_1970)).iso().to_string(),
            "1969-12-31T23:59:59Z"
        );
        // Years of five digits (or before year 0) are still written out.
        let far = prost_types::Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        };
        assert_eq!(Moment::of(Some(&far)).to_string(), "10000-01-01 00:00 UTC");
        assert_eq!(
            Moment::of(Some(&far)).iso().to_string(),
            "10000-01-01T00:00:00Z"
        );
        let none = Moment::of(None);
        assert_eq!(
            (none.to_string(), none.iso().to_string()),
            (String::new(), String::new())
        );
    }
}
