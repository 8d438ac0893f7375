//! The publishing side: one [`Publisher`], fed by one task in exchange order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use protocol::{BookError, Channel, MessageType, OrderbookDelta, OrderbookSnapshot};
use tokio::sync::broadcast;

use crate::cache::{Cache, Shared, ALL_GROUPS};
use crate::item::{Entry, Item, Payload};
use crate::metrics::Metrics;

/// Why a book message was not published. Nothing was sent and, except where said, nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A delta for a book that is stale or has had no snapshot yet: dropped (the reset snapshot
    /// that ends the stale period makes it unnecessary).
    #[error("delta for {market} while its book awaits a snapshot")]
    NotSynced { market: String },
    /// A delta that does not fit the book (a level would go negative, or it names no price or no
    /// size). The book can no longer be trusted: it was marked stale (subscribers were told) and
    /// the caller should ask upstream for a fresh snapshot.
    #[error("delta refused, book of {market} marked stale")]
    Inconsistent {
        market: String,
        #[source]
        source: BookError,
    },
    /// The message's `market_ticker` differs from the market it was published for.
    #[error(transparent)]
    WrongMarket(BookError),
}

/// Feeds the fanout. There is exactly one (it is not `Clone`, and every method takes `&mut self`),
/// so items enter the stream in the order of the calls: the upstream's order.
///
/// Every call is non-blocking and O(1) in the number of subscribers: it updates the cache under
/// its lock, releases it, then appends one `Arc<Item>` to the shared ring and wakes the
/// subscribers parked on it. It never waits for a subscriber. Dropping the publisher ends the
/// stream: every subscriber drains what it has and then sees the end.
///
/// After [`Publisher::hold`], items are appended without waking anyone until
/// [`Publisher::release`]: a batch of items then costs each parked subscriber one wake-up, and
/// it finds the whole batch ready. A subscriber that is awake reads held items as usual.
pub struct Publisher<N = ()> {
    shared: Arc<Shared<N>>,
    /// The only strong sender of the ring (the ring itself is sized by
    /// `FanoutConfig::queue_messages`; when full, the oldest item is overwritten and subscribers
    /// that had not read it are lagged, which they repair on their own).
    tx: broadcast::Sender<Entry<N>>,
    /// Position of the last item published.
    position: u64,
    /// Bytes of bodies published so far.
    bytes: u64,
    /// Stamped on the items published next (see [`Publisher::set_received_at`]).
    received_at: Option<std::time::Instant>,
    /// Items wake parked subscribers only on [`Publisher::release`].
    holding: bool,
    /// Items sent since the last release.
    unreleased: usize,
    /// Body bytes of those items: what a parked subscriber finds unread when woken.
    unreleased_bytes: u64,
    /// The wake groups those items concern.
    unreleased_wake: u32,
    /// Items and body bytes sent since every group was last woken.
    since_all: (usize, u64),
}

impl<N> Publisher<N> {
    pub(crate) fn new(shared: Arc<Shared<N>>, tx: broadcast::Sender<Entry<N>>) -> Publisher<N> {
        Publisher {
            shared,
            tx,
            position: 0,
            bytes: 0,
            received_at: None,
            holding: false,
            unreleased: 0,
            unreleased_bytes: 0,
            unreleased_wake: 0,
            since_all: (0, 0),
        }
    }

    /// From now on, items wake parked subscribers only when [`Publisher::release`] is called.
    /// The caller must release well before the held items approach either bound of the ring
    /// (`FanoutConfig::queue_messages`, `queue_bytes`: see [`Publisher::unreleased`] and
    /// [`Publisher::unreleased_bytes`]), or subscribers parked meanwhile wake up lagged.
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Wakes the subscribers parked since the last release that the items sent since concern:
    /// they find every item sent since.
    pub fn release(&mut self) {
        if self.unreleased > 0 {
            self.unreleased = 0;
            self.unreleased_bytes = 0;
            self.shared
                .wake_groups(std::mem::take(&mut self.unreleased_wake));
        }
    }

    /// Items sent since the last release (always 0 unless holding).
    pub fn unreleased(&self) -> usize {
        self.unreleased
    }

    /// Body bytes of the items sent since the last release (always 0 unless holding).
    pub fn unreleased_bytes(&self) -> u64 {
        self.unreleased_bytes
    }

