//! One resilient, authenticated session to a Kalshi-style exchange WebSocket.
//!
//! The relay's whole value rests on this connection, so the crate owns its full life and reports
//! it honestly:
//!
//! - **Desired state.** The owner says what it wants through an [`Upstream`] handle
//!   ([`subscribe`](Upstream::subscribe), [`add_markets`](Upstream::add_markets), ...). Wishes
//!   made while disconnected are kept; on every (re)connect the whole set is re-established on a
//!   freshly signed connection, and the exchange's new sids map back to the owner's stable
//!   [`SubId`]s. Subscriptions of one channel are merged into one exchange sid, markets move with
//!   `update_subscription`, and a sid is split only when the exchange answers error 26.
//! - **Reconnects** with full-jitter exponential backoff, `Retry-After` honoured, a visible
//!   [`State::GaveUp`] after `max_consecutive_failures` (probing continues at the cap), and
//!   [`State::AuthFailed`] for a 401.
//! - **Liveness from the protocol**: no frame of any kind for `liveness_window_seconds`, or no
//!   pong for our ping within `pong_timeout_seconds`, means dead. Quiet markets are fine.
//! - **Sequencing**: a gap marks the sid's books stale ([`Event::BookStale`]), drops their
//!   deltas, and asks `get_snapshot` for exactly those markets (resubscribing after a timeout or
//!   a second gap); the fresh snapshot is announced by [`Event::BookReset`].
//! - **One ordered, bounded event stream** ([`Event`]); a slow owner is measured, never buffered
//!   without bound.
//! - **Private channels made whole**: after an outage, what `fill`, `user_orders` and
//!   `market_positions` missed is fetched over REST and delivered before any later live message
//!   (`backfill`); when that fails past its bound the loss is announced
//!   ([`Event::MessagesLost`]).
//!
//! Layout: [`config`](UpstreamConfig) (settings and validation), `backfill` (the private
//! channels' REST recovery, between the session and the owner), `backoff`, `connect` (TCP, TLS,
//! signed upgrade), `session` (reconnect loop, output, book freshness), `conn` (one connection's
//! loop), `subs` (desired vs actual subscriptions), [`metrics`] (names and helpers), and
//! [`rest`]: a [`RestClient`] for the exchange's REST portfolio endpoints (fills, orders,
//! positions) for backfills, signed with the same key (`ratelimit`: its token bucket).
//!
//! ```no_run
//! use protocol::Channel;
//! use tokio_util::sync::CancellationToken;
//! use upstream::{Event, UpstreamConfig};
//!
//! # async fn demo() -> Result<(), settings::Problems> {
//! let config = UpstreamConfig { url: "ws://127.0.0.1:9000/trade-api/ws/v2".into(), ..Default::default() };
//! let shutdown = CancellationToken::new();
//! let (upstream, mut events) = upstream::spawn(config, shutdown.clone())?;
//! upstream.subscribe(Channel::OrderbookDelta, Some(vec!["FED-23DEC-T3.00".into()]));
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Data(data) if data.channel == Channel::OrderbookDelta => println!("{}", String::from_utf8_lossy(&data.body)),
//!         Event::State(state) => println!("upstream is {state:?}"),
//!         _ => {}
//!     }
//! }
//! shutdown.cancel();
//! upstream.closed().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backfill;
mod backoff;
mod config;
mod conn;
mod connect;
mod event;
pub mod metrics;
mod ratelimit;
pub mod rest;
mod session;
mod subs;

use std::sync::Arc;

use protocol::Channel;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use backfill::{recover, Continuation, Recovered};
pub use config::{
    UpstreamConfig, DEFAULT_BACKOFF_BASE_SECONDS, DEFAULT_BACKOFF_CAP_SECONDS,
    DEFAULT_BACKOFF_FACTOR, DEFAULT_CLOSE_TIMEOUT_SECONDS, DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_EVENT_CHANNEL_CAPACITY, DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
    DEFAULT_HEALTHY_RESET_SECONDS, DEFAULT_LIVENESS_WINDOW_SECONDS,
    DEFAULT_MAX_CONSECUTIVE_FAILURES, DEFAULT_PING_INTERVAL_SECONDS, DEFAULT_PONG_TIMEOUT_SECONDS,
    DEFAULT_SNAPSHOT_TIMEOUT_SECONDS, DEFAULT_URL,
};
pub use event::{BookUpdate, Data, DisconnectReason, Event, State, SubId};
pub use rest::{RestClient, RestConfig, RestError};

use session::{Books, Ctx, Output, Shared};

/// The owner's handle on the session. Cheap to clone; every method is non-blocking and only
/// changes the desired state, which the session applies when connected (or on the next connect).
#[derive(Clone, Debug)]
pub struct Upstream {
    shared: Arc<Shared>,
    state: watch::Receiver<State>,
    /// Cancelled by the session task as its very last act.
    closed: CancellationToken,
    /// The REST client of the backfill (`None` with `backfill = false`).
    rest: Option<RestClient>,
}

