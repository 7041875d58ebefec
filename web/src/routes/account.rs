//! The account page: profile, picture, password, and deleting the account.

use askama::Template;
use axum::{
    Form, Router,
    extract::{DefaultBodyLimit, Multipart, State},
    http::StatusCode,
    response::{Html, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;

use proto::auth::{
    ChangePasswordRequest, DeleteAvatarRequest, DeleteMeRequest, GetMeRequest, SetAvatarRequest,
    UpdateMeRequest, User,
};

use super::{Field, FormView, Plain, internal, is_form_error};
use crate::{Shared, error::PageError, visitor::Nav, visitor::Visitor};

/// Largest upload taken, a little over the auth-service's own limit so
/// that it, not this page, says what is wrong with a picture.
const MAX_UPLOAD: usize = 12 << 20;

/// The account routes.
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/account", get(show).post(update))
        .route(
            "/account/picture",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/account/picture/delete", post(remove_picture))
        .route("/account/password", post(change_password))
        .route("/account/delete", post(delete_account))
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Nav,
    notice: Option<&'static str>,
    avatar_url: String,
    picture_error: Option<String>,
    forms: Vec<FormView>,
}

/// The page's three forms, with `failed` (if any) in place of its blank
/// version.
fn forms(user: &User, failed: Option<FormView>) -> Vec<FormView> {
    let mut profile = FormView::new("Profile", "/account", "Save profile");
    profile.intro = Some("Your current password is needed to change your email.");
    profile.fields = vec![
        Field::new("username", "Username", "text")
            .value(&user.username)
            .autocomplete("username"),
        Field::new("email", "Email", "email")
            .value(&user.email)
            .autocomplete("email"),
        Field::new("password", "Current password", "password")
            .optional()
            .autocomplete("current-password"),
    ];
    let mut password = FormView::new("Change password", "/account/password", "Change password");
    password.fields = vec![
        Field::new("current_password", "Current password", "password")
            .autocomplete("current-password"),
        Field::new("new_password", "New password", "password").autocomplete("new-password"),
    ];
    let mut delete = FormView::new("Delete account", "/account/delete", "Delete my account");
    delete.intro = Some("This deletes your account and all your posts, for good.");
    delete.fields =
        vec![Field::new("password", "Password", "password").autocomplete("current-password")];
    let mut all = vec![profile, password, delete];
    if let Some(failed) = failed
        && let Some(slot) = all.iter_mut().find(|f| f.action == failed.action)
    {
        *slot = failed;
    }
    all
}

async fn me(app: &Shared, visitor: &Visitor) -> Result<User, PageError> {
    visitor.require_login()?;
    Ok(app
        .users()
        .get_me(visitor.call(GetMeRequest {}))
        .await?
        .into_inner())
}

struct Render {
    notice: Option<&'static str>,
    picture_error: Option<String>,
    failed: Option<FormView>,
    status: StatusCode,
}

impl Render {
    fn ok(notice: Option<&'static str>) -> Self {
        Self {
            notice,
            picture_error: None,
            failed: None,
            status: StatusCode::OK,
        }
    }
}

/// The page again with `form` (one of [`forms`]) showing why `status`
/// refused it.
fn refused(
    app: &Shared,
    visitor: Visitor,
    user: &User,
    form: FormView,
    status: &tonic::Status,
) -> Result<Response, PageError> {
    render(
        app,
        visitor,
        user,
        Render {
            failed: Some(form.refused(status)),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            ..Render::ok(None)
        },
    )
}

/// Whether the account page shows `status` on the form that caused it.
fn on_the_form(status: &tonic::Status) -> bool {
    is_form_error(status) || status.code() == tonic::Code::PermissionDenied
}

fn render(
    app: &Shared,
    mut visitor: Visitor,
    user: &User,
    how: Render,
) -> Result<Response, PageError> {
    let page = AccountPage {
        nav: visitor.nav(),
        notice: how.notice,
        avatar_url: user.avatar_url.clone(),
        picture_error: how.picture_error,
        forms: forms(user, how.failed),
    };
    Ok(visitor.respond(app, (how.status, Html(page.render().map_err(internal)?))))
}

/// `GET /account`.
pub async fn show(State(app): State<Shared>, visitor: Visitor) -> Result<Response, PageError> {
    let user = me(&app, &visitor).await?;
    render(&app, visitor, &user, Render::ok(None))
}

/// The profile form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProfileForm {
    csrf_token: String,
    username: String,
    email: String,
    password: String,
}

/// `POST /account`: changes what differs.
pub async fn update(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Form(input): Form<ProfileForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let user = me(&app, &visitor).await?;
    let changed = |new: &str, old: &str| Some(new.to_owned()).filter(|n| n.trim() != old);
    let request = UpdateMeRequest {
        username: changed(&input.username, &user.username),
        email: changed(&input.email, &user.email),
        password: Some(input.password).filter(|p| !p.is_empty()),
    };
    if request.username.is_none() && request.email.is_none() {
        return render(&app, visitor, &user, Render::ok(Some("Nothing to change.")));
    }
    match app.users().update_me(visitor.call(request)).await {
        Ok(updated) => {
            let updated = updated.into_inner();
            visitor.renamed(updated.username.clone());
            render(&app, visitor, &updated, Render::ok(Some("Profile saved.")))
        }
        Err(status) if on_the_form(&status) => {
            let mut form = forms(&user, None).remove(0);
            form.fields[0].value = input.username;
            form.fields[1].value = input.email;
            refused(&app, visitor, &user, form, &status)
        }
        Err(status) => Err(status.into()),
    }
}

/// `POST /account/picture` (multipart: `csrf_token`, `image`).
pub async fn upload(
    State(app): State<Shared>,
    visitor: Visitor,
    mut multipart: Multipart,
) -> Result<Response, PageError> {
    // A body over the limit is a file too large; anything else unreadable
    // is a malformed request.
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            PageError::TooLarge
        } else {
            PageError::BadRequest
        }
    };
    let mut csrf = String::new();
    let mut image = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("csrf_token") => csrf = field.text().await.map_err(unreadable)?,
            Some("image") => image = field.bytes().await.map_err(unreadable)?.to_vec(),
            _ => {}
        }
    }
    visitor.check_csrf(&csrf)?;
    let user = me(&app, &visitor).await?;
    match app
        .users()
        .set_avatar(visitor.call(SetAvatarRequest { image }))
        .await
    {
        Ok(updated) => render(
            &app,
            visitor,
            &updated.into_inner(),
            Render::ok(Some("Picture saved.")),
        ),
        Err(status) if is_form_error(&status) => {
            let mut form = FormView::new("", "", "");
            form.fields = vec![Field::new("image", "", "file")];
            let form = form.refused(&status);
            let message = form.fields[0].error.clone().or(form.error);
            render(
                &app,
                visitor,
                &user,
                Render {
                    picture_error: Some(
                        message
                            .filter(|m| !m.is_empty())
                            .unwrap_or_else(|| "This picture cannot be used.".into()),
                    ),
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    ..Render::ok(None)
                },
            )
        }
        Err(status) => Err(status.into()),
    }
}

