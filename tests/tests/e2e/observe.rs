//! What operators see: request ids, metrics and probes on both services.

use proto::posts::{GetPostRequest, ListPostsRequest};
use tonic::{Code, Request};

use crate::helpers::{bearer, spawn_stack};

async fn get(url: String) -> (u16, String) {
    let response = reqwest::get(url).await.expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn a_request_id_is_echoed_or_generated() {
    let stack = spawn_stack().await;
    let mut request = Request::new(ListPostsRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-123".parse().unwrap());
    let response = stack.posts.clone().list_posts(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "trace-me-123"
    );

    let response = stack
        .posts
        .clone()
        .list_posts(ListPostsRequest::default())
        .await
        .unwrap();
    let generated = response
        .metadata()
        .get("x-request-id")
        .expect("a generated request id");
    assert!(generated.len() >= 16);
    // Errors carry it too.
    let status = stack
        .posts
        .clone()
        .get_post(GetPostRequest { id: 999 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.metadata().get("x-request-id").is_some());
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_refused_tokens_by_reason() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    stack.create_post(&alice, "Hello", "x").await.unwrap();
    let _ = stack
        .posts
        .clone()
        .get_post(GetPostRequest { id: 999 })
        .await;
    let _ = stack
        .posts
        .clone()
        .list_posts(bearer("not.a.token", ListPostsRequest::default()))
        .await;
    let _ = stack
        .auth
        .clone()
        .login(proto::auth::LoginRequest {
            username_or_email: alice.username.clone(),
            password: "wrong password".into(),
        })
        .await;

    let (code, posts) = get(format!("http://{}/metrics", stack.posts_service.http_addr)).await;
    assert_eq!(code, 200);
    for expected in [
        r#"grpc_server_handled_total{service="blog.posts.v1.PostService",method="CreatePost",code="OK"} 1"#,
        r#"grpc_server_handled_total{service="blog.posts.v1.PostService",method="GetPost",code="NOT_FOUND"} 1"#,
        r#"token_rejections_total{reason="malformed"} 1"#,
        "grpc_server_handling_seconds_bucket",
        "user_events_connected 1",
        "user_events_lag_seconds",
        r#"db_pool_connections{state="max"}"#,
    ] {
        assert!(posts.contains(expected), "missing {expected} in\n{posts}");
    }
    let (code, auth) = get(format!("http://{}/metrics", stack.auth_service.http_addr)).await;
    assert_eq!(code, 200);
    for expected in [
        r#"grpc_server_handled_total{service="blog.auth.v1.AuthService",method="Login",code="UNAUTHENTICATED"} 1"#,
        "login_failures_total 1",
    ] {
        assert!(auth.contains(expected), "missing {expected} in\n{auth}");
    }
}

#[tokio::test]
async fn the_posts_service_stays_ready_without_the_auth_service_and_says_so() {
    let mut stack = spawn_stack().await;
    let url = format!("http://{}/readyz", stack.posts_service.http_addr);
    let (code, body) = get(url.clone()).await;
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["event_stream"]["connected"], true);

    stack.auth_service.stop().await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(5),
        "the stream to drop",
        || async {
            let (_, body) = get(url.clone()).await;
            body.contains(r#""connected":false"#)
        },
    )
    .await;
    let (code, body) = get(url).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        get(format!("http://{}/healthz", stack.posts_service.http_addr))
            .await
            .0,
        200
    );
}
