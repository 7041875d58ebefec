//! Rate limits and guess throttles: how often a client may do something,
//! and how failed guesses (of a password) slow down further ones.
//!
//! Both are decided in one step per request, so concurrent requests cannot
//! all pass a check that only one of them should have: a rate limit takes
//! its unit as it checks, and a guess is counted *before* the password is
//! verified (and given back once it turns out right), so a burst of
//! concurrent guesses is refused as soon as the budget is spent instead of
//! being evaluated in full.
//!
//! Two stores keep them: [`MemoryLimiter`], this process's memory (exact for
//! one process, the default), and [`RedisLimiter`], one Redis every replica
//! shares (`REDIS_URL`). The same conformance cases run on both.
//!
//! Keys are SHA-256 digests of what they name, so an entry has a fixed size
//! whatever a client sends, and the in-memory store holds at most
//! [`MAX_ENTRIES`] of them: stale entries are swept first, and if that is not
//! enough an arbitrary eighth goes. Under such a flood protection weakens for
//! a while; memory never grows.

mod redis_store;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::time::Clock;

pub use redis_store::RedisLimiter;

/// Entries one in-memory limiter keeps, each a few dozen bytes.
pub const MAX_ENTRIES: usize = 100_000;

/// What a limit is counted against: a digest of a namespace and the parts
/// that name the subject (an address, a user id, a login name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// The key of `parts` within `namespace`. Parts are length-prefixed, so
    /// no two different lists of parts share a key.
    pub fn new(namespace: &str, parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update((namespace.len() as u64).to_be_bytes());
        hasher.update(namespace.as_bytes());
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// How often something may happen: `burst` at once, then one more each
/// `interval` (the generic cell rate algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many may happen at once after a quiet period.
    pub burst: u32,
    /// How soon one more is allowed once the burst is spent.
    pub interval: Duration,
}

impl Rate {
    /// `count` per `period`, of which `burst` may come at once.
    pub fn per(count: u32, period: Duration, burst: u32) -> Self {
        Self {
            burst: burst.max(1),
            interval: period / count.max(1),
        }
    }
}

/// How failed guesses slow down further ones: `free` failures, then a delay
/// of `base` doubling with each further failure up to `max`. Failures are
/// forgotten after `forget` without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures before delays start.
    pub free: u32,
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Quiet time after which failures are forgotten.
    pub forget: Duration,
}

impl Backoff {
    /// The wait after `failures` failures.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures <= self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free - 1).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// One guess (a password tried for an account), counted against three
/// budgets: the account from this address, the address for any account,
/// and the account from any address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guess {
    /// The account as tried from this address.
    pub pair: Key,
    /// The address, when known.
    pub source: Option<Key>,
    /// The account.
    pub target: Key,
}

/// The budgets of a [`Guess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuessPolicy {
    /// The account from one address: strict; the one a guesser meets.
    pub pair: Backoff,
    /// One address, any account: loose, since many people share addresses.
    pub source: Backoff,
    /// The account, any address: against guessing spread over addresses.
    /// One address counts here only for its first `pair.free` failures, so
    /// a guesser at one address can never lock the owner out elsewhere.
    pub target: Backoff,
}

/// What a counted guess charged, to settle it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a counted guess must be settled"]
pub struct Charged {
    /// Whether the account-wide budget was charged.
    target: bool,
}

/// How a counted guess turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Right: the account's budget from this address starts over, and the
    /// others get their unit back.
    Right,
    /// Wrong: it stays counted.
    Wrong,
    /// Never checked (the server was busy): every unit goes back.
    Unchecked,
}

/// Why a limiter could not decide.
#[derive(Debug, thiserror::Error)]
#[error("limiter unavailable: {0}")]
pub struct Unavailable(pub String);

/// Rate limits and guess budgets, kept in this process or shared by every
/// replica.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Takes one unit of `key`'s allowance under `rate`; when none is left,
    /// `Ok(Err(wait))` with how long until one is.
    async fn take(&self, key: Key, rate: Rate) -> Result<Result<(), Duration>, Unavailable>;

    /// Counts `guess` against its budgets before it is checked; when any of
    /// them is blocked, counts nothing and says how long to wait.
    async fn guess(
        &self,
        guess: Guess,
        policy: GuessPolicy,
    ) -> Result<Result<Charged, Duration>, Unavailable>;

    /// Settles a counted guess once its outcome is known.
    async fn settle(
        &self,
        guess: Guess,
        charged: Charged,
        outcome: Outcome,
    ) -> Result<(), Unavailable>;
}

/// An entry of the in-memory limiter.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// A rate limit: the theoretical arrival time of the next unit (GCRA).
    Rate { tat: Instant },
    /// A guess budget.
    Guesses {
        /// Failures counted.
        failures: u32,
        /// When the last was counted.
        last: Instant,
        /// How long this budget remembers.
        forget: Duration,
    },
}

