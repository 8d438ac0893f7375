//! The Prometheus recorder and the downstream metric names.
//!
//! Every metric of the product starts with `relay_`. The upstream and fanout crates emit theirs
//! through the `metrics` facade; this module installs the one recorder that renders them all.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (tests start several relays in one process).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // If an embedding application installed its own recorder first, everything is
            // recorded there and this handle renders nothing: say so once.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
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
