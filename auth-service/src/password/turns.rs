//! Turns: while a hash runs, its thread offers its core back every
//! [`TURN`].
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
//! Linux only; elsewhere [`Turns::for_this_thread`] gives `None` and hashes
//! run as they always did.

use std::time::Duration;

/// How often a running hash offers its core back.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub const TURN: Duration = Duration::from_millis(1);

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
            atomic::{AtomicU64, Ordering},
        },
    };

    use super::TURN;

    thread_local! {
        /// How many turns this thread has offered (read by the tests).
        /// `const` and without a destructor, so the signal handler may
        /// touch it.
        static OFFERED: AtomicU64 = const { AtomicU64::new(0) };
    }

    /// The signal the turn timers send: one of the real-time signals, near
    /// the top of the range, which nothing else in the process uses.
    fn turn_signal() -> c_int {
        libc::SIGRTMAX() - 2
    }

    /// The handler: give the core to whoever is waiting for it. Only
    /// async-signal-safe work: a thread-local counter and a system call,
    /// with `errno` as the interrupted code left it.
    extern "C" fn offer_the_core(_signal: c_int) {
        OFFERED.with(|offered| offered.fetch_add(1, Ordering::Relaxed));
        // SAFETY: `__errno_location` gives this thread's errno, valid for
        // the thread's life; sched_yield takes nothing and is
        // async-signal-safe.
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            libc::sched_yield();
            *errno = saved;
        }
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

        /// Runs `job` with the timer armed, and disarms it after, also when
        /// `job` panics.
        pub fn during<T>(&self, job: impl FnOnce() -> T) -> T {
            let interval = timespec(TURN);
            self.set(libc::itimerspec {
                it_interval: interval,
                it_value: interval,
            });
            let _disarm = Disarm(self);
            job()
        }

        fn set(&self, spec: libc::itimerspec) {
            // SAFETY: the timer is this value's and alive; `spec` is read
            // only; the old value is not asked for.
            unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
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
            let zero = timespec(std::time::Duration::ZERO);
            self.0.set(libc::itimerspec {
                it_interval: zero,
                it_value: zero,
            });
        }
    }

    fn timespec(d: std::time::Duration) -> libc::timespec {
        libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos().into(),
        }
    }

    /// How many turns the calling thread has offered (tests).
    #[cfg(test)]
    pub fn offered() -> u64 {
        OFFERED.with(|offered| offered.load(Ordering::Relaxed))
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
