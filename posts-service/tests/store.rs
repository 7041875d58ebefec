//! The store conformance suite: both backends must behave the same. Each case
//! runs on SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.

use std::{sync::Arc, time::Duration};

use posts_service::{
    domain::{Content, Title},
    error::Error,
    store::{self, Listing, ReplicaChange, ReplicaSnapshot, RevocationSnapshot, Store},
};
use shared::{CurrentUser, time::Timestamp};
use testkit::TestDatabase;

async fn open(db: &TestDatabase) -> Arc<dyn Store> {
    store::connect(&db.url, Duration::from_secs(5))
        .await
        .expect("opening the store")
}

/// Runs each named case against every configured backend.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::sqlite("posts");
                    super::$case(super::open(&db).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    match testkit::postgres_base() {
                        Some(base) => {
                            let db = super::TestDatabase::postgres(&base, "posts").await;
                            super::$case(super::open(&db).await).await
                        }
                        None => testkit::skipped("TEST_DATABASE_URL", "PostgreSQL case"),
                    }
                }
            )*
        }
    };
}

conformance!(
    posts_round_trip_with_their_author,
    a_profile_event_is_authoritative_over_the_token_name,
    listing_is_newest_first_and_resumes_after_a_key,
    reads_asked_at_once_each_get_their_own_answer,
    only_the_author_updates_or_deletes,
    events_apply_once_and_advance_the_cursor,
    a_deleted_user_loses_posts_and_is_never_recreated,
    revocations_are_kept_until_they_expire,
    key_cache_round_trips,
    a_snapshot_brings_the_replica_to_its_state_once,
    counts_follow_every_write_and_deletion,
    posts_written_together_are_each_answered_with_their_own,
    posts_written_and_deleted_at_once_keep_every_count,
);

fn title(s: &str) -> Title {
    Title::parse(s.into()).unwrap()
}

/// The verified caller `id`, named `username` by their token.
fn caller(id: i64, username: &str) -> CurrentUser {
    CurrentUser {
        id,
        username: username.into(),
        session_id: format!("session-{id}"),
        expires_at: i64::MAX,
    }
}

fn content(s: &str) -> Content {
    Content::parse(s.into()).unwrap()
}

/// The newest ten posts, from every author.
async fn first_page(store: &dyn Store) -> store::Page {
    store
        .list_posts(Listing {
            author: None,
            after: None,
            limit: 10,
        })
        .await
        .unwrap()
}

async fn post_by(store: &dyn Store, id: i64, name: &str, t: &str) -> i64 {
    store
        .create_post(&caller(id, name), &title(t), &content("body"))
        .await
        .unwrap()
        .id
}

async fn posts_round_trip_with_their_author(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let id = post_by(store.as_ref(), 7, "alice", "Hello").await;
    let post = store.post(id).await.unwrap().unwrap();
    assert_eq!(
        (post.title.as_str(), post.content.as_str()),
        ("Hello", "body")
    );
    assert_eq!(
        (
            post.author_id,
            post.author_username.as_str(),
            post.author_avatar_url.as_str()
        ),
        (7, "alice", "")
    );
    assert_eq!(post.create_time, post.update_time);
    assert!(store.author_exists(7).await.unwrap());
    assert!(!store.author_exists(8).await.unwrap());
    assert_eq!(store.post(id + 1).await.unwrap(), None);
    // What a write answers is what a read finds, on either path (the first
    // post of an unknown author and a later one).
    for _ in 0..2 {
        let written = store
            .create_post(
                &caller(9, "carol"),
                &title("Written"),
                &content("read back"),
            )
            .await
            .unwrap();
        assert_eq!(
            Some(&written),
            store.post(written.id).await.unwrap().as_ref()
        );
        let updated = store
            .update_post(written.id, 9, Some(&title("Rewritten")), None)
            .await
            .unwrap();
        assert_eq!(
            Some(&updated),
            store.post(written.id).await.unwrap().as_ref()
        );
        assert_eq!(updated.author_username, "carol");
    }
}

