//! The store conformance suite: every backend must behave the same. Each case
//! runs on SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.

use std::{sync::Arc, time::Duration};

use auth_service::{
    domain::{Email, LoginName, Username},
    error::Error,
    events::UserChange,
    keys,
    store::{NewSession, NewUser, Rotation, Sessions, Store},
};

use shared::time::Timestamp;
use testkit::TestDatabase;

use crate::helpers::open_store;

/// Runs each named case against every configured backend.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::sqlite("auth");
                    super::$case(super::open_store(&db).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    match testkit::postgres_base() {
                        Some(base) => {
                            let db = super::TestDatabase::postgres(&base, "auth").await;
                            super::$case(super::open_store(&db).await).await
                        }
                        None => testkit::skipped("TEST_DATABASE_URL", "PostgreSQL case"),
                    }
                }
            )*
        }
    };
}

conformance!(
    users_round_trip,
    unique_indexes_are_case_insensitive,
    update_changes_only_what_is_given,
    deleting_a_user_ends_their_sessions,
    refresh_tokens_rotate_once,
    expired_sessions_do_not_rotate,
    ending_sessions_by_scope,
    set_password_revokes_in_the_same_transaction,
    signing_keys_are_kept_newest_first,
    events_are_ordered_and_complete,
    old_events_go_but_the_newest_stays_and_a_snapshot_is_consistent,
);

async fn new_user(store: &dyn Store, name: &str) -> i64 {
    let username = Username::parse(name).unwrap();
    let email = Email::parse(&format!("{name}@example.com")).unwrap();
    store
        .create_user(NewUser {
            username: &username,
            email: &email,
            password_hash: "$argon2id$hash",
        })
        .await
        .unwrap()
        .id
}

async fn new_session(
    store: &dyn Store,
    user_id: i64,
    id: &str,
    refresh: &[u8],
    expire_time: Timestamp,
) {
    store
        .create_session(NewSession {
            id,
            user_id,
            refresh_hash: refresh,
            expire_time,
        })
        .await
        .unwrap();
}

fn later() -> Timestamp {
    Timestamp::now() + Duration::from_secs(3600)
}

async fn users_round_trip(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "Alice").await;
    let user = store.user_by_id(id).await.unwrap().unwrap();
    assert_eq!(
        (user.username.as_str(), user.email.as_str()),
        ("Alice", "alice@example.com")
    );
    assert_eq!(user.avatar_key, None);
    assert_eq!(
        store
            .user_by_login(&LoginName::parse("ALICE").unwrap())
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    assert_eq!(
        store
            .user_by_login(&LoginName::parse(" Alice@Example.com ").unwrap())
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    assert_eq!(
        store
            .user_by_login(&LoginName::parse("bob").unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.user_by_id(id + 1).await.unwrap(), None);
    store.ping().await.unwrap();
}

async fn unique_indexes_are_case_insensitive(store: Arc<dyn Store>) {
    new_user(store.as_ref(), "Alice").await;
    let username = Username::parse("ALICE").unwrap();
    let email = Email::parse("other@example.com").unwrap();
    let clash = store
        .create_user(NewUser {
            username: &username,
            email: &email,
            password_hash: "h",
        })
        .await;
    assert!(matches!(clash, Err(Error::UsernameTaken)), "{clash:?}");
    let username = Username::parse("other").unwrap();
    let email = Email::parse("ALICE@example.com").unwrap();
    let clash = store
        .create_user(NewUser {
            username: &username,
            email: &email,
            password_hash: "h",
        })
        .await;
    assert!(matches!(clash, Err(Error::EmailTaken)), "{clash:?}");
    // Neither attempt left an event.
    assert_eq!(store.events_after(0, 10).await.unwrap().len(), 1);
}

async fn update_changes_only_what_is_given(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "alice").await;
    new_user(store.as_ref(), "bob").await;
    let renamed = Username::parse("Alicia").unwrap();
    let user = store
        .update_user(id, Some(&renamed), None)
        .await
        .unwrap()
        .unwrap()
        .user;
    assert_eq!(
        (user.username.as_str(), user.email.as_str()),
        ("Alicia", "alice@example.com")
    );
    let email = Email::parse("alicia@example.com").unwrap();
    let user = store
        .update_user(id, None, Some(&email))
        .await
        .unwrap()
        .unwrap()
        .user;
    assert_eq!(
        (user.username.as_str(), user.email.as_str()),
        ("Alicia", "alicia@example.com")
    );
    let taken = Username::parse("BOB").unwrap();
    assert!(matches!(
        store.update_user(id, Some(&taken), None).await,
        Err(Error::UsernameTaken)
    ));
    assert_eq!(
        store
            .update_user(id + 100, Some(&renamed), None)
            .await
            .unwrap(),
        None
    );
    // Creations and the rename are events; the email change is not.
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 3);
}

