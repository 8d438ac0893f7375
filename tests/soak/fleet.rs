//! The relays under test: one process, or (`SOAK_CLUSTER=N`) N cluster nodes sharing one real
//! `redis-server`, and the faults aimed at them: SIGTERM and restart (any mode); kill -9 the
//! leader, freeze it past its lease (SIGSTOP, then SIGCONT), SIGTERM it (handoff), restart Redis
//! (cluster). A node that goes is restarted on the same address, so the fleet stays at N.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cluster::testing::RedisServer;
use parking_lot::Mutex;
use tokio::time::{sleep, Instant};

use crate::front::Front;
use crate::quiet::{await_ready, status};
use crate::relay_proc::{self, ProcSample, RelayProc};
use crate::tally::Tally;

/// The relay's configured shutdown drain (`relay_proc::ENV`) and the margin its exit gets on top
/// of it (the upstream close and process exit, on a loaded machine).
pub const DRAIN: Duration = Duration::from_secs(relay_proc::SHUTDOWN_DRAIN_SECONDS);
pub const EXIT_MARGIN: Duration = Duration::from_secs(3);
/// The cluster's lease (the default is 5 s; tests/cluster.rs uses 2 s too).
pub const LEASE: Duration = Duration::from_secs(2);
/// After SIGCONT, the frozen leader finds its lease gone and closes its session: two sessions
/// are allowed until this long after it (measured: about 1 ms; the close handshake may take up
/// to the upstream's close timeout, 1 s).
pub const THAW_GRACE: Duration = Duration::from_secs(2);
/// Every node must answer `/readyz` 200 again within this long of Redis's return.
pub const REDIS_RECOVERY: Duration = Duration::from_secs(20);
/// A `private messages lost` close this soon after a Redis restart is an announced loss.
pub const REDIS_LOSS_WINDOW: Duration = Duration::from_secs(15);

/// One relay process and its baselines.
pub struct Relay {
    pub proc: RelayProc,
    /// Descriptors beyond the clients at the first quiet point.
    pub fd_baseline: Option<i64>,
    /// RSS (KiB) at each of this process's quiet points.
    pub rss: Vec<u64>,
}

/// One place in the fleet: an address and the process serving it now.
pub struct Slot {
    pub name: String,
    pub addr: SocketAddr,
    pub relay: Option<Relay>,
    pub log: PathBuf,
    incarnation: u32,
    /// RSS at the quiet points of each earlier process, for the summary.
    pub past_rss: Vec<Vec<u64>>,
    /// Every quiet-point sample of every process.
    pub samples: Vec<ProcSample>,
}

/// Spans in which two upstream sessions are the documented overlap: from a leader's SIGSTOP
/// until `THAW_GRACE` after its SIGCONT (`None`: not yet continued).
pub type Windows = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

pub struct Fleet {
    pub slots: Vec<Slot>,
    pub redis: Option<RedisServer>,
    upstream: String,
    rest: String,
    pub front: Arc<Front>,
    pub windows: Windows,
    /// How long each SIGTERM took to exit.
    pub exit_times: Vec<Duration>,
    /// How long every node took to be ready again after each Redis restart.
    pub redis_recoveries: Vec<Duration>,
    pub restarts: u64,
}

impl Fleet {
    /// `cluster`: the number of nodes, or `None` for one relay without Redis.
    pub async fn start(cluster: Option<usize>, upstream: &str, rest: &str, seed: u64) -> Fleet {
        let redis = cluster.map(|_| RedisServer::start());
        let names: Vec<Option<String>> = match cluster {
            None => vec![None],
            Some(n) => (1..=n).map(|i| Some(format!("n{i}"))).collect(),
        };
        let slots: Vec<Slot> = names
            .into_iter()
            .map(|name| {
                let log = relay_proc::log_path(seed, name.as_deref());
                let _ = std::fs::remove_file(&log);
                Slot {
                    name: name.unwrap_or_else(|| "relay".into()),
                    addr: relay_proc::free_addr(),
                    relay: None,
                    log,
                    incarnation: 0,
                    past_rss: Vec::new(),
                    samples: Vec::new(),
                }
            })
            .collect();
        let urls = slots
            .iter()
            .map(|s| format!("ws://{}/trade-api/ws/v2", s.addr))
            .collect();
        let mut fleet = Fleet {
            slots,
            redis,
            upstream: upstream.to_owned(),
            rest: rest.to_owned(),
            front: Arc::new(Front::new(urls)),
            windows: Arc::default(),
            exit_times: Vec::new(),
            redis_recoveries: Vec::new(),
            restarts: 0,
        };
        for i in 0..fleet.slots.len() {
            fleet.spawn(i).await;
        }
        fleet
    }

    async fn spawn(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        let mut extra = Vec::new();
        if let Some(redis) = &self.redis {
            let lease = LEASE.as_secs_f64().to_string();
            extra = vec![
                ("RELAY__CLUSTER__REDIS_URL".to_owned(), redis.url()),
                (
                    "RELAY__CLUSTER__NODE_ID".to_owned(),
                    format!("{}-{}", slot.name, slot.incarnation),
                ),
                ("RELAY__CLUSTER__LEASE_SECONDS".to_owned(), lease),
            ];
        }
        let (addr, upstream, rest, log) = (
            slot.addr,
            self.upstream.clone(),
            self.rest.clone(),
            slot.log.clone(),
        );
        let proc = tokio::task::spawn_blocking(move || {
            RelayProc::spawn(addr, &upstream, &rest, &extra, &log)
        })
        .await
        .unwrap();
        slot.relay = Some(Relay {
            proc,
            fd_baseline: None,
            rss: Vec::new(),
        });
        self.front.up(i);
    }

