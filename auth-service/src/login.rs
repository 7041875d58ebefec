//! Checking passwords: logins and re-authentication (changing the password
//! or the email, deleting the account).
//!
//! Every check is a guess, counted before it is made (see
//! [`shared::limits`]), so concurrent guesses cannot outrun the budget.
//! Logins are counted by the name the client typed, never by the account it
//! names: whether a username and an email belong to one account, or whether
//! an account exists at all, changes no answer and no timing. Unknown
//! accounts are checked against a dummy hash for the same reason.

use std::{net::IpAddr, sync::Arc, time::Duration};

use prometheus_client::metrics::counter::Counter;
use shared::{
    limits::{Backoff, Guess, GuessPolicy, Key, Limiter, Outcome},
    status::FieldErrors,
};

use crate::{
    config::LimitConfig,
    domain::{LoginName, Password},
    error::{Error, Result},
    password::{Passwords, Purpose},
    store::{Store, UserRecord},
};

/// How long failures are remembered without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The guess budgets, from the settings.
pub fn guess_policy(limits: &LimitConfig) -> GuessPolicy {
    let backoff = |free, max| Backoff {
        free,
        base: Duration::from_secs(1),
        max,
        forget: FORGET_AFTER,
    };
    GuessPolicy {
        pair: backoff(limits.login_free_failures, FORGET_AFTER),
        source: backoff(
            limits.login_address_free_failures,
            Duration::from_secs(5 * 60),
        ),
        // Capped at a minute: the longest anybody elsewhere can keep an
        // owner out, one minute at a time.
        target: backoff(limits.login_account_free_failures, Duration::from_secs(60)),
    }
}

/// Checks passwords within the guess budgets.
pub struct Credentials {
    /// Accounts.
    store: Arc<dyn Store>,
    /// Hashing.
    passwords: Passwords,
    /// Where guesses are counted.
    limiter: Arc<dyn Limiter>,
    /// How guesses are budgeted.
    policy: GuessPolicy,
    /// Failed logins, for `/metrics`.
    failures: Counter,
}

/// The bytes of an address, for a key.
fn address_bytes(address: Option<IpAddr>) -> Vec<u8> {
    match address {
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
        None => Vec::new(),
    }
}

/// A guess at `subject` (namespaced by `kind`) from `address`. The address
/// budget is shared by every kind: guessing is guessing.
fn guess(kind: &str, subject: &[u8], address: Option<IpAddr>) -> Guess {
    let address_bytes = address_bytes(address);
    Guess {
        pair: Key::new(kind, &[subject, &address_bytes]),
        source: address.map(|_| Key::new("guesses-from", &[&address_bytes])),
        target: Key::new(kind, &[subject]),
    }
}

impl Credentials {
    /// Checks over `store` and `passwords`, counting guesses in `limiter`.
    pub fn new(
        store: Arc<dyn Store>,
        passwords: Passwords,
        limiter: Arc<dyn Limiter>,
        policy: GuessPolicy,
        failures: Counter,
    ) -> Self {
        Self {
            store,
            passwords,
            limiter,
            policy,
            failures,
        }
    }

    /// The account `name` names, if `password` is its password. Unknown
    /// names and wrong passwords are the same [`Error::BadCredentials`].
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        name: &LoginName,
        password: &Password,
        address: Option<IpAddr>,
    ) -> Result<UserRecord> {
        let guess = guess("login", name.as_str().as_bytes(), address);
        let user = self
            .counted(guess, async {
                let user = self.store.user_by_login(name).await?;
                let stored = user.as_ref().map(|u| u.password_hash.as_str());
                let right = self
                    .passwords
                    .verify(Purpose::Login, password, stored)
                    .await?;
                Ok(user.filter(|_| right))
            })
            .await?;
        user.ok_or_else(|| {
            self.failures.inc();
            tracing::info!("login failed");
            Error::BadCredentials
        })
    }

    /// Checks that `password` is `user`'s, for a change that needs the
    /// owner; a wrong one is `INVALID_ARGUMENT` with `message` on `field`.
    #[tracing::instrument(skip_all, fields(user_id = user.id))]
    pub async fn reauthenticate(
        &self,
        user: &UserRecord,
        password: &Password,
        address: Option<IpAddr>,
        field: &'static str,
        message: &'static str,
    ) -> Result<()> {
        let guess = guess("reauthenticate", &user.id.to_be_bytes(), address);
        let right = self
            .counted(guess, async {
                let right = self
                    .passwords
                    .verify(Purpose::Other, password, Some(&user.password_hash))
                    .await?;
                Ok(right.then_some(()))
            })
            .await?;
        match right {
            Some(()) => Ok(()),
            None => Err(FieldErrors::single(field, message).into()),
        }
    }

    /// Runs `check` as `guess`: refused without running while the budgets
    /// are spent; settled by what it found (`Some`: right).
    async fn counted<T>(
        &self,
        guess: Guess,
        check: impl Future<Output = Result<Option<T>>>,
    ) -> Result<Option<T>> {
        let charged = self
            .limiter
            .guess(guess, self.policy)
            .await
            .map_err(Error::LimiterUnavailable)?
            .map_err(Error::Throttled)?;
        let result = check.await;
        let outcome = match &result {
            Ok(Some(_)) => Outcome::Right,
            Ok(None) => Outcome::Wrong,
            Err(_) => Outcome::Unchecked,
        };
        if let Err(e) = self.limiter.settle(guess, charged, outcome).await {
            tracing::warn!(error = %e, "could not settle a counted guess");
        }
        result
    }
}