async fn deleting_a_user_ends_their_sessions(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "alice").await;
    new_session(store.as_ref(), id, "s1", b"r1", later()).await;
    let deleted = store.delete_user(id).await.unwrap().unwrap();
    assert_eq!(deleted.id, id);
    assert!(
        !store
            .session_is_live("s1", id, Timestamp::now())
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .rotate_refresh_token(b"r1", b"r2", Timestamp::now())
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(store.delete_user(id).await.unwrap(), None);
    let last = store.events_after(0, 10).await.unwrap().pop().unwrap();
    assert_eq!(last.change, UserChange::UserDeleted { user_id: id });
}

async fn refresh_tokens_rotate_once(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "alice").await;
    new_session(store.as_ref(), id, "s1", b"r1", later()).await;
    assert!(
        store
            .session_is_live("s1", id, Timestamp::now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .session_is_live("s1", id + 1, Timestamp::now())
            .await
            .unwrap()
    );
    match store
        .rotate_refresh_token(b"r1", b"r2", Timestamp::now())
        .await
        .unwrap()
    {
        Rotation::Rotated(session) => {
            assert_eq!(
                (
                    session.id.as_str(),
                    session.user_id,
                    session.username.as_str()
                ),
                ("s1", id, "alice")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .rotate_refresh_token(b"r1", b"r3", Timestamp::now())
            .await
            .unwrap(),
        Rotation::Reused
    );
    assert!(
        !store
            .session_is_live("s1", id, Timestamp::now())
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .rotate_refresh_token(b"r2", b"r4", Timestamp::now())
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        store
            .rotate_refresh_token(b"nope", b"r5", Timestamp::now())
            .await
            .unwrap(),
        Rotation::Unknown
    );
    let last = store.events_after(0, 10).await.unwrap().pop().unwrap();
    assert_eq!(
        last.change,
        UserChange::SessionsRevoked {
            user_id: id,
            session_ids: vec!["s1".into()]
        }
    );
}

async fn expired_sessions_do_not_rotate(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "alice").await;
    let now = Timestamp::now();
    new_session(
        store.as_ref(),
        id,
        "old",
        b"r1",
        now - Duration::from_micros(1),
    )
    .await;
    assert!(!store.session_is_live("old", id, now).await.unwrap());
    assert_eq!(
        store.rotate_refresh_token(b"r1", b"r2", now).await.unwrap(),
        Rotation::Expired
    );
    assert_eq!(
        store.rotate_refresh_token(b"r2", b"r3", now).await.unwrap(),
        Rotation::Unknown
    );
}

async fn ending_sessions_by_scope(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "alice").await;
    let other = new_user(store.as_ref(), "bob").await;
    for (sid, hash) in [("a", b"ra"), ("b", b"rb"), ("c", b"rc")] {
        new_session(store.as_ref(), id, sid, hash, later()).await;
    }
    new_session(store.as_ref(), other, "x", b"rx", later()).await;
    assert_eq!(
        store.end_sessions(id, Sessions::Only("a")).await.unwrap(),
        ["a"]
    );
    assert!(
        store
            .end_sessions(other, Sessions::Only("b"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.end_sessions(id, Sessions::AllBut("b")).await.unwrap(),
        ["c"]
    );
    assert_eq!(store.end_sessions(id, Sessions::All).await.unwrap(), ["b"]);
    assert!(
        store
            .end_sessions(id, Sessions::All)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .session_is_live("x", other, Timestamp::now())
            .await
            .unwrap()
    );
    // Three revocations, no event for the calls that ended nothing.
    let revocations = store
        .events_after(0, 20)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.change, UserChange::SessionsRevoked { .. }))
        .count();
    assert_eq!(revocations, 3);
}

