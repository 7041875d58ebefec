//! Turns: while a hash runs, its thread offers its core back every
//! [`TURN`] while others take it, and less often while nobody does.
//!
//! A hashing thread runs at a lower priority, but the scheduler only looks
//! again at who should run when the running thread blocks, yields, or the
//! kernel's tick comes. On a kernel without a high-resolution tick (250 Hz
//! is common) a hashing thread that has been picked keeps the core for up
//! to 4 ms while a cheap call waits behind it, whatever its priority. A
//! hash never blocks, so it yields: a per-thread timer, armed only while a
//! hash runs, sends the thread a signal every turn, and the signal's
//! handler calls `sched_yield`. When nothing else wants the core, the yield
//! returns at once and the hash goes on.
//!
//! A turn nobody takes still costs a timer interrupt and a signal, which
//! on a virtual machine add up to a few per cent of a hash at a thousand a
//! second. So the turn adapts, by how long the hash was off its core since
//! the last turn (wall time less the thread's own CPU time): a turn in
//! which anybody else ran (its yield gave the core away, or a thread woke
//! and took it) starts over at [`TURN`]; [`QUIET_TURNS_TO_GROW`] turns in a
//! row that nobody else took double it, up to [`QUIET_TURN`], the tick's
//! own period, by which the kernel looks again anyway. A thread keeps its
//! turn from one hash to the next. So on a core that cheap calls keep busy
//! (they come and go, and leave few quiet stretches) the turns stay short,
//! and a hashing thread alone on its core offers it a quarter as often.
//!
//! Linux only; elsewhere [`Turns::for_this_thread`] gives `None` and hashes
//! run as they always did.

use std::time::Duration;

/// How often a running hash offers its core back while others take it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub const TURN: Duration = Duration::from_millis(1);

/// The longest a turn grows while nobody takes the core: one tick of a
/// 250 Hz kernel, when the scheduler looks again by itself.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub const QUIET_TURN: Duration = Duration::from_millis(4);

/// A hash off its core for less than this in a turn gave it to nobody: a
/// yield with no one waiting takes a few microseconds, a switch to another
/// thread and back more.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const GAVE_WAY_AFTER: Duration = Duration::from_micros(20);

/// How many turns in a row nobody else takes before the turn doubles.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const QUIET_TURNS_TO_GROW: u32 = 8;

/// The turn after one of `turn`, in which the hash was off its core for
/// `away`, when `quiet` turns in a row before it were nobody else's; and
/// that count after it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn next_turn(turn: Duration, quiet: u32, away: Duration) -> (Duration, u32) {
    if away >= GAVE_WAY_AFTER {
        (TURN, 0)
    } else if quiet + 1 >= QUIET_TURNS_TO_GROW {
        ((turn * 2).min(QUIET_TURN), 0)
    } else {
        (turn, quiet + 1)
    }
}

#[cfg(target_os = "linux")]
pub use linux::Turns;
#[cfg(all(test, target_os = "linux"))]
pub use linux::offered;

/// No turns off Linux: [`Turns::for_this_thread`] always gives `None`.
#[cfg(not(target_os = "linux"))]
pub enum Turns {}

#[cfg(not(target_os = "linux"))]
impl Turns {
    /// Never available here.
    pub fn for_this_thread() -> Option<Self> {
        None
    }

