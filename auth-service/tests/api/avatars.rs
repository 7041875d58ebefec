//! Profile pictures over the API: processed, stored, served at their URL,
//! replaced and deleted without orphans, on local files and (when
//! `TEST_S3_ENDPOINT` names an S3-compatible server) on S3.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use proto::auth::{DeleteAvatarRequest, DeleteMeRequest, GetUserRequest, SetAvatarRequest, User};
use testkit::TestDatabase;
use tonic::{Code, Status};

use crate::helpers::{
    TestApp, TestUser, assert_status, bearer, spawn_app, spawn_app_with, violated_fields,
};

const INVALID: &str = "Invalid image file. Please upload a valid image (JPEG, PNG, GIF, WebP).";

fn picture(format: ImageFormat) -> Vec<u8> {
    let image = RgbaImage::from_fn(400, 300, |x, y| {
        let alpha = if format == ImageFormat::Png && x < 50 {
            0
        } else {
            255
        };
        Rgba([(x % 256) as u8, (y % 256) as u8, 128, alpha])
    });
    let image = match format {
        ImageFormat::Png | ImageFormat::WebP => DynamicImage::ImageRgba8(image),
        _ => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(image).into_rgb8()),
    };
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

async fn set_avatar(app: &TestApp, token: &str, image: Vec<u8>) -> Result<User, Status> {
    app.users
        .clone()
        .set_avatar(bearer(token, SetAvatarRequest { image }))
        .await
        .map(|r| r.into_inner())
}

async fn delete_avatar(app: &TestApp, token: &str) -> Result<User, Status> {
    app.users
        .clone()
        .delete_avatar(bearer(token, DeleteAvatarRequest {}))
        .await
        .map(|r| r.into_inner())
}

/// Fetches `url`, checking it is a 300x300 JPEG served as such.
async fn fetch_avatar(url: &str) {
    let response = reqwest::get(url).await.expect("fetching the avatar");
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let bytes = response.bytes().await.unwrap();
    let image = image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg).unwrap();
    assert_eq!((image.width(), image.height()), (300, 300));
}

async fn stored_keys(app: &TestApp) -> Vec<String> {
    app.state.avatars.keys().await.unwrap()
}

