//! Login throttling: failed logins slow down further attempts, with growing
//! delays, so passwords cannot be guessed at the speed of the hardware.
//!
//! Three budgets, each with some free failures before delays start:
//!
//! - per account *and* client address: strict (5 free failures, then 1 s,
//!   2 s, 4 s, … up to 15 min). This is the one a guesser meets.
//! - per account, from any address: loose (50 free, delays capped at 60 s),
//!   against guessing spread over many addresses. Its cap bounds how long an
//!   attacker elsewhere can keep a user out: a minute at a time, never more.
//! - per client address, any account: loose (200 free, capped at 5 min),
//!   since many people may share one address behind a NAT.
//!
//! A success clears that account-and-address budget; failures are forgotten
//! after 15 quiet minutes. Accounts are keyed by user id when the account
//! exists (so username and email share one budget) and by the login name
//! otherwise (so unknown accounts behave like known ones). The state lives
//! in this process: with several replicas each holds its own budgets.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How one budget spends.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// Failures allowed before delays start.
    free: u32,
    /// The first delay; each further failure doubles it.
    base: Duration,
    /// The longest delay.
    max: Duration,
}

const PER_ACCOUNT_AND_ADDRESS: Policy = Policy {
    free: 5,
    base: Duration::from_secs(1),
    max: Duration::from_secs(15 * 60),
};
const PER_ACCOUNT: Policy = Policy {
    free: 50,
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
};
const PER_ADDRESS: Policy = Policy {
    free: 200,
    base: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
};
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Above this many budgets, stale ones are swept.
const SWEEP_ABOVE: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Budget {
    AccountAndAddress(String, Option<IpAddr>),
    Account(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Instant,
    last_failure: Instant,
}

/// The throttle.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    /// Budgets by key.
    entries: Mutex<HashMap<Budget, Entry>>,
}

/// Who is trying to log in to what.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `user:<id>` for an existing account, `login:<name>` otherwise.
    pub account: String,
    /// The client's address, when known.
    pub address: Option<IpAddr>,
}

impl Attempt {
    fn budgets(&self) -> Vec<(Budget, Policy)> {
        let mut budgets = vec![
            (
                Budget::AccountAndAddress(self.account.clone(), self.address),
                PER_ACCOUNT_AND_ADDRESS,
            ),
            (Budget::Account(self.account.clone()), PER_ACCOUNT),
        ];
        if let Some(address) = self.address {
            budgets.push((Budget::Address(address), PER_ADDRESS));
        }
        budgets
    }
}

impl LoginThrottle {
    /// `Err(wait)` while any budget of `attempt` is blocked.
    pub fn check(&self, attempt: &Attempt, now: Instant) -> Result<(), Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = attempt
            .budgets()
            .iter()
            .filter_map(|(budget, _)| entries.get(budget))
            .filter(|entry| now.duration_since(entry.last_failure) < FORGET_AFTER)
            .map(|entry| entry.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Counts a failed login against every budget of `attempt`.
    pub fn failed(&self, attempt: &Attempt, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > SWEEP_ABOVE {
            entries.retain(|_, entry| now.duration_since(entry.last_failure) < FORGET_AFTER);
        }
        for (budget, policy) in attempt.budgets() {
            let entry = entries.entry(budget).or_insert(Entry {
                failures: 0,
                blocked_until: now,
                last_failure: now,
            });
            if now.duration_since(entry.last_failure) >= FORGET_AFTER {
                entry.failures = 0;
            }
            entry.failures += 1;
            entry.last_failure = now;
            if entry.failures > policy.free {
                let doublings = (entry.failures - policy.free - 1).min(20);
                let delay = policy.base.saturating_mul(1 << doublings).min(policy.max);
                entry.blocked_until = now + delay;
            }
        }
    }

    /// Clears the account-and-address budget after a successful login.
    pub fn succeeded(&self, attempt: &Attempt) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Budget::AccountAndAddress(
                attempt.account.clone(),
                attempt.address,
            ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(account: &str, address: [u8; 4]) -> Attempt {
        Attempt {
            account: account.into(),
            address: Some(IpAddr::from(address)),
        }
    }

    #[test]
    fn a_handful_of_failures_are_free_then_delays_double() {
        let throttle = LoginThrottle::default();
        let alice = attempt("user:1", [10, 0, 0, 1]);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(throttle.check(&alice, t0).is_ok());
            throttle.failed(&alice, t0);
        }
        assert!(throttle.check(&alice, t0).is_ok());
        throttle.failed(&alice, t0);
        assert_eq!(throttle.check(&alice, t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(throttle.check(&alice, t1).is_ok());
        throttle.failed(&alice, t1);
        assert_eq!(throttle.check(&alice, t1), Err(Duration::from_secs(2)));
    }

    #[test]
    fn another_address_is_not_held_back_by_a_guesser() {
        let throttle = LoginThrottle::default();
        let guesser = attempt("user:1", [6, 6, 6, 6]);
        let owner = attempt("user:1", [10, 0, 0, 1]);
        let now = Instant::now();
        for _ in 0..10 {
            throttle.failed(&guesser, now);
        }
        assert!(throttle.check(&guesser, now).is_err());
        assert!(throttle.check(&owner, now).is_ok());
    }

    #[test]
    fn guessing_from_many_addresses_is_capped_at_a_minute_per_account() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..200u8 {
            throttle.failed(&attempt("user:1", [10, 1, 0, i]), now);
        }
        let owner = attempt("user:1", [192, 168, 1, 1]);
        let wait = throttle.check(&owner, now).unwrap_err();
        assert!(wait <= Duration::from_secs(60), "{wait:?}");
        assert!(
            throttle
                .check(&owner, now + Duration::from_secs(60))
                .is_ok()
        );
    }

    #[test]
    fn an_address_shared_by_many_people_gets_a_large_budget() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..150 {
            throttle.failed(&attempt(&format!("login:user{i}"), [10, 0, 0, 1]), now);
        }
        assert!(
            throttle
                .check(&attempt("user:999", [10, 0, 0, 1]), now)
                .is_ok()
        );
    }

    #[test]
    fn success_clears_and_quiet_time_forgets() {
        let throttle = LoginThrottle::default();
        let alice = attempt("user:1", [10, 0, 0, 1]);
        let now = Instant::now();
        for _ in 0..8 {
            throttle.failed(&alice, now);
        }
        assert!(throttle.check(&alice, now).is_err());
        let later = now + FORGET_AFTER;
        assert!(throttle.check(&alice, later).is_ok());
        throttle.failed(&alice, later);
        assert!(
            throttle.check(&alice, later).is_ok(),
            "old failures were forgotten"
        );
        throttle.succeeded(&alice);
        assert!(throttle.check(&alice, later).is_ok());
    }
}
