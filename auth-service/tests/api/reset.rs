//! Password reset by mail, delivered to a real SMTP server on loopback.

use std::time::Duration;

use proto::auth::{
    ChangePasswordRequest, GetMeRequest, RefreshTokenRequest, RequestPasswordResetRequest,
    ResetPasswordRequest,
};
use testkit::{
    TestDatabase,
    smtp::{SmtpSink, reset_token},
};
use tonic::{Code, Status};

use crate::helpers::{
    TestApp, TestUser, app_with_mail, assert_status, bearer, spawn_app, spawn_app_with,
    violated_fields,
};

const INVALID: &str = "Invalid or expired reset token";

async fn request(app: &TestApp, email: &str) -> Result<(), Status> {
    app.auth
        .clone()
        .request_password_reset(RequestPasswordResetRequest {
            email: email.into(),
        })
        .await
        .map(|_| ())
}

async fn reset(app: &TestApp, token: &str, new_password: &str) -> Result<(), Status> {
    app.auth
        .clone()
        .reset_password(ResetPasswordRequest {
            token: token.into(),
            new_password: new_password.into(),
        })
        .await
        .map(|_| ())
}

/// Asks for a reset of `user` and returns the token from the mail.
async fn mailed_token(app: &TestApp, sink: &SmtpSink, user: &TestUser) -> String {
    let before = sink.inbox().len();
    request(app, &user.email).await.unwrap();
    let inbox = sink.wait_for(before + 1, Duration::from_secs(10)).await;
    let mail = inbox.get(before).expect("a reset mail");
    assert_eq!(mail.to, std::slice::from_ref(&user.email));
    reset_token(&mail.data).expect("a reset link in the mail")
}

#[tokio::test]
async fn an_unknown_address_is_ok_and_gets_no_mail() {
    let (app, sink) = app_with_mail().await;
    request(&app, "nobody@example.com").await.unwrap();
    assert!(
        sink.wait_for(1, Duration::from_millis(800))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_malformed_address_is_invalid_argument() {
    let (app, _sink) = app_with_mail().await;
    let status = request(&app, "not an address").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["email"]);
}

#[tokio::test]
async fn a_known_address_gets_one_mail_whose_token_works_once() {
    let (app, sink) = app_with_mail().await;
    let (user, _, _) = app.signed_up().await;
    request(&app, &user.email.to_uppercase()).await.unwrap();
    let inbox = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(inbox.len(), 1);
    let mail = &inbox[0].data;
    assert!(mail.contains("Subject: Reset your password"), "{mail}");
    assert!(
        mail.contains("text/plain") && mail.contains("text/html"),
        "{mail}"
    );
    let token = reset_token(mail).unwrap();
    assert!(
        mail.replace("=\r\n", "")
            .contains("http://frontend.test/reset-password?token=")
    );

    reset(&app, &token, "a fresh new password").await.unwrap();
    app.login(&user.username, "a fresh new password")
        .await
        .unwrap();
    assert!(app.login(&user.username, &user.password).await.is_err());
    // Used once: never again.
    assert_status(
        reset(&app, &token, "yet another password").await,
        Code::InvalidArgument,
        INVALID,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.inbox().len(), 1);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let sink = SmtpSink::start().await;
    let url = sink.url.clone();
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.auth.mail.smtp_url = Some(url.into());
        config.auth.mail.password_reset_ttl = std::time::Duration::from_secs(60);
    })
    .await;
    let (user, _, _) = app.signed_up().await;
    let token = mailed_token(&app, &sink, &user).await;
    app.clock.advance(Duration::from_secs(61));
    assert_status(
        reset(&app, &token, "a fresh new password").await,
        Code::InvalidArgument,
        INVALID,
    );
    app.login(&user.username, &user.password).await.unwrap();
}

#[tokio::test]
async fn an_earlier_link_works_after_a_newer_request_and_using_one_voids_both() {
    let (app, sink) = app_with_mail().await;
    let (user, _, _) = app.signed_up().await;
    let first = mailed_token(&app, &sink, &user).await;
    let second = mailed_token(&app, &sink, &user).await;
    assert_ne!(first, second);
    reset(&app, &first, "a fresh new password").await.unwrap();
    assert_status(
        reset(&app, &second, "another new password").await,
        Code::InvalidArgument,
        INVALID,
    );
}

#[tokio::test]
async fn a_password_change_voids_outstanding_tokens() {
    let (app, sink) = app_with_mail().await;
    let (user, _, tokens) = app.signed_up().await;
    let token = mailed_token(&app, &sink, &user).await;
    app.auth
        .clone()
        .change_password(bearer(
            &tokens.access_token,
            ChangePasswordRequest {
                current_password: user.password.clone(),
                new_password: "changed the usual way".into(),
            },
        ))
        .await
        .unwrap();
    assert_status(
        reset(&app, &token, "a fresh new password").await,
        Code::InvalidArgument,
        INVALID,
    );
}

#[tokio::test]
async fn garbage_tokens_and_weak_passwords_are_refused() {
    let (app, sink) = app_with_mail().await;
    let (user, _, _) = app.signed_up().await;
    for token in ["garbage", &"x".repeat(500)] {
        assert_status(
            reset(&app, token, "a fresh new password").await,
            Code::InvalidArgument,
            INVALID,
        );
    }
    let token = mailed_token(&app, &sink, &user).await;
    for weak in ["short", "sunshine1"] {
        let status = reset(&app, &token, weak).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["new_password"]);
    }
    let status = reset(&app, "", "a fresh new password").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["token"]);
    // The refused attempt did not use the token up.
    reset(&app, &token, "a fresh new password").await.unwrap();
}

#[tokio::test]
async fn a_reset_ends_every_session() {
    let (app, sink) = app_with_mail().await;
    let (user, _, first) = app.signed_up().await;
    let second = app.login(&user.email, &user.password).await.unwrap();
    let token = mailed_token(&app, &sink, &user).await;
    reset(&app, &token, "a fresh new password").await.unwrap();
    for tokens in [&first, &second] {
        assert_status(
            app.users
                .clone()
                .get_me(bearer(&tokens.access_token, GetMeRequest {}))
                .await,
            Code::Unauthenticated,
            "Invalid or expired token",
        );
        let refreshed = app
            .auth
            .clone()
            .refresh_token(RefreshTokenRequest {
                refresh_token: tokens.refresh_token.clone(),
            })
            .await;
        assert_eq!(refreshed.unwrap_err().code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn without_smtp_the_mail_is_written_as_an_eml_file() {
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    request(&app, &user.email).await.unwrap();
    let path = app.mail_file().await.expect("an .eml file");
    assert_eq!(path.extension().unwrap(), "eml");
    // Written under another name and renamed: nothing else is left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
    let mail = std::fs::read_to_string(path).unwrap();
    let token = reset_token(&mail).expect("a reset link");
    reset(&app, &token, "a fresh new password").await.unwrap();
}
