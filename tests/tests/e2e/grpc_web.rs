//! gRPC-Web on both gRPC ports, as a browser app uses it: over HTTP/1.1,
//! with CORS preflights answered for the allowed origins only, and the
//! status details (`BadRequest`) readable.

use http::{HeaderValue, Method, Request, header};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tonic::Code;
use tonic_types::StatusExt;
use tonic_web::GrpcWebClientLayer;

use proto::{
    auth::{
        CreateUserRequest, LoginRequest, auth_service_client::AuthServiceClient,
        user_service_client::UserServiceClient,
    },
    posts::{CreatePostRequest, post_service_client::PostServiceClient},
};
use testkit::grpc::bearer;

use crate::helpers::{common_config, spawn_stack, spawn_stack_with};

const APP: &str = "https://app.blog.test";

type WebChannel = tonic_web::GrpcWebClientService<
    Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic_web::GrpcWebCall<tonic::body::Body>,
    >,
>;

/// A gRPC-Web channel over HTTP/1.1 only, as a browser without TLS has.
fn web_channel() -> WebChannel {
    // This client speaks HTTP/1.1 only (hyper-util's `http1` alone).
    let client = Client::builder(TokioExecutor::new()).build_http();
    tower::ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(client)
}

#[tokio::test]
async fn a_browser_app_registers_logs_in_posts_and_reads_field_errors_over_grpc_web() {
    let mut common = common_config();
    common.grpc_web_allowed_origins = vec![APP.into()];
    let stack = spawn_stack_with(common).await;
    let auth_uri: http::Uri = format!("http://{}", stack.auth_service.addr)
        .parse()
        .unwrap();
    let posts_uri: http::Uri = format!("http://{}", stack.posts_service.addr)
        .parse()
        .unwrap();
    let mut users = UserServiceClient::with_origin(web_channel(), auth_uri.clone());
    let mut auth = AuthServiceClient::with_origin(web_channel(), auth_uri);
    let mut posts = PostServiceClient::with_origin(web_channel(), posts_uri);

    users
        .create_user(CreateUserRequest {
            username: "webby".into(),
            email: "webby@example.com".into(),
            password: "a long enough password".into(),
        })
        .await
        .unwrap();
    let tokens = auth
        .login(LoginRequest {
            username_or_email: "webby".into(),
            password: "a long enough password".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let post = posts
        .create_post(bearer(
            &tokens.access_token,
            CreatePostRequest {
                title: "Over gRPC-Web".into(),
                content: "From a browser app.".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(post.title, "Over gRPC-Web");

    let refused = users
        .create_user(CreateUserRequest {
            username: String::new(),
            email: "nope".into(),
            password: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let bad = refused
        .get_details_bad_request()
        .expect("BadRequest details");
    let mut fields: Vec<_> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["email", "password", "username"]);
}

async fn send(
    request: Request<http_body_util::Full<bytes::Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let client =
        Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<bytes::Bytes>>();
    client.request(request).await.unwrap()
}

async fn preflight(
    addr: std::net::SocketAddr,
    origin: &str,
) -> http::Response<hyper::body::Incoming> {
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("http://{addr}/blog.auth.v1.UserService/CreateUser"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,x-grpc-web,authorization",
        )
        .body(Default::default())
        .unwrap();
    send(request).await
}

/// A gRPC-Web call with an empty `GetUser` message, from `origin`.
async fn call_from(
    addr: std::net::SocketAddr,
    origin: &str,
) -> http::Response<hyper::body::Incoming> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/blog.auth.v1.UserService/GetUser"))
        .header(header::ORIGIN, origin)
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    send(request).await
}

#[tokio::test]
async fn preflights_are_answered_for_allowed_origins_only() {
    let mut common = common_config();
    common.grpc_web_allowed_origins = vec![APP.into()];
    let stack = spawn_stack_with(common).await;
    for addr in [stack.auth_service.addr, stack.posts_service.addr] {
        let allowed = preflight(addr, APP).await;
        let headers = allowed.headers();
        assert_eq!(
            headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some(&HeaderValue::from_static(APP))
        );
        let allowed_methods = headers
            .get(header::ACCESS_CONTROL_ALLOW_METHODS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(allowed_methods.contains("POST"), "{allowed_methods}");

        let other = preflight(addr, "https://evil.test").await;
        assert!(
            other
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "an origin not listed is not allowed"
        );
    }
    // The answer to a call lets the page read the status and its details.
    let answered = call_from(stack.auth_service.addr, APP).await;
    let exposed = answered
        .headers()
        .get(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(exposed.contains("grpc-status-details-bin"), "{exposed}");
}

#[tokio::test]
async fn without_allowed_origins_grpc_web_is_off() {
    let stack = spawn_stack().await;
    let auth_uri: http::Uri = format!("http://{}", stack.auth_service.addr)
        .parse()
        .unwrap();
    let mut users = UserServiceClient::with_origin(web_channel(), auth_uri);
    let refused = users
        .create_user(CreateUserRequest {
            username: "webby".into(),
            email: "webby@example.com".into(),
            password: "a long enough password".into(),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
}
