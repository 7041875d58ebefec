//! Password hashing: argon2id with the OWASP parameters, run off the async
//! workers on a fixed set of threads, one per core, so that a login flood
//! queues here instead of starving every other call.
//!
//! The queue is bounded: past [`QUEUE_PER_CORE`] waiting jobs per core of a
//! kind, a caller is refused at once (`RESOURCE_EXHAUSTED` with a
//! `RetryInfo`) rather than added to a backlog. Logins and everything else
//! (registrations, resets, re-authentication) queue apart and take turns,
//! so a flood of one kind leaves the other half the hashing. A job whose
//! caller has gone away (cancelled, past its deadline) is dropped unrun.
//!
//! Each hash needs 19 MiB of working memory. Every hashing thread keeps its
//! own and reuses it: allocated per hash, the allocator maps it fresh from
//! the kernel each time, and faulting in and zeroing 19 MiB cost a fifth of
//! a login. It is advised into huge pages, which spare argon2's scattered
//! reads most of their TLB misses. The threads also run at a lower
//! scheduling priority, so that on a busy machine cheap calls (reads, token
//! checks) go first and a login flood slows logins, not everything else;
//! and while a hash runs, its thread offers its core back every millisecond
//! ([`turns`]), so that a cheap call waits for at most that long behind a
//! hash.

use std::{
    cell::RefCell,
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use anyhow::{Context, anyhow};
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use tokio::sync::oneshot;

use self::turns::Turns;
use crate::{
    domain::Password,
    error::{Error, Result},
};

mod turns;

/// argon2id, m=19456 KiB, t=2, p=1 (OWASP password storage cheat sheet).
const PARAMS: (u32, u32, u32) = (19_456, 2, 1);

/// Bytes of salt in a new hash (the PHC recommendation).
const SALT_LEN: usize = 16;

/// Bytes of output in a new hash.
const OUTPUT_LEN: usize = 32;

/// The most argon2 memory a hash may use, in 1 KiB blocks: 256 MiB, thirteen
/// times ours, room for stronger parameters later.
const MAX_BLOCKS: usize = 256 * 1024;

/// Jobs of one kind that may wait per hashing thread; beyond it callers are
/// refused at once. A hash takes tens of milliseconds, so a full queue is
/// well under a second of work.
pub const QUEUE_PER_CORE: usize = 64;

/// When a refused caller is told to come back.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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
            *memory = Vec::with_capacity(blocks);
            huge_pages(memory);
            memory.resize(blocks, Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
            .map_err(|e| anyhow!("argon2 failed: {e}"))
    })
}

