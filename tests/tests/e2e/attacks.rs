//! Hostile credentials against the running pair, over the wire: every token
//! the verifier's unit tests refuse, and malformed `authorization` values,
//! are answered UNAUTHENTICATED by both services, and nothing is created.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::{
    auth::{DeleteMeRequest, GetMeRequest},
    posts::{CreatePostRequest, ListPostsRequest},
};
use serde_json::{Value, json};
use tonic::{Code, Request, metadata::MetadataMap};

use crate::helpers::{PROPAGATION, Stack, TestUser, bearer, eventually, spawn_stack};

fn now() -> i64 {
    shared::time::Timestamp::now().unix_seconds()
}

fn claims(user: &TestUser, sid: &str) -> Value {
    let now = now();
    json!({
        "iss": "blog-auth", "aud": "blog", "sub": user.id.to_string(), "sid": sid,
        "preferred_username": user.username, "iat": now, "nbf": now, "exp": now + 600, "jti": "attack",
    })
}

fn part(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Signs `header.claims` with the auth-service's real key.
fn signed(stack: &Stack, header: &Value, claims: &Value) -> String {
    let (_, key) = stack.auth_state.tokens.keys().signer();
    let message = format!("{}.{}", part(header), part(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    format!("{message}.{signature}")
}

/// Every forged or broken token, named.
fn hostile_tokens(stack: &Stack, user: &TestUser, sid: &str) -> Vec<(String, String)> {
    let (kid, _) = stack.auth_state.tokens.keys().signer();
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    let good = claims(user, sid);
    let mut tokens = Vec::new();
    let mut add = |name: &str, token: String| tokens.push((name.to_owned(), token));

    for alg in ["none", "None", "NONE"] {
        let h = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        add(
            &format!("alg {alg}"),
            format!("{}.{}.", part(&h), part(&good)),
        );
    }
    let public = stack.auth_state.tokens.keys().jwks()[0].x.clone();
    for secret in [
        public.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&public).unwrap(),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(kid.to_owned());
        let token =
            jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(&secret).unwrap()).unwrap();
        add("HS256 keyed with the public key", token);
    }
    let valid = signed(stack, &header, &good);
    let (message, signature) = valid.rsplit_once('.').unwrap();
    add("null signature", format!("{message}."));
    add(
        "zero signature",
        format!("{message}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])),
    );
    let mut flipped = URL_SAFE_NO_PAD.decode(signature).unwrap();
    flipped[0] ^= 1;
    add(
        "bit-flipped signature",
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(flipped)),
    );

    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    add(
        "expired",
        signed(stack, &header, &with("exp", json!(now() - 120))),
    );
    add(
        "not yet valid",
        signed(stack, &header, &with("nbf", json!(now() + 3600))),
    );
    add(
        "wrong issuer",
        signed(stack, &header, &with("iss", json!("evil-issuer"))),
    );
    add(
        "wrong audience",
        signed(stack, &header, &with("aud", json!("other-api"))),
    );
    add(
        "exp as a string",
        signed(
            stack,
            &header,
            &with("exp", json!((now() + 600).to_string())),
        ),
    );
    for claim in [
        "iss",
        "aud",
        "sub",
        "sid",
        "preferred_username",
        "iat",
        "nbf",
        "exp",
        "jti",
    ] {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(claim);
        add(&format!("missing {claim}"), signed(stack, &header, &c));
    }
    for kid in ["unknown-key", "../../../../etc/passwd", "' OR 1=1 --"] {
        let h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        add(&format!("kid {kid:?}"), signed(stack, &h, &good));
    }
    let attacker_seed = [7u8; 32];
    let der = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        ed25519_dalek::SigningKey::from_bytes(&attacker_seed)
            .to_pkcs8_der()
            .unwrap()
    };
    let attacker = EncodingKey::from_ed_der(der.as_bytes());
    let attacker_x = URL_SAFE_NO_PAD.encode(
        ed25519_dalek::SigningKey::from_bytes(&attacker_seed)
            .verifying_key()
            .to_bytes(),
    );
    let h = json!({
        "alg": "EdDSA", "typ": "at+jwt", "kid": kid,
        "jku": "http://127.0.0.1:9/jwks.json",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": attacker_x, "kid": kid},
    });
    let message = format!("{}.{}", part(&h), part(&good));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &attacker, Algorithm::EdDSA).unwrap();
    add(
        "jku/jwk headers with the attacker's key",
        format!("{message}.{signature}"),
    );
    let h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "crit": ["exp"]});
    add("crit header", signed(stack, &h, &good));
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    add("typ JWT", signed(stack, &h, &good));
    add(
        "oversized",
        signed(stack, &header, &with("pad", json!("x".repeat(9 * 1024)))),
    );
    add("refresh token as bearer", user.refresh_token.clone());
    add("garbage", "not-a-jwt-at-all".into());
    tokens
}

/// The code both services answer `metadata` with.
async fn answers(stack: &Stack, metadata: &MetadataMap) -> (Code, Code) {
    let mut post = Request::new(CreatePostRequest {
        title: "pwned".into(),
        content: "pwned".into(),
    });
    *post.metadata_mut() = metadata.clone();
    let posts = match stack.posts.clone().create_post(post).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    let mut me = Request::new(GetMeRequest {});
    *me.metadata_mut() = metadata.clone();
    let auth = match stack.users.clone().get_me(me).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    (posts, auth)
}

