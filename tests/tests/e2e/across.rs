//! Across the two services: profile changes, deletions and
//! revocations reach the posts-service, also across restarts and outages.

use proto::{
    auth::{DeleteMeRequest, LogoutRequest, UpdateMeRequest},
    posts::{GetPostRequest, ListPostsRequest},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    PROPAGATION, Stack, TestUser, assert_status, bearer, eventually, spawn_stack,
};

async fn author_name(stack: &Stack, post_id: i64) -> Option<String> {
    let post = stack
        .posts
        .clone()
        .get_post(GetPostRequest { id: post_id })
        .await
        .ok()?;
    post.into_inner().author.map(|a| a.username)
}

async fn total_posts(stack: &Stack, author_id: i64) -> i64 {
    match stack
        .posts
        .clone()
        .list_posts(ListPostsRequest {
            author_id,
            ..Default::default()
        })
        .await
    {
        Ok(page) => page.into_inner().total_size,
        Err(status) if status.code() == Code::NotFound => 0,
        Err(status) => panic!("{status:?}"),
    }
}

async fn token_accepted(stack: &Stack, user: &TestUser) -> Code {
    match stack
        .posts
        .clone()
        .list_posts(bearer(&user.token, ListPostsRequest::default()))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn delete_account(stack: &Stack, user: &TestUser) {
    stack
        .users
        .clone()
        .delete_me(bearer(
            &user.token,
            DeleteMeRequest {
                password: user.password.clone(),
            },
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_renamed_user_shows_on_their_posts_within_a_second() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let post = stack.create_post(&alice, "Hello", "x").await.unwrap();
    stack
        .users
        .clone()
        .update_me(bearer(
            &alice.token,
            UpdateMeRequest {
                username: Some("alice-the-great".into()),
                email: None,
                password: None,
            },
        ))
        .await
        .unwrap();
    eventually(PROPAGATION, "the new name on the post", || async {
        author_name(&stack, post.id).await.as_deref() == Some("alice-the-great")
    })
    .await;
}

#[tokio::test]
async fn a_deleted_user_loses_their_posts_and_their_token() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let bob = stack.user().await;
    stack.create_post(&alice, "A1", "x").await.unwrap();
    stack.create_post(&alice, "A2", "x").await.unwrap();
    let bobs = stack.create_post(&bob, "B1", "x").await.unwrap();
    delete_account(&stack, &alice).await;
    eventually(PROPAGATION, "alice's posts to go", || async {
        total_posts(&stack, alice.id).await == 0
    })
    .await;
    assert_eq!(token_accepted(&stack, &alice).await, Code::Unauthenticated);
    assert_status(
        stack.create_post(&alice, "ghost", "x").await,
        Code::Unauthenticated,
        "Invalid or expired token",
    );
    assert_eq!(
        author_name(&stack, bobs.id).await,
        Some(bob.username.clone())
    );
    assert_eq!(total_posts(&stack, 0).await, 1);
}

#[tokio::test]
async fn a_logged_out_token_is_refused_within_a_second() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mut other_session = alice.clone();
    other_session.token = stack.login(&alice).await.unwrap().access_token;
    assert_eq!(token_accepted(&stack, &alice).await, Code::Ok);
    stack
        .auth
        .clone()
        .logout(bearer(
            &alice.token,
            LogoutRequest {
                all_sessions: false,
            },
        ))
        .await
        .unwrap();
    eventually(
        PROPAGATION,
        "the logged-out token to be refused",
        || async { token_accepted(&stack, &alice).await == Code::Unauthenticated },
    )
    .await;
    assert_eq!(token_accepted(&stack, &other_session).await, Code::Ok);
}

#[tokio::test]
async fn revocations_survive_a_posts_service_restart() {
    let mut stack = spawn_stack().await;
    let alice = stack.user().await;
    stack
        .auth
        .clone()
        .logout(bearer(&alice.token, LogoutRequest { all_sessions: true }))
        .await
        .unwrap();
    eventually(PROPAGATION, "the token to be refused", || async {
        token_accepted(&stack, &alice).await == Code::Unauthenticated
    })
    .await;
    stack.restart_posts(async {}).await;
    assert_eq!(token_accepted(&stack, &alice).await, Code::Unauthenticated);
}

#[tokio::test]
async fn a_user_deleted_while_the_posts_service_was_down_has_no_posts_after_it_restarts() {
    let mut stack = spawn_stack().await;
    let alice = stack.user().await;
    stack.create_post(&alice, "A1", "x").await.unwrap();
    let users = stack.users.clone();
    let password = alice.password.clone();
    let token = alice.token.clone();
    stack
        .restart_posts(async move {
            users
                .clone()
                .delete_me(bearer(&token, DeleteMeRequest { password }))
                .await
                .unwrap();
        })
        .await;
    eventually(PROPAGATION, "alice's posts to go", || async {
        total_posts(&stack, alice.id).await == 0
    })
    .await;
    assert_eq!(token_accepted(&stack, &alice).await, Code::Unauthenticated);
}

#[tokio::test]
async fn with_the_auth_service_down_reads_and_valid_tokens_still_work() {
    let mut stack = spawn_stack().await;
    let alice = stack.user().await;
    let post = stack.create_post(&alice, "Before", "x").await.unwrap();
    stack.auth_service.stop().await;

    assert_eq!(
        author_name(&stack, post.id).await,
        Some(alice.username.clone())
    );
    let after = stack
        .create_post(&alice, "During the outage", "x")
        .await
        .unwrap();
    assert_eq!(after.author.unwrap().id, alice.id);
    assert_eq!(total_posts(&stack, alice.id).await, 2);
    assert_eq!(stack.posts_health().await, ServingStatus::Serving);
}

#[tokio::test]
async fn keys_cached_in_the_database_verify_tokens_after_a_restart_while_auth_is_down() {
    let mut stack = spawn_stack().await;
    let alice = stack.user().await;
    stack.auth_service.stop().await;
    stack.restart_posts(async {}).await;
    stack.create_post(&alice, "Still me", "x").await.unwrap();
}

#[tokio::test]
async fn before_it_has_keys_the_posts_service_answers_tokens_with_unavailable() {
    let (posts, client, _db) = crate::helpers::spawn_posts_without_auth().await;
    // Long enough for a first health report and a failed key fetch.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        crate::helpers::health(posts.addr).await,
        ServingStatus::NotServing
    );
    let with_token = client
        .clone()
        .list_posts(bearer(
            "eyJhbGciOiJFZERTQSJ9.e30.c2ln",
            ListPostsRequest::default(),
        ))
        .await;
    assert_eq!(with_token.unwrap_err().code(), Code::Unavailable);
    // Without a token there is nothing to verify: reads still work.
    let page = client
        .clone()
        .list_posts(ListPostsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 0);
}

