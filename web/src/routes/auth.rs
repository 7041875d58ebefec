//! Registering, logging in and out, and the forgotten-password flow (the
//! mail's link lands on `/reset-password`).

use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::{Html, Redirect, Response},
};
use serde::Deserialize;

use proto::auth::{
    CreateUserRequest, LoginRequest, LogoutRequest, RequestPasswordResetRequest,
    ResetPasswordRequest,
};

use super::{Field, FormView, Plain, form_page, internal, is_form_error};
use crate::{Shared, error::PageError, error::encode_component, visitor::Nav, visitor::Visitor};

#[derive(Template)]
#[template(path = "notice.html")]
struct NoticePage {
    nav: Nav,
    title: &'static str,
    message: &'static str,
    link: (&'static str, &'static str),
}

/// `?next=`: where to go after logging in. Only a path of this site: an
/// absolute URL or `//host` would send the visitor elsewhere.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Next {
    next: String,
}

fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\');
    if local { next } else { "/" }
}

fn register_view(values: (&str, &str)) -> FormView {
    let mut form = FormView::new("Register", "/register", "Create account");
    form.fields = vec![
        Field::new("username", "Username", "text")
            .value(values.0)
            .autocomplete("username"),
        Field::new("email", "Email", "email")
            .value(values.1)
            .autocomplete("email"),
        Field::new("password", "Password (at least 8 characters)", "password")
            .autocomplete("new-password"),
    ];
    form.links = vec![("/login", "Already registered? Log in")];
    form
}

/// `GET /register`.
pub async fn register_form(
    State(app): State<Shared>,
    visitor: Visitor,
) -> Result<Response, PageError> {
    form_page(&app, visitor, register_view(("", "")), StatusCode::OK)
}

/// The registration form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegisterForm {
    csrf_token: String,
    username: String,
    email: String,
    password: String,
}

/// `POST /register`: creates the account and logs in.
pub async fn register(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Form(input): Form<RegisterForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let created = app
        .users()
        .create_user(visitor.plain(CreateUserRequest {
            username: input.username.clone(),
            email: input.email.clone(),
            password: input.password.clone(),
        }))
        .await;
    if let Err(status) = created {
        if is_form_error(&status) {
            let form = register_view((&input.username, &input.email)).refused(&status);
            return form_page(&app, visitor, form, StatusCode::UNPROCESSABLE_ENTITY);
        }
        return Err(status.into());
    }
    let tokens = app
        .auth()
        .login(visitor.plain(LoginRequest {
            username_or_email: input.username.trim().to_owned(),
            password: input.password,
        }))
        .await?
        .into_inner();
    visitor.log_in(&app, tokens).await?;
    Ok(visitor.respond(&app, Redirect::to("/")))
}

fn login_view(next: &str, login: &str) -> FormView {
    let action = if next == "/" {
        "/login".to_owned()
    } else {
        format!("/login?next={}", encode_component(next))
    };
    let mut form = FormView::new("Log in", action, "Log in");
    form.fields = vec![
        Field::new("username_or_email", "Username or email", "text")
            .value(login)
            .autocomplete("username"),
        Field::new("password", "Password", "password").autocomplete("current-password"),
    ];
    form.links = vec![
        ("/forgot-password", "Forgot your password?"),
        ("/register", "No account yet? Register"),
    ];
    form
}

/// `GET /login`.
pub async fn login_form(
    State(app): State<Shared>,
    visitor: Visitor,
    Query(next): Query<Next>,
) -> Result<Response, PageError> {
    let form = login_view(safe_next(&next.next), "");
    form_page(&app, visitor, form, StatusCode::OK)
}

/// The login form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginForm {
    csrf_token: String,
    username_or_email: String,
    password: String,
}

/// `POST /login`: then back where the visitor was going.
pub async fn login(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Query(next): Query<Next>,
    Form(input): Form<LoginForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let next = safe_next(&next.next).to_owned();
    let result = app
        .auth()
        .login(visitor.plain(LoginRequest {
            username_or_email: input.username_or_email.clone(),
            password: input.password,
        }))
        .await;
    match result {
        Ok(tokens) => {
            visitor.log_in(&app, tokens.into_inner()).await?;
            Ok(visitor.respond(&app, Redirect::to(&next)))
        }
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
            ) =>
        {
            let mut form = login_view(&next, &input.username_or_email);
            form.error = Some("Wrong username, email or password.".into());
            form_page(&app, visitor, form, StatusCode::UNAUTHORIZED)
        }
        Err(status) => Err(status.into()),
    }
}

