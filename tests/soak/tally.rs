//! What the soak counts, shared by every task. One short lock per update, never across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default, Debug)]
pub struct Counts {
    /// Client connections opened to the relay (well-behaved and hostile).
    pub connections: u64,
    /// Data messages delivered to well-behaved clients.
    pub messages: u64,
    pub snapshots: u64,
    pub relay_lagged_events: u64,
    /// Reconnections that resumed their private stream (`relay_resume` recovered).
    pub resumes: u64,
    /// How connections ended, by `kind:code`.
    pub ends: BTreeMap<String, u64>,
    /// Hostile outcomes, by `attack:outcome`.
    pub hostile: BTreeMap<String, u64>,
    pub books_checked: u64,
    pub books_wrong: u64,
    pub fills_received: u64,
    /// Fills from the direct reference subscriber checked against relayed private subscribers.
    pub fills_checked: u64,
    /// Breaks in a private subscriber's position chain, by what happened to the connection after.
    pub fill_gaps_silent: u64,
    pub fill_gaps_announced: u64,
    /// Fills the reference saw, produced after a private subscriber's ack, that it never
    /// received while it stayed connected.
    pub fills_missing_silent: u64,
    pub quiet_points: u64,
    /// Private subscribers closed `private messages lost` just after a Redis restart (allowed:
    /// announced).
    pub losses_announced_after_redis: u64,
    pub faults: BTreeMap<String, u64>,
    pub violations: Vec<String>,
}

pub struct Tally {
    /// When the soak started; every log line carries the offset from here and the wall clock.
    pub t0: std::time::Instant,
    counts: Mutex<Counts>,
    /// Data messages, counted without the lock (the hot path).
    pub messages: AtomicU64,
    /// Client connections to the relay open now (well-behaved and hostile).
    pub live: AtomicU64,
    /// Samples of the simulator's sessions taken by the single-session watch.
    pub session_samples: AtomicU64,
    /// Fills checked against the position chain (every relayed fill but each connection's first
    /// per market).
    pub chain_links: AtomicU64,
}

impl Tally {
    pub fn new() -> Arc<Tally> {
        Arc::new(Tally {
            t0: std::time::Instant::now(),
            counts: Mutex::default(),
            messages: AtomicU64::new(0),
            live: AtomicU64::new(0),
            session_samples: AtomicU64::new(0),
            chain_links: AtomicU64::new(0),
        })
    }

    /// One timeline line on stderr: offset from the start and Unix time (to match the relay log).
    pub fn log(&self, what: &str) {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "soak +{:8.3}s (unix {}.{:03}): {what}",
            self.t0.elapsed().as_secs_f64(),
            unix.as_secs(),
            unix.subsec_millis()
        );
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        f(&mut self.counts.lock())
    }

    pub fn violation(&self, what: String) {
        self.log(&format!("VIOLATION: {what}"));
        self.with(|c| c.violations.push(what));
    }

    pub fn end(&self, key: String) {
        self.with(|c| *c.ends.entry(key).or_default() += 1);
    }

    pub fn fault(&self, kind: &str) {
        self.with(|c| *c.faults.entry(kind.to_owned()).or_default() += 1);
    }

    pub fn hostile(&self, key: String) {
        self.with(|c| *c.hostile.entry(key).or_default() += 1);
    }

    pub fn snapshot(&self) -> Counts {
        let c = self.counts.lock();
        Counts {
            connections: c.connections,
            messages: self.messages.load(Ordering::Relaxed),
            snapshots: c.snapshots,
            relay_lagged_events: c.relay_lagged_events,
            resumes: c.resumes,
            ends: c.ends.clone(),
            hostile: c.hostile.clone(),
            books_checked: c.books_checked,
            books_wrong: c.books_wrong,
            fills_received: c.fills_received,
            fills_checked: c.fills_checked,
            fill_gaps_silent: c.fill_gaps_silent,
            fill_gaps_announced: c.fill_gaps_announced,
            fills_missing_silent: c.fills_missing_silent,
            quiet_points: c.quiet_points,
            losses_announced_after_redis: c.losses_announced_after_redis,
            faults: c.faults.clone(),
            violations: c.violations.clone(),
        }
    }
}