    /// Position of the last item published (0 before the first).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Publishes a book snapshot (first one, or the reset after a stale period): the cached book is
    /// replaced, and subscribers waiting for the reset get it. Returns the item's position.
    pub fn snapshot(
        &mut self,
        market: &str,
        snapshot: OrderbookSnapshot,
        body: Bytes,
    ) -> Result<u64, PublishError> {
        let start = Instant::now();
        let item = {
            let mut guard = self.shared.cache.lock();
            let cache = &mut *guard;
            let m = cache.market_mut(market);
            m.book
                .apply_snapshot(&snapshot)
                .map_err(PublishError::WrongMarket)?;
            let item = self.number(
                cache,
                Channel::OrderbookDelta,
                MessageType::OrderbookSnapshot,
                Some(market),
                body,
                Payload::Snapshot(snapshot),
            );
            let m = cache.market_mut(market);
            m.book_position = item.position;
            // The exchange's own body is the book as it now is: serve it to new subscribers.
            m.book_item = Some(item.clone());
            item
        };
        Ok(self.send_item(item, start))
    }

    /// Publishes a delta after applying it to the cached book. A delta that does not apply is
    /// not published (see [`PublishError`]). Returns the item's position.
    pub fn delta(
        &mut self,
        market: &str,
        delta: OrderbookDelta,
        body: Bytes,
    ) -> Result<u64, PublishError> {
        let start = Instant::now();
        let result = {
            let mut guard = self.shared.cache.lock();
            let cache = &mut *guard;
            let m = cache.market_mut(market);
            if !m.book.is_synced() {
                Metrics::rejected("not_synced");
                return Err(PublishError::NotSynced {
                    market: market.to_owned(),
                });
            }
            match m.book.apply_delta(&delta) {
                Ok(()) => {
                    let item = self.number(
                        cache,
                        Channel::OrderbookDelta,
                        MessageType::OrderbookDelta,
                        Some(market),
                        body,
                        Payload::Delta(delta),
                    );
                    cache.market_mut(market).book_position = item.position;
                    Ok(item)
                }
                Err(e @ BookError::WrongMarket { .. }) => {
                    Metrics::rejected("wrong_market");
                    return Err(PublishError::WrongMarket(e));
                }
                Err(source) => {
                    Metrics::rejected("inconsistent");
                    tracing::warn!(market, error = %source, "delta does not fit the cached book; marking it stale");
                    let marker = self.stale_marker(cache, market);
                    Err((marker, source))
                }
            }
        };
        match result {
            Ok(item) => Ok(self.send_item(item, start)),
            Err((marker, source)) => {
                if let Some(marker) = marker {
                    self.send_item(marker, start);
                }
                Err(PublishError::Inconsistent {
                    market: market.to_owned(),
                    source,
                })
            }
        }
    }

    /// Publishes any other data message (ticker, trade, fill, user_order, market_position,
    /// lifecycle, or a type this crate does not know). The latest `ticker` of each market is
    /// cached for subscribers that ask for an initial ticker and for repairs. Returns the position.
    pub fn message(
        &mut self,
        channel: Channel,
        market: Option<&str>,
        kind: MessageType,
        body: Bytes,
    ) -> u64 {
        let start = Instant::now();
        let item = {
            let mut guard = self.shared.cache.lock();
            let cache = &mut *guard;
            let is_ticker = kind == MessageType::Ticker;
            let item = self.number(cache, channel, kind, market, body, Payload::None);
            if let (true, Some(market)) = (is_ticker, market) {
                cache.market_mut(market).ticker = Some(item.clone());
            }
            item
        };
        self.send_item(item, start)
    }

    /// Sends `notice` to every subscriber, in order with the messages (see the crate docs,
    /// "Notices"). Like an item, it wakes parked subscribers at once unless holding. Returns
    /// its position.
    pub fn notice(&mut self, notice: N) -> u64 {
        let start = Instant::now();
        let notice = Arc::new(notice);
        let number = {
            let mut latest = self.shared.notice.lock();
            let number = latest.as_ref().map_or(1, |(n, _)| n + 1);
            *latest = Some((number, notice.clone()));
            number
        };
        let position = self.position + 1;
        self.send(
            Entry::Notice {
                position,
                number,
                notice,
            },
            start,
        );
        position
    }

    /// The latest notice sent, if any.
    pub fn last_notice(&self) -> Option<Arc<N>> {
        self.shared.notice.lock().as_ref().map(|(_, n)| n.clone())
    }

    /// Marks books stale (a sequence gap, or the upstream connection was lost): subscribers get
    /// no more deltas for them until the reset snapshot, and are told in order with the stream.
    /// Books already stale (or never synced) are left as they are.
    pub fn mark_stale<S: AsRef<str>>(&mut self, markets: impl IntoIterator<Item = S>) {
        for market in markets {
            let start = Instant::now();
            let marker = {
                let mut cache = self.shared.cache.lock();
                self.stale_marker(&mut cache, market.as_ref())
            };
            if let Some(marker) = marker {
                self.send_item(marker, start);
            }
        }
    }