/// `POST /logout`: ends the session at the auth-service, then forgets it.
pub async fn logout(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Form(input): Form<Plain>,
) -> Result<Response, PageError> {
    input.check(&visitor)?;
    if visitor.tokens().is_some() {
        let ended = app
            .auth()
            .logout(visitor.call(LogoutRequest {
                all_sessions: false,
            }))
            .await;
        // An already-ended session is logged out all the same.
        if let Err(status) = ended
            && status.code() != tonic::Code::Unauthenticated
        {
            return Err(status.into());
        }
        visitor.log_out();
    }
    Ok(visitor.respond(&app, Redirect::to("/")))
}

fn forgot_view(email: &str) -> FormView {
    let mut form = FormView::new(
        "Forgot your password?",
        "/forgot-password",
        "Send reset link",
    );
    form.intro =
        Some("Enter your account's email and we will mail you a link to choose a new password.");
    form.fields = vec![
        Field::new("email", "Email", "email")
            .value(email)
            .autocomplete("email"),
    ];
    form
}

/// `GET /forgot-password`.
pub async fn forgot_form(
    State(app): State<Shared>,
    visitor: Visitor,
) -> Result<Response, PageError> {
    form_page(&app, visitor, forgot_view(""), StatusCode::OK)
}

/// The forgotten-password form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ForgotForm {
    csrf_token: String,
    email: String,
}

/// `POST /forgot-password`: the same answer whether or not the account
/// exists.
pub async fn forgot(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Form(input): Form<ForgotForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let sent = app
        .auth()
        .request_password_reset(visitor.plain(RequestPasswordResetRequest {
            email: input.email.clone(),
        }))
        .await;
    match sent {
        Ok(_) => {
            let page = NoticePage {
                nav: visitor.nav(),
                title: "Check your mail",
                message: "If an account has that email, a link to reset its password is on its way. The link works for one hour.",
                link: ("/login", "Back to log in"),
            };
            Ok(visitor.respond(&app, Html(page.render().map_err(internal)?)))
        }
        Err(status) if is_form_error(&status) => {
            let form = forgot_view(&input.email).refused(&status);
            form_page(&app, visitor, form, StatusCode::UNPROCESSABLE_ENTITY)
        }
        Err(status) => Err(status.into()),
    }
}

/// `?token=` from the mail.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResetLink {
    token: String,
}

fn reset_view(token: &str) -> FormView {
    let mut form = FormView::new(
        "Choose a new password",
        format!("/reset-password?token={}", encode_component(token)),
        "Set password",
    );
    form.fields = vec![
        Field::new(
            "new_password",
            "New password (at least 8 characters)",
            "password",
        )
        .autocomplete("new-password"),
    ];
    form
}

/// `GET /reset-password?token=`.
pub async fn reset_form(
    State(app): State<Shared>,
    visitor: Visitor,
    Query(link): Query<ResetLink>,
) -> Result<Response, PageError> {
    form_page(&app, visitor, reset_view(&link.token), StatusCode::OK)
}

/// The new-password form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResetForm {
    csrf_token: String,
    new_password: String,
}

/// `POST /reset-password?token=`.
pub async fn reset(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Query(link): Query<ResetLink>,
    Form(input): Form<ResetForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let reset = app
        .auth()
        .reset_password(visitor.plain(ResetPasswordRequest {
            token: link.token.clone(),
            new_password: input.new_password,
        }))
        .await;
    match reset {
        Ok(_) => {
            let page = NoticePage {
                nav: visitor.nav(),
                title: "Password changed",
                message: "Your password has been changed, and every session of your account has been logged out.",
                link: ("/login", "Log in with the new password"),
            };
            Ok(visitor.respond(&app, Html(page.render().map_err(internal)?)))
        }
        Err(status) if is_form_error(&status) => {
            let form = reset_view(&link.token).refused(&status);
            form_page(&app, visitor, form, StatusCode::UNPROCESSABLE_ENTITY)
        }
        Err(status) => Err(status.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_paths_of_this_site_are_followed_after_login() {
        assert_eq!(safe_next("/posts/3"), "/posts/3");
        assert_eq!(safe_next("/?page_token=x"), "/?page_token=x");
        for hostile in [
            "https://evil.test/",
            "//evil.test",
            "/\\evil.test",
            "",
            "javascript:alert(1)",
            "/a\nb",
        ] {
            assert_eq!(safe_next(hostile), "/", "{hostile:?}");
        }
    }
}
