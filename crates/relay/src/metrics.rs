//! The Prometheus recorder and the downstream metric names.
//!
//! Every metric of the product starts with `relay_`. The upstream and fanout crates emit theirs
//! through the `metrics` facade; this module installs the one recorder that renders them all.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::close::{CloseReason, Ending};

pub const CONNECTIONS: &str = "relay_downstream_connections";
pub const CONNECTIONS_TOTAL: &str = "relay_downstream_connections_total";
pub const DISCONNECTS_TOTAL: &str = "relay_downstream_disconnects_total";
pub const MESSAGES_SENT_TOTAL: &str = "relay_downstream_messages_sent_total";
pub const BYTES_SENT_TOTAL: &str = "relay_downstream_bytes_sent_total";
pub const COMMANDS_TOTAL: &str = "relay_downstream_commands_total";
pub const HANDSHAKES_REJECTED_TOTAL: &str = "relay_downstream_handshakes_rejected_total";
/// From the upstream frame's arrival to the client frame written to its socket.
pub const LATENCY_SECONDS: &str = "relay_latency_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Unread bytes per subscriber (`relay_fanout_queue_bytes`): up to past the default 1 MiB bound.
const QUEUE_BYTES_BUCKETS: &[f64] = &[
    0.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    524_288.0,
    1_048_576.0,
    4_194_304.0,
];

/// The `reason` labels of `relay_downstream_handshakes_rejected_total`.
const HANDSHAKE_REJECT_REASONS: [&str; 9] = [
    "pending handshakes",
    "shutting down",
    "origin not allowed",
    "not a websocket upgrade",
    "invalid token",
    "connection limit",
    "per-IP connection limit",
    "new connection rate",
    "refused",
];

/// The `command` labels of `relay_downstream_commands_total` and their `result`s.
const COMMAND_RESULTS: [(&str, &[&str]); 8] = [
    ("subscribe", &["ok", "error"]),
    ("unsubscribe", &["ok", "error"]),
    ("update_subscription", &["ok", "error"]),
    ("list_subscriptions", &["ok", "error"]),
    ("ping", &["ok", "error"]),
    ("auth", &["ok", "error"]),
    ("invalid", &["error"]),
    ("any", &["rate_limited"]),
];

/// Creates every documented series at zero, so dashboards and alerts see them before the first
/// event (a counter with labels otherwise appears only when first incremented).
fn register() {
    upstream::metrics::describe();
    upstream::metrics::register();
    let _ = metrics::gauge!(CONNECTIONS);
    let _ = metrics::counter!(CONNECTIONS_TOTAL);
    // Every way a session ends: each cause the relay closes for, a client's usual codes, and
    // the abrupt drop.
    let endings = CloseReason::ALL
        .map(Ending::Relay)
        .into_iter()
        .chain([1000, 1001, 1005].map(Ending::Client))
        .chain([Ending::Abrupt]);
    for ending in endings {
        let _ = metrics::counter!(
            DISCONNECTS_TOTAL,
            "code" => ending.code_label(),
            "reason" => ending.reason_label()
        );
    }
    for (command, results) in COMMAND_RESULTS {
        for result in results {
            let _ = metrics::counter!(COMMANDS_TOTAL, "command" => command, "result" => *result);
        }
    }
    for reason in HANDSHAKE_REJECT_REASONS {
        let _ = metrics::counter!(HANDSHAKES_REJECTED_TOTAL, "reason" => reason);
    }
    let _ = metrics::histogram!(LATENCY_SECONDS);
    crate::node::register_metrics();
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide `metrics` recorder that `/metrics` renders, with every documented
/// series at zero, and returns its handle. Only the first call installs; later ones return the
/// same handle, so one process may start many relays (the tests do). [`crate::spawn`] calls it;
/// an application that wants the recorder in place earlier calls it first (the binary does).
pub fn install_metrics_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .set_buckets_for_metric(
                    Matcher::Full(fanout::metric_names::QUEUE_BYTES.into()),
                    QUEUE_BYTES_BUCKETS,
                )
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // If an embedding application installed its own recorder first, everything is
            // recorded there and this handle renders nothing: say so once.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            register();
            handle
        })
        .clone()
}

/// Keeps histograms bounded; run for the process's life.
pub async fn upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}
