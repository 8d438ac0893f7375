//! One upstream stream to thousands of subscribers, where a slow one costs nobody else anything and
//! no one ever sees a wrong book.
//!
//! # Design
//!
//! - **One ring, shared.** The [`Publisher`] (one task, fed in exchange order) appends each message
//!   as one `Arc<`[`Item`]`>` to a single tokio broadcast ring. An item carries the `msg` body as
//!   shared [`bytes::Bytes`], encoded once, with its type, channel, market and stream position.
//!   Publishing is O(1) in the number of subscribers apart from waking those parked on the ring,
//!   and never waits for any of them. Each [`Subscriber`] is a cursor into the ring that filters
//!   by its [`Topic`]s: per-subscriber work is a lookup and the small envelope the relay writes
//!   ([`Item::write_envelope`]).
//! - **A state cache beside the ring.** Per market: the current [`protocol::OrderBook`], the
//!   latest ticker, and how many items of each channel were published. The publisher updates the
//!   cache and numbers the item under one short lock, then sends it (outside the lock, so the
//!   wake-ups do not block readers). Because the stream carries the same numbers, a subscriber that
//!   takes a snapshot from the cache when the book's count is `n` skips the book's items numbered
//!   `<= n` and applies exactly those numbered `> n`: none twice, none missing. Per topic the
//!   numbers are contiguous, which the subscriber checks.
//! - **Lag-dropping with repair.** A subscriber may fall `queue_messages` items or `queue_bytes`
//!   bytes behind the head (the ring overwrites the oldest for everyone; the byte bound is one
//!   subtraction thanks to a cumulative byte count per item). Beyond that it is *lagged*: it skips
//!   to the head (`Receiver::resubscribe`; what it still had unread is as stale as what it lost,
//!   and skipping gives it a full queue of headroom) and, from one consistent cut of the cache,
//!   counts exactly what it lost per topic, then queues a fresh snapshot for each of its books
//!   and the latest ticker for each ticker topic, after a [`Delivery::Lagged`] report and before
//!   any further delta. Trades lost are counted (they are events, not state).
//! - **Verdicts.** Private channels (fill, user_orders, market_positions) carry no seq and cannot be
//!   repaired: a lag that lost any of their messages ends with [`Delivery::Disconnect`]
//!   ([`Verdict::PrivateChannelLag`]), never a silent gap. More than `slow_consumer_lags` lags
//!   within `slow_consumer_window_seconds` ends with [`Verdict::SlowConsumer`]. The relay closes
//!   such a client with 1013.
//! - **Stale books.** [`Publisher::mark_stale`] (gap, reconnect) puts a marker in the stream: each
//!   subscriber of that book gets [`Delivery::Stale`] in order and no delta until the reset
//!   snapshot. A subscriber that adds a stale book waits for that reset snapshot.
//! - **Wake-ups.** The one cost that grows with subscribers on the publishing side is waking the
//!   subscriber tasks parked on the stream (about 0.7 µs each on the 2-core bench machine; see
//!   the README). Subscribers that are busy or have a backlog are not parked and cost the
//!   publisher nothing; under load most are in that state. Parked subscribers are spread over
//!   [`WAKE_GROUPS`] groups, and the cache knows which groups hold a subscriber of each topic:
//!   an item wakes only those groups (a notice, or an item without a market, wakes all), a
//!   release the groups of what it releases, [`Fanout::wake`] one group, so the owner can send
//!   its own reasons to wake (the relay's heartbeat) through the same wait
//!   ([`Subscriber::signal`]). So a client of a quiet market costs nothing per message of the
//!   busy ones. Every group is also woken once per half ring (`queue_messages / 2` items or
//!   `queue_bytes / 2` bytes), so a parked subscriber reads past the others' items before the
//!   ring overwrites them; one that still falls behind with nothing of its own topics lost skips
//!   ahead without a lag.
//! - **Notices.** The publisher's owner can put a notice of its own type in the stream
//!   ([`Publisher::notice`]): every subscriber, whatever its topics, gets it as
//!   [`Delivery::Notice`] in order with the messages, so what was published before it is
//!   delivered before it and what came after, after. A subscriber that starts, or skips ahead
//!   after a lag, is handed the latest notice instead of the ones it missed (right after the
//!   [`Delivery::Lagged`] report): a notice should therefore say everything its subscribers must
//!   know (cumulative counts rather than increments).
//! - **Registry.** Which topics have subscribers, with counts ([`Fanout::topics`]), and a stream of
//!   [`TopicChange`]s ([`RegistryEvents::next`]): `Unwanted` only after the linger delay, cancelled
//!   if the topic is wanted again meanwhile.
//!
//! # Layout
//!
//! `publisher` numbers and sends items and keeps `cache` (books, latest tickers, counts) in step
//! with them; `subscriber` is one client's cursor: its `topics` table says what each stream item
//! means for it (`classify`: deliver, covered, awaiting a reset, stale, gap), and `repair` brings
//! every topic back from one cut of the cache after a lag. `registry` counts the wanted topics
//! for the upstream; `item` is what flows.
//!
//! # Guarantees
//!
//! For every subscriber and each of its books: the deliveries, applied in order (every
//! `orderbook_snapshot` replaces the book, every delta applies to it), rebuild the publisher's book
//! as of the last book item the subscriber has received, whenever it has caught up with the
//! stream; stale periods are announced. The publisher never blocks on subscribers. Everything
//! dropped is counted, per subscriber in the [`LagReport`] and in the `relay_fanout_*` metrics
//! (see [`metric_names`]; install the metrics recorder before calling [`new`]).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use fanout::{Delivery, FanoutConfig, Topic};
//! use protocol::{Channel, OrderbookSnapshot};
//!
//! # tokio_test();
//! # fn tokio_test() { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // The notices here are plain strings; the relay's are its upstream status.
//! let (mut publisher, fanout, _registry) = fanout::new::<&str>(FanoutConfig::default());
//! let body = Bytes::from_static(br#"{"market_ticker":"M","yes_dollars_fp":[["0.0800","300.00"]]}"#);
//! let snap: OrderbookSnapshot = serde_json::from_slice(&body).unwrap();
//! publisher.snapshot("M", snap, body).unwrap();
//!
//! let mut sub = fanout.subscriber();
//! sub.add(Topic::market(Channel::OrderbookDelta, "M"), false).unwrap();
//! let mut frame = Vec::new();
//! match sub.recv().await.unwrap() {
//!     Delivery::Data(item) | Delivery::Cached { item, .. } => {
//!         item.write_envelope(&mut frame, 1, Some(1), false);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! publisher.notice("upstream lost");
//! assert!(matches!(sub.recv().await, Some(Delivery::Notice(n)) if *n == "upstream lost"));
//! assert!(frame.starts_with(br#"{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":"#));
//! # }) }
//! ```
#![forbid(unsafe_code)]

