//! The auth-service against a hostile client, over the wire: each attack
//! that once took the service down or around its rules, bounded in count
//! and time, on loopback only.

use std::{io::Cursor, str::FromStr, time::Duration};

use image::{DynamicImage, ImageFormat, RgbImage};
use proto::auth::{
    ChangePasswordRequest, CreateUserRequest, DeleteMeRequest, GetJwksRequest, GetMeRequest,
    LoginRequest, RequestPasswordResetRequest, ResetPasswordRequest, SetAvatarRequest,
    UpdateMeRequest, auth_service_client::AuthServiceClient,
};
use testkit::{TestDatabase, smtp::reset_token};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::helpers::{
    TestApp, TestUser, app_with_mail, assert_status, bearer, spawn_app, spawn_app_with,
    violated_fields,
};

/// A client on a connection of its own, from `local` (any 127.0.0.0/8
/// address is this machine).
async fn client_from(app: &TestApp, local: [u8; 4]) -> Channel {
    Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .local_address(Some(std::net::IpAddr::from(local)))
        .connect()
        .await
        .expect("connecting")
}

/// A refusal that tells the client when to come back.
#[track_caller]
fn assert_retry_later(status: &Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo");
    assert!(retry > Duration::ZERO, "{status:?}");
}

async fn login(auth: &mut AuthServiceClient<Channel>, name: &str, password: &str) -> Code {
    match auth
        .login(LoginRequest {
            username_or_email: name.into(),
            password: password.into(),
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// A PNG header claiming `width` x `height` pixels of 16-bit RGBA, and the
/// start of its pixel data: all a decoder needs to see the size.
fn claimed_png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0u8; 64]);
    png
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A real, large picture: `side` x `side` pixels, compressed to little.
fn large_png(side: u32) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(side, side, |x, _| {
        image::Rgb([(x / 64) as u8, 80, 160])
    }));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_from_its_header() {
    let app = spawn_app().await;
    let (_, _, tokens) = app.signed_up().await;
    let before = app.state.passwords.jobs_accepted();
    // Eight at once, as the attack sent them.
    let uploads = (0..8).map(|_| {
        let mut users = app.users.clone();
        let token = tokens.access_token.clone();
        async move {
            users
                .set_avatar(bearer(
                    &token,
                    SetAvatarRequest {
                        image: claimed_png(10_000, 10_000),
                    },
                ))
                .await
        }
    });
    for result in futures::future::join_all(uploads).await {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), ["image"]);
    }
    assert_eq!(app.state.passwords.jobs_accepted(), before);
}

