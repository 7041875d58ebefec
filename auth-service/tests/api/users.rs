//! `UserService`: registration, profiles and self-service.

use proto::auth::{DeleteMeRequest, GetMeRequest, GetUserRequest, UpdateMeRequest};
use tonic::{Code, Request};

use crate::helpers::{TestUser, assert_status, bearer, spawn_app, violated_fields};

#[tokio::test]
async fn create_user_returns_the_user_and_no_password_material() {
    let app = spawn_app().await;
    let user = TestUser {
        email: "  Alice.Smith@Example.COM ".into(),
        username: "  Alice  ".into(),
        ..TestUser::generate()
    };
    let created = app.create_user(&user).await.unwrap();
    assert!(created.id > 0);
    assert_eq!(created.username, "Alice");
    assert_eq!(created.email, "alice.smith@example.com");
    assert_eq!(created.avatar_url, "");
    assert!(created.create_time.is_some());
    let shown = format!("{created:?}");
    assert!(
        !shown.contains("argon2") && !shown.contains(&user.password),
        "{shown}"
    );
}

#[tokio::test]
async fn the_same_username_in_another_case_is_already_exists() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await.unwrap();
    let clash = TestUser {
        username: user.username.to_uppercase(),
        ..TestUser::generate()
    };
    assert_status(
        app.create_user(&clash).await,
        Code::AlreadyExists,
        "Username already exists",
    );
}

