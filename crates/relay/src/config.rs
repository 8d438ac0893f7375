//! The relay's configuration: one TOML file, environment overrides, flags, validated up front.
//!
//! Precedence: built-in defaults < `configs/relay.toml` (or `--config FILE`) < environment <
//! flags. Any key can be set from the environment as `RELAY__SECTION__KEY` (double underscores
//! between levels, the value read as TOML, and as the text itself where that is not TOML or the
//! key wants a string): `RELAY__UPSTREAM__URL=wss://...`,
//! `RELAY__DOWNSTREAM__PING_INTERVAL_SECONDS=15`, `RELAY__UPSTREAM__KEY_ID=12345`. Credentials
//! have their usual names: `KALSHI_API_KEY_ID`, `KALSHI_PRIVATE_KEY_PATH`,
//! `KALSHI_PRIVATE_KEY_PEM`.
//!
//! Every duration is a `<name>_seconds` key read into [`settings::Seconds`] (fractions allowed);
//! counts that must not be zero are `NonZero*`. A renamed key keeps working under its old name
//! (`load::RENAMED`), noted in [`Loaded::deprecated`]. The loader is in `config/load.rs`.
//!
//! Loading parses everything, then validates everything, and reports every problem at once, each
//! naming its dotted key: `downstream.pong_timeout_seconds = 0: must be > 0`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use settings::{Problems, Seconds, SecondsOrZero};

/// The default config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "configs/relay.toml";

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_PING_INTERVAL_SECONDS: Seconds = Seconds::from_secs(30);
const DEFAULT_PONG_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
const DEFAULT_WRITE_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
const DEFAULT_WRITE_BUFFER_BYTES: usize = 16 * 1024;
const DEFAULT_READ_BUFFER_BYTES: usize = 1024;
const DEFAULT_SHUTDOWN_DRAIN_SECONDS: Seconds = Seconds::from_secs(10);
/// The longest write-coalescing window: a second of added latency is already more than any
/// client would accept.
const MAX_COALESCE_WINDOW: Duration = Duration::from_secs(1);
const DEFAULT_MAX_MARKETS_PER_CONNECTION: usize = 1_000;

/// Everything the relay needs, composed from each crate's own config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where clients connect: WebSocket at `/trade-api/ws/v2` (alias `/ws`) plus `/healthz`,
    /// `/readyz`, `/metrics`, `/status`. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// If set, `/metrics`, `/status` and `/dashboard` move to this second listener. Default: unset.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Markets whose order books are always subscribed upstream, so the first client of one gets
    /// its snapshot at once and `/readyz` waits for them. Default: none.
    #[serde(default)]
    pub warm_markets: Vec<String>,
    /// Keep the account's private channels (fill, user_orders, market_positions) subscribed
    /// upstream at all times, so a client's subscription is live the moment it is answered and
    /// resumes can be served from the relay's history (without it, they read REST). Default true.
    #[serde(default = "yes")]
    pub warm_private_channels: bool,
    #[serde(default)]
    pub downstream: DownstreamConfig,
    #[serde(default)]
    pub upstream: upstream::UpstreamConfig,
    #[serde(default)]
    pub fanout: fanout::FanoutConfig,
    #[serde(default)]
    pub security: crate::security::SecurityConfig,
    /// Cluster mode: several relays sharing one upstream session through Redis. Default: unset
    /// (one relay, no Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster::ClusterConfig>,
}

/// How the relay treats its clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamConfig {
    /// Seconds between server pings to each client. Default 30.
    pub ping_interval_seconds: Seconds,
    /// Seconds a client has to send anything after a ping before it is closed; below
    /// `ping_interval_seconds`. Default 10.
    pub pong_timeout_seconds: Seconds,
    /// Seconds a write to a client may block before the client is closed. Default 10.
    pub write_timeout_seconds: Seconds,
    /// Largest inbound message; larger closes with 1009. Default 65536.
    pub max_message_bytes: usize,
    /// Outgoing frames are gathered up to this many bytes before a write. Default 16384.
    pub write_buffer_bytes: usize,
    /// Initial read buffer per connection (it grows for a larger message). Default 1024.
    pub read_buffer_bytes: usize,
    /// Seconds to wait for clients to take their close frames on shutdown. Default 10.
    pub shutdown_drain_seconds: Seconds,
    /// A second `subscribe` on a channel the client holds: `"merge"` (markets added, `ok`) or
    /// `"error"` (error 6, as older exchange servers). Default `"merge"`.
    pub duplicate_subscribe: DuplicateSubscribe,
    /// Markets one connection may hold over all its subscriptions; more gets error 26.
    /// Default 1000.
    pub max_markets_per_connection: usize,
    /// Kernel send buffer per client socket, in bytes. Unset: the kernel's autotuning (up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB here, per slow client). A cap bounds kernel memory
    /// per client and makes a stalled client show as lagged sooner. Default: unset.
    pub socket_send_buffer_bytes: Option<usize>,
    /// Write coalescing: market data is held for up to this many seconds (at most 1) from its
    /// first message, then published together, so every client writes the window's frames in one
    /// socket write (latency grows by up to the window). 0 turns it off. Default 0. Formerly
    /// `coalesce_window_ms`, still read (in milliseconds) with a warning.
    pub coalesce_window_seconds: SecondsOrZero,
    /// Resume: the account's most recent fills the relay keeps to replay to a client that
    /// reconnects with `resume_from`. Default 10000.
    pub resume_history_fills: std::num::NonZeroUsize,
    /// Resume: seconds of private history kept; an older position is recovered from the
    /// exchange's REST history. Default 3600.
    pub resume_history_seconds: Seconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateSubscribe {
    Merge,
    Error,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            ping_interval_seconds: DEFAULT_PING_INTERVAL_SECONDS,
            pong_timeout_seconds: DEFAULT_PONG_TIMEOUT_SECONDS,
            write_timeout_seconds: DEFAULT_WRITE_TIMEOUT_SECONDS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            shutdown_drain_seconds: DEFAULT_SHUTDOWN_DRAIN_SECONDS,
            duplicate_subscribe: DuplicateSubscribe::Merge,
            max_markets_per_connection: DEFAULT_MAX_MARKETS_PER_CONNECTION,
            socket_send_buffer_bytes: None,
            coalesce_window_seconds: SecondsOrZero::from_secs(0),
            resume_history_fills: DEFAULT_RESUME_HISTORY_FILLS,
            resume_history_seconds: DEFAULT_RESUME_HISTORY_SECONDS,
        }
    }
}