#[tokio::test]
async fn a_password_reset_kills_old_tokens_on_both_services() {
    use proto::auth::{RefreshTokenRequest, RequestPasswordResetRequest, ResetPasswordRequest};
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    assert_eq!(token_accepted(&stack, &alice).await, Code::Ok);
    stack
        .auth
        .clone()
        .request_password_reset(RequestPasswordResetRequest {
            email: alice.email.clone(),
        })
        .await
        .unwrap();
    let inbox = stack
        .mail
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    let token = testkit::smtp::reset_token(&inbox[0].data).expect("a reset link");
    stack
        .auth
        .clone()
        .reset_password(ResetPasswordRequest {
            token,
            new_password: "a brand new secret".into(),
        })
        .await
        .unwrap();
    eventually(
        PROPAGATION,
        "the old token to be refused by the posts-service",
        || async { token_accepted(&stack, &alice).await == Code::Unauthenticated },
    )
    .await;
    let refreshed = stack
        .auth
        .clone()
        .refresh_token(RefreshTokenRequest {
            refresh_token: alice.refresh_token.clone(),
        })
        .await;
    assert_eq!(refreshed.unwrap_err().code(), Code::Unauthenticated);
    let me = stack
        .users
        .clone()
        .get_me(bearer(&alice.token, proto::auth::GetMeRequest {}))
        .await;
    assert_eq!(me.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_new_or_removed_avatar_shows_on_posts_within_a_second() {
    use proto::auth::{DeleteAvatarRequest, SetAvatarRequest};
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let post = stack.create_post(&alice, "Hello", "x").await.unwrap();
    let avatar_url = |stack: &Stack| {
        let mut posts = stack.posts.clone();
        async move {
            posts
                .get_post(GetPostRequest { id: post.id })
                .await
                .unwrap()
                .into_inner()
                .author
                .unwrap()
                .avatar_url
        }
    };
    let mut png = std::io::Cursor::new(Vec::new());
    image_png(&mut png);
    let user = stack
        .users
        .clone()
        .set_avatar(bearer(
            &alice.token,
            SetAvatarRequest {
                image: png.into_inner(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!user.avatar_url.is_empty());
    eventually(PROPAGATION, "the avatar on the post", || async {
        avatar_url(&stack).await == user.avatar_url
    })
    .await;
    stack
        .users
        .clone()
        .delete_avatar(bearer(&alice.token, DeleteAvatarRequest {}))
        .await
        .unwrap();
    eventually(PROPAGATION, "the avatar to leave the post", || async {
        avatar_url(&stack).await.is_empty()
    })
    .await;
}

/// A small valid PNG.
fn image_png(out: &mut std::io::Cursor<Vec<u8>>) {
    // 1x1 white pixel.
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90,
        0x77, 0x53, 0xDE, 0x00, 0x00, 0x00, 0x0C, 0x49, 0x44, 0x41, 0x54, 0x08, 0xD7, 0x63, 0xF8,
        0xFF, 0xFF, 0x3F, 0x00, 0x05, 0xFE, 0x02, 0xFE, 0xDC, 0xCC, 0x59, 0xE7, 0x00, 0x00, 0x00,
        0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    out.get_mut().extend_from_slice(PNG);
}

#[tokio::test]
async fn a_replica_behind_the_kept_history_catches_up_through_a_snapshot() {
    let mut stack = spawn_stack().await;
    let (alice, bob, carol) = (stack.user().await, stack.user().await, stack.user().await);
    let a1 = stack.create_post(&alice, "A1", "x").await.unwrap();
    stack.create_post(&bob, "B1", "x").await.unwrap();
    stack.create_post(&carol, "C1", "x").await.unwrap();
    eventually(PROPAGATION, "the first events to apply", || async {
        total_posts(&stack, carol.id).await == 1
    })
    .await;
    let (users, auth, store) = (
        stack.users.clone(),
        stack.auth.clone(),
        stack.auth_state.store.clone(),
    );
    let (alice_token, bob_token, bob_password, carol_token) = (
        alice.token.clone(),
        bob.token.clone(),
        bob.password.clone(),
        carol.token.clone(),
    );
    stack
        .restart_posts(async move {
            // While the posts-service is away: a rename, a deletion and a
            // logout, then every event but the newest is compacted away.
            users
                .clone()
                .update_me(bearer(
                    &alice_token,
                    UpdateMeRequest {
                        username: Some("alice_renamed_x".into()),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
            users
                .clone()
                .delete_me(bearer(
                    &bob_token,
                    DeleteMeRequest {
                        password: bob_password,
                    },
                ))
                .await
                .unwrap();
            auth.clone()
                .logout(bearer(&carol_token, LogoutRequest::default()))
                .await
                .unwrap();
            let later = shared::time::Timestamp::now() + std::time::Duration::from_secs(3600);
            assert!(store.prune_events(later).await.unwrap() > 0);
        })
        .await;
    // The same effects as replaying the events would have had.
    eventually(PROPAGATION, "the rename to show", || async {
        author_name(&stack, a1.id).await.as_deref() == Some("alice_renamed_x")
    })
    .await;
    assert_eq!(
        total_posts(&stack, bob.id).await,
        0,
        "a deleted user's posts are gone"
    );
    assert_eq!(token_accepted(&stack, &bob).await, Code::Unauthenticated);
    assert_eq!(token_accepted(&stack, &carol).await, Code::Unauthenticated);
    assert_eq!(token_accepted(&stack, &alice).await, Code::Ok);
    // And it follows the live stream from the snapshot on.
    let dave = stack.user().await;
    stack.create_post(&dave, "D1", "x").await.unwrap();
    assert_eq!(total_posts(&stack, dave.id).await, 1);
}

#[tokio::test]
async fn a_new_replica_starts_from_a_snapshot_that_refuses_what_the_history_did() {
    let stack = spawn_stack().await;
    let (alice, bob, carol) = (stack.user().await, stack.user().await, stack.user().await);
    // The users' creation leaves the history; the deletion and the logout,
    // younger than the tokens they refuse, stay (as with any retention
    // longer than a token's life, which the auth-service insists on).
    let cut = shared::time::Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    delete_account(&stack, &bob).await;
    stack
        .auth
        .clone()
        .logout(bearer(&carol.token, LogoutRequest::default()))
        .await
        .unwrap();
    assert!(stack.auth_state.store.prune_events(cut).await.unwrap() > 0);

    // A replica on an empty database: what it knows comes from the
    // snapshot, including the deletion and the logout, whose tokens are
    // still alive.
    let db = testkit::TestDatabase::new("posts").await;
    let (mut replica, mut posts) = stack.another_posts(&db).await;
    let create = |user: &TestUser| {
        bearer(
            &user.token,
            proto::posts::CreatePostRequest {
                title: "on the new replica".into(),
                content: "x".into(),
            },
        )
    };
    let post = posts
        .create_post(create(&alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(post.author.unwrap().username, alice.username);
    for refused in [&bob, &carol] {
        let status = posts.create_post(create(refused)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    replica.stop().await;
}
