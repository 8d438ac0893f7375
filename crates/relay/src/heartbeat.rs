//! Server pings to every client from one shared ticker, not one timer per connection.
//!
//! Connections are spread over [`BUCKETS`] buckets at random, so the first ping lands at a random
//! point of the interval and pings are spread evenly over it. One task ticks `BUCKETS` times per
//! ping interval; at each tick it tells one bucket "ping now" and, `pong_timeout` later, the same
//! bucket "check now": a connection that has received nothing since its ping is dead.
//!
//! Each bucket signal is a `watch` channel: a connection that was busy writing when its bucket
//! ticked still sees the change on its next loop (a `watch` never misses the latest value). An
//! idle connection wakes once per interval to ping; only one whose pong has not arrived listens
//! for the check, so a live one is not woken for it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How many groups the connections are spread over.
pub const BUCKETS: usize = 32;

/// The shared ticker. Owned by the server; each connection holds a [`Slot`].
pub struct Heartbeat {
    /// Per bucket: bumped when the bucket's connections must ping. Senders live here; receivers
    /// in each connection's `Slot`. Never full: a `watch` holds one value.
    ping: Vec<watch::Sender<u64>>,
    /// Per bucket: bumped `pong_timeout` after the bucket's ping.
    check: Vec<watch::Sender<u64>>,
    interval: Duration,
    pong_timeout: Duration,
}

/// One connection's view of its bucket.
pub struct Slot {
    pub ping: watch::Receiver<u64>,
    pub check: watch::Receiver<u64>,
}

impl Heartbeat {
    pub fn new(interval: Duration, pong_timeout: Duration) -> Arc<Heartbeat> {
        let make = || {
            (0..BUCKETS)
                .map(|_| watch::channel(0u64).0)
                .collect::<Vec<_>>()
        };
        Arc::new(Heartbeat {
            ping: make(),
            check: make(),
            interval,
            pong_timeout,
        })
    }

    /// A slot in a random bucket. The receivers start "seen", so nothing fires at once.
    pub fn slot(&self) -> Slot {
        let b = rand::thread_rng().gen_range(0..BUCKETS);
        Slot {
            ping: self.ping[b].subscribe(),
            check: self.check[b].subscribe(),
        }
    }

    /// Ticks until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = (self.interval / BUCKETS as u32).max(Duration::from_millis(1));
        let check_lag = (self.pong_timeout.as_nanos() / tick.as_nanos()).max(1) as usize;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut n: usize = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.ping[n % BUCKETS].send_modify(|v| *v += 1);
            if n >= check_lag {
                self.check[(n - check_lag) % BUCKETS].send_modify(|v| *v += 1);
            }
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_bucket_pings_once_per_interval_then_checks_after_the_timeout() {
        let hb = Heartbeat::new(Duration::from_secs(32), Duration::from_secs(10));
        let mut slots: Vec<Slot> = (0..BUCKETS)
            .map(|b| Slot {
                ping: hb.ping[b].subscribe(),
                check: hb.check[b].subscribe(),
            })
            .collect();
        let shutdown = CancellationToken::new();
        tokio::spawn(hb.clone().run(shutdown.clone()));

        // Bucket 0 pings at t=1 s and is checked 10 s later.
        let start = tokio::time::Instant::now();
        slots[0].ping.changed().await.unwrap();
        assert_eq!(start.elapsed().as_secs(), 1);
        slots[0].check.changed().await.unwrap();
        assert_eq!(start.elapsed().as_secs(), 11);
        // The next ping of bucket 0 comes one interval after the first.
        slots[0].ping.changed().await.unwrap();
        assert_eq!(start.elapsed().as_secs(), 33);
        // Every bucket pinged exactly once in the first interval.
        for (b, slot) in slots.iter_mut().enumerate().skip(1) {
            assert_eq!(*slot.ping.borrow_and_update(), 1, "bucket {b}");
        }
        shutdown.cancel();
    }
}