/// Asks the kernel to back `memory`'s (untouched) capacity with huge pages
/// where it can: argon2 reads blocks all over its 19 MiB, and in 4 KiB pages
/// that is a TLB miss on most reads. Advice only: without transparent huge
/// pages nothing changes.
fn huge_pages(memory: &mut Vec<Block>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = memory.as_mut_ptr().cast::<u8>();
        let bytes = memory.capacity() * std::mem::size_of::<Block>();
        // madvise wants a page-aligned start; the head before it is skipped.
        let skip = start.align_offset(PAGE);
        if bytes > skip {
            let length = (bytes - skip) / PAGE * PAGE;
            // SAFETY: the range lies within `memory`'s own allocation, and
            // MADV_HUGEPAGE changes how it is backed, never its contents.
            unsafe {
                libc::madvise(start.add(skip).cast(), length, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = memory;
}

/// How long one hash takes on the calling thread with the service's own
/// parameters and reused memory, as a hashing thread does it: the mean over
/// as many hashes as fit in `window` (at least one, after one warm-up). This
/// is the ceiling that benchmarks hold logins against, so it is timed over
/// as long a stretch as the logins are, and a slow spell of the host weighs
/// on both alike. With `in_turns`, the calling thread also runs as a hashing
/// thread does: at its lower priority, each hash offering the core back
/// every turn (what the service pays for letting cheap calls in).
pub fn time_one_hash(window: Duration, in_turns: bool) -> Duration {
    let turns = if in_turns {
        become_a_hashing_thread()
    } else {
        None
    };
    let params = params();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; OUTPUT_LEN];
    let mut once = || {
        in_turns_if_any(turns.as_ref(), || {
            argon2_into(
                &argon2,
                &params,
                b"benchmark password",
                b"sixteen byte salt",
                &mut out,
            )
            .expect("hashing with the service's parameters")
        })
    };
    once();
    let start = std::time::Instant::now();
    let mut hashes = 0u32;
    while hashes == 0 || start.elapsed() < window {
        once();
        hashes += 1;
    }
    start.elapsed() / hashes
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

/// Makes the calling thread what a hashing thread is: lower in priority,
/// and with a turn timer where there can be one.
fn become_a_hashing_thread() -> Option<Turns> {
    lower_this_threads_priority();
    Turns::for_this_thread()
}

/// Runs `job` under `turns` if there are any, else plainly.
fn in_turns_if_any<T>(turns: Option<&Turns>, job: impl FnOnce() -> T) -> T {
    match turns {
        Some(turns) => turns.during(job),
        None => job(),
    }
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

/// What a hash is for. The two kinds queue apart and take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Checking a password at login.
    Login,
    /// Anything else: a new password, a reset, a re-authentication.
    Other,
}

/// The jobs waiting for a hashing thread.
#[derive(Default)]
struct Queues {
    /// Login checks, oldest first.
    login: VecDeque<Job>,
    /// Everything else, oldest first.
    other: VecDeque<Job>,
    /// Whether the next turn is the logins'.
    logins_next: bool,
    /// Set when the last handle is gone: the threads finish.
    closed: bool,
}

impl Queues {
    /// The next job, alternating between the kinds while both wait.
    fn next(&mut self) -> Option<Job> {
        let (first, second) = if self.logins_next {
            (&mut self.login, &mut self.other)
        } else {
            (&mut self.other, &mut self.login)
        };
        let job = first.pop_front().or_else(|| second.pop_front());
        self.logins_next = !self.logins_next;
        job
    }
}

/// The queues and the signal that wakes idle hashing threads.
#[derive(Default)]
struct Work {
    /// Waiting jobs.
    queues: Mutex<Queues>,
    /// Notified for each new job, and on close.
    ready: Condvar,
}

impl Work {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs jobs until closed, each under `turns` if there are any.
    fn serve(&self, turns: Option<&Turns>) {
        loop {
            let job = {
                let mut queues = self.lock();
                loop {
                    if let Some(job) = queues.next() {
                        break job;
                    }
                    if queues.closed {
                        return;
                    }
                    queues = self.ready.wait(queues).unwrap_or_else(|e| e.into_inner());
                }
            };
            in_turns_if_any(turns, job);
        }
    }
}

/// Closes the queues when the last [`Passwords`] is dropped.
struct Threads {
    /// The work the threads serve.
    work: Arc<Work>,
    /// Jobs of one kind that may wait.
    capacity: usize,
    /// Jobs ever accepted.
    accepted: std::sync::atomic::AtomicU64,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.work.lock().closed = true;
        self.work.ready.notify_all();
    }
}

/// Hashes and verifies passwords off the async workers, a bounded number at
/// a time.
#[derive(Clone)]
pub struct Passwords {
    /// The hashing threads' work, one thread per core.
    threads: Arc<Threads>,
    /// A real hash of a random password, verified when the account does not
    /// exist so that the answer takes as long as for a wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    /// A hasher allowing one hash per available core at a time.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let work = Arc::new(Work::default());
        for i in 0..cores {
            let work = work.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let turns = become_a_hashing_thread();
                    work.serve(turns.as_ref());
                })
                .expect("starting a password hashing thread");
        }
        let threads = Arc::new(Threads {
            work,
            capacity: QUEUE_PER_CORE * cores,
            accepted: std::sync::atomic::AtomicU64::new(0),
        });
        // Made on a hashing thread too, so no other thread ever holds
        // hashing memory.
        let (done, dummy_hash) = std::sync::mpsc::channel();
        {
            let mut queues = threads.work.lock();
            queues.other.push_back(Box::new(move || {
                let dummy = shared::secret::random_token();
                let _ = done.send(hash_here(dummy.as_bytes()));
            }));
        }
        threads.work.ready.notify_one();
        let dummy_hash = dummy_hash
            .recv()
            .expect("a password hashing thread answers")
            .expect("hashing a fresh random password");
        Self {
            threads,
            dummy_hash: dummy_hash.into(),
        }
    }

    /// The PHC string of `password` with a fresh random salt.
    #[tracing::instrument(skip_all)]
    pub async fn hash(&self, password: &Password) -> Result<String> {
        let password = password.expose().to_owned();
        Ok(self
            .run(Purpose::Other, move || hash_here(password.as_bytes()))
            .await??)
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown
    /// account) a dummy hash is verified instead and the answer is `false`,
    /// in the same time.
    #[tracing::instrument(skip_all)]
    pub async fn verify(
        &self,
        purpose: Purpose,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<bool> {
        let password = password.expose().to_owned();
        let known = stored.is_some();
        let hash = stored.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let matches = self
            .run(purpose, move || verify_here(password.as_bytes(), &hash))
            .await??;
        Ok(known && matches)
    }

    /// How many hashing jobs have been accepted since start: what callers
    /// have made this process hash.
    pub fn jobs_accepted(&self) -> u64 {
        self.threads
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `work` as `purpose`, or refuses at once when that queue is
    /// full.
    async fn run<T: Send + 'static>(
        &self,
        purpose: Purpose,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            // The caller is gone: nobody would read the answer.
            if done.is_closed() {
                return;
            }
            let _ = done.send(span.in_scope(work));
        });
        {
            let mut queues = self.threads.work.lock();
            let queue = match purpose {
                Purpose::Login => &mut queues.login,
                Purpose::Other => &mut queues.other,
            };
            if queue.len() >= self.threads.capacity {
                return Err(Error::Busy(RETRY_AFTER));
            }
            queue.push_back(job);
        }
        self.threads
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.threads.work.ready.notify_one();
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
        assert!(
            passwords
                .verify(Purpose::Login, &password, Some(&a))
                .await
                .unwrap()
        );
        let wrong = Password::presented("wrong horse".into()).unwrap();
        assert!(
            !passwords
                .verify(Purpose::Login, &wrong, Some(&a))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        let passwords = Passwords::new();
        let password = Password::presented("anything at all".into()).unwrap();
        assert!(
            !passwords
                .verify(Purpose::Login, &password, None)
                .await
                .unwrap()
        );
    }

    /// Occupies every hashing thread until the returned barrier is passed.
    async fn park_threads(passwords: &Passwords) -> Arc<std::sync::Barrier> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let gate = Arc::new(std::sync::Barrier::new(cores + 1));
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
        {
            let mut queues = passwords.threads.work.lock();
            for _ in 0..cores {
                let gate = gate.clone();
                let started = started.clone();
                queues.other.push_back(Box::new(move || {
                    let _ = started.send(());
                    gate.wait();
                }));
            }
        }
        passwords.threads.work.ready.notify_all();
        for _ in 0..cores {
            running.recv().await.unwrap();
        }
        gate
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_the_other_kind_still_runs() {
        let passwords = Passwords::new();
        let capacity = passwords.threads.capacity;
        let gate = park_threads(&passwords).await;

        let mut waiting = Vec::new();
        for _ in 0..capacity {
            let passwords = passwords.clone();
            waiting.push(tokio::spawn(async move {
                let password = Password::presented("anything at all".into()).unwrap();
                passwords.verify(Purpose::Login, &password, None).await
            }));
        }
        while passwords.threads.work.lock().login.len() < capacity {
            tokio::task::yield_now().await;
        }
        let password = Password::presented("anything at all".into()).unwrap();
        let refused = passwords.verify(Purpose::Login, &password, None).await;
        assert!(matches!(refused, Err(Error::Busy(_))), "{refused:?}");
        // The other kind has a queue of its own.
        let other = {
            let passwords = passwords.clone();
            tokio::spawn(async move { passwords.hash(&password).await })
        };
        gate.wait();
        assert!(other.await.unwrap().is_ok());
        for job in waiting {
            assert!(job.await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_job_whose_caller_has_gone_is_not_run() {
        let passwords = Passwords::new();
        let gate = park_threads(&passwords).await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            passwords.run(Purpose::Other, move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }),
        )
        .await;
        assert!(abandoned.is_err(), "the threads are parked");
        gate.wait();
        // Anything queued after the abandoned job runs after it.
        passwords.run(Purpose::Other, || ()).await.unwrap();
        passwords.run(Purpose::Other, || ()).await.unwrap();
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn the_kinds_take_turns() {
        let mut queues = Queues::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        for (kind, n) in [("login", 3), ("other", 3)] {
            for i in 0..n {
                let order = order.clone();
                let job: Job = Box::new(move || order.lock().unwrap().push(format!("{kind}{i}")));
                if kind == "login" {
                    queues.login.push_back(job);
                } else {
                    queues.other.push_back(job);
                }
            }
        }
        while let Some(job) = queues.next() {
            job();
        }
        let order = order.lock().unwrap().join(" ");
        assert_eq!(order, "other0 login0 other1 login1 other2 login2");
    }

    #[test]
    fn the_benchmark_probe_hashes_plainly_and_in_turns() {
        // On its own thread: in turns, the probe lowers its thread's priority.
        std::thread::spawn(|| {
            for in_turns in [false, true] {
                #[cfg(target_os = "linux")]
                let before = turns::offered();
                let one = time_one_hash(Duration::from_millis(20), in_turns);
                assert!(one > Duration::ZERO, "in turns: {in_turns}");
                // Two hashes of 19 MiB at least (the warm-up and one timed)
                // outlast a 1 ms turn; plainly, no turn is ever offered.
                #[cfg(target_os = "linux")]
                assert_eq!(
                    turns::offered() > before,
                    in_turns,
                    "turns offered, in turns: {in_turns}"
                );
            }
        })
        .join()
        .unwrap();
    }
}
