//! This relay as one node of a cluster (`[cluster]`): the wiring between the relay and Redis.
//!
//! Every node runs three tasks: [`reader`] (the Redis event stream into the node's feed, in place
//! of the upstream's event channel), [`wanted`] (the fanout registry's topics into this node's
//! wanted set in Redis, in place of `feed::follow_registry`) and [`lease`] (try to lead; while
//! leading, run the upstream session, write its events to the stream, and subscribe the union of
//! every node's wanted topics).
//!
//! The leader reads its own events back from the stream like every other node instead of
//! short-circuiting them into its fanout: one path for all, and a leader fenced off mid-write
//! never shows its clients what the other nodes never got. The cost is one Redis round trip of
//! latency on the leader too.

pub mod delivered;
pub mod lease;
pub mod reader;
pub mod wanted;
pub mod writer;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterConfig, Store};
use fanout::{RegistryEvents, Topic};
use parking_lot::Mutex;
use protocol::Channel;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use upstream::Event;

use crate::app::App;

pub const ROLE: &str = "relay_cluster_role";
pub const LEASE_EPOCH: &str = "relay_cluster_lease_epoch";
pub const STREAM_LAG_ENTRIES: &str = "relay_cluster_stream_lag_entries";
pub const STREAM_LAG_SECONDS: &str = "relay_cluster_stream_lag_seconds";
pub const REDIS_RTT_SECONDS: &str = "relay_cluster_redis_rtt_seconds";
pub const FAILOVERS_TOTAL: &str = "relay_cluster_failovers_total";
pub const LEASE_RENEW_FAILURES_TOTAL: &str = "relay_cluster_lease_renew_failures_total";

/// Registered at start in every relay, clustered or not, so the scrape always lists them.
pub fn register_metrics() {
    let _ = metrics::gauge!(ROLE);
    let _ = metrics::gauge!(LEASE_EPOCH);
    let _ = metrics::gauge!(STREAM_LAG_ENTRIES);
    let _ = metrics::gauge!(STREAM_LAG_SECONDS);
    let _ = metrics::gauge!(REDIS_RTT_SECONDS);
    let _ = metrics::counter!(FAILOVERS_TOTAL);
    let _ = metrics::counter!(LEASE_RENEW_FAILURES_TOTAL);
}

/// Each blocking read waits at most this long, so a loop notices shutdown and Redis's return.
const BLOCK: Duration = Duration::from_millis(500);
/// The upstream's event channel: as the upstream's own default.
const EVENT_CAPACITY: usize = upstream::DEFAULT_EVENT_CHANNEL_CAPACITY.get();

/// The node's role and Redis's health, for `/status`, `/readyz` and the metrics.
pub struct Status {
    pub node_id: String,
    /// 1 while this node leads.
    role: AtomicU8,
    epoch: AtomicU64,
    /// When this node last found Redis unavailable (Unix s; 0: never).
    outage_since_s: AtomicU64,
    /// The lease holder's node id, as last seen.
    leader: Mutex<Option<String>>,
    /// Why Redis counts as unavailable, while it does.
    redis_down: Mutex<Option<String>>,
    /// The last stream entry number applied here.
    pub applied: AtomicU64,
}

impl Status {
    fn new(node_id: String) -> Status {
        Status {
            node_id,
            role: AtomicU8::new(0),
            epoch: AtomicU64::new(0),
            outage_since_s: AtomicU64::new(0),
            leader: Mutex::new(None),
            redis_down: Mutex::new(None),
            applied: AtomicU64::new(0),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.role.load(Ordering::Relaxed) == 1
    }

    fn set_leader(&self, leader: Option<&cluster::Token>, ours: bool) {
        self.role.store(u8::from(ours), Ordering::Relaxed);
        metrics::gauge!(ROLE).set(f64::from(u8::from(ours)));
        if let Some(token) = leader {
            self.epoch.store(token.epoch, Ordering::Relaxed);
            metrics::gauge!(LEASE_EPOCH).set(token.epoch as f64);
        }
        *self.leader.lock() = leader.map(|t| t.node().to_owned());
    }

    /// The lease epoch this node saw last (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// When this node last found Redis unavailable (Unix s), if it ever did.
    pub fn outage_since_s(&self) -> Option<u64> {
        Some(self.outage_since_s.load(Ordering::Relaxed)).filter(|&s| s > 0)
    }

    fn redis_ok(&self) {
        *self.redis_down.lock() = None;
    }

    fn redis_failed(&self, error: &cluster::Error) {
        let mut down = self.redis_down.lock();
        if down.is_none() {
            let now = crate::app::now_ms() / 1000;
            self.outage_since_s.store(now, Ordering::Relaxed);
        }
        *down = Some(error.to_string());
    }

    /// `Some(reason)` while the node cannot serve the cluster's data.
    pub fn not_ready(&self) -> Option<String> {
        self.redis_down
            .lock()
            .as_ref()
            .map(|e| format!("redis unavailable: {e}"))
    }

    /// The `cluster` object of `/status`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.node_id,
            "role": if self.is_leader() { "leader" } else { "follower" },
            "leader": *self.leader.lock(),
            "epoch": self.epoch.load(Ordering::Relaxed),
            "redis": if self.redis_down.lock().is_some() { "unavailable" } else { "ok" },
            "applied": self.applied.load(Ordering::Relaxed),
        })
    }
}

