//! Metric names and the few helpers that record them. Labels are small fixed sets, never
//! tickers or error text.

use std::time::Duration;

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Unit,
};
use protocol::MessageType;

use crate::event::{DisconnectReason, State};

/// 1 while the WebSocket is open, else 0.
pub const UP: &str = "relay_upstream_up";
/// [`State::code`]: 0 disconnected, 1 connecting, 2 connected, 3 subscribed, 4 auth failed,
/// 5 gave up.
pub const STATE: &str = "relay_upstream_state";
/// Successful connections (upgrade completed).
pub const CONNECTS: &str = "relay_upstream_connects_total";
/// Ended connections and failed attempts, by `reason` ([`DisconnectReason::label`]).
pub const DISCONNECTS: &str = "relay_upstream_disconnects_total";
/// Text frames received, by `type` (the known message types, else `other`).
pub const MESSAGES: &str = "relay_upstream_messages_total";
/// Bytes of text frames received.
pub const BYTES: &str = "relay_upstream_bytes_total";
/// Sequence gaps detected.
pub const SEQ_GAPS: &str = "relay_upstream_seq_gaps_total";
/// `get_snapshot` requests sent (gap repair and owner requests).
pub const SNAPSHOT_REQUESTS: &str = "relay_upstream_snapshot_requests_total";
/// Round trip of our own pings.
pub const PING_RTT: &str = "relay_upstream_ping_rtt_seconds";
/// The last reconnect delay chosen.
pub const BACKOFF: &str = "relay_upstream_backoff_seconds";
/// Each wait for room in the owner's full event channel (its `_sum` is the total time blocked).
pub const OWNER_WAIT: &str = "relay_upstream_owner_wait_seconds";
/// Events waiting in the owner's channel (sampled when the session sends).
pub const EVENTS_PENDING: &str = "relay_upstream_events_pending";

/// REST requests (each attempt), by `outcome` ([`crate::RestError::label`], or `ok`).
pub const REST_REQUESTS: &str = "relay_upstream_rest_requests_total";
/// Time of each REST request, answered or not.
pub const REST_REQUEST_DURATION: &str = "relay_upstream_rest_request_duration_seconds";

/// Backfills of the private channels after an outage, by `outcome`: `ok`, `failed` (REST
/// failed past its bound; the loss was announced) or `overflow` (too much held meanwhile).
pub const BACKFILLS: &str = "relay_upstream_backfills_total";
/// Fills a backfill delivered that the live stream had missed.
pub const BACKFILL_FILLS: &str = "relay_upstream_backfill_fills_recovered_total";
/// Time of each successful backfill, from the session's return to the last message out.
pub const BACKFILL_DURATION: &str = "relay_upstream_backfill_duration_seconds";

/// Registers descriptions and units with the installed recorder (call once, from the binary).
pub fn describe() {
    describe_gauge!(UP, "1 while the exchange WebSocket is open");
    describe_gauge!(
        STATE,
        "0 disconnected, 1 connecting, 2 connected, 3 subscribed, 4 auth failed, 5 gave up"
    );
    describe_counter!(CONNECTS, "Successful exchange connections");
    describe_counter!(
        DISCONNECTS,
        "Ended exchange connections and failed attempts, by reason"
    );
    describe_counter!(MESSAGES, "Text frames received from the exchange, by type");
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes of text frames received from the exchange"
    );
    describe_counter!(SEQ_GAPS, "Sequence gaps detected on exchange subscriptions");
    describe_counter!(
        SNAPSHOT_REQUESTS,
        "get_snapshot requests sent to the exchange"
    );
    describe_histogram!(
        PING_RTT,
        Unit::Seconds,
        "Round trip of the session's own pings"
    );
    describe_gauge!(BACKOFF, Unit::Seconds, "Last reconnect delay chosen");
    describe_histogram!(
        OWNER_WAIT,
        Unit::Seconds,
        "Waits for room in the owner's full event channel"
    );
    describe_gauge!(EVENTS_PENDING, "Events waiting in the owner's channel");
    describe_counter!(REST_REQUESTS, "REST requests to the exchange, by outcome");
    describe_histogram!(
        REST_REQUEST_DURATION,
        Unit::Seconds,
        "Time of each REST request to the exchange"
    );
    describe_counter!(
        BACKFILLS,
        "Backfills of the private channels after an outage, by outcome"
    );
    describe_counter!(
        BACKFILL_FILLS,
        "Fills recovered over REST that the live stream had missed"
    );
    describe_histogram!(
        BACKFILL_DURATION,
        Unit::Seconds,
        "Time of each successful backfill"
    );
}

/// One backfill ended (`outcome` one of the labels of [`BACKFILLS`]). The outcome is counted
/// last, so a scrape that sees it also sees what the backfill recovered.
pub(crate) fn backfill(outcome: &'static str, took: Duration, fills: u64) {
    if outcome == "ok" {
        counter!(BACKFILL_FILLS).increment(fills);
        histogram!(BACKFILL_DURATION).record(took.as_secs_f64());
    }
    counter!(BACKFILLS, "outcome" => outcome).increment(1);
}