async fn a_profile_event_is_authoritative_over_the_token_name(store: Arc<dyn Store>) {
    let change = ReplicaChange::Profile {
        id: 7,
        username: "Alice".into(),
        avatar_url: "http://a/x.jpg".into(),
    };
    assert!(store.apply_event(1, &change).await.unwrap());
    // A token with an old name does not overwrite the replica.
    let id = post_by(store.as_ref(), 7, "old-name", "Hi").await;
    let post = store.post(id).await.unwrap().unwrap();
    assert_eq!(
        (
            post.author_username.as_str(),
            post.author_avatar_url.as_str()
        ),
        ("Alice", "http://a/x.jpg")
    );
    let renamed = ReplicaChange::Profile {
        id: 7,
        username: "Alicia".into(),
        avatar_url: String::new(),
    };
    store.apply_event(2, &renamed).await.unwrap();
    assert_eq!(
        store.post(id).await.unwrap().unwrap().author_username,
        "Alicia"
    );
}

async fn listing_is_newest_first_and_resumes_after_a_key(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            post_by(
                store.as_ref(),
                if i % 2 == 0 { 1 } else { 2 },
                "u",
                &format!("P{i}"),
            )
            .await,
        );
    }
    let all = first_page(store.as_ref()).await;
    assert_eq!(all.total_size, 5);
    let all = all.posts;
    let listed: Vec<i64> = all.iter().map(|p| p.id).collect();
    assert_eq!(listed, ids.iter().rev().copied().collect::<Vec<_>>());
    let after = Some((all[1].create_time, all[1].id));
    let rest = store
        .list_posts(Listing {
            author: None,
            after,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(rest.total_size, 5, "the total covers every page");
    let rest = rest.posts;
    assert_eq!(rest.iter().map(|p| p.id).collect::<Vec<_>>(), listed[2..4]);
    let mine = store
        .list_posts(Listing {
            author: Some(1),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(mine.total_size, 3);
    let mine = mine.posts;
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|p| p.author_id == 1));
    let past_the_end = store
        .list_posts(Listing {
            author: None,
            after: Some((all[4].create_time, all[4].id)),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(past_the_end.posts.is_empty());
    assert_eq!(past_the_end.total_size, 5, "an empty page still counts");
    assert_eq!(store.count_posts(None).await.unwrap(), 5);
    assert_eq!(store.count_posts(Some(2)).await.unwrap(), 2);
    assert_eq!(store.count_posts(Some(3)).await.unwrap(), 0);
}

/// Many reads at once (the same post twice, posts that do not exist, the
/// same page and different pages): however they are put together on the
/// way to the database, each gets what it would have got alone.
async fn reads_asked_at_once_each_get_their_own_answer(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(post_by(store.as_ref(), 1 + i % 3, "u", &format!("P{i}")).await);
    }
    let mut expected_posts = Vec::new();
    for id in ids.iter().copied().chain([0, -1, 999_999]) {
        expected_posts.push((id, store.post(id).await.unwrap()));
    }
    let all = first_page(store.as_ref()).await.posts;
    let listings: Vec<Listing> = [None, Some(1), Some(2), Some(9)]
        .into_iter()
        .flat_map(|author| {
            [None, Some((all[2].create_time, all[2].id))]
                .into_iter()
                .map(move |after| Listing {
                    author,
                    after,
                    limit: 3,
                })
        })
        .collect();
    let mut expected_pages = Vec::new();
    for listing in &listings {
        expected_pages.push((*listing, store.list_posts(*listing).await.unwrap()));
    }

    for _ in 0..5 {
        let posts = expected_posts
            .iter()
            .cycle()
            .take(90)
            .map(|(id, expected)| {
                let store = store.clone();
                let (id, expected) = (*id, expected.clone());
                tokio::spawn(
                    async move { assert_eq!(store.post(id).await.unwrap(), expected, "{id}") },
                )
            });
        let pages = expected_pages
            .iter()
            .cycle()
            .take(48)
            .map(|(listing, expected)| {
                let store = store.clone();
                let (listing, expected) = (*listing, expected.clone());
                tokio::spawn(async move {
                    assert_eq!(
                        store.list_posts(listing).await.unwrap(),
                        expected,
                        "{listing:?}"
                    )
                })
            });
        let reads: Vec<_> = posts.chain(pages).collect();
        for read in futures::future::join_all(reads).await {
            read.unwrap();
        }
    }
}

async fn only_the_author_updates_or_deletes(store: Arc<dyn Store>) {
    let id = post_by(store.as_ref(), 1, "alice", "Mine").await;
    let before = store.post(id).await.unwrap().unwrap();
    let denied = store.update_post(id, 2, Some(&title("Hacked")), None).await;
    assert!(
        matches!(denied, Err(Error::NotAuthor("update"))),
        "{denied:?}"
    );
    let missing = store
        .update_post(id + 100, 2, Some(&title("x")), None)
        .await;
    assert!(matches!(missing, Err(Error::PostNotFound)), "{missing:?}");
    assert_eq!(store.post(id).await.unwrap().unwrap(), before);

    let updated = store
        .update_post(id, 1, None, Some(&content("new body")))
        .await
        .unwrap();
    assert_eq!(
        (updated.title.as_str(), updated.content.as_str()),
        ("Mine", "new body")
    );
    assert!(updated.update_time >= before.update_time);

    assert!(matches!(
        store.delete_post(id, 2).await,
        Err(Error::NotAuthor("delete"))
    ));
    assert!(store.post(id).await.unwrap().is_some());
    store.delete_post(id, 1).await.unwrap();
    assert!(matches!(
        store.delete_post(id, 1).await,
        Err(Error::PostNotFound)
    ));
}

async fn events_apply_once_and_advance_the_cursor(store: Arc<dyn Store>) {
    assert_eq!(store.event_cursor().await.unwrap(), 0);
    let change = ReplicaChange::Profile {
        id: 3,
        username: "carol".into(),
        avatar_url: String::new(),
    };
    assert!(store.apply_event(5, &change).await.unwrap());
    assert_eq!(store.event_cursor().await.unwrap(), 5);
    let stale = ReplicaChange::Profile {
        id: 3,
        username: "stale".into(),
        avatar_url: String::new(),
    };
    assert!(!store.apply_event(5, &stale).await.unwrap());
    assert!(!store.apply_event(4, &stale).await.unwrap());
    let id = post_by(store.as_ref(), 3, "x", "t").await;
    assert_eq!(
        store.post(id).await.unwrap().unwrap().author_username,
        "carol"
    );
    assert_eq!(store.event_cursor().await.unwrap(), 5);

    // A batch that overlaps what was applied: only the newer events apply,
    // in order, and the cursor moves to the last.
    let named = |name: &str| ReplicaChange::Profile {
        id: 3,
        username: name.into(),
        avatar_url: String::new(),
    };
    let batch = [
        (4, named("stale")),
        (5, named("stale")),
        (6, named("carol_6")),
        (7, named("carol_7")),
    ];
    assert_eq!(store.apply_events(&batch).await.unwrap(), 2);
    assert_eq!(store.event_cursor().await.unwrap(), 7);
    assert_eq!(
        store.post(id).await.unwrap().unwrap().author_username,
        "carol_7"
    );
    assert_eq!(store.apply_events(&batch).await.unwrap(), 0);
    assert_eq!(store.apply_events(&[]).await.unwrap(), 0);
}

async fn a_deleted_user_loses_posts_and_is_never_recreated(store: Arc<dyn Store>) {
    post_by(store.as_ref(), 1, "alice", "A").await;
    let kept = post_by(store.as_ref(), 2, "bob", "B").await;
    store
        .apply_event(
            1,
            &ReplicaChange::UserDeleted {
                id: 1,
                time: at(1_000),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.count_posts(Some(1)).await.unwrap(), 0);
    assert!(!store.author_exists(1).await.unwrap());
    assert!(store.post(kept).await.unwrap().is_some());
    // A late token of the deleted user cannot bring them back.
    let late = store
        .create_post(&caller(1, "alice"), &title("ghost"), &content("x"))
        .await;
    assert!(matches!(late, Err(Error::InvalidToken)), "{late:?}");
    let late_profile = ReplicaChange::Profile {
        id: 1,
        username: "alice".into(),
        avatar_url: String::new(),
    };
    store.apply_event(2, &late_profile).await.unwrap();
    assert!(!store.author_exists(1).await.unwrap());
}

fn at(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn micros(n: u64) -> Duration {
    Duration::from_micros(n)
}

async fn revocations_are_kept_until_they_expire(store: Arc<dyn Store>) {
    let revoke = ReplicaChange::SessionsRevoked {
        user_id: 1,
        session_ids: vec!["s1".into(), "s2".into()],
        expire_time: at(1_000),
    };
    store.apply_event(1, &revoke).await.unwrap();
    store
        .apply_event(
            2,
            &ReplicaChange::UserDeleted {
                id: 9,
                time: at(500),
            },
        )
        .await
        .unwrap();
    let snapshot = store.revocations(at(999), micros(600)).await.unwrap();
    let mut sessions = snapshot.sessions.clone();
    sessions.sort();
    assert_eq!(
        sessions,
        [("s1".to_string(), at(1_000)), ("s2".to_string(), at(1_000))]
    );
    assert_eq!(snapshot.deleted_users, [(9, at(500))]);
    // Past the window the deleted user no longer needs refusing.
    assert_eq!(
        store.revocations(at(1_200), micros(600)).await.unwrap(),
        RevocationSnapshot::default()
    );
    assert_eq!(store.prune_revocations(at(1_000)).await.unwrap(), 2);
    assert!(
        store
            .revocations(at(0), Duration::ZERO)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

async fn key_cache_round_trips(store: Arc<dyn Store>) {
    assert_eq!(store.cached_jwks().await.unwrap(), None);
    store.save_jwks(r#"{"keys":[]}"#).await.unwrap();
    store.save_jwks(r#"{"keys":[1]}"#).await.unwrap();
    assert_eq!(
        store.cached_jwks().await.unwrap().as_deref(),
        Some(r#"{"keys":[1]}"#)
    );
}

async fn a_snapshot_brings_the_replica_to_its_state_once(store: Arc<dyn Store>) {
    let kept = post_by(store.as_ref(), 1, "alice", "A").await;
    let gone = post_by(store.as_ref(), 2, "bob", "B").await;
    let snapshot = ReplicaSnapshot {
        sequence: 40,
        time: at(1_000),
        changes: vec![
            ReplicaChange::Profile {
                id: 1,
                username: "alice_renamed".into(),
                avatar_url: String::new(),
            },
            ReplicaChange::SessionsRevoked {
                user_id: 1,
                session_ids: vec!["s9".into()],
                expire_time: at(5_000),
            },
        ],
    };
    // Bob is not in it: deleted in the history that is gone.
    assert_eq!(store.apply_snapshot(&snapshot).await.unwrap(), [2]);
    assert_eq!(store.event_cursor().await.unwrap(), 40);
    let post = store.post(kept).await.unwrap().unwrap();
    assert_eq!(post.author_username, "alice_renamed");
    assert_eq!(store.post(gone).await.unwrap(), None);
    assert!(!store.author_exists(2).await.unwrap());
    let revoked = store.revocations(at(2_000), micros(5_000)).await.unwrap();
    assert_eq!(revoked.sessions, [("s9".to_string(), at(5_000))]);
    assert_eq!(revoked.deleted_users, [(2, at(1_000))]);
    // An older snapshot changes nothing.
    let older = ReplicaSnapshot {
        sequence: 30,
        time: at(1_000),
        changes: Vec::new(),
    };
    assert!(store.apply_snapshot(&older).await.unwrap().is_empty());
    assert!(store.author_exists(1).await.unwrap());
    assert_eq!(store.event_cursor().await.unwrap(), 40);
}

async fn counts_follow_every_write_and_deletion(store: Arc<dyn Store>) {
    let counts = |store: Arc<dyn Store>| async move {
        (
            store.count_posts(None).await.unwrap(),
            store.count_posts(Some(1)).await.unwrap(),
            store.count_posts(Some(2)).await.unwrap(),
        )
    };
    assert_eq!(counts(store.clone()).await, (0, 0, 0));
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(post_by(store.as_ref(), 1, "alice", &format!("A{i}")).await);
        post_by(store.as_ref(), 2, "bob", &format!("B{i}")).await;
    }
    assert_eq!(counts(store.clone()).await, (6, 3, 3));
    store.delete_post(mine[0], 1).await.unwrap();
    // A refused delete changes nothing.
    assert!(store.delete_post(mine[1], 2).await.is_err());
    assert_eq!(counts(store.clone()).await, (5, 2, 3));
    let deleted = ReplicaChange::UserDeleted {
        id: 2,
        time: at(1_000),
    };
    store.apply_event(1, &deleted).await.unwrap();
    assert_eq!(counts(store.clone()).await, (2, 2, 0));
    // Enough writes to touch every part of the overall count.
    for i in 0..40 {
        post_by(store.as_ref(), 1, "alice", &format!("More {i}")).await;
    }
    assert_eq!(counts(store.clone()).await, (42, 42, 0));
    let page = store
        .list_posts(Listing {
            author: Some(1),
            after: None,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(page.total_size, 42);
}

/// Posts arriving at once are committed in groups; each caller still gets
/// its own post, or its own refusal: a group holding an author the store
/// has not seen yet, or one who has been deleted, costs no one else theirs.
async fn posts_written_together_are_each_answered_with_their_own(store: Arc<dyn Store>) {
    post_by(store.as_ref(), 3, "gone", "before").await;
    store
        .apply_event(
            1,
            &ReplicaChange::UserDeleted {
                id: 3,
                time: at(1_000),
            },
        )
        .await
        .unwrap();
    // Authors 1 and 2 are known, 3 is deleted, 10.. are new.
    post_by(store.as_ref(), 1, "alice", "first").await;
    post_by(store.as_ref(), 2, "bob", "first").await;
    let mut calls = tokio::task::JoinSet::new();
    for round in 0..5 {
        for i in 0..60_i64 {
            let author = match i % 20 {
                0 => 3,
                7 => 10 + round,
                n => 1 + n % 2,
            };
            let store = store.clone();
            calls.spawn(async move {
                let name = format!("user{author}");
                let wanted = format!("{round}-{i}");
                let written = store
                    .create_post(&caller(author, &name), &title(&wanted), &content("body"))
                    .await;
                (author, wanted, written)
            });
        }
    }
    let mut ids = std::collections::HashSet::new();
    let mut refused = 0;
    while let Some(call) = calls.join_next().await {
        let (author, wanted, written) = call.unwrap();
        match written {
            Ok(post) => {
                assert_eq!((post.author_id, post.title.as_str()), (author, &*wanted));
                assert_eq!(store.post(post.id).await.unwrap(), Some(post.clone()));
                assert!(ids.insert(post.id), "post {} answered twice", post.id);
            }
            Err(Error::InvalidToken) if author == 3 => refused += 1,
            Err(e) => panic!("author {author}, post {wanted}: {e:?}"),
        }
    }
    assert_eq!((ids.len(), refused), (285, 15));
    assert_eq!(store.count_posts(None).await.unwrap(), 287);
    assert_eq!(store.count_posts(Some(3)).await.unwrap(), 0);
    for round in 0..5 {
        assert_eq!(store.count_posts(Some(10 + round)).await.unwrap(), 3);
    }
}

/// New posts by many authors, written in groups, while other posts of the
/// same authors are deleted one by one: every call succeeds (no writer waits
/// on another in a cycle, whatever the order of authors in a group), and
/// every count is exact afterwards.
async fn posts_written_and_deleted_at_once_keep_every_count(store: Arc<dyn Store>) {
    let authors = 1..=12_i64;
    let mut old = Vec::new();
    for author in authors.clone() {
        for n in 0..4 {
            old.push((
                author,
                post_by(store.as_ref(), author, "someone", &format!("old {n}")).await,
            ));
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for round in 0..10 {
        // Authors in a different order each round.
        for author in authors.clone().map(|a| (a * 7 + round) % 12 + 1) {
            let store = store.clone();
            calls.spawn(async move {
                store
                    .create_post(&caller(author, "someone"), &title("new"), &content("x"))
                    .await
                    .map(|_| ())
            });
        }
    }
    for (author, id) in old {
        let store = store.clone();
        calls.spawn(async move { store.delete_post(id, author).await });
    }
    while let Some(call) = calls.join_next().await {
        call.unwrap().unwrap();
    }
    assert_eq!(store.count_posts(None).await.unwrap(), 120);
    for author in authors {
        assert_eq!(
            store.count_posts(Some(author)).await.unwrap(),
            10,
            "author {author}"
        );
    }
}

/// A caller that stops waiting while its post is queued behind a busy
/// writer (its deadline passed, its client went away) does not have the post
/// written later: its call has already failed, and a retry would make it
/// twice. The others queued with it are written.
#[tokio::test]
async fn a_post_whose_caller_stopped_waiting_in_the_queue_is_not_written() {
    use sqlx::Connection;
    let db = TestDatabase::sqlite("posts");
    let store = open(&db).await;
    post_by(store.as_ref(), 1, "alice", "before").await;
    let create = |wanted: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_post(&caller(1, "alice"), &title(wanted), &content("x"))
                .await
        })
    };
    // Another connection holds SQLite's write lock: the writer waits for it
    // (up to its busy timeout) with the first post, and the next two queue.
    let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let first = create("first");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (kept, gone) = (create("kept"), create("gone"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    first.await.unwrap().unwrap();
    kept.await.unwrap().unwrap();
    let page = first_page(store.as_ref()).await;
    let titles: Vec<&str> = page.posts.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["kept", "first", "before"]);
}

/// The write-ahead log stays bounded however many posts are written while
/// readers keep reading: the automatic checkpoint runs after every write
/// (each write statement runs to its end), and the WAL is emptied whenever
/// it passes its limit even though a reader is always active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_stays_bounded_under_writes_and_constant_reads() {
    const WRITES: usize = 100_000;
    if testkit::postgres_base().is_some() {
        // SQLite only, and slow: the run without PostgreSQL has it.
        eprintln!("TEST_DATABASE_URL set: the SQLite WAL case runs in the SQLite run");
        return;
    }
    let db = TestDatabase::sqlite("posts");
    let store = open(&db).await;
    let wal = db.url.trim_start_matches("sqlite://").to_owned() + "-wal";
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, writing) = (store.clone(), writing.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    first_page(store.as_ref()).await;
                    reads += 1;
                    // A read of a warm database never waits: taking turns
                    // with the writes, as a server's calls do, rather than
                    // a hundred reads a turn.
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    let (title, content, me) = (title("t"), content("x"), caller(1, "writer"));
    let mut largest = 0;
    for i in 0..WRITES {
        store.create_post(&me, &title, &content).await.unwrap();
        if i % 1000 == 0 {
            largest = largest.max(size());
        }
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    largest = largest.max(size());
    assert!(reads > 100, "the readers kept reading ({reads} reads)");
    assert_eq!(store.count_posts(None).await.unwrap(), WRITES as i64);
    // Unbounded, the log held every post written: well over 100 MiB here.
    let bound = 2 * shared::db::WAL_LIMIT;
    eprintln!("{WRITES} writes, {reads} reads: the WAL peaked at {largest} bytes");
    assert!(
        largest < bound,
        "the WAL reached {largest} bytes; the bound is {bound}"
    );
}

/// PostgreSQL plans each statement once per connection, whatever its
/// parameters: without that it planned `id = ANY($1)` anew on every call.
#[tokio::test]
async fn postgres_connections_plan_each_statement_once() {
    let Some(base) = testkit::postgres_base() else {
        return testkit::skipped("TEST_DATABASE_URL", "PostgreSQL plan mode");
    };
    let db = TestDatabase::postgres(&base, "posts").await;
    let connections = shared::db::open_postgres(&db.url, Duration::from_secs(5)).unwrap();
    let mode: String = shared::lend!(connections, |conn| sqlx::query_scalar(
        "SHOW plan_cache_mode"
    )
    .fetch_one(conn))
    .unwrap();
    assert_eq!(mode, "force_generic_plan");
}