mod cache;
mod config;
mod item;
mod metrics;
mod publisher;
mod registry;
mod repair;
mod subscriber;
mod topics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

pub use crate::cache::Signal;
pub use crate::config::{
    FanoutConfig, DEFAULT_LINGER_SECONDS, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_MESSAGES,
    DEFAULT_SLOW_CONSUMER_LAGS, DEFAULT_SLOW_CONSUMER_WINDOW_SECONDS,
};
pub use crate::item::{envelope_len, write_envelope, Item, Topic};
pub use crate::publisher::{PublishError, Publisher};
pub use crate::registry::{RegistryEvents, TopicChange};
pub use crate::subscriber::{
    CacheReason, Delivery, LagCause, LagReport, SnapshotRequest, Subscriber, TopicError, Verdict,
};

/// The names of every metric the crate emits.
pub mod metric_names {
    pub use crate::metrics::{
        DELIVERED, DISCONNECTS, DROPPED, LAGS, PUBLISHED, PUBLISH_DURATION, QUEUE_BYTES, REJECTED,
        REPAIRS, SNAPSHOTS, SUBSCRIBERS, TOPICS, TRADES_LOST,
    };
}

use crate::cache::{Cache, Shared};
use crate::registry::RegistryShared;

/// How many wake groups parked subscribers are spread over (see [`Subscriber::signal`]).
pub const WAKE_GROUPS: usize = 32;

