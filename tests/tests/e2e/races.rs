//! Concurrency: many racing calls end in exactly the allowed outcomes.

use proto::{
    auth::CreateUserRequest,
    posts::{DeletePostRequest, GetPostRequest, UpdatePostRequest},
};
use tonic::Code;

use crate::helpers::{bearer, spawn_stack};

#[tokio::test]
async fn fifty_concurrent_registrations_of_one_username_make_one_account() {
    let stack = spawn_stack().await;
    let name = format!("racer_{}", testkit::unique_id());
    let calls = (0..50).map(|i| {
        let mut users = stack.users.clone();
        let username = if i % 2 == 0 {
            name.clone()
        } else {
            name.to_uppercase()
        };
        async move {
            users
                .create_user(CreateUserRequest {
                    username,
                    email: format!("racer{i}_{}@example.com", testkit::unique_id()),
                    password: "a long enough password".into(),
                })
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for result in results.iter().filter(|r| r.is_err()) {
        let status = result.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
}

#[tokio::test]
async fn fifty_racing_updates_and_deletes_of_one_post_by_author_and_others() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mallory = stack.user().await;
    let post = stack.create_post(&alice, "Original", "Body").await.unwrap();

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        AuthorUpdate,
        AuthorDelete,
        OtherUpdate,
        OtherDelete,
    }
    let calls = (0..50).map(|i| {
        let kind = [
            Kind::AuthorUpdate,
            Kind::OtherUpdate,
            Kind::OtherDelete,
            Kind::AuthorUpdate,
            Kind::AuthorDelete,
        ][i % 5];
        let mut posts = stack.posts.clone();
        let token = match kind {
            Kind::AuthorUpdate | Kind::AuthorDelete => alice.token.clone(),
            _ => mallory.token.clone(),
        };
        async move {
            let code = match kind {
                Kind::AuthorUpdate | Kind::OtherUpdate => posts
                    .update_post(bearer(
                        &token,
                        UpdatePostRequest {
                            id: post.id,
                            title: Some(format!("{kind:?} {i}")),
                            content: None,
                        },
                    ))
                    .await
                    .err()
                    .map_or(Code::Ok, |s| s.code()),
                Kind::AuthorDelete | Kind::OtherDelete => posts
                    .delete_post(bearer(&token, DeletePostRequest { id: post.id }))
                    .await
                    .err()
                    .map_or(Code::Ok, |s| s.code()),
            };
            (kind, code)
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut deletes = 0;
    for (kind, code) in &results {
        match kind {
            Kind::OtherUpdate | Kind::OtherDelete => assert!(
                matches!(code, Code::PermissionDenied | Code::NotFound),
                "{kind:?} by another user: {code:?}"
            ),
            Kind::AuthorUpdate => assert!(
                matches!(code, Code::Ok | Code::NotFound),
                "{kind:?}: {code:?}"
            ),
            Kind::AuthorDelete => {
                assert!(
                    matches!(code, Code::Ok | Code::NotFound),
                    "{kind:?}: {code:?}"
                );
                deletes += usize::from(*code == Code::Ok);
            }
        }
    }
    assert_eq!(deletes, 1, "exactly one delete wins: {results:?}");
    let gone = stack
        .posts
        .clone()
        .get_post(GetPostRequest { id: post.id })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn racing_updates_by_others_never_change_a_post() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mallory = stack.user().await;
    let post = stack.create_post(&alice, "Original", "Body").await.unwrap();
    let calls = (0..50).map(|i| {
        let mut posts = stack.posts.clone();
        let token = if i % 2 == 0 {
            alice.token.clone()
        } else {
            mallory.token.clone()
        };
        async move {
            posts
                .update_post(bearer(
                    &token,
                    UpdatePostRequest {
                        id: post.id,
                        title: Some(if i % 2 == 0 {
                            format!("alice {i}")
                        } else {
                            format!("mallory {i}")
                        }),
                        content: None,
                    },
                ))
                .await
        }
    });
    for (i, result) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        if i % 2 == 0 {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert_eq!(result.unwrap_err().code(), Code::PermissionDenied);
        }
    }
    let title = stack
        .posts
        .clone()
        .get_post(GetPostRequest { id: post.id })
        .await
        .unwrap()
        .into_inner()
        .title;
    assert!(title.starts_with("alice "), "{title}");
}