fn with_authorization(values: &[&[u8]]) -> MetadataMap {
    let mut headers = http::HeaderMap::new();
    for value in values {
        headers.append(
            "authorization",
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    MetadataMap::from_headers(headers)
}

#[tokio::test]
async fn every_hostile_token_is_unauthenticated_on_both_services_and_creates_nothing() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let sid = jsonwebtoken::dangerous::insecure_decode::<shared::verify::Claims>(&alice.token)
        .unwrap()
        .claims
        .sid;
    // The fixture is sound: the real token works, and a re-signed copy of
    // its claims does too, so each hostile token differs in one thing only.
    let (kid, _) = stack.auth_state.tokens.keys().signer();
    let resigned = signed(
        &stack,
        &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}),
        &claims(&alice, &sid),
    );
    assert_eq!(
        answers(&stack, bearer(&resigned, ()).metadata()).await.0,
        Code::Ok
    );

    for (name, token) in hostile_tokens(&stack, &alice, &sid) {
        let metadata = bearer(&token, ()).metadata().clone();
        assert_eq!(
            answers(&stack, &metadata).await,
            (Code::Unauthenticated, Code::Unauthenticated),
            "{name}"
        );
    }
    let token = alice.token.as_bytes();
    for (name, metadata) in [
        ("no Bearer scheme", with_authorization(&[token])),
        ("empty", with_authorization(&[b""])),
        ("scheme only", with_authorization(&[b"Bearer"])),
        ("empty token", with_authorization(&[b"Bearer "])),
        ("Basic", with_authorization(&[b"Basic YWxpY2U6c2VjcmV0"])),
        (
            "two headers",
            with_authorization(&[format!("Bearer {}", alice.token).as_bytes(), b"Bearer x"]),
        ),
        ("non-ASCII", with_authorization(&[b"Bearer \xc3\xa9\xff"])),
        (
            "two tokens",
            with_authorization(&[format!("Bearer {} {}", alice.token, alice.token).as_bytes()]),
        ),
    ] {
        assert_eq!(
            answers(&stack, &metadata).await,
            (Code::Unauthenticated, Code::Unauthenticated),
            "{name}"
        );
    }
    let page = stack
        .posts
        .clone()
        .list_posts(ListPostsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 1, "only the sound fixture's post exists");
}

#[tokio::test]
async fn the_token_of_a_deleted_user_is_unauthenticated_everywhere() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    stack
        .users
        .clone()
        .delete_me(bearer(
            &alice.token,
            DeleteMeRequest {
                password: alice.password.clone(),
            },
        ))
        .await
        .unwrap();
    let metadata = bearer(&alice.token, ()).metadata().clone();
    eventually(
        PROPAGATION,
        "the deleted user's token to be refused",
        || async {
            answers(&stack, &metadata).await == (Code::Unauthenticated, Code::Unauthenticated)
        },
    )
    .await;
    let page = stack
        .posts
        .clone()
        .list_posts(ListPostsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 0);
}

#[tokio::test]
async fn a_burst_of_post_writes_beyond_the_quota_is_refused_with_retry_info() {
    use tonic_types::StatusExt;
    let stack = spawn_stack().await;
    // A posts-service with the default quota, beside the stack's own.
    let db = testkit::TestDatabase::new("posts").await;
    let mut config = crate::helpers::posts_config(
        &db,
        format!("http://{}", stack.auth_service.addr),
        &crate::helpers::common_config(),
    );
    config.posts = posts_service::config::PostsConfig {
        post_writes_per_hour: 360,
        post_write_burst: 30,
        ..config.posts
    };
    let running = crate::helpers::start_posts_with(config).await;
    eventually(std::time::Duration::from_secs(10), "keys", || async {
        crate::helpers::health(running.addr).await
            == tonic_health::pb::health_check_response::ServingStatus::Serving
    })
    .await;
    let posts = proto::posts::post_service_client::PostServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let alice = stack.user().await;
    let bob = stack.user().await;
    let write = |user: &TestUser, i: usize| {
        let mut posts = posts.clone();
        let request = bearer(
            &user.token,
            CreatePostRequest {
                title: format!("post {i}"),
                content: "x".repeat(1000),
            },
        );
        async move { posts.create_post(request).await }
    };
    let results = futures::future::join_all((0..200).map(|i| write(&alice, i))).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    // A write the quota let through may still meet a database too busy to
    // take it in time on a loaded machine (UNAVAILABLE); it used its unit.
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unavailable))
        .count();
    let others: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| !matches!(s.code(), Code::Unavailable | Code::ResourceExhausted))
        .collect();
    assert_eq!(
        created + busy,
        30,
        "the burst passes, the rest does not; other refusals: {others:?}"
    );
    assert!(created > 0);
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        if status.code() == Code::Unavailable {
            continue;
        }
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
    }
    // Somebody else still writes.
    write(&bob, 0).await.unwrap();
}

#[tokio::test]
async fn a_page_of_large_posts_fits_in_what_clients_accept() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    // 100 posts of 20,000 four-byte characters: 8 MB in all.
    let content = "\u{1F600}".repeat(20_000);
    for i in 0..100 {
        stack
            .create_post(&alice, &format!("big {i}"), &content)
            .await
            .unwrap();
    }
    let mut seen = 0;
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        // The client's default limit: 4 MiB per message.
        let page = stack
            .posts
            .clone()
            .list_posts(ListPostsRequest {
                page_size: 100,
                page_token: page_token.clone(),
                author_id: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.posts.len() < 100, "one page of everything");
        seen += page.posts.len();
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, 100);
    assert!(pages >= 2);
}

#[tokio::test]
async fn nul_bytes_in_titles_and_contents_are_invalid_on_every_backend() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    for (title, content) in [("nul\0title", "fine"), ("fine", "nul\0content")] {
        let status = stack.create_post(&alice, title, content).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let post = stack.create_post(&alice, "fine", "fine").await.unwrap();
    let status = stack
        .posts
        .clone()
        .update_post(bearer(
            &alice.token,
            proto::posts::UpdatePostRequest {
                id: post.id,
                title: Some("nul\0".into()),
                content: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
