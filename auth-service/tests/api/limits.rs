//! Transport limits, over the wire: overload is refused at once, oversized
//! metadata and messages are refused, and the server keeps serving.

use shared::proto::auth::{CreateUserRequest, GetJwksRequest};
use testkit::TestDatabase;
use tonic::{Code, Request};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_not_queued() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.max_concurrent_calls = 2;
    })
    .await;
    // Registrations hash a password, so a burst of them overlaps.
    let calls = (0..12).map(|i| {
        let mut users = app.users.clone();
        async move {
            let id = testkit::unique_id();
            users
                .create_user(CreateUserRequest {
                    username: format!("burst_{i}_{id}"),
                    email: format!("burst_{i}_{id}@example.com"),
                    password: "a long enough password".into(),
                })
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let shed = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert!(shed > 0, "nothing was shed: {results:?}");
    assert!(served >= 2, "{results:?}");
    assert_eq!(
        shed + served,
        12,
        "only success or RESOURCE_EXHAUSTED: {results:?}"
    );
    // And the server is fine afterwards.
    app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn oversized_metadata_is_refused_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let mut request = Request::new(GetJwksRequest {});
    request
        .metadata_mut()
        .insert("x-padding", "x".repeat(32 * 1024).parse().unwrap());
    assert!(app.auth.clone().get_jwks(request).await.is_err());
    app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_transport_limit_is_refused() {
    let app = spawn_app().await;
    // Far beyond what CreateUser can need, and beyond the 4 MiB default.
    let result = app
        .users
        .clone()
        .create_user(CreateUserRequest {
            username: "x".repeat(8 * 1024 * 1024),
            email: "big@example.com".into(),
            password: "a long enough password".into(),
        })
        .await;
    let status = result.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::Internal
        ),
        "{status:?}"
    );
    assert_eq!(app.count_users().await, 0);
    app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap();
}
