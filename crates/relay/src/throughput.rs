//! Messages per second in (from the upstream) and out (to clients), one sample a second over the
//! last few minutes: the dashboard's chart and `/status`'s current rates.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// One sample a second.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: three minutes.
pub const SAMPLES: usize = 180;

/// Messages counted in and out, and their recent rates: the feed counts what arrives, each
/// session what it writes, [`sample`] turns both into rates, `/status` reads all three.
#[derive(Default)]
pub struct Traffic {
    /// Upstream data messages received.
    pub upstream_messages: AtomicU64,
    /// Frames written to clients; a session adds once per flush.
    pub downstream_messages: AtomicU64,
    /// Messages per second in and out, one sample a second (the dashboard's chart).
    pub rates: History,
}

/// The last [`SAMPLES`] rates, oldest first. Written by [`sample`] alone; `/status` reads it.
#[derive(Default)]
pub struct History {
    /// (in, out) messages per second. A short lock: one push or one copy.
    samples: Mutex<VecDeque<(f64, f64)>>,
}

impl History {
    pub fn push(&self, rate_in: f64, rate_out: f64) {
        let mut samples = self.samples.lock();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back((round1(rate_in), round1(rate_out)));
    }

    /// The latest (in, out) rates; zero before the first sample.
    pub fn latest(&self) -> (f64, f64) {
        self.samples.lock().back().copied().unwrap_or_default()
    }

    /// `{"interval_seconds":1,"in":[...],"out":[...]}`, oldest first.
    pub fn to_json(&self) -> serde_json::Value {
        let samples = self.samples.lock().clone();
        let (rate_in, rate_out): (Vec<f64>, Vec<f64>) = samples.into_iter().unzip();
        serde_json::json!({
            "interval_seconds": INTERVAL.as_secs(),
            "in": rate_in,
            "out": rate_out,
        })
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Samples the message counters every [`INTERVAL`] until shutdown. Rates divide by the time
/// actually elapsed, so a late tick does not show as a spike.
pub async fn sample(traffic: Arc<Traffic>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counts = |t: &Traffic| {
        (
            t.upstream_messages.load(Ordering::Relaxed),
            t.downstream_messages.load(Ordering::Relaxed),
        )
    };
    let mut last = (Instant::now(), counts(&traffic));
    every.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = (Instant::now(), counts(&traffic));
        let elapsed = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        traffic.rates.push(
            (now.1 .0 - last.1 .0) as f64 / elapsed,
            (now.1 .1 - last.1 .1) as f64 / elapsed,
        );
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples_oldest_first() {
        let history = History::default();
        assert_eq!(history.latest(), (0.0, 0.0));
        for i in 0..SAMPLES + 5 {
            history.push(i as f64, 2.0 * i as f64 + 0.04);
        }
        let json = history.to_json();
        let rate_in = json["in"].as_array().unwrap();
        assert_eq!(rate_in.len(), SAMPLES);
        assert_eq!(rate_in[0], 5.0);
        assert_eq!(
            history.latest(),
            ((SAMPLES + 4) as f64, 2.0 * (SAMPLES + 4) as f64)
        );
    }
}