impl Entry {
    /// Whether the entry says nothing any more, so dropping it changes no
    /// decision.
    fn is_stale(&self, now: Instant) -> bool {
        match *self {
            Entry::Rate { tat } => tat <= now,
            Entry::Guesses {
                failures,
                last,
                forget,
            } => failures == 0 || now.duration_since(last) >= forget,
        }
    }
}

/// Limits kept in this process's memory: exact for one process; with
/// several replicas each keeps its own.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    /// Entries by key.
    entries: Mutex<HashMap<Key, Entry>>,
    /// Where time comes from.
    clock: Clock,
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty limiter that reads the time from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Makes room for `wanted` new entries, keeping the map within
/// [`MAX_ENTRIES`].
fn make_room(entries: &mut HashMap<Key, Entry>, wanted: usize, now: Instant) {
    if entries.len() + wanted <= MAX_ENTRIES {
        return;
    }
    entries.retain(|_, entry| !entry.is_stale(now));
    if entries.len() + wanted <= MAX_ENTRIES {
        return;
    }
    // Still full of live entries: a flood. Drop an arbitrary eighth (the
    // map's order is randomly seeded), so the cost stays amortised.
    let excess = entries.len() / 8 + wanted;
    let victims: Vec<Key> = entries.keys().take(excess).copied().collect();
    for key in victims {
        entries.remove(&key);
    }
}

/// The failures a guess budget holds at `now`.
fn failures(entries: &HashMap<Key, Entry>, key: &Key, now: Instant) -> (u32, Instant) {
    match entries.get(key) {
        Some(entry @ Entry::Guesses { failures, last, .. }) if !entry.is_stale(now) => {
            (*failures, *last)
        }
        _ => (0, now),
    }
}

/// How long a budget with `failures` counted last at `last` still blocks.
fn blocked_for(policy: &Backoff, failures: u32, last: Instant, now: Instant) -> Duration {
    (last + policy.delay(failures)).saturating_duration_since(now)
}

fn charge(entries: &mut HashMap<Key, Entry>, key: Key, policy: &Backoff, now: Instant) -> u32 {
    let (failures, _) = failures(entries, &key, now);
    let failures = failures.saturating_add(1);
    entries.insert(
        key,
        Entry::Guesses {
            failures,
            last: now,
            forget: policy.forget,
        },
    );
    failures
}

