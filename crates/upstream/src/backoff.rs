//! Reconnect delays: exponential growth with full jitter, capped, reset after a healthy period.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

/// No delay is ever shorter than this (unless the bound itself is), so a run of unlucky draws
/// cannot make the session spin.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(100);

/// The longest `Retry-After` honoured; a larger one is clamped so a bad header cannot park the
/// session for days.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Full-jitter exponential backoff: the n-th delay (from 0) is uniform in
/// `[0, min(cap, base * factor^n)]`, floored at [`MIN_DELAY`].
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    pub fn new(base: Duration, factor: f64, cap: Duration, rng: StdRng) -> Backoff {
        Backoff {
            base,
            factor,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// The bound of the delay after `attempt` consecutive failures (before jitter).
    pub fn bound(&self, attempt: u32) -> Duration {
        let grown = self.base.as_secs_f64() * self.factor.powi(attempt.min(1000) as i32);
        Duration::from_secs_f64(grown.min(self.cap.as_secs_f64()))
    }

    /// The next delay, advancing the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.bound(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let drawn = bound.mul_f64(self.rng.gen_range(0.0..=1.0));
        drawn.max(MIN_DELAY.min(bound))
    }

    /// The capped delay, without jitter: the probe period after giving up.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Back to the first delay (after a healthy connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Parses a `Retry-After` header given in seconds (HTTP dates are not honoured).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_within_jitter_bounds_and_cap() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            2.0,
            Duration::from_secs(30),
            StdRng::seed_from_u64(7),
        );
        let bounds = [1, 2, 4, 8, 16, 30, 30, 30];
        for (n, bound) in bounds.into_iter().enumerate() {
            assert_eq!(b.bound(n as u32), Duration::from_secs(bound));
            let d = b.next_delay();
            assert!(
                d >= MIN_DELAY && d <= Duration::from_secs(bound),
                "delay {n}: {d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(
            Duration::from_secs(10),
            1.0,
            Duration::from_secs(10),
            StdRng::seed_from_u64(1),
        );
        let delays: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(
            *min < Duration::from_secs(3) && *max > Duration::from_secs(7),
            "{min:?} {max:?}"
        );
    }

    #[test]
    fn retry_after_in_seconds_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