pub const DEFAULT_RESUME_HISTORY_FILLS: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(10_000).expect("not zero");
pub const DEFAULT_RESUME_HISTORY_SECONDS: Seconds = Seconds::from_secs(3_600);

impl DownstreamConfig {
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval_seconds.get()
    }
    pub fn pong_timeout(&self) -> Duration {
        self.pong_timeout_seconds.get()
    }
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout_seconds.get()
    }
    /// The write-coalescing window, `None` when off.
    pub fn coalesce_window(&self) -> Option<Duration> {
        self.coalesce_window_seconds.nonzero()
    }
    pub fn shutdown_drain(&self) -> Duration {
        self.shutdown_drain_seconds.get()
    }

    /// What a client may do, before any token narrows it.
    pub fn limits(&self) -> crate::client::Limits {
        crate::client::Limits {
            duplicate_subscribe: self.duplicate_subscribe,
            private_allowed: true,
            max_markets: self.max_markets_per_connection,
        }
    }
}

impl RelayConfig {
    /// Every default, with the upstream at `upstream_url` (tests and embedding).
    pub fn with_upstream(upstream_url: &str) -> RelayConfig {
        RelayConfig {
            listen: default_listen(),
            admin_listen: None,
            warm_markets: Vec::new(),
            warm_private_channels: true,
            downstream: DownstreamConfig::default(),
            upstream: upstream::UpstreamConfig {
                url: upstream_url.to_owned(),
                ..Default::default()
            },
            fanout: fanout::FanoutConfig::default(),
            security: crate::security::SecurityConfig::default(),
            cluster: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("the default address parses")
}

impl RelayConfig {
    /// Every problem at once, each naming its dotted key. Durations and counts that must not be
    /// zero were checked while parsing (their types).
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::new();
        let d = &self.downstream;
        if d.pong_timeout_seconds >= d.ping_interval_seconds {
            problems.add(
                "downstream.pong_timeout_seconds",
                d.pong_timeout_seconds,
                format!(
                    "must be below downstream.ping_interval_seconds ({})",
                    d.ping_interval_seconds
                ),
            );
        }
        if d.max_message_bytes < 256 {
            problems.add(
                "downstream.max_message_bytes",
                d.max_message_bytes,
                "must be at least 256",
            );
        }
        if d.coalesce_window_seconds.get() > MAX_COALESCE_WINDOW {
            problems.add(
                "downstream.coalesce_window_seconds",
                d.coalesce_window_seconds,
                "must be at most 1",
            );
        }
        if d.read_buffer_bytes < 256 {
            problems.add(
                "downstream.read_buffer_bytes",
                d.read_buffer_bytes,
                "must be at least 256",
            );
        }
        for (i, m) in self.warm_markets.iter().enumerate() {
            if m.trim().is_empty() {
                problems.add(
                    format!("warm_markets[{i}]"),
                    format!("{m:?}"),
                    "must not be empty",
                );
            }
        }
        if let Some(admin) = self.admin_listen.filter(|a| *a == self.listen) {
            problems.add(
                "admin_listen",
                format!("\"{admin}\""),
                "must differ from listen",
            );
        }
        problems.extend(self.security.problems(self.listen));
        if self.upstream.orderbook_use_yes_price {
            problems.add(
                "upstream.orderbook_use_yes_price",
                true,
                "must be false (the relay keeps books in the exchange's form and converts per \
                 client that asks)",
            );
        }
        if let Err(e) = self.upstream.validate() {
            problems.extend(e);
        }
        if let Some(cluster) = &self.cluster {
            problems.extend(cluster.problems());
        }
        if let Err(e) = self.fanout.validate() {
            problems.extend(e);
        }
        problems.into_result(())
    }
}

mod load;

pub use load::{describe, load, Loaded, Overrides, Source};

#[cfg(test)]
mod tests;
