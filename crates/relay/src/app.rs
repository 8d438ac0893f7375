//! What every part of the running relay shares: configuration, the fanout, the upstream handle
//! and the shutdown machinery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RelayConfig;
use crate::heartbeat::Heartbeat;
use crate::security::Gate;
use crate::status::{Health, UpstreamStatus};
use crate::throughput::Traffic;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The running relay's shared state; the listeners, the sessions and the feed each use their
/// part. Outside the crate it is what [`crate::session::run`] serves a client against: built by
/// [`App::new`] around a fanout the caller publishes into, its configuration and gate readable.
pub struct App {
    pub config: RelayConfig,
    /// The stream clients read: data, and the upstream's status as notices ([`App::status`]).
    pub(crate) fanout: fanout::Fanout<UpstreamStatus>,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) heartbeat: Arc<Heartbeat>,
    /// Tokens, Origins, caps and the new-connection rate.
    pub gate: Arc<Gate>,
    /// TLS on the client listener, when configured.
    pub(crate) tls: Option<crate::tls::Tls>,
    /// One permit per accepted socket until it upgrades or closes (`max_pending_handshakes`);
    /// when none is left, new sockets are closed at once.
    pub(crate) handshakes: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the relay stops: `/readyz` turns 503, upgrades are refused, sessions close
    /// with 1012.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task; shutdown waits on it (bounded by the drain time).
    pub(crate) tracker: TaskTracker,
    /// The recent private stream, for clients that resume (`resume`): written by the feed as
    /// it publishes; sessions read it through their [`crate::session::Context`].
    pub(crate) history: Arc<Mutex<crate::resume::History>>,
    /// Messages in and out and their rates (`/status`, the dashboard's chart).
    pub(crate) traffic: Arc<Traffic>,
    /// The part of the relay every client session uses.
    pub(crate) sessions: crate::session::Context,
    /// The bound ports (client, admin), set once when the listeners are known: the dashboard's
    /// own origins and the WebSocket port it connects to.
    pub(crate) ports: OnceLock<Ports>,
    pub(crate) started: Instant,
    /// This node's role and Redis's health, in cluster mode (set once at start).
    pub(crate) cluster: OnceLock<Arc<crate::node::Status>>,
}

/// The ports the relay listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub main: u16,
    pub admin: Option<u16>,
}

/// `relay_downstream_messages_sent_total` and `relay_downstream_bytes_sent_total` of one kind.
pub struct SentCounters {
    pub frames: ::metrics::Counter,
    pub bytes: ::metrics::Counter,
}

impl App {
    pub fn new(
        config: RelayConfig,
        fanout: fanout::Fanout<UpstreamStatus>,
        upstream: upstream::Upstream,
        metrics: PrometheusHandle,
        tls: Option<crate::tls::Tls>,
    ) -> App {
        let history = crate::resume::History::new(
            config.downstream.resume_history_fills.get(),
            config.downstream.resume_history_seconds.get().as_secs() as i64,
            config.warm_private_channels,
        );
        let heartbeat = Heartbeat::new(
            config.downstream.ping_interval(),
            config.downstream.pong_timeout(),
        );
        let now = Instant::now();
        let gate = Arc::new(Gate::new(&config.security, config.listen));
        let history = Arc::new(Mutex::new(history));
        let traffic = Arc::<Traffic>::default();
        let shutdown = CancellationToken::new();
        let security = &config.security;
        let sessions = crate::session::Context {
            fanout: fanout.clone(),
            gate: gate.clone(),
            heartbeat: heartbeat.clone(),
            shutdown: shutdown.clone(),
            history: history.clone(),
            rest: upstream.rest().cloned(),
            commands: crate::session::CommandLimits {
                commands_per_second: security.commands_per_second,
                command_burst: security.command_burst,
                refused_before_close: security.refused_commands_before_close,
            },
            auth_timeout: security.auth_timeout(),
            write_timeout: config.downstream.write_timeout(),
            resume_overlap_seconds: (config.upstream.backfill_overlap_seconds)
                .as_secs_f64()
                .ceil() as i64,
            clients: AtomicUsize::new(0),
            sent_counters: crate::session::KINDS
                .iter()
                .map(|kind| SentCounters {
                    frames: ::metrics::counter!(crate::metrics::MESSAGES_SENT_TOTAL, "type" => *kind),
                    bytes: ::metrics::counter!(crate::metrics::BYTES_SENT_TOTAL, "type" => *kind),
                })
                .collect(),
            traffic: traffic.clone(),
            latency: ::metrics::histogram!(crate::metrics::LATENCY_SECONDS),
        };
        App {
            gate,
            tls,
            handshakes: Arc::new(tokio::sync::Semaphore::new(
                config.security.max_pending_handshakes,
            )),
            config,
            fanout,
            upstream,
            metrics,
            heartbeat,
            shutdown,
            tracker: TaskTracker::new(),
            history,
            traffic,
            sessions,
            ports: OnceLock::new(),
            started: now,
            cluster: OnceLock::new(),
        }
    }