/// The whole life of an avatar, on whatever store `app` uses.
async fn avatar_life_cycle(app: &TestApp) {
    let (_, created, tokens) = app.signed_up().await;
    let token = &tokens.access_token;
    for format in [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::WebP,
    ] {
        let user = set_avatar(app, token, picture(format)).await.unwrap();
        assert!(user.avatar_url.ends_with(".jpg"), "{}", user.avatar_url);
        fetch_avatar(&user.avatar_url).await;
        // Each replacement leaves exactly one object: no orphans.
        assert_eq!(stored_keys(app).await.len(), 1, "{format:?}");
        let profile = app
            .users
            .clone()
            .get_user(GetUserRequest { id: created.id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(profile.avatar_url, user.avatar_url);
    }
    let old_url = app
        .users
        .clone()
        .get_user(GetUserRequest { id: created.id })
        .await
        .unwrap()
        .into_inner()
        .avatar_url;
    let cleared = delete_avatar(app, token).await.unwrap();
    assert_eq!(cleared.avatar_url, "");
    assert!(stored_keys(app).await.is_empty());
    assert_eq!(
        reqwest::get(&old_url).await.unwrap().status().as_u16() / 100,
        4
    );
    assert_status(
        delete_avatar(app, token).await,
        Code::FailedPrecondition,
        "No profile picture to delete",
    );
}

#[tokio::test]
async fn avatars_on_local_files_are_processed_served_replaced_and_deleted() {
    let app = spawn_app().await;
    avatar_life_cycle(&app).await;
}

#[tokio::test]
async fn avatars_on_s3_are_processed_served_replaced_and_deleted() {
    let Some(endpoint) = std::env::var("TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        testkit::skipped("TEST_S3_ENDPOINT", "S3 avatar case");
        return;
    };
    let bucket = format!("avatars-{}", testkit::unique_id());
    // S3-compatible test servers create a bucket on an anonymous PUT.
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("creating the test bucket");
    assert!(created.status().is_success(), "{created:?}");
    // Avatars are public: the bucket lets anyone read its objects.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Resource": format!("arn:aws:s3:::{bucket}/*"),
        }],
    });
    let public = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}?policy"))
        .body(policy.to_string())
        .send()
        .await
        .expect("making the test bucket public");
    assert!(public.status().is_success(), "{public:?}");
    let app = spawn_app_with(TestDatabase::new("auth").await, |config| {
        let s3 = &mut config.auth.avatars;
        s3.avatar_s3_bucket = Some(bucket.clone());
        s3.avatar_s3_endpoint = Some(endpoint.clone());
        s3.avatar_s3_access_key_id = Some("test".into());
        s3.avatar_s3_secret_access_key = Some("test".into());
    })
    .await;
    avatar_life_cycle(&app).await;
    let (_, _, tokens) = app.signed_up().await;
    let user = set_avatar(&app, &tokens.access_token, picture(ImageFormat::Png))
        .await
        .unwrap();
    assert!(
        user.avatar_url
            .starts_with(&format!("{endpoint}/{bucket}/profile_pics/")),
        "{}",
        user.avatar_url
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let (_, _, tokens) = app.signed_up().await;
    let token = &tokens.access_token;

    let too_large = vec![0u8; 5 * 1024 * 1024 + 1];
    let status = assert_status(
        set_avatar(&app, token, too_large).await,
        Code::InvalidArgument,
        "File too large. Maximum size is 5MB",
    );
    assert_eq!(violated_fields(&status), ["image"]);

    let png = picture(ImageFormat::Png);
    let mut bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bomb.extend_from_slice(&[
        0x00, 0x01, 0x86, 0xa0, 0x00, 0x01, 0x86, 0xa0, 8, 2, 0, 0, 0,
    ]);
    for upload in [
        b"just some text, not a picture".to_vec(),
        png[..png.len() / 3].to_vec(),
        bomb,
        Vec::new(),
    ] {
        assert_status(
            set_avatar(&app, token, upload).await,
            Code::InvalidArgument,
            INVALID,
        );
    }
    assert!(stored_keys(&app).await.is_empty());
}

#[tokio::test]
async fn avatars_need_a_token() {
    let app = spawn_app().await;
    let result = app
        .users
        .clone()
        .set_avatar(SetAvatarRequest {
            image: picture(ImageFormat::Png),
        })
        .await;
    assert_status(result, Code::Unauthenticated, "Not authenticated");
    assert!(stored_keys(&app).await.is_empty());
}

#[tokio::test]
async fn deleting_the_account_deletes_the_picture() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await.unwrap();
    let tokens = app.login(&user.username, &user.password).await.unwrap();
    set_avatar(&app, &tokens.access_token, picture(ImageFormat::Jpeg))
        .await
        .unwrap();
    assert_eq!(stored_keys(&app).await.len(), 1);
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
    assert!(stored_keys(&app).await.is_empty());
}

#[tokio::test]
async fn only_avatar_keys_are_served_over_http() {
    let app = spawn_app().await;
    for path in [
        "/avatars/profile_pics/nope.jpg",
        "/avatars/../auth.db",
        "/avatars/profile_pics/..%2F..%2Fauth.db",
    ] {
        let response = reqwest::get(format!("http://{}{path}", app.http_addr))
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn the_http_side_publishes_the_same_keys_as_get_jwks() {
    let app = spawn_app().await;
    let jwks = app
        .auth
        .clone()
        .get_jwks(proto::auth::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let response = reqwest::get(format!("http://{}/.well-known/jwks.json", app.http_addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), jwks.keys.len());
    assert_eq!(keys[0]["kid"], jwks.keys[0].kid);
    assert_eq!(keys[0]["x"], jwks.keys[0].x);
    assert_eq!(keys[0]["kty"], "OKP");
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            reqwest::get(format!("http://{}{probe}", app.http_addr))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}
