//! Reconnection pacing for the long-lived links to the auth-service: growing,
//! jittered delays so that many replicas do not retry in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An endless sequence of delays from 100 ms up to `max`, with jitter.
pub fn delays(max: Duration) -> impl Iterator<Item = Duration> + Send {
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    std::iter::from_fn(move || Some(delays.next().unwrap_or(max)))
}