    /// The upstream's latest status (the last notice the feed sent).
    pub fn status(&self) -> Arc<UpstreamStatus> {
        self.fanout
            .notice()
            .unwrap_or_else(|| Arc::new(UpstreamStatus::starting(now_ms())))
    }

    /// tungstenite's buffers sized for many connections (its defaults cost ~256 KiB a client).
    pub fn ws_config(&self) -> WebSocketConfig {
        let d = &self.config.downstream;
        WebSocketConfig::default()
            .read_buffer_size(d.read_buffer_bytes)
            .write_buffer_size(d.write_buffer_bytes)
            .max_write_buffer_size(d.write_buffer_bytes.max(d.max_message_bytes) * 4)
            .max_message_size(Some(d.max_message_bytes))
            .max_frame_size(Some(d.max_message_bytes))
    }

    /// Ready: serving, upstream subscribed (not just connected: every wanted subscription
    /// re-established), and every warm book synced and fresh.
    pub fn readiness(&self) -> (bool, String) {
        if self.shutdown.is_cancelled() {
            return (false, "shutting down".into());
        }
        if let Some(reason) = self.cluster.get().and_then(|c| c.not_ready()) {
            return (false, reason);
        }
        let reason = match &self.status().health {
            Health::Subscribed => None,
            Health::GaveUp { failures } => Some(format!(
                "upstream gave up after {failures} consecutive failures"
            )),
            Health::AuthFailed => Some("upstream refused the credentials".into()),
            Health::Disconnected { reason } => Some(format!("upstream disconnected: {reason}")),
            Health::Connected => Some("upstream subscribing".into()),
            Health::Connecting => Some("upstream connecting".into()),
        };
        if let Some(reason) = reason {
            return (false, reason);
        }
        let missing = (self.config.warm_markets.iter())
            .filter(|m| !self.fanout.is_synced(m))
            .count();
        if missing > 0 {
            return (false, format!("{missing} configured books not synced"));
        }
        (true, "ok".into())
    }

    /// The `/status` document.
    pub fn status_json(&self) -> String {
        let status = self.status();
        let (ready, reason) = self.readiness();
        let topics = self.fanout.topics();
        let by_channel = protocol::Channel::ALL.map(|c| {
            let n: usize = topics.iter().filter(|(t, _)| t.channel == c).count();
            (c.as_str(), n)
        });
        let mut upstream = status.to_json();
        upstream["connects"] = status.connects.into();
        upstream["last_disconnect"] = match &status.last_loss {
            Some((reason, at_ms)) => serde_json::json!({ "reason": reason, "at_ms": at_ms }),
            None => serde_json::Value::Null,
        };
        let traffic = &self.traffic;
        let (rate_in, rate_out) = traffic.rates.latest();
        let ports = self.ports.get();
        serde_json::json!({
            "upstream": upstream,
            "ready": ready,
            "reason": reason,
            "clients": self.sessions.clients.load(Ordering::Relaxed),
            "topics": topics.len(),
            "topics_by_channel": serde_json::Map::from_iter(
                by_channel.iter().map(|(c, n)| (c.to_string(), (*n).into()))
            ),
            "stale_books": self.fanout.stale_books(),
            "cached_markets": self.fanout.cached_markets(),
            "upstream_messages_total": traffic.upstream_messages.load(Ordering::Relaxed),
            "upstream_messages_per_second": rate_in,
            "downstream_messages_total": traffic.downstream_messages.load(Ordering::Relaxed),
            "downstream_messages_per_second": rate_out,
            "throughput": traffic.rates.to_json(),
            "websocket": {
                "port": ports.map(|p| p.main),
                "path": protocol::sign::WS_PATH,
                "tls": self.tls.is_some(),
                "token_required": !self.gate.anonymous_allowed(),
                "pong_timeout_seconds": self.config.downstream.pong_timeout().as_secs_f64(),
            },
            "uptime_seconds": self.started.elapsed().as_secs(),
            "cluster": self.cluster.get().map(|c| c.to_json()),
        })
        .to_string()
    }
}
