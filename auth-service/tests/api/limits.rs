//! Transport limits, over the wire: overload is refused at once, oversized
//! metadata and messages are refused, and the server keeps serving.

use proto::auth::{CreateUserRequest, GetJwksRequest};
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

/// Reads HTTP/2 frames from a raw connection until the server closes it or
/// `within` passes; returns the frame types seen and whether it closed.
async fn frames_until_close(
    addr: std::net::SocketAddr,
    send_preface: bool,
    within: std::time::Duration,
) -> (Vec<(u8, Vec<u8>)>, bool) {
    frames_after(addr, send_preface, false, &[], within).await
}

/// Like [`frames_until_close`], sending `extra` bytes after the preface; with
/// `ignore_pings` the client never acknowledges a PING.
async fn frames_after(
    addr: std::net::SocketAddr,
    send_preface: bool,
    ignore_pings: bool,
    extra: &[u8],
    within: std::time::Duration,
) -> (Vec<(u8, Vec<u8>)>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    if send_preface {
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // An empty SETTINGS frame.
        stream
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        // Whatever the test sends; the server may cut us off mid-way.
        let _ = stream.write_all(extra).await;
    }
    let mut frames = Vec::new();
    let read_all = async {
        let mut header = [0u8; 9];
        loop {
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            if header[3] == 4 && header[4] & 1 == 0 && send_preface {
                // Acknowledge the server's SETTINGS like a real client.
                let _ = stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
            }
            if header[3] == 6 && header[4] & 1 == 0 && payload.len() == 8 && !ignore_pings {
                // And answer its PINGs.
                let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                let _ = stream.write_all(&ack).await;
            }
            frames.push((header[3], payload));
        }
    };
    let closed = tokio::time::timeout(within, read_all).await.is_ok();
    (frames, closed)
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_in_bounded_time() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.connection_idle_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let (_, closed) =
        frames_until_close(app.grpc_addr, false, std::time::Duration::from_secs(5)).await;
    assert!(closed, "a silent connection was kept open");
    // A client that talks is served. (With a 1 s limit, shorter than the
    // 30 s keepalive, the test's own idle channel may have been closed too:
    // in production the limit is longer than the keepalive interval.)
    still_serves(app.grpc_addr).await;
}

#[tokio::test]
async fn connections_are_recycled_after_their_maximum_age() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.max_connection_age = std::time::Duration::from_secs(1);
    })
    .await;
    let (frames, closed) =
        frames_until_close(app.grpc_addr, true, std::time::Duration::from_secs(10)).await;
    let kinds: Vec<u8> = frames.iter().map(|(kind, _)| *kind).collect();
    let goaway = frames
        .iter()
        .find(|(kind, _)| *kind == 7)
        .unwrap_or_else(|| panic!("no GOAWAY in {kinds:?}"));
    assert_eq!(&goaway.1[4..8], &[0, 0, 0, 0], "GOAWAY with NO_ERROR");
    assert!(closed, "the aged connection was not closed: {kinds:?}");
}

/// A new client on `addr` is answered: whatever happened to one connection,
/// the server itself is fine.
async fn still_serves(addr: std::net::SocketAddr) {
    let mut client =
        proto::auth::auth_service_client::AuthServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    client.get_jwks(GetJwksRequest {}).await.unwrap();
}