async fn set_password_revokes_in_the_same_transaction(store: Arc<dyn Store>) {
    let id = new_user(store.as_ref(), "alice").await;
    new_session(store.as_ref(), id, "keep", b"r1", later()).await;
    new_session(store.as_ref(), id, "drop", b"r2", later()).await;
    assert_eq!(
        store
            .set_password(id, "new-hash", Sessions::AllBut("keep"))
            .await
            .unwrap(),
        ["drop"]
    );
    assert_eq!(
        store.user_by_id(id).await.unwrap().unwrap().password_hash,
        "new-hash"
    );
    assert!(
        store
            .session_is_live("keep", id, Timestamp::now())
            .await
            .unwrap()
    );
    assert!(matches!(
        store.set_password(id + 100, "h", Sessions::All).await,
        Err(Error::UserNotFound)
    ));
}

async fn signing_keys_are_kept_newest_first(store: Arc<dyn Store>) {
    assert!(store.signing_keys().await.unwrap().is_empty());
    let now = Timestamp::now();
    let old = keys::generate(now - Duration::from_secs(60));
    let new = keys::generate(now);
    let next = keys::generate(now + Duration::from_secs(60));
    store.add_signing_key(&old).await.unwrap();
    store.add_signing_key(&next).await.unwrap();
    store.add_signing_key(&new).await.unwrap();
    store.add_signing_key(&new).await.unwrap();
    let stored = store.signing_keys().await.unwrap();
    assert_eq!(
        stored,
        [next.clone(), new.clone(), old.clone()],
        "by activation, newest first"
    );
    store.remove_signing_key(&old.kid).await.unwrap();
    assert_eq!(store.signing_keys().await.unwrap(), [next, new]);
}

async fn events_are_ordered_and_complete(store: Arc<dyn Store>) {
    let mut commits = store.event_commits();
    let a = new_user(store.as_ref(), "a").await;
    assert!(commits.has_changed().unwrap());
    let b = new_user(store.as_ref(), "b").await;
    store.delete_user(a).await.unwrap();
    let events = store.events_after(0, 10).await.unwrap();
    let changes: Vec<_> = events.iter().map(|e| e.change.clone()).collect();
    assert_eq!(
        changes,
        [
            UserChange::UserUpserted {
                user_id: a,
                username: "a".into(),
                avatar_key: None
            },
            UserChange::UserUpserted {
                user_id: b,
                username: "b".into(),
                avatar_key: None
            },
            UserChange::UserDeleted { user_id: a },
        ]
    );
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(*commits.borrow_and_update(), events[2].sequence);
    let after_first = store.events_after(events[0].sequence, 1).await.unwrap();
    assert_eq!(after_first, events[1..2]);
    assert!(
        store
            .events_after(events[2].sequence, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn old_events_go_but_the_newest_stays_and_a_snapshot_is_consistent(store: Arc<dyn Store>) {
    assert_eq!(store.oldest_event().await.unwrap(), None);
    assert_eq!(store.snapshot(Timestamp::EPOCH).await.unwrap().sequence, 0);
    let alice = new_user(store.as_ref(), "alice").await;
    let bob = new_user(store.as_ref(), "bob").await;
    new_session(store.as_ref(), bob, "s1", b"r1", later()).await;
    store.end_sessions(bob, Sessions::All).await.unwrap();
    store.delete_user(alice).await.unwrap();
    let snapshot = store.snapshot(Timestamp::EPOCH).await.unwrap();
    let newest = store
        .events_after(0, 100)
        .await
        .unwrap()
        .last()
        .unwrap()
        .sequence;
    assert_eq!(snapshot.sequence, newest);
    assert_eq!(snapshot.users, [(bob, "bob".to_owned(), None)]);
    assert_eq!(snapshot.revoked, [(bob, vec!["s1".to_owned()])]);
    assert_eq!(snapshot.deleted, [alice]);
    // Revocations and deletions older than asked for are left out.
    let recent = store
        .snapshot(Timestamp::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert!(recent.revoked.is_empty());
    assert!(recent.deleted.is_empty());

    let pruned = store
        .prune_events(Timestamp::now() + Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(pruned >= 3, "{pruned}");
    assert_eq!(store.oldest_event().await.unwrap(), Some(newest));
    assert_eq!(store.events_after(0, 100).await.unwrap().len(), 1);
    assert_eq!(
        store.snapshot(Timestamp::EPOCH).await.unwrap().sequence,
        newest
    );
}