/// What the node shares among its tasks.
pub struct Ctx {
    pub config: ClusterConfig,
    pub store: Store,
    pub status: Arc<Status>,
    /// The upstream settings a leader's session starts with.
    pub upstream: upstream::UpstreamConfig,
    /// Fills this node took from the stream: delivered once, and left out of its backfill.
    pub delivered: Mutex<delivered::Delivered>,
    /// The relay's shutdown: every node task ends on it (the lease after stepping down).
    pub shutdown: CancellationToken,
    /// Woken by the reader when the leader announces its session's end: try for the lease now.
    pub handoff: Notify,
}

/// A started node: the tasks to abort at the end, and the lease task to await on shutdown (it
/// steps down by itself when the app's shutdown is cancelled).
pub struct Node {
    pub lease: JoinHandle<()>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// The relay's event stream in cluster mode, and the upstream handle `App` holds: a session
/// stopped before it starts, since the upstream session belongs to whichever node leads.
pub fn prepare(
    upstream_config: &upstream::UpstreamConfig,
) -> anyhow::Result<(
    upstream::Upstream,
    mpsc::Sender<Event>,
    mpsc::Receiver<Event>,
)> {
    let stopped = CancellationToken::new();
    stopped.cancel();
    let (idle, _events) = upstream::spawn(upstream_config.clone(), stopped)
        .map_err(|e| anyhow::anyhow!("invalid upstream configuration: {e}"))?;
    let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
    Ok((idle, tx, rx))
}

/// Starts the node's tasks.
pub fn start(
    config: ClusterConfig,
    app: &App,
    events: mpsc::Sender<Event>,
    registry: RegistryEvents,
    released: mpsc::UnboundedSender<String>,
) -> anyhow::Result<Node> {
    let store = Store::open(&config.redis_url, BLOCK)
        .map_err(|e| anyhow::anyhow!("cluster.redis_url: {e}"))?;
    let status = Arc::new(Status::new(config.node_id()));
    let _ = app.cluster.set(status.clone());
    tracing::info!(node = %status.node_id, "cluster mode: this relay is one node");
    let ctx = Arc::new(Ctx {
        config,
        store,
        status,
        upstream: app.config.upstream.clone(),
        delivered: Mutex::default(),
        shutdown: app.shutdown.clone(),
        handoff: Notify::new(),
    });
    let warm = wanted::warm_topics(&app.config.warm_markets, app.config.warm_private_channels);
    let tasks = vec![
        tokio::spawn(reader::run(ctx.clone(), events)),
        tokio::spawn(wanted::run(ctx.clone(), registry, warm, released)),
    ];
    Ok(Node {
        lease: tokio::spawn(lease::run(ctx)),
        tasks,
    })
}

/// A topic as stored in Redis: `channel` or `channel:market`.
pub fn topic_key(topic: &Topic) -> String {
    match &topic.market {
        Some(m) => format!("{}:{m}", topic.channel.as_str()),
        None => topic.channel.as_str().to_owned(),
    }
}

pub fn parse_topic(key: &str) -> Option<Topic> {
    Some(match key.split_once(':') {
        Some((channel, market)) => Topic::market(Channel::parse(channel)?, market),
        None => Topic::channel(Channel::parse(key)?),
    })
}

/// Full-jitter exponential backoff for Redis retries: up to 100 ms doubling to 2 s.
pub fn backoff(failures: u32) -> Duration {
    use rand::Rng;
    let cap = Duration::from_millis(100) * 2u32.pow(failures.min(5));
    let cap = cap.min(Duration::from_secs(2));
    rand::thread_rng().gen_range(Duration::from_millis(20)..=cap.max(Duration::from_millis(21)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_their_keys() {
        for topic in [
            Topic::channel(Channel::Fill),
            Topic::market(Channel::OrderbookDelta, "KX-23:B"),
        ] {
            assert_eq!(parse_topic(&topic_key(&topic)), Some(topic));
        }
        assert_eq!(parse_topic("nonsense:M"), None);
    }
}