    /// Unreachable: no value of this type exists.
    pub fn during<T>(&self, _job: impl FnOnce() -> T) -> T {
        match *self {}
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        ffi::c_int,
        sync::{
            OnceLock,
            atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering, compiler_fence},
        },
        time::Duration,
    };

    use super::{TURN, next_turn};

    // The signal handler touches these, so they are `const` and without a
    // destructor. Atomics only to share them with the handler, which runs
    // on the same thread.
    thread_local! {
        /// How many turns this thread has offered (read by the tests).
        static OFFERED: AtomicU64 = const { AtomicU64::new(0) };
        /// Whether a job runs under turns on this thread; between jobs the
        /// handler leaves the timer alone.
        static RUNNING: AtomicBool = const { AtomicBool::new(false) };
        /// The running job's turn timer (a kernel timer id: the first one
        /// made is 0, a null pointer).
        static TIMER: AtomicPtr<libc::c_void> = const { AtomicPtr::new(std::ptr::null_mut()) };
        /// This thread's current turn, in nanoseconds (0: not yet set),
        /// kept from one job to the next.
        static TURN_NANOS: AtomicU64 = const { AtomicU64::new(0) };
        /// How many turns in a row nobody else has taken.
        static QUIET: AtomicU32 = const { AtomicU32::new(0) };
        /// The monotonic clock and the thread's CPU clock at the last turn
        /// (or the job's start), in nanoseconds.
        static LAST_WALL: AtomicU64 = const { AtomicU64::new(0) };
        static LAST_CPU: AtomicU64 = const { AtomicU64::new(0) };
        /// The longest turn this thread has reached (read by the tests).
        static LONGEST_NANOS: AtomicU64 = const { AtomicU64::new(0) };
    }

    /// The signal the turn timers send: one of the real-time signals, near
    /// the top of the range, which nothing else in the process uses.
    fn turn_signal() -> c_int {
        libc::SIGRTMAX() - 2
    }

    /// The handler: give the core to whoever is waiting for it, and set
    /// the next turn by whether anybody had it since the last. Only
    /// async-signal-safe work: thread-local atomics and system calls
    /// (`clock_gettime`, `sched_yield`, `timer_settime`), with `errno` as
    /// the interrupted code left it.
    extern "C" fn offer_the_core(_signal: c_int) {
        OFFERED.with(|offered| offered.fetch_add(1, Ordering::Relaxed));
        // SAFETY: `__errno_location` gives this thread's errno, valid for
        // the thread's life; the calls are async-signal-safe, and the timer
        // is the running job's, alive until its `Disarm` has cleared
        // `RUNNING` (a handler that interrupts `Disarm` before that may
        // re-arm it, and `Disarm` then stops it).
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            libc::sched_yield();
            if RUNNING.with(|running| running.load(Ordering::Relaxed)) {
                let away = off_core_since_last_turn();
                let timer = TIMER.with(|timer| timer.load(Ordering::Relaxed));
                let turn = Duration::from_nanos(TURN_NANOS.with(|t| t.load(Ordering::Relaxed)));
                let quiet = QUIET.with(|q| q.load(Ordering::Relaxed));
                let (next, quiet) = next_turn(turn, quiet, away);
                QUIET.with(|q| q.store(quiet, Ordering::Relaxed));
                if next != turn {
                    TURN_NANOS.with(|t| t.store(nanos(next), Ordering::Relaxed));
                    LONGEST_NANOS.with(|l| l.fetch_max(nanos(next), Ordering::Relaxed));
                    set(timer, every(next));
                }
            }
            *errno = saved;
        }
    }

    /// How long this thread was off its core since the last turn (wall
    /// time less its own CPU time), and the clocks noted for the next.
    fn off_core_since_last_turn() -> Duration {
        let (wall, cpu) = (
            clock(libc::CLOCK_MONOTONIC),
            clock(libc::CLOCK_THREAD_CPUTIME_ID),
        );
        let last_wall = LAST_WALL.with(|t| t.swap(wall, Ordering::Relaxed));
        let last_cpu = LAST_CPU.with(|t| t.swap(cpu, Ordering::Relaxed));
        let off = wall
            .saturating_sub(last_wall)
            .saturating_sub(cpu.saturating_sub(last_cpu));
        Duration::from_nanos(off)
    }

    /// Notes the clocks at a job's start.
    fn note_the_clocks() {
        LAST_WALL.with(|t| t.store(clock(libc::CLOCK_MONOTONIC), Ordering::Relaxed));
        LAST_CPU.with(|t| t.store(clock(libc::CLOCK_THREAD_CPUTIME_ID), Ordering::Relaxed));
    }

    /// `id`'s reading in nanoseconds (async-signal-safe).
    fn clock(id: libc::clockid_t) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is written by the call; both clocks always exist.
        unsafe { libc::clock_gettime(id, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn nanos(d: Duration) -> u64 {
        d.as_nanos() as u64
    }

    /// Installs the handler once for the process. `false` when the signal
    /// already had a handler (someone else's): then it is left alone and
    /// no turns are taken.
    fn handler_installed() -> bool {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        *INSTALLED.get_or_init(|| {
            let signal = turn_signal();
            // SAFETY: both sigaction structs are plain data owned here;
            // the first call only reads the current disposition, the
            // second installs a handler that does only signal-safe work.
            unsafe {
                let mut current: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut current) != 0
                    || current.sa_sigaction != libc::SIG_DFL
                {
                    return false;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = offer_the_core as extern "C" fn(c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
            }
        })
    }

    /// A timer that signals the thread that made it, every turn, while a
    /// job runs under [`Turns::during`]. Not `Send`: it belongs to its
    /// thread.
    pub struct Turns {
        timer: libc::timer_t,
        _not_send: std::marker::PhantomData<*const ()>,
    }

    impl Turns {
        /// A turn timer for the calling thread, or `None` if one cannot be
        /// made (then jobs simply run without turns).
        pub fn for_this_thread() -> Option<Self> {
            if !handler_installed() {
                return None;
            }
            // SAFETY: `event` is zeroed plain data with the fields the
            // kernel reads set; `timer` is written by timer_create before
            // it is used, and only used if the call succeeded.
            unsafe {
                let mut event: libc::sigevent = std::mem::zeroed();
                event.sigev_notify = libc::SIGEV_THREAD_ID;
                event.sigev_signo = turn_signal();
                event.sigev_notify_thread_id = libc::gettid();
                let mut timer: libc::timer_t = std::ptr::null_mut();
                if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
                    tracing::warn!(
                        error = %std::io::Error::last_os_error(),
                        "no turn timer for a password hashing thread"
                    );
                    return None;
                }
                Some(Self {
                    timer,
                    _not_send: std::marker::PhantomData,
                })
            }
        }

        /// Runs `job` with the timer armed at the thread's current turn
        /// ([`TURN`] at first), and disarms it after, also when `job`
        /// panics.
        pub fn during<T>(&self, job: impl FnOnce() -> T) -> T {
            let turn = TURN_NANOS.with(|t| match t.load(Ordering::Relaxed) {
                0 => {
                    t.store(nanos(TURN), Ordering::Relaxed);
                    TURN
                }
                turn => Duration::from_nanos(turn),
            });
            note_the_clocks();
            TIMER.with(|timer| timer.store(self.timer, Ordering::Relaxed));
            RUNNING.with(|running| running.store(true, Ordering::Relaxed));
            compiler_fence(Ordering::SeqCst);
            set(self.timer, every(turn));
            let _disarm = Disarm(self);
            job()
        }

        /// Whether the timer is running (tests).
        #[cfg(test)]
        fn armed(&self) -> bool {
            // SAFETY: the timer is alive; `spec` is written by the call.
            let spec = unsafe {
                let mut spec: libc::itimerspec = std::mem::zeroed();
                libc::timer_gettime(self.timer, &mut spec);
                spec
            };
            spec.it_value.tv_sec != 0 || spec.it_value.tv_nsec != 0
        }
    }

    impl Drop for Turns {
        fn drop(&mut self) {
            // SAFETY: the timer was made by timer_create and is deleted
            // once, here.
            unsafe { libc::timer_delete(self.timer) };
        }
    }

    /// Stops the timer when dropped.
    struct Disarm<'a>(&'a Turns);

    impl Drop for Disarm<'_> {
        fn drop(&mut self) {
            // First keep the handler off the timer, then stop it.
            RUNNING.with(|running| running.store(false, Ordering::Relaxed));
            compiler_fence(Ordering::SeqCst);
            set(self.0.timer, every(Duration::ZERO));
        }
    }

    /// Sets `timer` (alive) to `spec`.
    fn set(timer: libc::timer_t, spec: libc::itimerspec) {
        // SAFETY: the caller's timer is alive; `spec` is read only; the old
        // value is not asked for.
        unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
    }

    /// A timer setting that fires every `turn` from now (stopped if zero).
    fn every(turn: Duration) -> libc::itimerspec {
        let interval = libc::timespec {
            tv_sec: turn.as_secs() as libc::time_t,
            tv_nsec: turn.subsec_nanos().into(),
        };
        libc::itimerspec {
            it_interval: interval,
            it_value: interval,
        }
    }

    /// How many turns the calling thread has offered (tests).
    #[cfg(test)]
    pub fn offered() -> u64 {
        OFFERED.with(|offered| offered.load(Ordering::Relaxed))
    }

    /// The longest turn the calling thread has reached (tests).
    #[cfg(test)]
    fn longest() -> Duration {
        Duration::from_nanos(LONGEST_NANOS.with(|l| l.load(Ordering::Relaxed)))
    }

    #[cfg(test)]
    mod tests {
        use std::{
            sync::{Arc, atomic::AtomicBool},
            time::{Duration, Instant},
        };

        use super::*;

        #[test]
        fn a_running_job_is_offered_turns_and_the_timer_stops_after() {
            let turns = Turns::for_this_thread().expect("a turn timer");
            assert!(!turns.armed());
            let before = offered();
            let during = turns.during(|| {
                assert!(turns.armed());
                // Run until a turn has been offered, as a hash would.
                let cap = Instant::now() + Duration::from_secs(10);
                while offered() == before && Instant::now() < cap {
                    std::hint::spin_loop();
                }
                offered() - before
            });
            assert!(during > 0, "no turn offered while the job ran");
            assert!(!turns.armed(), "the timer still runs after the job");
        }

        #[test]
        fn turns_nobody_takes_grow_to_the_quiet_turn() {
            let turns = Turns::for_this_thread().expect("a turn timer");
            // Run until a yield has come straight back and the turn grown,
            // as a hash alone on its core would.
            let grew = turns.during(|| {
                let cap = Instant::now() + Duration::from_secs(10);
                while longest() <= TURN && Instant::now() < cap {
                    std::hint::spin_loop();
                }
                longest()
            });
            assert!(grew > TURN, "the turn never grew past {TURN:?}");
            assert!(grew <= super::super::QUIET_TURN);
            assert!(!turns.armed(), "the timer still runs after the job");
        }

        #[test]
        fn the_timer_stops_when_a_job_panics() {
            let turns = Turns::for_this_thread().expect("a turn timer");
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                turns.during(|| panic!("a job that fails"))
            }));
            assert!(panicked.is_err());
            assert!(!turns.armed(), "the timer still runs after a panic");
        }

        #[test]
        fn a_hash_finishes_on_a_core_it_shares_with_a_busy_thread() {
            // Both threads on one core: each turn the hash offers, the
            // spinner may take; the hash must still get its share.
            fn pin_to_first_allowed_core() {
                // SAFETY: the set is plain data filled and read here.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
                    let first = (0..libc::CPU_SETSIZE as usize)
                        .find(|&cpu| libc::CPU_ISSET(cpu, &set))
                        .expect("a core this thread may run on");
                    libc::CPU_ZERO(&mut set);
                    libc::CPU_SET(first, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                }
            }
            /// Stops the spinner when dropped, also if the test fails, so
            /// that no thread is left spinning on a core.
            struct Spinner(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);
            impl Drop for Spinner {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                    if let Some(thread) = self.1.take() {
                        let _ = thread.join();
                    }
                }
            }
            let stop = Arc::new(AtomicBool::new(false));
            let spinner = Spinner(
                stop.clone(),
                Some(std::thread::spawn(move || {
                    pin_to_first_allowed_core();
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })),
            );
            pin_to_first_allowed_core();
            let turns = Turns::for_this_thread().expect("a turn timer");
            let before = offered();
            let hash = turns.during(|| crate::password::hash_here(b"a shared core"));
            drop(spinner);
            let hash = hash.expect("the hash finishes");
            assert!(crate::password::verify_here(b"a shared core", &hash).expect("a valid hash"));
            assert!(offered() > before, "no turn offered on a shared core");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_someone_took_starts_over_and_quiet_ones_in_a_row_double() {
        let moment = Duration::from_micros(2);
        let last = QUIET_TURNS_TO_GROW - 1;
        assert_eq!(next_turn(TURN, 0, moment), (TURN, 1));
        assert_eq!(next_turn(TURN, last - 1, moment), (TURN, last));
        assert_eq!(next_turn(TURN, last, moment), (TURN * 2, 0));
        assert_eq!(next_turn(TURN * 2, last, moment), (QUIET_TURN, 0));
        assert_eq!(next_turn(QUIET_TURN, last, moment), (QUIET_TURN, 0));
        assert_eq!(next_turn(QUIET_TURN, 3, GAVE_WAY_AFTER), (TURN, 0));
        assert_eq!(next_turn(TURN, last, Duration::from_millis(3)), (TURN, 0));
    }
}