/// The peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/pid/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The auth-service binary, as deployed, on a fresh SQLite database; stops
/// when dropped.
struct Process {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Process {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env("AUTH_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("AUTH_HTTP_ADDR", "127.0.0.1:0")
            .env(
                "AUTH_DATABASE_URL",
                format!("sqlite://{}/auth.db", dir.path().display()),
            )
            .env("DATA_DIR", dir.path())
            .env("INTERNAL_TOKEN", "internal")
            .env("RUST_LOG", "warn")
            // The memory cases queue large conversions on purpose; on a
            // machine busy with the rest of the suite, the call waiting
            // behind them may take longer than the default 30 s.
            .env("REQUEST_TIMEOUT_SECS", "120")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting the auth-service binary");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn hostile_and_abandoned_uploads_stay_within_the_memory_budget() {
    use proto::auth::user_service_client::UserServiceClient;
    let process = Process::start().await;
    let channel = process.channel().await;
    let mut users = UserServiceClient::new(channel.clone());
    let mut auth = AuthServiceClient::new(channel);
    let user = TestUser::generate();
    users
        .create_user(CreateUserRequest {
            username: user.username.clone(),
            email: user.email.clone(),
            password: user.password.clone(),
        })
        .await
        .unwrap();
    let token = auth
        .login(LoginRequest {
            username_or_email: user.username.clone(),
            password: user.password.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;

    // Eight decompression bombs, and eight large pictures whose uploaders
    // give up after a moment, all at once.
    let bomb = claimed_png(10_000, 10_000);
    let large = large_png(4_000);
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut users = users.clone();
        let token = token.clone();
        let image = if i % 2 == 0 {
            bomb.clone()
        } else {
            large.clone()
        };
        calls.push(tokio::spawn(async move {
            let call = users.set_avatar(bearer(&token, SetAvatarRequest { image }));
            if i % 2 == 0 {
                let status = call.await.unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(200), call).await;
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    // The abandoned conversions go on to their end; a picture set now
    // waits behind them, then succeeds.
    users
        .set_avatar(bearer(&token, SetAvatarRequest { image: large }))
        .await
        .unwrap();
    let peak = peak_rss(process.child.id());
    assert!(
        peak < 512 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / 1024 / 1024
    );
}

#[tokio::test]
async fn a_24_megapixel_photo_is_still_accepted() {
    // Accepted, not fast: an unoptimised test build on a loaded two-core
    // host can take longer than the default 30 s per call to resize it.
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.request_timeout = Duration::from_secs(180);
    })
    .await;
    let (_, _, tokens) = app.signed_up().await;
    let photo = DynamicImage::ImageRgb8(RgbImage::from_fn(6_000, 4_000, |x, y| {
        image::Rgb([(x / 24) as u8, (y / 16) as u8, 128])
    }));
    let mut jpeg = Cursor::new(Vec::new());
    photo.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
    let user = app
        .users
        .clone()
        .set_avatar(bearer(
            &tokens.access_token,
            SetAvatarRequest {
                image: jpeg.into_inner(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!user.avatar_url.is_empty());
}

#[tokio::test]
async fn calls_that_never_send_their_message_cannot_lock_others_out() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.request_message_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    // 1040 calls that send their headers and then nothing, over eight
    // connections.
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/blog.auth.v1.AuthService/GetJwks");
    let mut silent = Vec::new();
    for _ in 0..8 {
        let channel = Channel::from_shared(format!("http://{}", app.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..130 {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            let path = path.clone();
            silent.push(tokio::spawn(async move {
                grpc.ready().await.unwrap();
                let never = futures::stream::pending::<GetJwksRequest>();
                let codec = tonic_prost::ProstCodec::<GetJwksRequest, proto::auth::Jwks>::default();
                grpc.client_streaming(Request::new(never), path, codec)
                    .await
                    .map(|_| ())
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile a fresh client is served.
    app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap();
    app.signed_up().await;
    let mut codes = std::collections::HashMap::new();
    for call in silent {
        let status = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("a silent call is ended by the server")
            .unwrap()
            .unwrap_err();
        *codes.entry(status.code()).or_insert(0) += 1;
    }
    // Each connection gets a few pending slots; the rest are refused at
    // once, and the ones admitted time out waiting for their message.
    let timed_out = codes.get(&Code::DeadlineExceeded).copied().unwrap_or(0);
    let refused = codes.get(&Code::ResourceExhausted).copied().unwrap_or(0);
    assert_eq!(timed_out + refused, 1040, "{codes:?}");
    assert_eq!(
        timed_out,
        8 * shared::admission::PENDING_PER_CONNECTION,
        "{codes:?}"
    );
    // And both show in the metrics under their real codes.
    let metrics = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (code, count) in [
        ("DEADLINE_EXCEEDED", timed_out),
        ("RESOURCE_EXHAUSTED", refused),
    ] {
        let line = format!(
            "grpc_server_handled_total{{service=\"blog.auth.v1.AuthService\",method=\"GetJwks\",code=\"{code}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn unknown_paths_share_one_metrics_label() {
    let app = spawn_app().await;
    let channel = Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for i in 0..300 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_str(&format!(
            "/attack.Random{i}/Method{}",
            testkit::unique_id()
        ))
        .unwrap();
        let codec = tonic_prost::ProstCodec::<GetJwksRequest, GetJwksRequest>::default();
        let status = grpc
            .unary(Request::new(GetJwksRequest {}), path, codec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }
    let metrics = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("attack."), "{metrics}");
    assert!(
        metrics.contains(
            "grpc_server_handled_total{service=\"unknown\",method=\"unknown\",code=\"UNIMPLEMENTED\"} 300"
        ),
        "{metrics}"
    );
    assert!(metrics.len() < 64 * 1024, "{} bytes", metrics.len());
}

#[tokio::test]
async fn bogus_reset_tokens_and_taken_names_cost_no_hashing() {
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    let before = app.state.passwords.jobs_accepted();
    let resets = (0..300).map(|_| {
        let mut auth = app.auth.clone();
        async move {
            let mut request = Request::new(ResetPasswordRequest {
                token: shared::secret::random_token(),
                new_password: "a perfectly fine password".into(),
            });
            // Room for a loaded test machine: the point is that no token
            // gets as far as hashing, which a deadline does not change.
            request.set_timeout(Duration::from_secs(2));
            auth.reset_password(request).await
        }
    });
    // Each is refused on its token, or (on a busy database) runs out of its
    // client's deadline first; none gets as far as hashing.
    let mut refused = 0;
    for result in futures::future::join_all(resets).await {
        let status = result.unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::Cancelled | Code::DeadlineExceeded
            ),
            "{status:?}"
        );
        refused += usize::from(status.code() == Code::InvalidArgument);
    }
    assert!(refused > 0);
    for (username, email) in [
        (user.username.clone(), "fresh@example.com".to_owned()),
        ("fresh_name".to_owned(), user.email.clone()),
    ] {
        let status = app
            .users
            .clone()
            .create_user(CreateUserRequest {
                username,
                email,
                password: "a perfectly fine password".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
    }
    assert_eq!(app.state.passwords.jobs_accepted(), before);
    // And logins are served at once.
    app.login(&user.username, &user.password).await.unwrap();
}

#[tokio::test]
async fn a_hashing_flood_is_refused_at_once_and_logins_keep_their_share() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.auth.limits.registration_burst = 1_000;
        // Room for a loaded test machine: a registration accepted into the
        // queue waits its turn there, and the point is what is refused.
        config.common.request_timeout = Duration::from_secs(180);
    })
    .await;
    let (user, _, _) = app.signed_up().await;
    let flood = (0..300).map(|i| {
        let mut users = app.users.clone();
        async move {
            let id = testkit::unique_id();
            users
                .create_user(CreateUserRequest {
                    username: format!("flood{i}_{id}"),
                    email: format!("flood{i}_{id}@example.com"),
                    password: "a perfectly fine password".into(),
                })
                .await
        }
    });
    let login = {
        let app_auth = app.auth.clone();
        let user = user.clone();
        async move {
            // Starts in the middle of the flood.
            tokio::time::sleep(Duration::from_millis(20)).await;
            login(&mut app_auth.clone(), &user.username, &user.password).await
        }
    };
    let (results, login) = tokio::join!(futures::future::join_all(flood), login);
    assert_eq!(login, Code::Ok);
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "nothing was refused");
    for status in refused {
        assert_retry_later(status);
    }
}

#[tokio::test]
async fn a_login_name_over_120_characters_is_refused_before_any_work() {
    let app = spawn_app().await;
    let before = app.state.passwords.jobs_accepted();
    for _ in 0..20 {
        let status = app
            .login(&"n".repeat(1024 * 1024), "whatever password")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["username_or_email"]);
    }
    let status = app.login(&"n".repeat(121), "x").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["username_or_email"]);
    assert_eq!(app.state.passwords.jobs_accepted(), before);
}

#[tokio::test]
async fn a_burst_of_concurrent_guesses_is_counted_before_it_is_checked() {
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    let guesser = client_from(&app, [127, 0, 0, 66]).await;
    let guesses = (0..250).map(|i| {
        let mut auth = AuthServiceClient::new(guesser.clone());
        let name = user.username.clone();
        let password = if i == 120 {
            user.password.clone()
        } else {
            format!("wrong guess {i}")
        };
        async move { login(&mut auth, &name, &password).await }
    });
    let codes = futures::future::join_all(guesses).await;
    assert_ne!(
        codes[120],
        Code::Ok,
        "the right guess got through the burst"
    );
    let checked = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    assert!(checked <= 6, "{checked} guesses were checked");
    // The owner, elsewhere, is not locked out.
    let owner = client_from(&app, [127, 0, 0, 67]).await;
    assert_eq!(
        login(
            &mut AuthServiceClient::new(owner),
            &user.username,
            &user.password
        )
        .await,
        Code::Ok
    );
}

#[tokio::test]
async fn throttling_does_not_tell_which_email_belongs_to_which_username() {
    let app = spawn_app().await;
    let (alice, _, _) = app.signed_up().await;
    let mut auth = app.auth.clone();
    for _ in 0..7 {
        login(&mut auth, &alice.username, "wrong password").await;
    }
    assert_eq!(
        login(&mut auth, &alice.username, "wrong password").await,
        Code::ResourceExhausted
    );
    // Her email and somebody else's are answered alike.
    assert_eq!(
        login(&mut auth, &alice.email, "wrong password").await,
        Code::Unauthenticated
    );
    assert_eq!(
        login(&mut auth, "nobody@example.com", "wrong password").await,
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn changing_the_email_takes_the_password_and_voids_mailed_links() {
    let (app, sink) = app_with_mail().await;
    let (user, _, tokens) = app.signed_up().await;
    app.auth
        .clone()
        .request_password_reset(RequestPasswordResetRequest {
            email: user.email.clone(),
        })
        .await
        .unwrap();
    let mailed = sink.wait_for(1, Duration::from_secs(10)).await;
    let link = reset_token(&mailed[0].data).unwrap();

    let update = |password: Option<&str>| {
        let mut users = app.users.clone();
        let request = bearer(
            &tokens.access_token,
            UpdateMeRequest {
                username: None,
                email: Some("attacker@example.com".into()),
                password: password.map(str::to_owned),
            },
        );
        async move { users.update_me(request).await }
    };
    let status = update(None).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["password"]);
    assert_status(
        update(Some("not the password")).await,
        Code::InvalidArgument,
        "Password is incorrect",
    );
    let moved = update(Some(&user.password)).await.unwrap().into_inner();
    assert_eq!(moved.email, "attacker@example.com");

    // The link mailed to the old address no longer works, and the old
    // address is told.
    let status = app
        .auth
        .clone()
        .reset_password(ResetPasswordRequest {
            token: link,
            new_password: "taken over at last".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["token"]);
    let inbox = sink.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(inbox[1].to, std::slice::from_ref(&user.email));
    assert!(inbox[1].data.contains("attacker@example.com"));
}

#[tokio::test]
async fn re_authentication_is_throttled_like_login() {
    let app = spawn_app().await;
    let (user, _, tokens) = app.signed_up().await;
    let change = |current: &str| {
        let mut auth = app.auth.clone();
        let request = bearer(
            &tokens.access_token,
            ChangePasswordRequest {
                current_password: current.into(),
                new_password: "another good password".into(),
            },
        );
        async move { auth.change_password(request).await }
    };
    for i in 0..6 {
        assert_eq!(
            change(&format!("guess {i}")).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    assert_retry_later(&change("guess 7").await.unwrap_err());
    // DeleteMe counts against the same budget.
    let status = app
        .users
        .clone()
        .delete_me(bearer(
            &tokens.access_token,
            DeleteMeRequest {
                password: user.password.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_retry_later(&status);
    let me = app
        .users
        .clone()
        .get_me(bearer(&tokens.access_token, GetMeRequest {}))
        .await;
    assert!(me.is_ok(), "the account is still there");
}

#[tokio::test]
async fn reset_mail_spam_sends_a_few_and_keeps_the_first_link_working() {
    let (app, sink) = app_with_mail().await;
    let (user, _, _) = app.signed_up().await;
    let mut refused = 0;
    for _ in 0..51 {
        let result = app
            .auth
            .clone()
            .request_password_reset(RequestPasswordResetRequest {
                email: user.email.clone(),
            })
            .await;
        if let Err(status) = result {
            assert_retry_later(&status);
            refused += 1;
        }
    }
    assert_eq!(refused, 48);
    let inbox = sink.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.inbox().len(), 3, "more mail than the limit");
    // The first link still works, for its hour.
    let first = reset_token(&inbox[0].data).unwrap();
    app.auth
        .clone()
        .reset_password(ResetPasswordRequest {
            token: first,
            new_password: "the owner's new password".into(),
        })
        .await
        .unwrap();
    // An address without an account is limited the same way (asked from
    // another client address: this one has spent its own allowance).
    let other = AuthServiceClient::new(client_from(&app, [127, 0, 0, 77]).await);
    for i in 0..4 {
        let result = other
            .clone()
            .request_password_reset(RequestPasswordResetRequest {
                email: "nobody@example.com".into(),
            })
            .await;
        assert_eq!(result.is_ok(), i < 3, "{result:?}");
    }
}

#[tokio::test]
async fn nul_bytes_are_invalid_in_every_text_field() {
    let app = spawn_app().await;
    let status = app
        .users
        .clone()
        .create_user(CreateUserRequest {
            username: "nul\0name".into(),
            email: "nul\0@example.com".into(),
            password: "pass\0word long".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["username", "email", "password"]);
    let status = app.login("alice\0", "password").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["username_or_email"]);
    assert_eq!(app.count_users().await, 0);
}

#[tokio::test]
async fn look_alike_usernames_are_taken_and_invisible_ones_refused() {
    let app = spawn_app().await;
    let alice = TestUser {
        username: "alice".into(),
        ..TestUser::generate()
    };
    app.create_user(&alice).await.unwrap();
    for twin in ["ALICE", "\u{0430}lice", "ａｌｉｃｅ", "\u{0410}LICE"] {
        let user = TestUser {
            username: twin.into(),
            ..TestUser::generate()
        };
        assert_status(
            app.create_user(&user).await,
            Code::AlreadyExists,
            "Username already exists",
        );
    }
    for hidden in [
        "al\u{200B}ice2",
        "ali\u{00AD}ce2",
        "\u{202E}ecila",
        "a\u{2028}b",
        "\u{0301}x",
    ] {
        let user = TestUser {
            username: hidden.into(),
            ..TestUser::generate()
        };
        let status = app.create_user(&user).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["username"], "{hidden:?}");
    }
    assert_eq!(app.count_users().await, 1);
}

#[tokio::test]
async fn registrations_are_limited_per_address() {
    let app = spawn_app().await;
    let from = client_from(&app, [127, 0, 0, 99]).await;
    let mut users = proto::auth::user_service_client::UserServiceClient::new(from);
    let mut refused = None;
    for i in 0..40 {
        let user = TestUser::generate();
        let result = users
            .create_user(CreateUserRequest {
                username: user.username,
                email: user.email,
                password: user.password,
            })
            .await;
        if let Err(status) = result {
            refused = Some((i, status));
            break;
        }
    }
    let (i, status) = refused.expect("the burst is limited");
    assert_eq!(i, 30);
    assert_retry_later(&status);
    // Another address is not affected.
    app.signed_up().await;
}

#[tokio::test]
async fn a_forwarded_address_counts_only_with_the_internal_token() {
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.auth.limits.registration_burst = 2;
    })
    .await;
    let from = client_from(&app, [127, 0, 0, 98]).await;
    let mut users = proto::auth::user_service_client::UserServiceClient::new(from);
    let register = |forwarded: &'static str, token: &'static str| {
        let user = TestUser::generate();
        let mut request = Request::new(CreateUserRequest {
            username: user.username,
            email: user.email,
            password: user.password,
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", forwarded.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-internal-token", token.parse().unwrap());
        request
    };
    let token = crate::helpers::INTERNAL_TOKEN;
    // The website names each visitor: each address has its own budget.
    for _ in 0..2 {
        users
            .create_user(register("203.0.113.1", token))
            .await
            .unwrap();
    }
    let status = users
        .create_user(register("203.0.113.1", token))
        .await
        .unwrap_err();
    assert_retry_later(&status);
    users
        .create_user(register("203.0.113.2", token))
        .await
        .unwrap();
    // Without the token the header is ignored: the peer's address counts,
    // so a client cannot pick a fresh address for every call.
    for _ in 0..2 {
        users
            .create_user(register("198.51.100.7", "not the token"))
            .await
            .unwrap();
    }
    let status = users
        .create_user(register("198.51.100.8", "not the token"))
        .await
        .unwrap_err();
    assert_retry_later(&status);
}

#[tokio::test]
async fn local_files_are_private_and_odd_avatar_paths_are_plain_404s() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let (user, _, _) = app.signed_up().await;
    app.auth
        .clone()
        .request_password_reset(RequestPasswordResetRequest {
            email: user.email.clone(),
        })
        .await
        .unwrap();
    let mail_dir = app.data_dir.join("mail");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&app.mail_file().await.expect("a mail file")), 0o600);
    assert_eq!(mode(&mail_dir), 0o700);
    if !app.db.is_postgres() {
        let path = app.db.url.trim_start_matches("sqlite://");
        assert_eq!(mode(std::path::Path::new(path)), 0o600, "{path}");
    }
    for key in [
        "x".repeat(250),
        format!("profile_pics/{}.jpg", "y".repeat(300)),
    ] {
        let response = reqwest::get(format!("http://{}/avatars/{key}", app.http_addr))
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
}

#[tokio::test]
async fn the_http_side_is_capped_and_gives_up_on_silent_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // More connections than the HTTP side takes, all silent.
    let mut idle = Vec::new();
    for _ in 0..shared::conn::MAX_HTTP_CONNECTIONS + 40 {
        idle.push(tokio::net::TcpStream::connect(app.http_addr).await.unwrap());
    }
    // The ones over the cap are closed at once.
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 40, "{closed} closed");
    // gRPC is untouched.
    app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap();
    drop(idle);
    // A client that starts a request and never finishes its headers is cut
    // off.
    let mut slow = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        shared::http::HEADER_TIMEOUT + Duration::from_secs(5),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(ended.is_ok(), "the half-sent request was never cut off");
    // And the HTTP side serves again.
    let healthz = reqwest::get(format!("http://{}/healthz", app.http_addr))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
}

#[tokio::test]
async fn open_streams_are_bounded_and_leave_other_calls_alone() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        config.common.max_concurrent_calls = 8;
    })
    .await;
    let channel = Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let watch = || {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
        }
    };
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(watch().await.unwrap().into_inner());
    }
    assert_retry_later(&watch().await.unwrap_err());
    // Unary calls have slots of their own.
    for _ in 0..20 {
        app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap();
    }
    // A closed stream gives its slot back.
    drop(open);
    let mut reopened = false;
    for _ in 0..100 {
        if watch().await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened);
}
