//! Password hashing: argon2id with the OWASP parameters, run off the async
//! workers on a fixed set of threads, one per core, so that a login flood
//! queues here instead of starving every other call.
//!
//! Each hash needs 19 MiB of working memory. Every hashing thread keeps its
//! own and reuses it: allocated per hash, the allocator maps it fresh from
//! the kernel each time, and faulting in and zeroing 19 MiB cost a fifth of
//! a login. The threads also run at a lower scheduling priority, so that on
//! a busy machine cheap calls (reads, token checks) go first and a login
//! flood slows logins, not everything else.

use std::{
    cell::RefCell,
    sync::{Arc, Mutex},
};

use anyhow::{Context, anyhow};
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use tokio::sync::oneshot;

use crate::{domain::Password, error::Result};

/// argon2id, m=19456 KiB, t=2, p=1 (OWASP password storage cheat sheet).
const PARAMS: (u32, u32, u32) = (19_456, 2, 1);

/// Bytes of salt in a new hash (the PHC recommendation).
const SALT_LEN: usize = 16;

/// Bytes of output in a new hash.
const OUTPUT_LEN: usize = 32;

/// The most argon2 memory a hash may use, in 1 KiB blocks: 256 MiB, thirteen
/// times ours, room for stronger parameters later.
const MAX_BLOCKS: usize = 256 * 1024;

/// How much lower than the async workers the hashing threads run (a nice
/// value: 10 weighs about a tenth of a normal thread when the core is
/// contended, and nothing when it is not).
const HASHING_NICENESS: i32 = 10;

fn params() -> Params {
    let (m, t, p) = PARAMS;
    // The parameters are constants known to be valid.
    Params::new(m, t, p, Some(OUTPUT_LEN)).expect("valid argon2 parameters")
}

thread_local! {
    /// This hashing thread's argon2 working memory, kept between hashes.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2 of `password` and `salt` into `out`, in this thread's memory.
fn argon2_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> anyhow::Result<()> {
    let blocks = params.block_count();
    // A stored hash names its own cost; one asking for more than this is
    // refused rather than allowed to take the process's memory (the buffer
    // is kept for the thread's life).
    if blocks > MAX_BLOCKS {
        anyhow::bail!("argon2 parameters ask for {blocks} KiB, more than {MAX_BLOCKS} KiB");
    }
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
            .map_err(|e| anyhow!("argon2 failed: {e}"))
    })
}