/// Builds a fanout: the one [`Publisher`], a cloneable [`Fanout`] handle to attach subscribers,
/// and the one [`RegistryEvents`] stream. `config` should have been validated
/// ([`FanoutConfig::validate`]); a zero `queue_messages` is treated as 1. `N` is the type of the
/// notices the publisher's owner sends in band ([`Publisher::notice`]); `()` when it sends none.
pub fn new<N: Send + Sync + 'static>(
    config: FanoutConfig,
) -> (Publisher<N>, Fanout<N>, RegistryEvents) {
    // The ring: the publisher holds the only strong sender; subscribers each hold a cursor.
    let (tx, _) = broadcast::channel(config.queue_messages.max(1));
    let registry = Arc::new(RegistryShared::new(config.linger()));
    let shared = Arc::new(Shared {
        config,
        tx: tx.downgrade(),
        notice: Mutex::new(None),
        wake: (0..WAKE_GROUPS)
            .map(|_| tokio::sync::Notify::new())
            .collect(),
        closed: std::sync::atomic::AtomicBool::new(false),
        cache: Mutex::new(Cache::default()),
        head: AtomicU64::new(0),
        next_group: std::sync::atomic::AtomicUsize::new(0),
        bytes_published: AtomicU64::new(0),
        registry: registry.clone(),
        metrics: crate::metrics::Metrics::new(),
    });
    (
        Publisher::new(shared.clone(), tx),
        Fanout { shared },
        RegistryEvents::new(registry),
    )
}

/// A handle on the fanout for the relay's connection tasks and status pages. Cheap to clone.
pub struct Fanout<N = ()> {
    shared: Arc<Shared<N>>,
}

impl<N> Clone for Fanout<N> {
    fn clone(&self) -> Self {
        Fanout {
            shared: self.shared.clone(),
        }
    }
}

impl<N: Send + Sync + 'static> Fanout<N> {
    /// A new subscriber with no topics, positioned at the head of the stream, in a wake group
    /// chosen in turn. Its first delivery is the latest notice, if one was ever sent.
    pub fn subscriber(&self) -> Subscriber<N> {
        let group = self.shared.next_group.fetch_add(1, Ordering::Relaxed) % WAKE_GROUPS;
        Subscriber::new(self.shared.clone(), group)
    }

    /// Wakes the parked subscribers of one wake group (`group % WAKE_GROUPS`), as a release
    /// would: each looks for deliveries and goes back to sleep if there are none. For the
    /// owner's own reasons to wake them (a timer shared by the group).
    pub fn wake(&self, group: usize) {
        self.shared.wake[group % WAKE_GROUPS].notify_waiters();
    }

    /// Wakes every parked subscriber (see [`Fanout::wake`]).
    pub fn wake_all(&self) {
        self.shared.wake_all();
    }

    /// The latest notice sent ([`Publisher::notice`]), if any.
    pub fn notice(&self) -> Option<Arc<N>> {
        self.shared.notice.lock().as_ref().map(|(_, n)| n.clone())
    }

    /// Every topic with at least one subscriber, with its count, sorted.
    pub fn topics(&self) -> Vec<(Topic, usize)> {
        self.shared.registry.topics()
    }

    /// The cached book of `market`, if it is synced (for readiness checks and status pages).
    pub fn book(&self, market: &str) -> Option<protocol::OrderBook> {
        let cache = self.shared.cache.lock();
        cache
            .markets
            .get(market)
            .filter(|m| m.book.is_synced())
            .map(|m| m.book.clone())
    }

    /// Whether the cached book of `market` is synced (cheaper than [`Fanout::book`]: no copy).
    pub fn is_synced(&self, market: &str) -> bool {
        let cache = self.shared.cache.lock();
        cache
            .markets
            .get(market)
            .is_some_and(|m| m.book.is_synced())
    }

    /// How many cached books are stale: they had a book, and await the snapshot that resets it.
    /// The cache is the relay's one record of book staleness.
    pub fn stale_books(&self) -> usize {
        let cache = self.shared.cache.lock();
        cache
            .markets
            .values()
            .filter(|m| m.book_no() > 0 && !m.book.is_synced())
            .count()
    }

    /// How many markets the cache holds (each one something was published for).
    pub fn cached_markets(&self) -> usize {
        self.shared.cache.lock().markets.len()
    }

    /// The markets the cache holds, sorted (the dashboard's market list).
    pub fn market_names(&self) -> Vec<String> {
        let mut names: Vec<String> = {
            let cache = self.shared.cache.lock();
            cache.markets.keys().map(|k| k.to_string()).collect()
        };
        names.sort_unstable();
        names
    }

    pub fn config(&self) -> &FanoutConfig {
        &self.shared.config
    }
}
