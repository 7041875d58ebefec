//! Password hashing: argon2id with the OWASP parameters, run off the async
//! workers on a fixed set of threads, one per core, so that a login flood
//! queues here instead of starving every other call. Each hash takes 19 MiB;
//! on a fixed set of threads that memory is reused (one malloc arena per
//! thread) instead of piling up in the arenas of a growing blocking pool.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::oneshot;

use crate::{domain::Password, error::Result};

/// argon2id, m=19456 KiB, t=2, p=1 (OWASP password storage cheat sheet).
const PARAMS: (u32, u32, u32) = (19_456, 2, 1);

fn argon2() -> Argon2<'static> {
    let (m, t, p) = PARAMS;
    // The parameters are constants known to be valid.
    let params = Params::new(m, t, p, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A unit of hashing work.
type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords off the async workers, a bounded number at
/// a time.
#[derive(Clone)]
pub struct Passwords {
    /// Work for the hashing threads, one per core.
    jobs: std::sync::mpsc::Sender<Job>,
    /// A real hash of a random password, verified when the account does not
    /// exist so that the answer takes as long as for a wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    /// A hasher allowing one hash per available core at a time.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..cores {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking the next job.
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("starting a password hashing thread");
        }
        let dummy = shared::secret::random_token();
        let dummy_hash = argon2()
            .hash_password(dummy.as_bytes())
            .expect("hashing a fresh random password")
            .to_string();
        Self {
            jobs,
            dummy_hash: dummy_hash.into(),
        }
    }

    /// The PHC string of `password` with a fresh random salt.
    #[tracing::instrument(skip_all)]
    pub async fn hash(&self, password: &Password) -> Result<String> {
        let password = password.expose().to_owned();
        self.run(move || {
            argon2()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
        })
        .await?
        .map_err(Into::into)
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown
    /// account) a dummy hash is verified instead and the answer is `false`,
    /// in the same time.
    #[tracing::instrument(skip_all)]
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> Result<bool> {
        let password = password.expose().to_owned();
        let known = stored.is_some();
        let hash = stored.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let matches = self
            .run(move || {
                let hash = PasswordHash::new(&hash)
                    .map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
                Ok::<_, anyhow::Error>(argon2().verify_password(password.as_bytes(), &hash).is_ok())
            })
            .await??;
        Ok(known && matches)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(span.in_scope(work));
            }))
            .map_err(|_| anyhow::anyhow!("password hashing threads are gone"))?;
        Ok(result.await.context("password hashing job was dropped")?)
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_salted() {
        let passwords = Passwords::new();
        let password = Password::parse("correct horse".into()).unwrap();
        let a = passwords.hash(&password).await.unwrap();
        let b = passwords.hash(&password).await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(passwords.verify(&password, Some(&a)).await.unwrap());
        let wrong = Password::presented("wrong horse".into());
        assert!(!passwords.verify(&wrong, Some(&a)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        let passwords = Passwords::new();
        let password = Password::presented("anything at all".into());
        assert!(!passwords.verify(&password, None).await.unwrap());
    }
}