/// A new PHC string for `password` with a fresh random salt.
fn hash_here(password: &[u8]) -> anyhow::Result<String> {
    let params = params();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = shared::secret::random_bytes::<SALT_LEN>();
    let mut out = [0u8; OUTPUT_LEN];
    argon2_into(&argon2, &params, password, &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow!("argon2 parameters: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow!("argon2 salt: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow!("argon2 output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored`, hashed with the
/// algorithm, version and parameters `stored` names (so hashes made with
/// other parameters keep verifying), compared in constant time.
fn verify_here(password: &[u8], stored: &str) -> anyhow::Result<bool> {
    let malformed = |e: &dyn std::fmt::Display| anyhow!("stored password hash is malformed: {e}");
    let hash = PasswordHash::new(stored).map_err(|e| malformed(&e))?;
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err(malformed(&"no salt or no hash"));
    };
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).map_err(|e| malformed(&e))?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| malformed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| malformed(&e))?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    argon2_into(&argon2, &params, password, salt, &mut out)?;
    let computed = Output::new(&out).map_err(|e| anyhow!("argon2 output: {e}"))?;
    // `Output`'s equality is constant-time.
    Ok(computed == *expected)
}

/// Lowers the calling thread's scheduling priority (Linux: the nice value
/// is per thread). Best effort: if it fails, hashing still works, only with
/// the same priority as everything else.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; `0` names
        // the calling thread.
        let code = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICENESS) };
        if code != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the password hashing threads' priority"
            );
        }
    }
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
                    lower_this_threads_priority();
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
        // Made on a hashing thread too, so no other thread ever holds
        // hashing memory.
        let (done, dummy_hash) = std::sync::mpsc::channel();
        jobs.send(Box::new(move || {
            let dummy = shared::secret::random_token();
            let _ = done.send(hash_here(dummy.as_bytes()));
        }))
        .expect("the password hashing threads just started");
        let dummy_hash = dummy_hash
            .recv()
            .expect("a password hashing thread answers")
            .expect("hashing a fresh random password");
        Self {
            jobs,
            dummy_hash: dummy_hash.into(),
        }
    }

    /// The PHC string of `password` with a fresh random salt.
    #[tracing::instrument(skip_all)]
    pub async fn hash(&self, password: &Password) -> Result<String> {
        let password = password.expose().to_owned();
        Ok(self.run(move || hash_here(password.as_bytes())).await??)
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
            .run(move || verify_here(password.as_bytes(), &hash))
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
            .map_err(|_| anyhow!("password hashing threads are gone"))?;
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

#[cfg(test)]
mod compatibility_tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn a_hash_made_here_verifies_with_the_argon2_crate_and_nothing_else_does() {
        let stored = hash_here(b"correct horse").unwrap();
        let parsed = PasswordHash::new(&stored).unwrap();
        let argon2 = Argon2::default();
        assert!(argon2.verify_password(b"correct horse", &parsed).is_ok());
        assert!(argon2.verify_password(b"correct horsf", &parsed).is_err());
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_verify_here_whatever_their_parameters() {
        for (algorithm, m, t) in [
            (Algorithm::Argon2id, 19_456, 2),
            (Algorithm::Argon2id, 8_192, 3),
            (Algorithm::Argon2i, 4_096, 1),
        ] {
            let argon2 = Argon2::new(
                algorithm,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
            );
            let stored = argon2.hash_password(b"battery staple").unwrap().to_string();
            assert!(verify_here(b"battery staple", &stored).unwrap(), "{stored}");
            assert!(
                !verify_here(b"battery stapler", &stored).unwrap(),
                "{stored}"
            );
            assert!(!verify_here(b"", &stored).unwrap(), "{stored}");
        }
    }

    #[test]
    fn reused_memory_gives_the_same_answers_in_any_order() {
        // One thread, one memory: a larger hash, then a smaller one, then the
        // first again.
        let big = hash_here(b"first").unwrap();
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1_024, 1, 1, None).unwrap(),
        )
        .hash_password(b"second")
        .unwrap()
        .to_string();
        assert!(verify_here(b"first", &big).unwrap());
        assert!(verify_here(b"second", &small).unwrap());
        assert!(verify_here(b"first", &big).unwrap());
        assert!(!verify_here(b"second", &big).unwrap());
    }

    #[test]
    fn a_stored_hash_asking_for_gigabytes_is_refused_without_allocating() {
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$\
                      YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";
        let refused = verify_here(b"x", greedy).unwrap_err();
        assert!(refused.to_string().contains("more than"), "{refused}");
    }

    #[test]
    fn a_malformed_stored_hash_is_an_error_not_a_match() {
        for stored in [
            "",
            "plain text",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2id$v=19$m=19456,t=2,p=1",
        ] {
            assert!(verify_here(b"x", stored).is_err(), "{stored:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_below_normal_priority() {
        let _passwords = Passwords::new();
        let mut niceness = Vec::new();
        for task in std::fs::read_dir("/proc/thread-self/..").unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with("argon2-") {
                let stat = std::fs::read_to_string(path.join("stat")).unwrap();
                // Fields after the parenthesised name: nice is the 19th field.
                let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                let nice: i32 = after_name.split(' ').nth(16).unwrap().parse().unwrap();
                niceness.push(nice);
            }
        }
        assert!(!niceness.is_empty(), "no hashing thread found");
        assert!(
            niceness.iter().all(|&n| n >= HASHING_NICENESS),
            "{niceness:?}"
        );
    }
}
