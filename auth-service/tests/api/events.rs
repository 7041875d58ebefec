//! `UserEventService.WatchUserEvents`: guarded, ordered, replayable, live, and
//! only for changes that committed.

use std::time::Duration;

use proto::auth::{
    DeleteMeRequest, LogoutRequest, UpdateMeRequest, UserEvent, WatchUserEventsRequest,
    user_event::Event,
};
use tonic::{Code, Request, Streaming};

use crate::helpers::{INTERNAL_TOKEN, TestApp, TestUser, bearer, spawn_app};

fn watch_request(after: i64, token: Option<&str>) -> Request<WatchUserEventsRequest> {
    let mut request = Request::new(WatchUserEventsRequest {
        after_sequence: after,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("x-internal-token", token.parse().unwrap());
    }
    request
}

async fn watch(app: &TestApp, after: i64) -> Streaming<UserEvent> {
    app.events
        .clone()
        .watch_user_events(watch_request(after, Some(INTERNAL_TOKEN)))
        .await
        .expect("opening the event stream")
        .into_inner()
}

async fn next(stream: &mut Streaming<UserEvent>) -> UserEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event within 5 s")
        .expect("a healthy stream")
        .expect("the stream stays open")
}

async fn nothing_within(stream: &mut Streaming<UserEvent>, wait: Duration) {
    if let Ok(event) = tokio::time::timeout(wait, stream.message()).await {
        panic!("unexpected event: {event:?}");
    }
}

#[tokio::test]
async fn without_the_internal_token_the_stream_is_unauthenticated() {
    let app = spawn_app().await;
    for token in [None, Some("wrong"), Some("")] {
        let status = app
            .events
            .clone()
            .watch_user_events(watch_request(0, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
    }
}

#[tokio::test]
async fn a_negative_cursor_is_invalid() {
    let app = spawn_app().await;
    let status = app
        .events
        .clone()
        .watch_user_events(watch_request(-1, Some(INTERNAL_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn from_zero_every_event_replays_in_order_then_new_ones_arrive_live() {
    let app = spawn_app().await;
    let (alice, alice_user, alice_tokens) = app.signed_up().await;
    app.users
        .clone()
        .update_me(bearer(
            &alice_tokens.access_token,
            UpdateMeRequest {
                username: Some("alice-renamed".into()),
                email: None,
                password: None,
            },
        ))
        .await
        .unwrap();
    app.auth
        .clone()
        .logout(bearer(
            &alice_tokens.access_token,
            LogoutRequest {
                all_sessions: false,
            },
        ))
        .await
        .unwrap();
    let sid = jsonwebtoken::dangerous::insecure_decode::<shared::verify::Claims>(
        &alice_tokens.access_token,
    )
    .unwrap()
    .claims
    .sid;

    let mut stream = watch(&app, 0).await;
    let e1 = next(&mut stream).await;
    let e2 = next(&mut stream).await;
    let e3 = next(&mut stream).await;
    assert!(e1.sequence < e2.sequence && e2.sequence < e3.sequence);
    assert!(e1.time.is_some());
    match e1.event.unwrap() {
        Event::UserUpserted(p) => assert_eq!(
            (p.id, p.username.as_str()),
            (alice_user.id, alice.username.as_str())
        ),
        other => panic!("{other:?}"),
    }
    match e2.event.unwrap() {
        Event::UserUpserted(p) => assert_eq!(p.username, "alice-renamed"),
        other => panic!("{other:?}"),
    }
    match e3.event.unwrap() {
        Event::SessionsRevoked(r) => {
            assert_eq!((r.user_id, r.session_ids), (alice_user.id, vec![sid]))
        }
        other => panic!("{other:?}"),
    }

    // Live: a new user, then a deletion.
    let (bob, bob_user, bob_tokens) = app.signed_up().await;
    let e4 = next(&mut stream).await;
    assert!(e4.sequence > e3.sequence);
    assert!(matches!(e4.event, Some(Event::UserUpserted(ref p)) if p.id == bob_user.id));
    app.users
        .clone()
        .delete_me(bearer(
            &bob_tokens.access_token,
            DeleteMeRequest {
                password: bob.password.clone(),
            },
        ))
        .await
        .unwrap();
    let e5 = next(&mut stream).await;
    assert!(matches!(e5.event, Some(Event::UserDeleted(ref d)) if d.user_id == bob_user.id));

    // A cursor resumes after what was applied.
    let mut resumed = watch(&app, e3.sequence).await;
    assert_eq!(next(&mut resumed).await, e4);
    assert_eq!(next(&mut resumed).await, e5);
}

#[tokio::test]
async fn a_change_that_rolled_back_produces_no_event() {
    let app = spawn_app().await;
    let (taken, _, _) = app.signed_up().await;
    let (_, _, tokens) = app.signed_up().await;
    let mut stream = watch(&app, 0).await;
    next(&mut stream).await;
    next(&mut stream).await;

    // Both fail on a unique index inside their transactions.
    let clash = TestUser {
        username: taken.username.clone(),
        ..TestUser::generate()
    };
    assert!(app.create_user(&clash).await.is_err());
    let rename = app
        .users
        .clone()
        .update_me(bearer(
            &tokens.access_token,
            UpdateMeRequest {
                username: Some(taken.username.clone()),
                email: None,
                password: None,
            },
        ))
        .await;
    assert!(rename.is_err());
    nothing_within(&mut stream, Duration::from_millis(1200)).await;

    let events = app.state.store.events_after(0, 100).await.unwrap();
    assert_eq!(events.len(), 2);
}
