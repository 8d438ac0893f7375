//! Metric names and cached handles. Prefix `relay_fanout_`; labels are small fixed enums
//! (`channel`, `cause`, `reason`, `kind`), never market tickers or subscriber ids.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `relay_fanout_subscribers` | gauge | `channel` |
//! | `relay_fanout_topics` | gauge | |
//! | `relay_fanout_messages_published_total` | counter | `channel` |
//! | `relay_fanout_publish_rejected_total` | counter | `reason` |
//! | `relay_fanout_messages_delivered_total` | counter | |
//! | `relay_fanout_messages_dropped_total` | counter | (messages a lag cost subscribers) |
//! | `relay_fanout_trades_lost_total` | counter | |
//! | `relay_fanout_lags_total` | counter | `cause` (`messages`, `bytes`) |
//! | `relay_fanout_repairs_total` | counter | `kind` (`book`, `ticker`) |
//! | `relay_fanout_snapshots_served_total` | counter | `reason` (`initial`, `requested`, `repair`) |
//! | `relay_fanout_slow_consumer_disconnects_total` | counter | `reason` (`slow_consumer`, `private_channel_lag`) |
//! | `relay_fanout_queue_bytes` | histogram | (unread bytes of a subscriber, sampled) |
//! | `relay_fanout_publish_duration_seconds` | histogram | |

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use protocol::Channel;

pub const SUBSCRIBERS: &str = "relay_fanout_subscribers";
pub const TOPICS: &str = "relay_fanout_topics";
pub const PUBLISHED: &str = "relay_fanout_messages_published_total";
pub const REJECTED: &str = "relay_fanout_publish_rejected_total";
pub const DELIVERED: &str = "relay_fanout_messages_delivered_total";
pub const DROPPED: &str = "relay_fanout_messages_dropped_total";
pub const TRADES_LOST: &str = "relay_fanout_trades_lost_total";
pub const LAGS: &str = "relay_fanout_lags_total";
pub const REPAIRS: &str = "relay_fanout_repairs_total";
pub const SNAPSHOTS: &str = "relay_fanout_snapshots_served_total";
pub const DISCONNECTS: &str = "relay_fanout_slow_consumer_disconnects_total";
pub const QUEUE_BYTES: &str = "relay_fanout_queue_bytes";
pub const PUBLISH_DURATION: &str = "relay_fanout_publish_duration_seconds";

/// The `reason` labels of [`REJECTED`].
const REJECT_REASONS: [&str; 3] = ["not_synced", "wrong_market", "inconsistent"];

/// Handles resolved once (a macro call per message would hash the key every time).
pub(crate) struct Metrics {
    pub subscribers: [Gauge; Channel::COUNT],
    pub topics: Gauge,
    pub published: [Counter; Channel::COUNT],
    pub delivered: Counter,
    pub dropped: Counter,
    pub trades_lost: Counter,
    pub lags_messages: Counter,
    pub lags_bytes: Counter,
    pub repairs_book: Counter,
    pub repairs_ticker: Counter,
    pub snapshots: [Counter; 3],
    pub disconnects_slow: Counter,
    pub disconnects_private: Counter,
    pub queue_bytes: Histogram,
    pub publish_duration: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        // Created at zero, so alerts on rejections see the series before the first one.
        for reason in REJECT_REASONS {
            let _ = counter!(REJECTED, "reason" => reason);
        }
        let by_channel_gauge =
            |name: &'static str| Channel::ALL.map(|c| gauge!(name, "channel" => c.as_str()));
        let by_channel_counter =
            |name: &'static str| Channel::ALL.map(|c| counter!(name, "channel" => c.as_str()));
        Metrics {
            subscribers: by_channel_gauge(SUBSCRIBERS),
            topics: gauge!(TOPICS),
            published: by_channel_counter(PUBLISHED),
            delivered: counter!(DELIVERED),
            dropped: counter!(DROPPED),
            trades_lost: counter!(TRADES_LOST),
            lags_messages: counter!(LAGS, "cause" => "messages"),
            lags_bytes: counter!(LAGS, "cause" => "bytes"),
            repairs_book: counter!(REPAIRS, "kind" => "book"),
            repairs_ticker: counter!(REPAIRS, "kind" => "ticker"),
            snapshots: ["initial", "requested", "repair"]
                .map(|r| counter!(SNAPSHOTS, "reason" => r)),
            disconnects_slow: counter!(DISCONNECTS, "reason" => "slow_consumer"),
            disconnects_private: counter!(DISCONNECTS, "reason" => "private_channel_lag"),
            queue_bytes: histogram!(QUEUE_BYTES),
            publish_duration: histogram!(PUBLISH_DURATION),
        }
    }

    pub(crate) fn rejected(reason: &'static str) {
        counter!(REJECTED, "reason" => reason).increment(1);
    }
}