/// Validates `config` and starts the session on the current tokio runtime.
///
/// Returns the handle and the event stream (capacity `event_channel_capacity`; when it is full
/// the session waits for the owner). The session runs until `shutdown` is cancelled, then
/// unsubscribes, closes with 1000 and resolves [`Upstream::closed`].
pub fn spawn(
    config: UpstreamConfig,
    shutdown: CancellationToken,
) -> Result<(Upstream, mpsc::Receiver<Event>), settings::Problems> {
    spawn_with_rng(config, shutdown, StdRng::from_entropy(), None)
}

/// [`spawn`] with the backoff jitter drawn from a seeded generator, for reproducible tests.
pub fn spawn_seeded(
    config: UpstreamConfig,
    shutdown: CancellationToken,
    seed: u64,
) -> Result<(Upstream, mpsc::Receiver<Event>), settings::Problems> {
    spawn_with_rng(config, shutdown, StdRng::seed_from_u64(seed), None)
}

/// [`spawn`] for a session that takes another's private stream over (with backfill on): what
/// the private channels missed since `from.since` is fetched at its first `Subscribed`.
pub fn spawn_continuing(
    config: UpstreamConfig,
    shutdown: CancellationToken,
    from: Continuation,
) -> Result<(Upstream, mpsc::Receiver<Event>), settings::Problems> {
    spawn_with_rng(config, shutdown, StdRng::from_entropy(), Some(from))
}

fn spawn_with_rng(
    config: UpstreamConfig,
    shutdown: CancellationToken,
    rng: StdRng,
    continuing: Option<Continuation>,
) -> Result<(Upstream, mpsc::Receiver<Event>), settings::Problems> {
    let settings = config.resolve()?;
    let rest = if config.backfill {
        Some(RestClient::new(&config, &config.rest)?)
    } else {
        None
    };
    let (events_tx, events_rx) = mpsc::channel(settings.event_channel_capacity);
    // The session writes into the backfill stage, which passes everything on in order.
    let (session_tx, session_rx) = mpsc::channel(settings.event_channel_capacity);
    let (state_tx, state_rx) = watch::channel(State::Connecting);
    let shared = Arc::new(Shared::default());
    let closed = CancellationToken::new();
    let ctx = Ctx {
        out: Output::new(
            session_tx,
            settings.event_channel_capacity,
            state_tx,
            shutdown.clone(),
        ),
        settings,
        shared: shared.clone(),
        books: Books::default(),
        shutdown,
    };
    let span = tracing::info_span!("upstream");
    let recovery = backfill::Recovery {
        rest: rest.clone(),
        overlap: config.backfill_overlap_seconds.get(),
        continuing,
    };
    tokio::spawn(tracing::Instrument::instrument(
        backfill::run(session_rx, events_tx, shared.clone(), recovery),
        span.clone(),
    ));
    tokio::spawn(tracing::Instrument::instrument(
        session::run(ctx, rng, closed.clone()),
        span,
    ));
    Ok((
        Upstream {
            shared,
            state: state_rx,
            closed,
            rest,
        },
        events_rx,
    ))
}

impl Upstream {
    fn changed(&self) {
        self.shared.changed.notify_one();
    }

    /// Wants `channel` for `markets` (`None`: every market, where the channel allows it).
    /// Returns the id that tags this subscription's data, stable across reconnects.
    pub fn subscribe(&self, channel: Channel, markets: Option<Vec<String>>) -> SubId {
        let id = self.shared.desired().subscribe(channel, markets);
        self.changed();
        id
    }

    pub fn unsubscribe(&self, id: SubId) {
        self.shared.desired().unsubscribe(id);
        self.changed();
    }

    /// Adds markets to subscription `id` (no effect on an every-market subscription).
    pub fn add_markets(&self, id: SubId, markets: Vec<String>) {
        self.shared.desired().add_markets(id, markets);
        self.changed();
    }

    pub fn remove_markets(&self, id: SubId, markets: Vec<String>) {
        self.shared.desired().remove_markets(id, markets);
        self.changed();
    }

    /// Asks the exchange for fresh order book snapshots of `markets` (those subscribed). While
    /// disconnected this is moot: every book gets a fresh snapshot on the next connect.
    pub fn request_snapshot(&self, markets: Vec<String>) {
        self.shared.desired().snapshot_requests.extend(markets);
        self.changed();
    }

    /// The REST client the backfill uses, for other recoveries ([`recover`]); `None` when
    /// backfill is off.
    pub fn rest(&self) -> Option<&RestClient> {
        self.rest.as_ref()
    }

    /// The current state, and its changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Resolves once the session has closed after shutdown (immediately if it already has).
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }
}
