//! Server pings to every client from one shared ticker, not one timer per connection.
//!
//! Connections are spread over [`BUCKETS`] buckets, one per fanout wake group: a session parks
//! on its subscriber's group only, and the heartbeat wakes that group. So a session has one thing
//! to wait on besides its socket, whether data, a status notice, a ping or a shutdown is next.
//!
//! One task ticks `BUCKETS` times per ping interval; at each tick it counts "ping now" for one
//! bucket and, `pong_timeout` later, "check now" for the same bucket, and wakes the bucket's
//! group. A session compares the counts with the ones it has seen: a connection that has
//! received nothing since its ping is dead at the check. A session busy writing when its bucket
//! ticked sees the count on its next look (a count is never missed, only coalesced).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How many groups the connections are spread over: the fanout's wake groups.
pub const BUCKETS: usize = fanout::WAKE_GROUPS;

/// The shared ticker. Owned by the server; sessions read their bucket's counts.
pub struct Heartbeat {
    /// Per bucket: pings due so far.
    ping: [AtomicU64; BUCKETS],
    /// Per bucket: pong checks due so far (each `pong_timeout` after the bucket's ping).
    check: [AtomicU64; BUCKETS],
    /// Set when the relay stops, before every bucket is woken.
    stopping: AtomicBool,
    interval: Duration,
    pong_timeout: Duration,
}

/// What a session has seen of its bucket, and what is due now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub pings: u64,
    pub checks: u64,
}

impl Heartbeat {
    pub fn new(interval: Duration, pong_timeout: Duration) -> Arc<Heartbeat> {
        Arc::new(Heartbeat {
            ping: std::array::from_fn(|_| AtomicU64::new(0)),
            check: std::array::from_fn(|_| AtomicU64::new(0)),
            stopping: AtomicBool::new(false),
            interval,
            pong_timeout,
        })
    }

    /// The counts of `bucket` now.
    pub fn beat(&self, bucket: usize) -> Beat {
        let b = bucket % BUCKETS;
        Beat {
            pings: self.ping[b].load(Ordering::Acquire),
            checks: self.check[b].load(Ordering::Acquire),
        }
    }

    /// Whether the relay is stopping (sessions close with 1012).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ticks until `shutdown`, waking each bucket's group through `wake`; at shutdown, marks
    /// itself stopping and wakes every group.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, wake: impl Fn(usize)) {
        let tick = (self.interval / BUCKETS as u32).max(Duration::from_millis(1));
        let check_lag = (self.pong_timeout.as_nanos() / tick.as_nanos()).max(1) as usize;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut n: usize = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.stopping.store(true, Ordering::Release);
                    (0..BUCKETS).for_each(&wake);
                    return;
                }
                _ = ticker.tick() => {}
            }
            let b = n % BUCKETS;
            self.ping[b].fetch_add(1, Ordering::AcqRel);
            if n >= check_lag {
                let c = (n - check_lag) % BUCKETS;
                self.check[c].fetch_add(1, Ordering::AcqRel);
                if c != b {
                    wake(c);
                }
            }
            wake(b);
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn every_bucket_pings_once_per_interval_then_checks_after_the_timeout() {
        let hb = Heartbeat::new(Duration::from_secs(32), Duration::from_secs(10));
        let woken = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let log = woken.clone();
        let start = tokio::time::Instant::now();
        tokio::spawn(hb.clone().run(shutdown.clone(), move |b| {
            log.lock().unwrap().push((start.elapsed().as_secs(), b))
        }));
        // Bucket 0 pings at t=1 s and is checked 10 s later; its group is woken each time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            hb.beat(0),
            Beat {
                pings: 1,
                checks: 0
            }
        );
        assert_eq!(*woken.lock().unwrap(), [(1, 0)]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            hb.beat(0),
            Beat {
                pings: 1,
                checks: 1
            }
        );
        assert!(woken.lock().unwrap().contains(&(11, 0)));
        // The next ping of bucket 0 comes one interval after the first; every bucket pinged
        // exactly once in the first interval.
        tokio::time::sleep(Duration::from_secs(22)).await;
        assert_eq!(hb.beat(0).pings, 2);
        for b in 1..BUCKETS {
            assert_eq!(hb.beat(b).pings, 1, "bucket {b}");
        }
        // Shutdown: stopping, and every group woken.
        woken.lock().unwrap().clear();
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(hb.stopping());
        assert_eq!(woken.lock().unwrap().len(), BUCKETS);
    }
}