    /// The process in slot `i` is gone: keep its memory record for the summary.
    fn retire(&mut self, i: usize) -> Option<Relay> {
        let relay = self.slots[i].relay.take()?;
        self.slots[i].past_rss.push(relay.rss.clone());
        Some(relay)
    }

    /// SIGTERM on slot `i` (its clients get 1012 and reconnect elsewhere), then a fresh process.
    /// It must exit 0 within its drain plus `EXIT_MARGIN`.
    pub async fn restart(&mut self, i: usize, tally: &Tally, what: &str) {
        self.restarts += 1;
        self.front.down(i);
        if let Some(relay) = self.retire(i) {
            let took = stop_relay(relay, tally, what).await;
            self.exit_times.push(took);
        }
        self.spawn(i).await;
    }

    /// kill -9 on slot `i`, then a fresh process.
    pub async fn kill9(&mut self, i: usize) {
        self.restarts += 1;
        self.front.lose(i);
        if let Some(relay) = self.retire(i) {
            relay.proc.kill();
        }
        self.spawn(i).await;
    }

    /// SIGSTOP on slot `i` for `frozen`, then SIGCONT: two sessions are allowed meanwhile.
    pub async fn freeze(&mut self, i: usize, frozen: Duration) {
        let Some(relay) = &self.slots[i].relay else {
            return;
        };
        let window = {
            let mut w = self.windows.lock();
            w.push((Instant::now(), None));
            w.len() - 1
        };
        self.front.lose(i);
        relay.proc.signal("STOP");
        sleep(frozen).await;
        relay.proc.signal("CONT");
        self.windows.lock()[window].1 = Some(Instant::now() + THAW_GRACE);
        self.front.up(i);
    }

    /// Kills Redis (everything it held is gone), brings a fresh one up on the same port after
    /// `down`, and waits for every node to report ready by itself.
    pub async fn restart_redis(&mut self, down: Duration, tally: &Tally) {
        let Some(mut redis) = self.redis.take() else {
            return;
        };
        self.front
            .allow_loss_until(Instant::now() + down + REDIS_LOSS_WINDOW);
        redis.kill();
        sleep(down).await;
        let port = redis.port;
        drop(redis);
        let fresh = tokio::task::spawn_blocking(move || RedisServer::start_on(port))
            .await
            .unwrap();
        self.redis = Some(fresh);
        let back = Instant::now();
        for slot in &self.slots {
            let Some(relay) = &slot.relay else { continue };
            if !await_ready(relay.proc.addr, REDIS_RECOVERY).await {
                tally.violation(format!(
                    "{} not ready {REDIS_RECOVERY:?} after Redis came back",
                    slot.name
                ));
            }
        }
        self.redis_recoveries.push(back.elapsed());
        tally.log(&format!(
            "every node ready {:?} after Redis came back",
            back.elapsed()
        ));
    }

    /// The node that says it leads, once exactly one does (`None` after 15 s).
    pub async fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for (i, slot) in self.slots.iter().enumerate() {
                let Some(relay) = &slot.relay else { continue };
                if let Some(s) = status(relay.proc.addr).await {
                    if s["cluster"]["role"] == "leader" {
                        leaders.push(i);
                    }
                }
            }
            if let [one] = leaders[..] {
                return Some(one);
            }
            sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Every process must still run (until the soak stops it).
    pub fn check_alive(&mut self, tally: &Tally) {
        for slot in &mut self.slots {
            let Some(relay) = &mut slot.relay else {
                continue;
            };
            if let Some(status) = relay.proc.exited() {
                tally.violation(format!("{} exited on its own: {status:?}", slot.name));
                panic!(
                    "{} died ({status:?}); see {}",
                    slot.name,
                    slot.log.display()
                );
            }
        }
    }

    /// The final SIGTERM, node after node.
    pub async fn stop(&mut self, tally: &Tally) {
        for i in 0..self.slots.len() {
            if let Some(relay) = self.retire(i) {
                let took = stop_relay(
                    relay,
                    tally,
                    &format!("{} final SIGTERM", self.slots[i].name),
                )
                .await;
                self.exit_times.push(took);
            }
        }
    }
}

/// SIGTERM; the relay must exit 0 within its drain time plus `EXIT_MARGIN`. Returns how long it
/// took.
async fn stop_relay(relay: Relay, tally: &Tally, what: &str) -> Duration {
    let bound = DRAIN + EXIT_MARGIN;
    let (status, took) = relay.proc.terminate(bound).await;
    match status {
        Some(s) if s.success() => {}
        Some(s) => tally.violation(format!("{what}: the relay exited with {s} after {took:?}")),
        None => tally.violation(format!(
            "{what}: the relay had not exited {took:?} after SIGTERM (drain {DRAIN:?} + margin {EXIT_MARGIN:?}); killed"
        )),
    }
    took
}