fn refund(entries: &mut HashMap<Key, Entry>, key: &Key) {
    if let Some(Entry::Guesses { failures, .. }) = entries.get_mut(key) {
        *failures = failures.saturating_sub(1);
        if *failures == 0 {
            entries.remove(key);
        }
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn take(&self, key: Key, rate: Rate) -> Result<Result<(), Duration>, Unavailable> {
        let now = self.clock.instant();
        let mut entries = self.lock();
        make_room(&mut entries, 1, now);
        let tat = match entries.get(&key) {
            Some(Entry::Rate { tat }) => (*tat).max(now),
            _ => now,
        };
        // The burst is how far ahead of now the arrival time may run.
        let tolerance = rate.interval.saturating_mul(rate.burst.saturating_sub(1));
        let allowed_from = tat.checked_sub(tolerance).unwrap_or(now);
        if allowed_from > now {
            return Ok(Err(allowed_from - now));
        }
        entries.insert(
            key,
            Entry::Rate {
                tat: tat + rate.interval,
            },
        );
        Ok(Ok(()))
    }

    async fn guess(
        &self,
        guess: Guess,
        policy: GuessPolicy,
    ) -> Result<Result<Charged, Duration>, Unavailable> {
        let now = self.clock.instant();
        let mut entries = self.lock();
        make_room(&mut entries, 3, now);
        let (pair, pair_last) = failures(&entries, &guess.pair, now);
        let (target, target_last) = failures(&entries, &guess.target, now);
        let mut wait = blocked_for(&policy.pair, pair, pair_last, now).max(blocked_for(
            &policy.target,
            target,
            target_last,
            now,
        ));
        if let Some(source) = &guess.source {
            let (failures, last) = failures(&entries, source, now);
            wait = wait.max(blocked_for(&policy.source, failures, last, now));
        }
        if !wait.is_zero() {
            return Ok(Err(wait));
        }
        let pair = charge(&mut entries, guess.pair, &policy.pair, now);
        if let Some(source) = guess.source {
            charge(&mut entries, source, &policy.source, now);
        }
        let charge_target = pair <= policy.pair.free;
        if charge_target {
            charge(&mut entries, guess.target, &policy.target, now);
        }
        Ok(Ok(Charged {
            target: charge_target,
        }))
    }

    async fn settle(
        &self,
        guess: Guess,
        charged: Charged,
        outcome: Outcome,
    ) -> Result<(), Unavailable> {
        let mut entries = self.lock();
        match outcome {
            Outcome::Wrong => return Ok(()),
            Outcome::Right => {
                entries.remove(&guess.pair);
            }
            Outcome::Unchecked => refund(&mut entries, &guess.pair),
        }
        if let Some(source) = &guess.source {
            refund(&mut entries, source);
        }
        if charged.target {
            refund(&mut entries, &guess.target);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Backoff = Backoff {
        free: 5,
        base: Duration::from_secs(1),
        max: Duration::from_secs(15 * 60),
        forget: Duration::from_secs(15 * 60),
    };
    const POLICY: GuessPolicy = GuessPolicy {
        pair: STRICT,
        source: Backoff {
            free: 200,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            forget: Duration::from_secs(15 * 60),
        },
        target: Backoff {
            free: 50,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            forget: Duration::from_secs(15 * 60),
        },
    };

    fn guess(account: &str, address: &str) -> Guess {
        Guess {
            pair: Key::new("pair", &[account.as_bytes(), address.as_bytes()]),
            source: Some(Key::new("source", &[address.as_bytes()])),
            target: Key::new("target", &[account.as_bytes()]),
        }
    }

    #[test]
    fn keys_do_not_collide_across_part_boundaries() {
        assert_ne!(Key::new("n", &[b"ab", b"c"]), Key::new("n", &[b"a", b"bc"]));
        assert_ne!(Key::new("n", &[b"a"]), Key::new("m", &[b"a"]));
    }

    /// The cases every limiter store must pass, each given a fresh limiter
    /// and the adjustable clock it reads.
    async fn conformance(fresh: impl Fn(Clock) -> Box<dyn Limiter>) {
        let cases: [(&str, Case); 6] = [
            ("a rate allows its burst then one per interval", |l, c| {
                Box::pin(a_rate_allows_its_burst_then_one_per_interval(l, c))
            }),
            (
                "concurrent guesses are counted before they are checked",
                |l, c| Box::pin(concurrent_guesses_are_counted_before_they_are_checked(l, c)),
            ),
            ("one address cannot lock the owner out elsewhere", |l, c| {
                Box::pin(one_address_cannot_lock_the_owner_out_elsewhere(l, c))
            }),
            (
                "guesses from many addresses meet the account budget",
                |l, c| {
                    Box::pin(
                        guesses_from_many_addresses_meet_the_account_budget_for_at_most_a_minute(
                            l, c,
                        ),
                    )
                },
            ),
            (
                "a right guess gives its units back and quiet time forgets",
                |l, c| {
                    Box::pin(a_right_guess_gives_its_units_back_and_quiet_time_forgets(
                        l, c,
                    ))
                },
            ),
            ("unchecked guesses cost nothing", |l, c| {
                Box::pin(unchecked_guesses_cost_nothing(l, c))
            }),
        ];
        for (name, case) in cases {
            let clock = Clock::adjustable();
            let limiter = fresh(clock.clone());
            eprintln!("case: {name}");
            case(limiter, clock).await;
        }
    }

    type Case =
        fn(Box<dyn Limiter>, Clock) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

    #[tokio::test]
    async fn the_memory_limiter_conforms() {
        conformance(|clock| Box::new(MemoryLimiter::with_clock(clock))).await;
    }

    #[tokio::test]
    async fn the_redis_limiter_conforms() {
        let Some(url) = std::env::var("TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            let required = std::env::var("TEST_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|r| r.trim() == "TEST_REDIS_URL"),
                "TEST_REDIS_URL is required (TEST_REQUIRE) but not set"
            );
            eprintln!("TEST_REDIS_URL not set: the Redis limiter's conformance skipped");
            return;
        };
        conformance(|clock| {
            let prefix = format!(
                "blog-test:{}:",
                crate::ids::hex(&crate::ids::unique_bytes::<8>())
            );
            Box::new(RedisLimiter::new(&url, &prefix, clock).unwrap())
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_at_once() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/", free.local_addr().unwrap());
        drop(free);
        let limiter = RedisLimiter::new(&url, "blog-test:", Clock::system()).unwrap();
        let started = std::time::Instant::now();
        let rate = Rate::per(1, Duration::from_secs(1), 1);
        assert!(limiter.take(Key::new("k", &[]), rate).await.is_err());
        assert!(limiter.guess(guess("a", "b"), POLICY).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    async fn a_rate_allows_its_burst_then_one_per_interval(
        limiter: Box<dyn Limiter>,
        clock: Clock,
    ) {
        let rate = Rate::per(60, Duration::from_secs(60), 30);
        let key = Key::new("test", &[b"k"]);
        for _ in 0..30 {
            assert_eq!(limiter.take(key, rate).await.unwrap(), Ok(()));
        }
        let wait = limiter.take(key, rate).await.unwrap().unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.take(key, rate).await.unwrap(), Ok(()));
        assert!(limiter.take(key, rate).await.unwrap().is_err());
        // Other keys have their own allowance.
        assert_eq!(
            limiter.take(Key::new("test", &[b"j"]), rate).await.unwrap(),
            Ok(())
        );
    }

    async fn concurrent_guesses_are_counted_before_they_are_checked(
        limiter: Box<dyn Limiter>,
        _clock: Clock,
    ) {
        let g = guess("alice", "10.0.0.1");
        let mut admitted = 0;
        // None settles: all are in flight at once.
        for _ in 0..250 {
            if limiter.guess(g, POLICY).await.unwrap().is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, STRICT.free + 1);
    }

    async fn one_address_cannot_lock_the_owner_out_elsewhere(
        limiter: Box<dyn Limiter>,
        _clock: Clock,
    ) {
        for _ in 0..250 {
            if let Ok(charged) = limiter
                .guess(guess("alice", "6.6.6.6"), POLICY)
                .await
                .unwrap()
            {
                limiter
                    .settle(guess("alice", "6.6.6.6"), charged, Outcome::Wrong)
                    .await
                    .unwrap();
            }
        }
        assert!(
            limiter
                .guess(guess("alice", "6.6.6.6"), POLICY)
                .await
                .unwrap()
                .is_err()
        );
        assert!(
            limiter
                .guess(guess("alice", "10.0.0.1"), POLICY)
                .await
                .unwrap()
                .is_ok()
        );
    }

    async fn guesses_from_many_addresses_meet_the_account_budget_for_at_most_a_minute(
        limiter: Box<dyn Limiter>,
        clock: Clock,
    ) {
        for i in 0..60 {
            let g = guess("alice", &format!("10.1.0.{i}"));
            if let Ok(charged) = limiter.guess(g, POLICY).await.unwrap() {
                limiter.settle(g, charged, Outcome::Wrong).await.unwrap();
            }
        }
        let wait = limiter
            .guess(guess("alice", "192.168.1.1"), POLICY)
            .await
            .unwrap()
            .unwrap_err();
        assert!(wait <= Duration::from_secs(60), "{wait:?}");
        clock.advance(wait);
        assert!(
            limiter
                .guess(guess("alice", "192.168.1.1"), POLICY)
                .await
                .unwrap()
                .is_ok()
        );
    }

    async fn a_right_guess_gives_its_units_back_and_quiet_time_forgets(
        limiter: Box<dyn Limiter>,
        clock: Clock,
    ) {
        let g = guess("alice", "10.0.0.1");
        for _ in 0..100 {
            let charged = limiter.guess(g, POLICY).await.unwrap().unwrap();
            limiter.settle(g, charged, Outcome::Right).await.unwrap();
        }
        for _ in 0..6 {
            let charged = limiter.guess(g, POLICY).await.unwrap().unwrap();
            limiter.settle(g, charged, Outcome::Wrong).await.unwrap();
        }
        assert!(limiter.guess(g, POLICY).await.unwrap().is_err());
        clock.advance(STRICT.forget);
        assert!(limiter.guess(g, POLICY).await.unwrap().is_ok());
    }

    async fn unchecked_guesses_cost_nothing(limiter: Box<dyn Limiter>, _clock: Clock) {
        let g = guess("alice", "10.0.0.1");
        for _ in 0..100 {
            let charged = limiter.guess(g, POLICY).await.unwrap().unwrap();
            limiter
                .settle(g, charged, Outcome::Unchecked)
                .await
                .unwrap();
        }
        // Nothing was counted: the strict budget is whole.
        for _ in 0..=STRICT.free {
            let charged = limiter.guess(g, POLICY).await.unwrap().unwrap();
            limiter.settle(g, charged, Outcome::Wrong).await.unwrap();
        }
    }

    #[tokio::test]
    async fn settled_guesses_leave_nothing_in_memory() {
        let limiter = MemoryLimiter::new();
        let g = guess("alice", "10.0.0.1");
        for outcome in [Outcome::Right, Outcome::Unchecked] {
            for _ in 0..100 {
                let charged = limiter.guess(g, POLICY).await.unwrap().unwrap();
                limiter.settle(g, charged, outcome).await.unwrap();
            }
            assert!(limiter.is_empty(), "{outcome:?} leaves nothing behind");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_whatever_the_keys() {
        let limiter = MemoryLimiter::new();
        let rate = Rate::per(1, Duration::from_secs(3600), 1);
        for i in 0..(MAX_ENTRIES + 5_000) as u64 {
            let _ = limiter
                .take(Key::new("flood", &[&i.to_be_bytes()]), rate)
                .await
                .unwrap();
        }
        assert!(limiter.len() <= MAX_ENTRIES, "{}", limiter.len());
    }
}