/// A frame: 24-bit length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test]
async fn the_server_announces_its_bound_on_concurrent_streams() {
    let app = spawn_app().await;
    let (frames, _) =
        frames_until_close(app.grpc_addr, true, std::time::Duration::from_millis(500)).await;
    let settings = frames
        .iter()
        .find(|(kind, payload)| *kind == 4 && !payload.is_empty())
        .expect("server SETTINGS");
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) = 256.
    let announced = settings
        .1
        .chunks(6)
        .find(|setting| setting[..2] == [0, 3])
        .map(|setting| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
    assert_eq!(announced, Some(shared::server::MAX_STREAMS_PER_CONNECTION));
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_the_connection_closed() {
    let app = spawn_app().await;
    // HEADERS for POST /blog.auth.v1.AuthService/GetJwks (HPACK: :method POST,
    // :scheme http, :path literal), each immediately cancelled by RST_STREAM:
    // the "rapid reset" pattern (CVE-2023-44487).
    let path = b"/blog.auth.v1.AuthService/GetJwks";
    let mut block = vec![0x83, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x41, 0x09]);
    block.extend_from_slice(b"localhost");
    let mut flood = Vec::new();
    for i in 0..500u32 {
        let stream = 1 + 2 * i;
        flood.extend(frame(1, 0x4, stream, &block)); // END_HEADERS
        flood.extend(frame(3, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    let (frames, closed) = frames_after(
        app.grpc_addr,
        true,
        false,
        &flood,
        std::time::Duration::from_secs(5),
    )
    .await;
    let kinds: Vec<u8> = frames.iter().map(|(kind, _)| *kind).collect();
    let goaway = frames.iter().find(|(kind, _)| *kind == 7);
    assert!(
        goaway.is_some() || closed,
        "the flood was tolerated: {kinds:?}"
    );
    // The server itself is fine.
    still_serves(app.grpc_addr).await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_keepalive_pings_is_disconnected() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.keepalive_interval = std::time::Duration::from_secs(1);
    })
    .await;
    let (frames, closed) = frames_after(
        app.grpc_addr,
        true,
        true,
        &[],
        std::time::Duration::from_secs(20),
    )
    .await;
    let kinds: Vec<u8> = frames.iter().map(|(kind, _)| *kind).collect();
    assert!(
        kinds.contains(&6),
        "the server sent no keepalive PING: {kinds:?}"
    );
    assert!(
        closed,
        "a peer that never answers pings stayed connected: {kinds:?}"
    );
}

/// `TEST_REDIS_URL`, or `None` (the case skipped, unless CI requires it).
fn redis_url(case: &str) -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        testkit::skipped("TEST_REDIS_URL", case);
    }
    url
}

#[tokio::test]
async fn a_guesser_spread_over_two_replicas_gets_one_budget() {
    use proto::auth::LoginRequest;
    let Some(url) = redis_url("a_guesser_spread_over_two_replicas_gets_one_budget") else {
        return;
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        replicas.push(
            spawn_app_with(TestDatabase::new("auth").await, move |config| {
                config.common.redis_url = Some(url.into());
            })
            .await,
        );
    }
    // Unknown accounts are throttled like known ones: a fresh name keeps
    // this run apart from any other on the same Redis.
    let name = format!("guessed-{}", testkit::unique_id());
    let guess = |i: usize| {
        let mut auth = replicas[i % 2].auth.clone();
        let name = name.clone();
        async move {
            auth.login(LoginRequest {
                username_or_email: name,
                password: "not the password".into(),
            })
            .await
        }
    };
    // Five free failures in all, not five per replica.
    for i in 0..6 {
        assert_eq!(
            guess(i).await.unwrap_err().code(),
            Code::Unauthenticated,
            "guess {i}"
        );
    }
    for i in 6..8 {
        assert_eq!(
            guess(i).await.unwrap_err().code(),
            Code::ResourceExhausted,
            "guess {i}"
        );
    }
}

#[tokio::test]
async fn with_redis_down_logins_fail_closed_and_everything_else_serves() {
    use proto::auth::LoginRequest;
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", nowhere.local_addr().unwrap());
    drop(nowhere);
    let app = spawn_app_with(TestDatabase::new("auth").await, move |config| {
        config.common.redis_url = Some(url.into());
    })
    .await;
    // Registration's per-address limit bounds volume: it lets calls through.
    let user = crate::helpers::TestUser::generate();
    app.create_user(&user).await.expect("registration");
    // A password check without its guess budget would let guessing through.
    let refused = app
        .auth
        .clone()
        .login(LoginRequest {
            username_or_email: user.username.clone(),
            password: user.password.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    app.auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .expect("the rest serves");
}
