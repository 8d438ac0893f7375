//! What the clients record, and the summaries a measurement window produces.
//!
//! Per-frame counters and the latency histogram live in [`SHARDS`] mutex-guarded shards per
//! client class: a client always records into the same shard, so with two runtime threads a lock
//! is almost never contended and a frame costs one uncontended lock, one clock read and a few
//! additions. Rare events (connects, errors, closes) go through their own locks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Shards per class. A power of two well above the number of runtime threads.
pub const SHARDS: usize = 16;

/// Largest value a histogram tracks, in microseconds (10 minutes); larger values saturate.
const HIST_MAX_US: u64 = 600_000_000;

/// How a client behaves once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Reads every frame as fast as it arrives.
    Normal,
    /// Reads at a fixed rate of frames per second.
    Slow,
    /// Subscribes, then never reads again.
    Stalled,
    /// Reads normally, disconnects and reconnects at random intervals.
    Reconnecting,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Normal,
        Class::Slow,
        Class::Stalled,
        Class::Reconnecting,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch: the simulator's `sim_ts_ns` clock.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

struct Shard {
    frames: u64,
    bytes: u64,
    snapshots: u64,
    latency_us: Histogram<u64>,
}

/// Everything one [`crate::Load`] records. Shared by all its client tasks.
pub struct Stats {
    /// `Class::ALL.len() * SHARDS` shards, class-major.
    shards: Vec<Mutex<Shard>>,
    /// Frames are counted only inside a measurement window.
    measuring: AtomicBool,
    /// Connection attempts that reached an open WebSocket, from TCP connect to handshake done.
    connect_us: Mutex<Histogram<u64>>,
    /// From the start of a client's first connect to its first data frame.
    first_data_us: Mutex<Histogram<u64>>,
    /// Wall time (ns) of the latest first-data event, to know when all clients were receiving.
    last_first_data_ns: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) receiving: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    /// Wall time (ns) of an upstream fault, 0 when none: clients then time their fresh snapshots.
    pub(crate) fault_epoch_ns: AtomicU64,
    recovery_us: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        let shards = (0..Class::ALL.len() * SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    frames: 0,
                    bytes: 0,
                    snapshots: 0,
                    latency_us: new_hist(),
                })
            })
            .collect();
        Stats {
            shards,
            measuring: AtomicBool::new(false),
            connect_us: Mutex::new(new_hist()),
            first_data_us: Mutex::new(new_hist()),
            last_first_data_ns: AtomicU64::new(0),
            open: AtomicU64::new(0),
            receiving: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            fault_epoch_ns: AtomicU64::new(0),
            recovery_us: Mutex::new(new_hist()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a stats lock leaves plain counters behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    /// Records one received text frame. `latency_ns` is `None` for frames without a usable stamp.
    #[inline]
    pub(crate) fn frame(
        &self,
        class: Class,
        shard: usize,
        len: usize,
        latency_ns: Option<u64>,
        snapshot: bool,
    ) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let mut s = lock(&self.shards[class.index() * SHARDS + shard % SHARDS]);
        s.frames += 1;
        s.bytes += len as u64;
        if snapshot {
            s.snapshots += 1;
        }
        if let Some(ns) = latency_ns {
            s.latency_us.saturating_record((ns / 1000).max(1));
        }
    }

    pub(crate) fn connected(&self, us: u64) {
        lock(&self.connect_us).saturating_record(us.max(1));
    }

    pub(crate) fn first_data(&self, us: u64, at_ns: u64) {
        lock(&self.first_data_us).saturating_record(us.max(1));
        self.last_first_data_ns.fetch_max(at_ns, Ordering::Relaxed);
        self.receiving.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recovered(&self, us: u64) {
        lock(&self.recovery_us).saturating_record(us.max(1));
    }

    pub(crate) fn error(&self, kind: &str) {
        *lock(&self.errors).entry(kind.to_owned()).or_default() += 1;
    }

    pub(crate) fn close(&self, kind: &str) {
        *lock(&self.closes).entry(kind.to_owned()).or_default() += 1;
    }

    pub(crate) fn last_first_data_ns(&self) -> u64 {
        self.last_first_data_ns.load(Ordering::Relaxed)
    }

    /// Clears the per-frame shards and starts counting.
    pub(crate) fn begin_window(&self) {
        for s in &self.shards {
            let mut s = lock(s);
            s.frames = 0;
            s.bytes = 0;
            s.snapshots = 0;
            s.latency_us.reset();
        }
        self.measuring.store(true, Ordering::Relaxed);
    }

    /// Stops counting and summarises the shards, per class and in total.
    pub(crate) fn end_window(&self, secs: f64) -> (Traffic, BTreeMap<String, Traffic>) {
        self.measuring.store(false, Ordering::Relaxed);
        let mut total = Acc::default();
        let mut per_class = BTreeMap::new();
        for class in Class::ALL {
            let mut acc = Acc::default();
            for i in 0..SHARDS {
                let s = lock(&self.shards[class.index() * SHARDS + i]);
                acc.add(&s);
                total.add(&s);
            }
            if acc.frames > 0 {
                let name = serde_json::to_value(class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                per_class.insert(name, acc.traffic(secs));
            }
        }
        (total.traffic(secs), per_class)
    }

    /// The whole-run connection figures.
    pub(crate) fn connections(&self) -> Connections {
        Connections {
            open: self.open.load(Ordering::Relaxed),
            receiving: self.receiving.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connect_ms: Percentiles::of(&lock(&self.connect_us)),
            first_data_ms: Percentiles::of(&lock(&self.first_data_us)),
            errors: lock(&self.errors).clone(),
            closes: lock(&self.closes).clone(),
        }
    }

    pub(crate) fn recovery(&self) -> Percentiles {
        Percentiles::of(&lock(&self.recovery_us))
    }
}

#[derive(Default)]
struct Acc {
    frames: u64,
    bytes: u64,
    snapshots: u64,
    latency_us: Option<Histogram<u64>>,
}

impl Acc {
    fn add(&mut self, s: &Shard) {
        self.frames += s.frames;
        self.bytes += s.bytes;
        self.snapshots += s.snapshots;
        let h = self.latency_us.get_or_insert_with(new_hist);
        // Same bounds on both sides: adding cannot fail.
        let _ = h.add(&s.latency_us);
    }

    fn traffic(&self, secs: f64) -> Traffic {
        let secs = secs.max(1e-9);
        Traffic {
            frames: self.frames,
            bytes: self.bytes,
            snapshots: self.snapshots,
            frames_per_sec: self.frames as f64 / secs,
            bytes_per_sec: self.bytes as f64 / secs,
            latency_ms: self
                .latency_us
                .as_ref()
                .map(Percentiles::of)
                .unwrap_or_default(),
        }
    }
}

/// Frames delivered in a window. Bytes are WebSocket payload bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    pub frames: u64,
    pub bytes: u64,
    /// `orderbook_snapshot` frames (counted, excluded from latency: a cached snapshot carries
    /// the stamp of the message it was built from).
    pub snapshots: u64,
    pub frames_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Simulator send (`sim_ts_ns`) to client receive, stamped frames only.
    pub latency_ms: Percentiles,
}

/// Connection figures over the whole life of a load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub open: u64,
    pub receiving: u64,
    pub reconnects: u64,
    pub connect_ms: Percentiles,
    pub first_data_ms: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
}

/// A histogram summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_only_while_measuring() {
        let s = Stats::default();
        s.frame(Class::Normal, 0, 100, Some(2_000_000), false);
        s.begin_window();
        s.frame(Class::Normal, 1, 100, Some(2_000_000), false);
        s.frame(Class::Slow, 3, 50, None, true);
        let (total, per_class) = s.end_window(1.0);
        assert_eq!(total.frames, 2);
        assert_eq!(total.bytes, 150);
        assert_eq!(total.snapshots, 1);
        assert_eq!(total.latency_ms.count, 1);
        assert!((total.latency_ms.p50 - 2.0).abs() < 0.01);
        assert_eq!(per_class["normal"].frames, 1);
        assert_eq!(per_class["slow"].frames, 1);
    }
}