pub(crate) fn rest_request(outcome: &'static str, took: Duration) {
    counter!(REST_REQUESTS, "outcome" => outcome).increment(1);
    histogram!(REST_REQUEST_DURATION).record(took.as_secs_f64());
}

/// Creates every series at zero (each label of the fixed sets), so dashboards and alerts see
/// them before the first event. Values already recorded are kept.
pub fn register() {
    use DisconnectReason as R;
    let reasons = [
        R::ConnectTimeout,
        R::HandshakeTimeout,
        R::ConnectFailed,
        R::HandshakeRejected { status: 0 },
        R::AuthRejected,
        R::LivenessTimeout,
        R::PongTimeout,
        R::ClosedByServer { code: None },
        R::StreamError,
        R::Shutdown,
    ];
    for reason in &reasons {
        let _ = counter!(DISCONNECTS, "reason" => reason.label());
    }
    for label in TYPE_LABELS {
        let _ = counter!(MESSAGES, "type" => label);
    }
    let _ = gauge!(UP);
    let _ = gauge!(STATE);
    let _ = counter!(CONNECTS);
    let _ = counter!(BYTES);
    let _ = counter!(SEQ_GAPS);
    let _ = counter!(SNAPSHOT_REQUESTS);
    let _ = histogram!(PING_RTT);
    let _ = gauge!(BACKOFF);
    let _ = histogram!(OWNER_WAIT);
    let _ = gauge!(EVENTS_PENDING);
    for outcome in [
        "ok",
        "rate_limited",
        "server_error",
        "timeout",
        "transport",
        "decode",
        "unauthorized",
        "rejected",
    ] {
        let _ = counter!(REST_REQUESTS, "outcome" => outcome);
    }
    let _ = histogram!(REST_REQUEST_DURATION);
    for outcome in ["ok", "failed", "overflow"] {
        let _ = counter!(BACKFILLS, "outcome" => outcome);
    }
    let _ = counter!(BACKFILL_FILLS);
    let _ = histogram!(BACKFILL_DURATION);
}

pub(crate) fn state(state: &State) {
    gauge!(STATE).set(f64::from(state.code()));
    gauge!(UP).set(if state.is_up() { 1.0 } else { 0.0 });
}

pub(crate) fn connected() {
    counter!(CONNECTS).increment(1);
}

pub(crate) fn disconnected(reason: &DisconnectReason) {
    counter!(DISCONNECTS, "reason" => reason.label()).increment(1);
}

/// The `type` labels of [`MESSAGES`]: the known types in their [`MessageType::index`] order,
/// then `other`.
const TYPE_LABELS: [&str; MessageType::KNOWN.len() + 1] = {
    let mut labels = ["other"; MessageType::KNOWN.len() + 1];
    let mut i = 0;
    while i < MessageType::KNOWN.len() {
        labels[i] = MessageType::KNOWN[i].0;
        i += 1;
    }
    labels
};

fn type_index(kind: &MessageType) -> usize {
    kind.index().unwrap_or(TYPE_LABELS.len() - 1)
}

/// [`MESSAGES`] by type and [`BYTES`], looked up once per connection: a registry lookup per
/// frame costs about as much as parsing the frame.
pub(crate) struct FrameCounters {
    messages: [Counter; TYPE_LABELS.len()],
    bytes: Counter,
}

impl FrameCounters {
    pub fn new() -> FrameCounters {
        FrameCounters {
            messages: TYPE_LABELS.map(|label| counter!(MESSAGES, "type" => label)),
            bytes: counter!(BYTES),
        }
    }

    /// One text frame of `bytes`; `None`: unparsable (counted as `other`).
    pub fn frame(&self, kind: Option<&MessageType>, bytes: usize) {
        let i = kind.map_or(TYPE_LABELS.len() - 1, type_index);
        self.messages[i].increment(1);
        self.bytes.increment(bytes as u64);
    }
}

pub(crate) fn seq_gap() {
    counter!(SEQ_GAPS).increment(1);
}

pub(crate) fn snapshot_request() {
    counter!(SNAPSHOT_REQUESTS).increment(1);
}

pub(crate) fn ping_rtt(rtt: Duration) {
    histogram!(PING_RTT).record(rtt.as_secs_f64());
}

pub(crate) fn backoff(delay: Duration) {
    gauge!(BACKOFF).set(delay.as_secs_f64());
}

pub(crate) fn owner_wait(waited: Duration) {
    histogram!(OWNER_WAIT).record(waited.as_secs_f64());
}

/// [`EVENTS_PENDING`], looked up once: it is set for every event.
pub(crate) fn events_pending() -> Gauge {
    gauge!(EVENTS_PENDING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_type_counts_under_its_wire_name_and_any_other_under_other() {
        for (i, label) in TYPE_LABELS.iter().enumerate() {
            let kind = MessageType::parse(label);
            assert_eq!(type_index(&kind), i, "{label}");
            if *label != "other" {
                assert_eq!(kind.as_str(), *label);
            }
        }
        let unknown = MessageType::parse("multivariate_lookup");
        assert_eq!(TYPE_LABELS[type_index(&unknown)], "other");
    }
}
