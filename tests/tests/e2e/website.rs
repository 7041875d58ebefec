//! The website, used as a person would: every flow over HTTP with a
//! cookie-keeping client, against both services.

use std::time::Duration;

use reqwest::{StatusCode, header};

use crate::{helpers::spawn_stack, site::Site};

fn png(side: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn a_person_registers_writes_edits_and_deletes_a_post_then_logs_out_and_in() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let home = alice.get("/").await;
    assert!(home.body.contains("Log out"), "{}", home.body);
    assert!(home.body.contains(r#"href="/account">alice<"#));

    let post = alice.publish("First post", "Hello, world.").await;
    let page = alice.get(&post).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<h1>First post</h1>"));
    assert!(page.body.contains("Hello, world."));
    assert!(page.body.contains("Edit"), "the author sees edit");
    assert!(alice.get("/").await.body.contains("First post"));

    let edit = format!("{post}/edit");
    let form = alice.get(&edit).await;
    assert!(form.body.contains(r#"value="First post""#));
    let saved = alice
        .submit(
            &edit,
            &edit,
            &[("title", "First post, edited"), ("content", "Changed.")],
        )
        .await;
    saved.assert_redirect(&post);
    assert!(alice.get(&post).await.body.contains("First post, edited"));

    let deleted = alice.submit(&post, &format!("{post}/delete"), &[]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert_eq!(alice.get(&post).await.status, StatusCode::NOT_FOUND);

    alice.submit("/", "/logout", &[]).await.assert_redirect("/");
    let home = alice.get("/").await;
    assert!(home.body.contains(r#"href="/login""#));
    assert!(!home.body.contains("Log out"));
    // Logged out at the auth-service too: the old cookie's tokens are dead.

    let wrong = alice
        .submit(
            "/login",
            "/login",
            &[
                ("username_or_email", "alice"),
                ("password", "not it at all"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong username, email or password."));
    assert!(wrong.body.contains(r#"value="alice""#), "the name is kept");
    assert!(
        !wrong.body.contains("not it at all"),
        "the password never is"
    );
    alice
        .submit(
            "/login",
            "/login",
            &[
                ("username_or_email", "alice@example.com"),
                ("password", "alice password"),
            ],
        )
        .await
        .assert_redirect("/");
}

#[tokio::test]
async fn another_user_cannot_edit_or_delete_a_post_and_sees_no_buttons() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let post = alice.publish("Mine", "Only mine.").await;

    let mut bob = site.visitor();
    bob.register("bob").await;
    let page = bob.get(&post).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("/edit"));
    let edit = format!("{post}/edit");
    assert_eq!(bob.get(&edit).await.status, StatusCode::FORBIDDEN);
    let csrf = bob.get(&post).await.csrf();
    let refused = bob
        .post_raw(
            &edit,
            &[("csrf_token", &csrf), ("title", "Ha"), ("content", "Ha")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("not allowed"), "{}", refused.body);
    let refused = bob
        .post_raw(&format!("{post}/delete"), &[("csrf_token", &csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(alice.get(&post).await.body.contains("Only mine."));
}

#[tokio::test]
async fn a_logged_out_visitor_is_sent_to_log_in_and_back() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut visitor = site.visitor();
    visitor
        .get("/posts/new")
        .await
        .assert_redirect("/login?next=/posts/new");
    visitor
        .get("/account")
        .await
        .assert_redirect("/login?next=/account");

    let mut alice = site.visitor();
    alice.register("alice").await;
    let page = visitor
        .submit(
            "/login?next=/posts/new",
            "/login?next=/posts/new",
            &[
                ("username_or_email", "alice"),
                ("password", "alice password"),
            ],
        )
        .await;
    page.assert_redirect("/posts/new");
    // Never to another site.
    let page = visitor
        .submit(
            "/login",
            "/login?next=//evil.test/",
            &[
                ("username_or_email", "alice"),
                ("password", "alice password"),
            ],
        )
        .await;
    page.assert_redirect("/");
}

#[tokio::test]
async fn a_forgotten_password_is_reset_through_the_mailed_link() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    alice.submit("/", "/logout", &[]).await;

    let sent = alice
        .submit(
            "/forgot-password",
            "/forgot-password",
            &[("email", "alice@example.com")],
        )
        .await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(sent.body.contains("Check your mail"));
    let mail = stack.mail.wait_for(1, Duration::from_secs(10)).await;
    let token = testkit::smtp::reset_token(&mail[0].data).expect("a reset link");
    let link = format!("/reset-password?token={token}");

    let form = alice.get(&link).await;
    assert_eq!(form.status, StatusCode::OK);
    let weak = alice
        .submit(&link, &link, &[("new_password", "short")])
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        weak.body.contains(r#"id="new_password-error""#),
        "{}",
        weak.body
    );
    let done = alice
        .submit(&link, &link, &[("new_password", "a brand new password")])
        .await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(done.body.contains("Password changed"));
    alice
        .submit(
            "/login",
            "/login",
            &[
                ("username_or_email", "alice"),
                ("password", "a brand new password"),
            ],
        )
        .await
        .assert_redirect("/");
}

#[tokio::test]
async fn a_profile_picture_uploaded_on_the_account_page_shows_on_the_users_posts() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    alice.publish("With a face", "Look.").await;
    let uploaded = alice.upload_picture(png(64)).await;
    assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.body);
    assert!(uploaded.body.contains("Picture saved."));
    let account = alice.get("/account").await;
    let src = account
        .body
        .split(r#"<img class="avatar" src=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the picture on the account page")
        .to_owned();

    let home = alice.get("/").await;
    let user_link = home
        .body
        .split(r#"<a href="/users/"#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let profile = alice.get(&format!("/users/{user_link}")).await;
    assert!(profile.body.contains(&src), "{}", profile.body);
    assert!(profile.body.contains("Posts by alice"));
    let image = reqwest::get(&src).await.unwrap();
    assert_eq!(image.status(), StatusCode::OK);

    let bad = alice.upload_picture(b"not an image".to_vec()).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains(r#"class="error""#));
    let huge = alice.upload_picture(vec![0; 13 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(huge.body.contains("too large"), "{}", huge.body);
    // The rest of that body was never read, so the connection is closed,
    // and the response says so: the next request goes down a fresh one.
    assert_eq!(huge.headers[reqwest::header::CONNECTION], "close");

    let removed = alice
        .submit("/account", "/account/picture/delete", &[])
        .await;
    assert!(removed.body.contains("Picture removed."));
    assert!(!removed.body.contains(r#"<img class="avatar""#));
}

#[tokio::test]
async fn forms_without_this_sessions_token_or_from_another_site_are_refused() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let no_token = alice
        .post_raw("/posts/new", &[("title", "x"), ("content", "y")])
        .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let mut other = site.visitor();
    let foreign = other.get("/login").await.csrf();
    let wrong_token = alice
        .post_raw(
            "/posts/new",
            &[("csrf_token", &foreign), ("title", "x"), ("content", "y")],
        )
        .await;
    assert_eq!(wrong_token.status, StatusCode::FORBIDDEN);

    let csrf = alice.get("/").await.csrf();
    let cross_site = reqwest::Client::new()
        .post(format!("{}/posts/new", alice.base))
        .header(header::COOKIE, alice.cookie.clone().unwrap())
        .header(header::ORIGIN, "https://evil.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}&title=x&content=y"))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let listed = alice.get("/").await;
    assert!(listed.body.contains("No posts yet."), "nothing was posted");
}

#[tokio::test]
async fn hostile_text_is_shown_as_text() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let post = alice
        .publish(
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(2)> \" ' &",
        )
        .await;
    for path in ["/", post.as_str()] {
        let page = alice.get(path).await;
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<img src=x"), "{path}");
        assert!(
            page.body
                .contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn every_page_carries_the_security_headers_and_a_strict_session_cookie() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut visitor = site.visitor();
    // Reading starts no session: no cookie until a page has a form.
    let home = visitor.get("/").await;
    assert!(
        home.headers.get("set-cookie").is_none(),
        "{:?}",
        home.headers
    );
    assert!(visitor.cookie.is_none());
    assert!(home.headers.get("content-security-policy").is_some());
    let page = visitor.get("/login").await;
    let header = |name| {
        page.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert!(!csp.contains("script-src"), "no script runs at all");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "same-origin");
    assert!(!header("x-request-id").is_empty());
    let cookie = header("set-cookie");
    assert!(cookie.starts_with("blog_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    assert!(cookie.contains("Path=/"));

    // The tokens are sealed: nothing in the cookie reads as a JWT.
    visitor.register("alice").await;
    let cookie = visitor.cookie.clone().unwrap();
    assert!(!cookie.contains("eyJ"), "{cookie}");

    let missing = visitor.get("/posts/999999").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Not found"));
    assert_eq!(
        visitor.get("/no/such/page").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        visitor.get("/posts/abc").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        visitor.get("/?page_token=garbage").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_refused_form_shows_each_problem_beside_its_field_and_keeps_the_input() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut first = site.visitor();
    first.register("alice").await;
    let mut visitor = site.visitor();
    let page = visitor
        .submit(
            "/register",
            "/register",
            &[
                ("username", "alice"),
                ("email", "not-an-email"),
                ("password", "secret password"),
            ],
        )
        .await;
    assert!(page.status.is_client_error(), "{}", page.status);
    assert!(page.body.contains(r#"id="email-error""#), "{}", page.body);
    assert!(page.body.contains(r#"value="not-an-email""#));
    assert!(!page.body.contains("secret password"));
    let taken = visitor
        .submit(
            "/register",
            "/register",
            &[
                ("username", "alice"),
                ("email", "other@example.com"),
                ("password", "secret password"),
            ],
        )
        .await;
    assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(taken.body.contains("already exists"), "{}", taken.body);
}

#[tokio::test]
async fn the_account_page_renames_changes_the_password_and_deletes_the_account() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let renamed = alice
        .submit(
            "/account",
            "/account",
            &[
                ("username", "alicia"),
                ("email", "alice@example.com"),
                ("password", ""),
            ],
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    assert!(renamed.body.contains("Profile saved."));
    assert!(
        alice
            .get("/")
            .await
            .body
            .contains(r#"href="/account">alicia<"#)
    );

    let email_without_password = alice
        .submit(
            "/account",
            "/account",
            &[
                ("username", "alicia"),
                ("email", "new@example.com"),
                ("password", ""),
            ],
        )
        .await;
    assert_eq!(
        email_without_password.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let changed = alice
        .submit(
            "/account",
            "/account/password",
            &[
                ("current_password", "alice password"),
                ("new_password", "another long password"),
            ],
        )
        .await;
    assert!(
        changed.body.contains("Password changed."),
        "{}",
        changed.body
    );

    let kept = alice
        .submit(
            "/account",
            "/account/delete",
            &[("password", "wrong password")],
        )
        .await;
    assert_eq!(kept.status, StatusCode::UNPROCESSABLE_ENTITY);
    alice
        .submit(
            "/account",
            "/account/delete",
            &[("password", "another long password")],
        )
        .await
        .assert_redirect("/");
    assert!(alice.get("/").await.body.contains(r#"href="/login""#));
    let gone = alice
        .submit(
            "/login",
            "/login",
            &[
                ("username_or_email", "alicia"),
                ("password", "another long password"),
            ],
        )
        .await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_home_page_pages_through_older_posts() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    for i in 0..12 {
        alice.publish(&format!("Post number {i:02}"), "x").await;
    }
    let first = alice.get("/").await;
    assert!(first.body.contains("Post number 11"));
    assert!(!first.body.contains("Post number 01"));
    let next = first
        .body
        .split(r#"<a rel="next" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to older posts")
        .replace("&#38;", "&");
    let second = alice.get(&next).await;
    assert!(second.body.contains("Post number 01"), "{}", second.body);
    assert!(!second.body.contains("Post number 11"));
    assert!(!second.body.contains(r#"rel="next""#));
}

#[tokio::test]
async fn an_expiring_access_token_is_refreshed_without_the_person_noticing() {
    let mut common = crate::helpers::common_config();
    // Shorter than the website's refresh margin: every page refreshes.
    common.access_token_ttl = Duration::from_secs(5);
    let stack = crate::helpers::spawn_stack_with(common).await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let before = alice.cookie.clone();
    let home = alice.get("/").await;
    assert!(home.body.contains("Log out"), "{}", home.body);
    assert!(
        home.headers.contains_key(header::SET_COOKIE),
        "new tokens, new cookie"
    );
    assert_ne!(alice.cookie, before);
    // The rotated refresh token keeps working, page after page.
    for _ in 0..3 {
        assert!(alice.get("/account").await.body.contains("Your account"));
    }
    alice.publish("Still here", "Refreshed.").await;
}

#[tokio::test]
async fn too_many_attempts_show_a_429_page_with_retry_after() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    alice.submit("/", "/logout", &[]).await;
    let mut last = None;
    for _ in 0..10 {
        let page = alice
            .submit(
                "/login",
                "/login",
                &[
                    ("username_or_email", "alice"),
                    ("password", "wrong password!"),
                ],
            )
            .await;
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            last = Some(page);
            break;
        }
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    let page = last.expect("logins are throttled");
    let retry: u64 = page.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(page.body.contains("Too many requests"));
}

#[tokio::test]
async fn a_service_that_is_down_shows_a_503_page() {
    let mut stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut visitor = site.visitor();
    assert_eq!(visitor.get("/").await.status, StatusCode::OK);
    stack.posts_service.stop().await;
    let page = visitor.get("/").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains("unavailable"), "{}", page.body);
    assert_eq!(
        visitor.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(visitor.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_auth_service_counts_each_visitors_address_not_the_websites() {
    let stack = crate::helpers::spawn_stack_adjusted(crate::helpers::common_config(), |auth| {
        auth.auth.limits.registration_burst = 1;
    })
    .await;
    let site = Site::start_forwarding(&stack).await;
    // Two people, two addresses: each has a registration of their own.
    site.visitor_from([127, 0, 0, 2]).register("first").await;
    site.visitor_from([127, 0, 0, 3]).register("second").await;
    // A second one from the same address is over that address's budget.
    let mut again = site.visitor_from([127, 0, 0, 2]);
    let page = again
        .submit(
            "/register",
            "/register",
            &[
                ("username", "third"),
                ("email", "third@example.com"),
                ("password", "third password"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
}

#[tokio::test]
async fn a_cookie_whose_session_ended_still_reads_public_pages() {
    let stack = spawn_stack().await;
    let site = Site::start(&stack).await;
    let mut alice = site.visitor();
    alice.register("alice").await;
    let post = alice.publish("Public", "Anyone may read this.").await;
    // A copy of the cookie outlives the session it holds (another tab, a
    // stolen copy): logging out ends the session at the services.
    let stale = alice.cookie.clone();
    alice.submit("/", "/logout", &[]).await.assert_redirect("/");

    // Wait until the posts-service refuses the stale tokens: a post from
    // the stale cookie is then sent to log in.
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the posts-service to learn the session ended",
        || {
            let mut stale_visitor = site.visitor();
            stale_visitor.cookie = stale.clone();
            async move {
                let page = stale_visitor
                    .submit(
                        "/posts/new",
                        "/posts/new",
                        &[("title", "Probe"), ("content", "Refused?")],
                    )
                    .await;
                page.status == StatusCode::SEE_OTHER && page.location().starts_with("/login")
            }
        },
    )
    .await;

    // Reading needs no token, so the dead one does not get in the way.
    for path in ["/", post.as_str()] {
        alice.cookie = stale.clone();
        let page = alice.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(page.body.contains("Public"), "{path}: {}", page.body);
    }
}
