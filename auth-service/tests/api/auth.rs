//! `AuthService`: login, refresh rotation, logout, password change, keys.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proto::auth::{
    ChangePasswordRequest, GetJwksRequest, GetMeRequest, LogoutRequest, RefreshTokenRequest,
};
use tonic::Code;

use crate::helpers::{TestApp, assert_status, bearer, spawn_app, spawn_app_on, violated_fields};

const BAD_LOGIN: &str = "Incorrect username/email or password";

async fn get_me_status(app: &TestApp, token: &str) -> Code {
    match app
        .users
        .clone()
        .get_me(bearer(token, GetMeRequest {}))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn refresh(app: &TestApp, token: &str) -> Result<proto::auth::TokenResponse, tonic::Status> {
    app.auth
        .clone()
        .refresh_token(RefreshTokenRequest {
            refresh_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn login_works_by_username_and_by_email_in_any_case() {
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    for login in [
        user.username.clone(),
        user.email.clone(),
        user.email.to_uppercase(),
        user.username.to_uppercase(),
    ] {
        let tokens = app.login(&login, &user.password).await.unwrap();
        assert_eq!(tokens.token_type, "Bearer");
        assert_eq!(tokens.expires_in, 900);
        assert!(tokens.refresh_expires_in > 29 * 24 * 3600);
        assert_eq!(get_me_status(&app, &tokens.access_token).await, Code::Ok);
    }
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    let wrong_password = app
        .login(&user.username, "not the password")
        .await
        .unwrap_err();
    let unknown_user = app
        .login("nobody-at-all", "not the password")
        .await
        .unwrap_err();
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.message(), BAD_LOGIN);
    assert_eq!(unknown_user.code(), wrong_password.code());
    assert_eq!(unknown_user.message(), wrong_password.message());
    assert_eq!(unknown_user.details(), wrong_password.details());
}

#[tokio::test]
async fn login_with_empty_fields_is_invalid_argument() {
    let app = spawn_app().await;
    let status = app.login("", "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["username_or_email", "password"]);
}

#[tokio::test]
async fn tokens_carry_the_claims_design_requires() {
    let app = spawn_app().await;
    let (_, created, tokens) = app.signed_up().await;
    let data =
        jsonwebtoken::dangerous::insecure_decode::<shared::verify::Claims>(&tokens.access_token)
            .unwrap();
    assert_eq!(data.header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
    assert!(data.header.kid.is_some());
    let claims = data.claims;
    assert_eq!(claims.iss, "blog-auth");
    assert_eq!(claims.aud, "blog");
    assert_eq!(claims.sub, created.id.to_string());
    assert_eq!(claims.preferred_username, created.username);
    assert_eq!(claims.exp - claims.iat, 900);
    assert!(!claims.sid.is_empty() && !claims.jti.is_empty());
    // Refresh tokens are 256 random bits, and never a JWT.
    assert_eq!(
        URL_SAFE_NO_PAD.decode(&tokens.refresh_token).unwrap().len(),
        32
    );
}

#[tokio::test]
async fn refresh_rotates_and_reuse_kills_the_session() {
    let app = spawn_app().await;
    let (_, _, r1) = app.signed_up().await;
    let r2 = refresh(&app, &r1.refresh_token).await.unwrap();
    assert_ne!(r2.refresh_token, r1.refresh_token);
    assert_eq!(get_me_status(&app, &r2.access_token).await, Code::Ok);

    // R1 again: reuse. It fails, and R2 (same session) is dead too.
    assert_status(
        refresh(&app, &r1.refresh_token).await,
        Code::Unauthenticated,
        "Invalid or expired refresh token",
    );
    assert_status(
        refresh(&app, &r2.refresh_token).await,
        Code::Unauthenticated,
        "Invalid or expired refresh token",
    );
    assert_eq!(
        get_me_status(&app, &r2.access_token).await,
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn refresh_with_garbage_or_nothing_is_refused() {
    let app = spawn_app().await;
    assert_status(
        refresh(&app, "garbage").await,
        Code::Unauthenticated,
        "Invalid or expired refresh token",
    );
    let status = refresh(&app, "").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["refresh_token"]);
}

#[tokio::test]
async fn logout_ends_this_session_only() {
    let app = spawn_app().await;
    let (user, _, first) = app.signed_up().await;
    let second = app.login(&user.username, &user.password).await.unwrap();
    app.auth
        .clone()
        .logout(bearer(
            &first.access_token,
            LogoutRequest {
                all_sessions: false,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        get_me_status(&app, &first.access_token).await,
        Code::Unauthenticated
    );
    assert!(refresh(&app, &first.refresh_token).await.is_err());
    assert_eq!(get_me_status(&app, &second.access_token).await, Code::Ok);
}

#[tokio::test]
async fn logout_of_all_sessions_ends_every_one() {
    let app = spawn_app().await;
    let (user, _, first) = app.signed_up().await;
    let second = app.login(&user.username, &user.password).await.unwrap();
    app.auth
        .clone()
        .logout(bearer(
            &first.access_token,
            LogoutRequest { all_sessions: true },
        ))
        .await
        .unwrap();
    for tokens in [&first, &second] {
        assert_eq!(
            get_me_status(&app, &tokens.access_token).await,
            Code::Unauthenticated
        );
        assert!(refresh(&app, &tokens.refresh_token).await.is_err());
    }
    // Logging in again works.
    app.login(&user.username, &user.password).await.unwrap();
}

#[tokio::test]
async fn logout_without_a_token_is_not_authenticated() {
    let app = spawn_app().await;
    assert_status(
        app.auth
            .clone()
            .logout(LogoutRequest { all_sessions: true })
            .await,
        Code::Unauthenticated,
        "Not authenticated",
    );
}

#[tokio::test]
async fn change_password_needs_the_current_one() {
    let app = spawn_app().await;
    let (user, _, tokens) = app.signed_up().await;
    let status = assert_status(
        app.auth
            .clone()
            .change_password(bearer(
                &tokens.access_token,
                ChangePasswordRequest {
                    current_password: "wrong password".into(),
                    new_password: "a brand new password".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "Current password is incorrect",
    );
    assert_eq!(violated_fields(&status), ["current_password"]);
    let status = app
        .auth
        .clone()
        .change_password(bearer(
            &tokens.access_token,
            ChangePasswordRequest {
                current_password: user.password.clone(),
                new_password: "short".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["new_password"]);
    // Nothing changed.
    app.login(&user.username, &user.password).await.unwrap();
}

#[tokio::test]
async fn change_password_ends_other_sessions_and_retires_the_old_password() {
    let app = spawn_app().await;
    let (user, _, this) = app.signed_up().await;
    let other = app.login(&user.email, &user.password).await.unwrap();
    app.auth
        .clone()
        .change_password(bearer(
            &this.access_token,
            ChangePasswordRequest {
                current_password: user.password.clone(),
                new_password: "a brand new password".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(get_me_status(&app, &this.access_token).await, Code::Ok);
    assert_eq!(
        get_me_status(&app, &other.access_token).await,
        Code::Unauthenticated
    );
    assert!(refresh(&app, &other.refresh_token).await.is_err());
    assert_status(
        app.login(&user.username, &user.password).await,
        Code::Unauthenticated,
        BAD_LOGIN,
    );
    app.login(&user.username, "a brand new password")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_issued_before_a_restart_still_verifies_after_it() {
    let app = spawn_app().await;
    let (_, created, tokens) = app.signed_up().await;
    let kid = jsonwebtoken::decode_header(&tokens.access_token)
        .unwrap()
        .kid
        .unwrap();
    let db = app.stop().await;

    let app = spawn_app_on(db).await;
    let me = app
        .users
        .clone()
        .get_me(bearer(&tokens.access_token, GetMeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, created.id);
    let jwks = app
        .auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let key = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .expect("the token's key is published");
    assert_eq!(
        (
            key.kty.as_str(),
            key.crv.as_str(),
            key.alg.as_str(),
            key.r#use.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!(URL_SAFE_NO_PAD.decode(&key.x).unwrap().len(), 32);
    // And the refresh token survives too.
    refresh(&app, &tokens.refresh_token).await.unwrap();
}

#[tokio::test]
async fn a_signing_key_from_a_file_signs_and_is_published() {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
    let seed = [42u8; 32];
    let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing_key.pem");
    std::fs::write(&file, pem.as_bytes()).unwrap();

    let app = crate::helpers::spawn_app_with(testkit::TestDatabase::new("auth").await, |config| {
        config.auth.signing_key_file = Some(file.clone());
    })
    .await;
    let (_, _, tokens) = app.signed_up().await;
    assert_eq!(get_me_status(&app, &tokens.access_token).await, Code::Ok);
    let kid = jsonwebtoken::decode_header(&tokens.access_token)
        .unwrap()
        .kid
        .unwrap();
    let jwks = app
        .auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let key = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .expect("the file's key is published");
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    assert_eq!(URL_SAFE_NO_PAD.decode(&key.x).unwrap(), public);
}

#[tokio::test]
async fn a_rotated_key_is_published_first_signs_later_and_the_old_one_retires() {
    let app = spawn_app().await;
    let store = app.state.store.clone();
    let keys = app.state.tokens.keys();
    let (user, _, before) = app.signed_up().await;
    let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let old_kid = kid_of(&before.access_token);
    let published = |app: &TestApp| {
        let mut auth = app.auth.clone();
        async move {
            let keys = auth
                .get_jwks(GetJwksRequest {})
                .await
                .unwrap()
                .into_inner()
                .keys;
            keys.into_iter().map(|k| k.kid).collect::<Vec<_>>()
        }
    };

    let delay = std::time::Duration::from_secs(330);
    let next = auth_service::keys::rotate(store.as_ref(), app.clock.now(), delay)
        .await
        .unwrap();
    keys.reload(store.as_ref()).await.unwrap();
    // Next: published at once, not signing yet.
    assert_eq!(published(&app).await, [old_kid.clone(), next.kid.clone()]);
    let again = app.login(&user.username, &user.password).await.unwrap();
    assert_eq!(kid_of(&again.access_token), old_kid);

    // Active: it signs; the old key retires but is still published, and the
    // tokens it signed still work.
    app.clock.advance(delay);
    let after = app.login(&user.username, &user.password).await.unwrap();
    assert_eq!(kid_of(&after.access_token), next.kid);
    assert_eq!(published(&app).await, [next.kid.clone(), old_kid.clone()]);
    app.users
        .clone()
        .get_me(bearer(&again.access_token, GetMeRequest {}))
        .await
        .expect("a token of the retired key still verifies");

    // Once every token it signed has expired, the old key is gone.
    app.clock.advance(std::time::Duration::from_secs(900 + 10));
    assert_eq!(keys.delete_expired(store.as_ref()).await.unwrap(), 1);
    keys.reload(store.as_ref()).await.unwrap();
    assert_eq!(published(&app).await, std::slice::from_ref(&next.kid));
    let stored: Vec<_> = store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(stored, [next.kid]);
}

#[tokio::test]
async fn a_common_password_is_refused_as_a_new_password() {
    let app = spawn_app().await;
    let (user, _, tokens) = app.signed_up().await;
    let status = app
        .auth
        .clone()
        .change_password(bearer(
            &tokens.access_token,
            ChangePasswordRequest {
                current_password: user.password.clone(),
                new_password: "password1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["new_password"]);
    app.login(&user.username, &user.password).await.unwrap();
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_with_a_retry_delay() {
    use tonic_types::StatusExt;
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    for _ in 0..6 {
        assert_status(
            app.login(&user.username, "not the password").await,
            Code::Unauthenticated,
            BAD_LOGIN,
        );
    }
    // Throttled now, even with the right password. (The email is a name of
    // its own: throttling it with the username would tell which email
    // belongs to which username.)
    let status = app.login(&user.username, &user.password).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(1)));
    // Unknown accounts are throttled the same way, revealing nothing.
    for _ in 0..6 {
        assert_status(
            app.login("nobody-here", "not the password").await,
            Code::Unauthenticated,
            BAD_LOGIN,
        );
    }
    assert_eq!(
        app.login("nobody-here", "x").await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    app.clock.advance(std::time::Duration::from_secs(2));
    app.login(&user.username, &user.password).await.unwrap();
}