    /// Marks every cached book stale (the upstream reconnected: every sid is new).
    pub fn mark_all_stale(&mut self) {
        let markets: Vec<Arc<str>> = {
            let cache = self.shared.cache.lock();
            cache
                .markets
                .values()
                .filter(|m| m.book.is_synced())
                .map(|m| m.name.clone())
                .collect()
        };
        self.mark_stale(markets.iter().map(|m| &**m));
    }

    /// Desyncs the book of `market` and numbers a stale marker for it (None when already stale).
    fn stale_marker(&self, cache: &mut Cache, market: &str) -> Option<Arc<Item>> {
        let m = cache.market_mut(market);
        if !m.book.is_synced() {
            return None;
        }
        m.book.desync();
        m.book_item = None;
        let mut item = self.number_raw(
            cache,
            Channel::OrderbookDelta,
            MessageType::Other(String::new()),
            Some(market),
            Bytes::new(),
            Payload::None,
        );
        item.stale = true;
        let item = Arc::new(item);
        cache.market_mut(market).book_position = item.position;
        Some(item)
    }

    fn number(
        &self,
        cache: &mut Cache,
        channel: Channel,
        kind: MessageType,
        market: Option<&str>,
        body: Bytes,
        payload: Payload,
    ) -> Arc<Item> {
        Arc::new(self.number_raw(cache, channel, kind, market, body, payload))
    }

    /// Gives the next item its position and counts; called under the cache lock, so the counts a
    /// subscriber reads from the cache always match what the stream carries.
    fn number_raw(
        &self,
        cache: &mut Cache,
        channel: Channel,
        kind: MessageType,
        market: Option<&str>,
        body: Bytes,
        payload: Payload,
    ) -> Item {
        let ci = channel.index();
        cache.channel_counts[ci] += 1;
        let channel_no = cache.channel_counts[ci];
        let (market, topic_no) = match market {
            Some(name) => {
                let m = cache.market_mut(name);
                m.counts[ci] += 1;
                (Some(m.name.clone()), m.counts[ci])
            }
            None => (None, channel_no),
        };
        let wake = cache.wake_mask(channel, market.as_deref());
        let position = self.position + 1;
        let mut item = Item::new(
            position, channel, kind, market, body, topic_no, channel_no, self.bytes, payload,
        );
        item.received_at = self.received_at;
        item.wake = wake;
        item
    }

    /// When the messages published next arrived from upstream: stamped on their items so the
    /// relay can measure its latency from upstream arrival to client write.
    pub fn set_received_at(&mut self, at: Option<std::time::Instant>) {
        self.received_at = at;
    }

    fn send_item(&mut self, item: Arc<Item>, start: Instant) -> u64 {
        self.send(Entry::Item(item), start)
    }

    /// Appends to the ring (outside the cache lock: the wake-ups happen here).
    fn send(&mut self, entry: Entry<N>, start: Instant) -> u64 {
        // An item wakes the groups with a subscriber of its topic; a notice is for everyone.
        let (position, len, channel, mut wake) = match &entry {
            Entry::Item(item) => (
                item.position,
                item.body.len() as u64,
                Some(item.channel),
                item.wake,
            ),
            Entry::Notice { position, .. } => (*position, 0, None, ALL_GROUPS),
        };
        self.position = position;
        self.bytes += len;
        self.shared.head.store(self.position, Ordering::Release);
        self.shared
            .bytes_published
            .store(self.bytes, Ordering::Release);
        // Every group is woken at least once per half ring, so a subscriber whose topics are
        // quiet reads past the others' items before the ring overwrites them (a lag with
        // nothing of its own lost would be harmless, but a busy topic of its own among them
        // would cost it a repair).
        self.since_all.0 += 1;
        self.since_all.1 += len;
        let cfg = &self.shared.config;
        if self.since_all.0 * 2 >= cfg.queue_messages || self.since_all.1 * 2 >= cfg.queue_bytes {
            wake = ALL_GROUPS;
        }
        if wake == ALL_GROUPS {
            self.since_all = (0, 0);
        }
        // Err only when no subscriber exists: nobody to deliver to, and the cache is up to date.
        let _ = self.tx.send(entry);
        if self.holding {
            self.unreleased += 1;
            self.unreleased_bytes += len;
            self.unreleased_wake |= wake;
        } else {
            self.shared.wake_groups(wake);
        }
        let m = &self.shared.metrics;
        if let Some(channel) = channel {
            m.published[channel.index()].increment(1);
        }
        m.publish_duration.record(start.elapsed().as_secs_f64());
        self.position
    }
}

impl<N> Drop for Publisher<N> {
    /// Ends the stream: the parked subscribers are woken and, once they find the ring empty,
    /// see the end (the sender itself is dropped right after).
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake_all();
    }
}