#[tokio::test]
async fn the_same_email_is_already_exists() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await.unwrap();
    let clash = TestUser {
        email: user.email.to_uppercase(),
        ..TestUser::generate()
    };
    assert_status(
        app.create_user(&clash).await,
        Code::AlreadyExists,
        "Email already registered",
    );
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_username_make_one_user() {
    let app = spawn_app().await;
    let username = TestUser::generate().username;
    let calls = (0..20).map(|i| {
        let app = &app;
        let user = TestUser {
            username: if i % 2 == 0 {
                username.clone()
            } else {
                username.to_uppercase()
            },
            ..TestUser::generate()
        };
        async move { app.create_user(&user).await }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for result in results.into_iter().filter(|r| r.is_err()) {
        assert_status(result, Code::AlreadyExists, "Username already exists");
    }
    assert_eq!(app.count_users().await, 1);
}

#[tokio::test]
async fn each_validation_rule_names_its_field() {
    let app = spawn_app().await;
    let cases = [
        (
            "username",
            TestUser {
                username: "".into(),
                ..TestUser::generate()
            },
        ),
        (
            "username",
            TestUser {
                username: "   ".into(),
                ..TestUser::generate()
            },
        ),
        (
            "username",
            TestUser {
                username: "x".repeat(51),
                ..TestUser::generate()
            },
        ),
        (
            "email",
            TestUser {
                email: "not-an-email".into(),
                ..TestUser::generate()
            },
        ),
        (
            "email",
            TestUser {
                email: "".into(),
                ..TestUser::generate()
            },
        ),
        (
            "email",
            TestUser {
                email: format!("{}@example.com", "a".repeat(109)),
                ..TestUser::generate()
            },
        ),
        (
            "password",
            TestUser {
                password: "short".into(),
                ..TestUser::generate()
            },
        ),
        (
            "password",
            TestUser {
                password: "p".repeat(129),
                ..TestUser::generate()
            },
        ),
    ];
    for (field, user) in cases {
        let status = app
            .create_user(&user)
            .await
            .expect_err("invalid input accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    assert_eq!(app.count_users().await, 0);
}

#[tokio::test]
async fn every_bad_field_is_reported_at_once() {
    let app = spawn_app().await;
    let user = TestUser {
        username: "".into(),
        email: "nope".into(),
        password: "short".into(),
    };
    let status = app.create_user(&user).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["username", "email", "password"]);
}

#[tokio::test]
async fn lengths_count_characters_not_bytes() {
    let app = spawn_app().await;
    let user = TestUser {
        username: "é".repeat(50),
        password: "密".repeat(8),
        ..TestUser::generate()
    };
    app.create_user(&user).await.unwrap();
}

#[tokio::test]
async fn stored_hashes_are_argon2id_owasp_and_salted() {
    let app = spawn_app().await;
    let a = app
        .create_user(&TestUser {
            password: "same password".into(),
            ..TestUser::generate()
        })
        .await
        .unwrap();
    let b = app
        .create_user(&TestUser {
            password: "same password".into(),
            ..TestUser::generate()
        })
        .await
        .unwrap();
    let hash_a = app
        .state
        .store
        .user_by_id(a.id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    let hash_b = app
        .state
        .store
        .user_by_id(b.id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(
        hash_a.starts_with("$argon2id$v=19$m=19456,t=2,p=1"),
        "{hash_a}"
    );
    assert!(
        hash_b.starts_with("$argon2id$v=19$m=19456,t=2,p=1"),
        "{hash_b}"
    );
    assert_ne!(hash_a, hash_b);
}

#[tokio::test]
async fn get_me_with_a_valid_token_returns_the_private_view() {
    let app = spawn_app().await;
    let (user, created, tokens) = app.signed_up().await;
    let me = app
        .users
        .clone()
        .get_me(bearer(&tokens.access_token, GetMeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me, created);
    assert_eq!(me.email, user.email);
}

#[tokio::test]
async fn get_me_without_a_token_is_not_authenticated() {
    let app = spawn_app().await;
    assert_status(
        app.users
            .clone()
            .get_me(Request::new(GetMeRequest {}))
            .await,
        Code::Unauthenticated,
        "Not authenticated",
    );
}

#[tokio::test]
async fn get_me_with_an_expired_token_is_invalid() {
    let app = spawn_app().await;
    let (_, created, tokens) = app.signed_up().await;
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<shared::verify::Claims>(&tokens.access_token)
            .unwrap()
            .claims;
    let now = shared::time::Timestamp::now().unix_seconds();
    let expired = shared::verify::Claims {
        iat: now - 1000,
        nbf: now - 1000,
        exp: now - 100,
        ..claims
    };
    assert_eq!(expired.sub, created.id.to_string());
    let (kid, key) = app.state.tokens.keys().signer();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid);
    let token = jsonwebtoken::encode(&header, &expired, &key).unwrap();
    assert_status(
        app.users
            .clone()
            .get_me(bearer(&token, GetMeRequest {}))
            .await,
        Code::Unauthenticated,
        "Invalid or expired token",
    );
}

#[tokio::test]
async fn a_bad_token_is_refused_even_on_public_calls() {
    let app = spawn_app().await;
    let result = app
        .users
        .clone()
        .create_user(bearer(
            "not-a-token",
            proto::auth::CreateUserRequest {
                username: "mallory".into(),
                email: "mallory@example.com".into(),
                password: "long enough password".into(),
            },
        ))
        .await;
    assert_status(result, Code::Unauthenticated, "Invalid or expired token");
    assert_eq!(app.count_users().await, 0);
}

#[tokio::test]
async fn get_user_returns_the_public_profile_only() {
    let app = spawn_app().await;
    let (_, created, _) = app.signed_up().await;
    let profile = app
        .users
        .clone()
        .get_user(GetUserRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.id, created.id);
    assert_eq!(profile.username, created.username);
    for id in [created.id + 1000, 0, -1] {
        assert_status(
            app.users.clone().get_user(GetUserRequest { id }).await,
            Code::NotFound,
            "User not found",
        );
    }
}

#[tokio::test]
async fn update_me_changes_only_the_fields_present() {
    let app = spawn_app().await;
    let (user, created, tokens) = app.signed_up().await;
    let renamed = app
        .users
        .clone()
        .update_me(bearer(
            &tokens.access_token,
            UpdateMeRequest {
                username: Some(" renamed ".into()),
                email: None,
                password: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.username, "renamed");
    assert_eq!(renamed.email, created.email);

    let moved = app
        .users
        .clone()
        .update_me(bearer(
            &tokens.access_token,
            UpdateMeRequest {
                username: None,
                email: Some("New@Example.com".into()),
                password: Some(user.password.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.username, "renamed");
    assert_eq!(moved.email, "new@example.com");
}

#[tokio::test]
async fn update_me_to_a_taken_name_or_bad_value_changes_nothing() {
    let app = spawn_app().await;
    let (other, _, _) = app.signed_up().await;
    let (me, created, tokens) = app.signed_up().await;
    let update = |username: Option<String>, email: Option<String>| {
        let mut users = app.users.clone();
        let token = tokens.access_token.clone();
        let password = Some(me.password.clone());
        async move {
            users
                .update_me(bearer(
                    &token,
                    UpdateMeRequest {
                        username,
                        email,
                        password,
                    },
                ))
                .await
        }
    };
    assert_status(
        update(Some(other.username.to_uppercase()), None).await,
        Code::AlreadyExists,
        "Username already exists",
    );
    assert_status(
        update(None, Some(other.email.clone())).await,
        Code::AlreadyExists,
        "Email already registered",
    );
    let status = update(Some("".into()), Some("bad".into()))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["username", "email"]);
    let me = app
        .users
        .clone()
        .get_me(bearer(&tokens.access_token, GetMeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me, created);
}

#[tokio::test]
async fn delete_me_needs_the_password_and_ends_the_account() {
    let app = spawn_app().await;
    let (user, created, tokens) = app.signed_up().await;
    let status = assert_status(
        app.users
            .clone()
            .delete_me(bearer(
                &tokens.access_token,
                DeleteMeRequest {
                    password: "wrong password".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "Password is incorrect",
    );
    assert_eq!(violated_fields(&status), ["password"]);

    app.users
        .clone()
        .delete_me(bearer(
            &tokens.access_token,
            DeleteMeRequest {
                password: user.password.clone(),
            },
        ))
        .await
        .unwrap();
    assert_status(
        app.users
            .clone()
            .get_me(bearer(&tokens.access_token, GetMeRequest {}))
            .await,
        Code::Unauthenticated,
        "Invalid or expired token",
    );
    assert_status(
        app.users
            .clone()
            .get_user(GetUserRequest { id: created.id })
            .await,
        Code::NotFound,
        "User not found",
    );
    assert_status(
        app.login(&user.username, &user.password).await,
        Code::Unauthenticated,
        "Incorrect username/email or password",
    );
    // The name is free again.
    app.create_user(&user).await.unwrap();
}

#[tokio::test]
async fn a_common_password_is_refused_at_registration() {
    let app = spawn_app().await;
    for password in ["iloveyou", "Password1", "qwertyuiop"] {
        let user = TestUser {
            password: password.into(),
            ..TestUser::generate()
        };
        let status = app.create_user(&user).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["password"]);
    }
    assert_eq!(app.count_users().await, 0);
}