/// `POST /account/picture/delete`.
pub async fn remove_picture(
    State(app): State<Shared>,
    visitor: Visitor,
    Form(input): Form<Plain>,
) -> Result<Response, PageError> {
    input.check(&visitor)?;
    visitor.require_login()?;
    let user = app
        .users()
        .delete_avatar(visitor.call(DeleteAvatarRequest {}))
        .await?
        .into_inner();
    render(&app, visitor, &user, Render::ok(Some("Picture removed.")))
}

/// The change-password form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PasswordForm {
    csrf_token: String,
    current_password: String,
    new_password: String,
}

/// `POST /account/password`: every other session ends; this one goes on.
pub async fn change_password(
    State(app): State<Shared>,
    visitor: Visitor,
    Form(input): Form<PasswordForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let user = me(&app, &visitor).await?;
    let changed = app
        .auth()
        .change_password(visitor.call(ChangePasswordRequest {
            current_password: input.current_password,
            new_password: input.new_password,
        }))
        .await;
    match changed {
        Ok(_) => render(&app, visitor, &user, Render::ok(Some("Password changed."))),
        Err(status) if on_the_form(&status) => {
            refused(&app, visitor, &user, forms(&user, None).remove(1), &status)
        }
        Err(status) => Err(status.into()),
    }
}

/// The delete-account form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeleteForm {
    csrf_token: String,
    password: String,
}

/// `POST /account/delete`: then logged out, at home.
pub async fn delete_account(
    State(app): State<Shared>,
    mut visitor: Visitor,
    Form(input): Form<DeleteForm>,
) -> Result<Response, PageError> {
    visitor.check_csrf(&input.csrf_token)?;
    let user = me(&app, &visitor).await?;
    let deleted = app
        .users()
        .delete_me(visitor.call(DeleteMeRequest {
            password: input.password,
        }))
        .await;
    match deleted {
        Ok(_) => {
            visitor.log_out();
            Ok(visitor.respond(&app, Redirect::to("/")))
        }
        Err(status) if on_the_form(&status) => {
            refused(&app, visitor, &user, forms(&user, None).remove(2), &status)
        }
        Err(status) => Err(status.into()),
    }
}
