//! Points in time as both services store and send them.
//!
//! A [`Timestamp`] is a whole number of microseconds since the Unix epoch:
//! the unit every stored time uses, the same on SQLite and PostgreSQL (a
//! `BIGINT`), so ordering and page cursors are exact on both. It converts to
//! and from `google.protobuf.Timestamp` here and nowhere else.
//!
//! Code that decides by the time (expiries, rate limits) reads it from a
//! [`Clock`], so tests move time forward instead of sleeping.

use std::{
    ops::{Add, Sub},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// The current wall-clock time.
    pub fn now() -> Self {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Self::EPOCH, |d| {
                Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            })
    }

    /// The time `micros` microseconds after the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch, rounded down (JWT `iat`/`exp`).
    pub const fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

/// A span of time in microseconds, saturating: no stored time overflows.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    fn add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(micros(duration)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Self;

    fn sub(self, duration: Duration) -> Self {
        Self(self.0.saturating_sub(micros(duration)))
    }
}

impl From<Timestamp> for prost_types::Timestamp {
    fn from(time: Timestamp) -> Self {
        Self {
            seconds: time.0.div_euclid(1_000_000),
            nanos: (time.0.rem_euclid(1_000_000) * 1_000) as i32,
        }
    }
}

impl From<prost_types::Timestamp> for Timestamp {
    /// Sub-microsecond digits are dropped; times beyond what fits saturate.
    fn from(time: prost_types::Timestamp) -> Self {
        let micros = i128::from(time.seconds) * 1_000_000 + i128::from(time.nanos) / 1_000;
        Self(micros.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }
}

/// Where time comes from: the system's clocks, plus (in tests) an offset
/// that only moves forward. Cheap to clone; clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// How far ahead of the system this clock is, in microseconds; `None`
    /// for the plain system clock.
    ahead: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's clocks, as they are.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that [`advance`](Self::advance) moves forward, for tests.
    pub fn adjustable() -> Self {
        Self {
            ahead: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves this clock (and every clone) forward by `by`.
    ///
    /// # Panics
    /// On the system clock, which only real time moves.
    pub fn advance(&self, by: Duration) {
        let ahead = self
            .ahead
            .as_ref()
            .expect("only an adjustable clock can be advanced");
        ahead.fetch_add(micros(by) as u64, Ordering::Relaxed);
    }

    fn ahead(&self) -> Duration {
        self.ahead.as_ref().map_or(Duration::ZERO, |ahead| {
            Duration::from_micros(ahead.load(Ordering::Relaxed))
        })
    }

    /// The wall-clock time.
    pub fn now(&self) -> Timestamp {
        Timestamp::now() + self.ahead()
    }

    /// The monotonic time, for measuring intervals.
    pub fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_timestamps_round_trip_to_the_microsecond() {
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            1_733_011_200_123_456,
            -1,
            -1_500_000,
        ] {
            let time = Timestamp::from_micros(micros);
            let wire = prost_types::Timestamp::from(time);
            assert!((0..1_000_000_000).contains(&wire.nanos), "{wire:?}");
            assert_eq!(Timestamp::from(wire), time);
        }
    }

    #[test]
    fn an_adjustable_clock_moves_forward_with_its_clones() {
        let clock = Clock::adjustable();
        let clone = clock.clone();
        let before = clock.now();
        let started = clock.instant();
        clone.advance(Duration::from_secs(3600));
        assert!(clock.now().since(before) >= Duration::from_secs(3600));
        assert!(clock.instant() - started >= Duration::from_secs(3600));
        assert!(Clock::system().now().since(before) < Duration::from_secs(3600));
    }

    #[test]
    fn arithmetic_saturates_and_never_goes_backwards() {
        let t = Timestamp::from_micros(5_000_000);
        assert_eq!((t + Duration::from_secs(2)).as_micros(), 7_000_000);
        assert_eq!((t - Duration::from_secs(2)).as_micros(), 3_000_000);
        assert_eq!(t.since(t + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!((t + Duration::MAX).as_micros(), i64::MAX);
        assert_eq!(t.unix_seconds(), 5);
        assert_eq!(Timestamp::from_micros(-1).unix_seconds(), -1);
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(Timestamp::from(huge).as_micros(), i64::MAX);
    }
}
