//! [`SimConfig`]: everything that shapes one simulator instance, with defaults from named constants.

use std::time::Duration;

use protocol::Verifier;
use settings::Problems;

/// Default number of markets.
pub const DEFAULT_MARKETS: usize = 8;
/// Default total message rate, in messages per second over all markets and channels.
pub const DEFAULT_RATE: f64 = 200.0;
/// Default seed for tickers, initial books and the event stream.
pub const DEFAULT_SEED: u64 = 1;
/// Default clock-skew window for signed handshakes, in milliseconds either way.
pub const DEFAULT_AUTH_WINDOW_MS: u64 = 10_000;
/// Default interval between `heartbeat` Ping frames (the exchange's 10 s).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Largest number of markets one simulator will generate (ticker space is finite).
pub const MAX_MARKETS: usize = 50_000;
/// Largest total rate accepted, in messages per second.
pub const MAX_RATE: f64 = 10_000_000.0;

/// How handshakes are authenticated.
#[derive(Clone, Debug, Default)]
pub enum SimAuth {
    /// `--no-auth`: every connection is accepted and treated as the simulated account.
    #[default]
    None,
    /// Verify the three `KALSHI-ACCESS-*` headers against these public keys. The verifier's
    /// window is replaced by [`SimConfig::auth_window_ms`] at start.
    Verifier(Verifier),
}

/// What a second `subscribe` on a channel the connection already holds does (reference §5, OPEN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Older servers: error 6 "Already subscribed" (retired in the newest spec).
    Error6,
    /// Newer servers: merge the markets into the existing sid and answer `ok`.
    #[default]
    Merge,
}

/// How the engine spaces the messages it generates at the configured rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pacing {
    /// Wake every 5 ms and send everything due since the last wake in one batch (one socket
    /// write per connection): at 500 msg/s, bursts of about 2.5 messages 5 ms apart, and a
    /// trade's delta, trade and ticker always together.
    #[default]
    Tick,
    /// Send one message at a time, evenly spaced at `1 / rate`, each in a write of its own: the
    /// shape of a real exchange feed at moderate rates.
    Even,
}

/// Configuration of one simulator. `Default` gives a small, quiet, unauthenticated exchange.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of synthetic markets (1..=50,000). Default 8.
    pub markets: usize,
    /// Total messages per second over all markets and channels (0 = silent). Default 200.
    pub rate: f64,
    /// Seed for tickers, initial books and the event stream. Default 1.
    pub seed: u64,
    /// How the messages are spaced. Default [`Pacing::Tick`].
    pub pacing: Pacing,
    /// Handshake authentication. Default [`SimAuth::None`].
    pub auth: SimAuth,
    /// With [`SimAuth::Verifier`]: how far a signed timestamp may be from now, either way, in
    /// milliseconds. Default 10,000.
    pub auth_window_ms: u64,
    /// With [`SimAuth::Verifier`]: accept handshakes that carry none of the three headers as
    /// anonymous connections (public channels only; private ones get error 9), as older
    /// exchange docs allowed. Default false (they get 401).
    pub allow_anonymous: bool,
    /// Interval between `heartbeat` Ping frames; must be > 0. Default 10 s.
    pub ping_interval: Duration,
    /// Add `"sim_ts_ns"` (wall-clock send time, ns since the Unix epoch) inside every data
    /// message's `msg`. Default false.
    pub stamp: bool,
    /// Second `subscribe` on a held channel. Default [`DuplicatePolicy::Error6`].
    pub duplicate_subscribe: DuplicatePolicy,
    /// Markets one subscription may hold; more gives error 26. Default `None` (no limit).
    pub max_markets_per_subscription: Option<usize>,
    /// Answer 403 to any handshake carrying an `Origin` header (as production did). Default false.
    pub reject_origin: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            markets: DEFAULT_MARKETS,
            rate: DEFAULT_RATE,
            seed: DEFAULT_SEED,
            pacing: Pacing::Tick,
            auth: SimAuth::None,
            auth_window_ms: DEFAULT_AUTH_WINDOW_MS,
            allow_anonymous: false,
            ping_interval: DEFAULT_PING_INTERVAL,
            stamp: false,
            duplicate_subscribe: DuplicatePolicy::Error6,
            max_markets_per_subscription: None,
            reject_origin: false,
        }
    }
}

impl SimConfig {
    /// Every problem with the configuration, each naming the field and the bad value.
    pub fn problems(&self) -> Problems {
        let mut problems = Problems::new();
        if self.markets == 0 || self.markets > MAX_MARKETS {
            problems.add(
                "markets",
                self.markets,
                format!("must be 1..={MAX_MARKETS}"),
            );
        }
        if !(self.rate.is_finite() && (0.0..=MAX_RATE).contains(&self.rate)) {
            problems.add(
                "rate",
                self.rate,
                format!("must be a number in 0..={MAX_RATE}"),
            );
        }
        if self.ping_interval.is_zero() {
            problems.add("ping_interval", 0, "must be > 0");
        }
        if self.max_markets_per_subscription == Some(0) {
            problems.add("max_markets_per_subscription", 0, "must be > 0");
        }
        problems
    }
}
