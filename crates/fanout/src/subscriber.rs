//! The subscribing side: one [`Subscriber`] per client connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use protocol::{Channel, MessageType};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

use crate::cache::{BookCut, Shared};
use crate::item::{Item, Topic};

/// What a subscriber receives, in order.
#[derive(Debug)]
pub enum Delivery {
    /// A message of the stream for one of the subscriber's topics. A reset snapshot (the end of a
    /// stale period) arrives this way; like every `orderbook_snapshot`, it replaces the book.
    Data(Arc<Item>),
    /// A book snapshot or a latest ticker from the cache (see [`CacheReason`]). Write it like
    /// [`Delivery::Data`]: it is the same kind of item.
    Cached {
        item: Arc<Item>,
        reason: CacheReason,
    },
    /// The book of `market` went stale (gap or upstream reconnect): no deltas for it until the
    /// reset snapshot, which arrives as [`Delivery::Data`].
    Stale { market: Arc<str> },
    /// The subscriber fell behind, skipped to the head of the stream and is being repaired: the
    /// [`CacheReason::Repair`] snapshots and tickers follow, before any further delta.
    Lagged(LagReport),
    /// The subscriber must be disconnected (the relay closes the client with 4008). This is the
    /// last delivery: [`Subscriber::recv`] returns `None` afterwards.
    Disconnect(Verdict),
}

/// Why a cached snapshot or ticker is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheReason {
    /// A topic was just added (book snapshot; ticker when asked for).
    Initial,
    /// [`Subscriber::request_snapshot`] (the client's `get_snapshot`).
    Requested,
    /// After a lag.
    Repair,
}

/// Why a subscriber lagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LagCause {
    /// More than `queue_messages` unread items.
    Messages,
    /// More than `queue_bytes` unread bytes.
    Bytes,
    /// An internal inconsistency (a topic's items not contiguous) was detected and repaired. Never
    /// expected; logged at error. Does not count toward the slow-consumer policy.
    Gap,
}

/// What a lag cost and how it was repaired (the relay's `relay_lagged` event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LagReport {
    pub cause: LagCause,
    /// Messages for this subscriber's topics that it will never receive (deltas made up for by the
    /// repair snapshots included).
    pub messages_lost: u64,
    /// Of those, trades: events, gone for good.
    pub trades_lost: u64,
    /// Books for which a repair snapshot follows.
    pub books_repaired: Vec<Arc<str>>,
    /// Books stale at the time of the repair: they resume with their reset snapshot.
    pub books_stale: Vec<Arc<str>>,
    /// Latest tickers that follow.
    pub tickers_repaired: usize,
}

/// Why a subscriber must be disconnected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Lagged more than `slow_consumer_lags` times within `slow_consumer_window_seconds`.
    SlowConsumer { lags: usize, window: Duration },
    /// A lag lost messages of a private channel (fill, user_orders, market_positions): they carry
    /// no seq and cannot be repaired, so the client must reconnect and reconcile.
    PrivateChannelLag {
        channel: Channel,
        messages_lost: u64,
    },
}

/// Outcome of [`Subscriber::request_snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotRequest {
    /// A cached snapshot is the next delivery.
    Queued,
    /// The book is stale: its reset snapshot will arrive in the stream.
    AwaitingReset,
}

/// Why a topic operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{0} topics must name a market")]
    MarketRequired(Channel),
    #[error("not subscribed to the book of {0}")]
    NotSubscribed(String),
    #[error("the subscriber was disconnected")]
    Disconnected,
}

#[derive(Clone, Copy, Debug, Default)]
struct TopicState {
    /// The topic's count of the last item delivered or covered by a snapshot.
    seen: u64,
    /// Book topics: stale, waiting for the reset snapshot.
    waiting_reset: bool,
}

type PerChannel = [Option<TopicState>; Channel::COUNT];

/// How often the unread-bytes histogram is sampled (1 in N received items).
const QUEUE_BYTES_SAMPLE: u32 = 64;
/// Delivered-message counts are flushed to the shared counter at most this far apart (and
/// before waiting), so subscribers on different cores do not contend on one atomic per message.
const DELIVERED_FLUSH: u64 = 256;

/// One client connection's view of the stream.
///
/// Owned by the connection's writer task; `recv` is cancel-safe, so it can sit in a `select!`.
/// Dropping it removes its topics from the registry.
pub struct Subscriber {
    shared: Arc<Shared>,
    /// This subscriber's cursor into the shared ring. The ring keeps `queue_messages` items; when
    /// this cursor falls further behind (or more than `queue_bytes` behind), it jumps to the head
    /// and the subscriber repairs itself from the cache.
    rx: broadcast::Receiver<Arc<Item>>,
    channel_wide: PerChannel,
    by_market: HashMap<Arc<str>, PerChannel>,
    /// Topics per channel (0 lets an item of another channel be skipped without a lookup).
    per_channel: [u32; Channel::COUNT],
    /// Deliveries made locally (cached snapshots, notices), emitted before the next stream item.
    /// Bounded by the number of topics (one snapshot or ticker per topic per event, plus notices).
    pending: VecDeque<Delivery>,
    /// A stream item read past the bound of [`Subscriber::try_recv_until`], handed out first
    /// by the next read.
    stash: Option<Arc<Item>>,
    /// Instants of recent lags, for the slow-consumer policy (at most `slow_consumer_lags + 1`).
    lags: VecDeque<Instant>,
    /// The stream ended or a verdict was given: `recv` yields what is pending, then `None`.
    done: bool,
    delivered: u64,
    received: u32,
}

impl Subscriber {
    pub(crate) fn new(shared: Arc<Shared>) -> Subscriber {
        let rx = match shared.tx.upgrade() {
            Some(tx) => tx.subscribe(),
            // The publisher is gone: a receiver of a closed channel ends at once.
            None => broadcast::channel(1).1,
        };
        Subscriber {
            shared,
            rx,
            channel_wide: Default::default(),
            by_market: HashMap::new(),
            per_channel: [0; Channel::COUNT],
            pending: VecDeque::new(),
            stash: None,
            lags: VecDeque::new(),
            done: false,
            delivered: 0,
            received: 0,
        }
    }

    /// Adds a topic. A book topic queues its snapshot from the cache at once (or, while the book is
    /// stale, waits for the reset snapshot); with `initial_ticker`, a ticker topic queues the
    /// latest ticker of its market (channel-wide: of every market). Stream items for the topic
    /// follow from the cut on: none twice, none missing. Returns false if already present.
    pub fn add(&mut self, topic: Topic, initial_ticker: bool) -> Result<bool, TopicError> {
        if self.done {
            return Err(TopicError::Disconnected);
        }
        if topic.channel.requires_market() && topic.market.is_none() {
            return Err(TopicError::MarketRequired(topic.channel));
        }
        if self.state_mut(&topic).is_some() {
            return Ok(false);
        }
        let is_book = topic.channel == Channel::OrderbookDelta;
        let cut = self
            .shared
            .cache
            .lock()
            .cut(&topic, is_book, initial_ticker);
        let mut state = TopicState {
            seen: cut.seen,
            waiting_reset: false,
        };
        let topic = Topic {
            channel: topic.channel,
            market: cut.market.clone().or(topic.market),
        };
        if let (Some(book), Some(market)) = (cut.book, &topic.market) {
            match book.into_item(&self.shared, market) {
                Some(item) => self.push_cached(item, CacheReason::Initial),
                None => state.waiting_reset = true,
            }
        }
        for item in cut.tickers {
            self.push_cached(item, CacheReason::Initial);
        }
        let ci = topic.channel.index();
        match &topic.market {
            None => self.channel_wide[ci] = Some(state),
            Some(m) => self.by_market.entry(m.clone()).or_default()[ci] = Some(state),
        }
        self.per_channel[ci] += 1;
        if self.per_channel[ci] == 1 {
            self.shared.metrics.subscribers[ci].increment(1.0);
        }
        self.shared.registry.add(&topic, &self.shared.metrics);
        Ok(true)
    }

    /// Removes a topic; queued cached deliveries for it are dropped. Returns false if absent.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let ci = topic.channel.index();
        let removed = match &topic.market {
            None => self.channel_wide[ci].take().is_some(),
            Some(m) => match self.by_market.get_mut(&**m) {
                Some(per) => {
                    let removed = per[ci].take().is_some();
                    if per.iter().all(Option::is_none) {
                        self.by_market.remove(&**m);
                    }
                    removed
                }
                None => false,
            },
        };
        if !removed {
            return false;
        }
        self.per_channel[ci] -= 1;
        if self.per_channel[ci] == 0 {
            self.shared.metrics.subscribers[ci].decrement(1.0);
        }
        self.shared.registry.remove(topic, &self.shared.metrics);
        let pending = std::mem::take(&mut self.pending);
        self.pending = pending
            .into_iter()
            .filter(|d| self.still_wanted(d))
            .collect();
        true
    }

    /// The subscriber's topics, sorted.
    pub fn topics(&self) -> Vec<Topic> {
        let mut out = Vec::new();
        for (ci, s) in self.channel_wide.iter().enumerate() {
            if s.is_some() {
                out.push(Topic::channel(Channel::ALL[ci]));
            }
        }
        for (m, per) in &self.by_market {
            for (ci, s) in per.iter().enumerate() {
                if s.is_some() {
                    out.push(Topic {
                        channel: Channel::ALL[ci],
                        market: Some(m.clone()),
                    });
                }
            }
        }
        out.sort();
        out
    }

    /// Queues a fresh snapshot of a subscribed book from the cache (the client's `get_snapshot`),
    /// in order with the stream: deltas it already covers are skipped, later ones follow.
    pub fn request_snapshot(&mut self, market: &str) -> Result<SnapshotRequest, TopicError> {
        if self.done {
            return Err(TopicError::Disconnected);
        }
        let ci = Channel::OrderbookDelta.index();
        let Some((name, Some(_))) = self
            .by_market
            .get_key_value(market)
            .map(|(k, v)| (k, v[ci]))
        else {
            return Err(TopicError::NotSubscribed(market.to_owned()));
        };
        let name = name.clone();
        let topic = Topic {
            channel: Channel::OrderbookDelta,
            market: Some(name.clone()),
        };
        let cut = self.shared.cache.lock().cut(&topic, true, false);
        let item = cut.book.and_then(|b| b.into_item(&self.shared, &name));
        let outcome = if item.is_some() {
            SnapshotRequest::Queued
        } else {
            SnapshotRequest::AwaitingReset
        };
        let state = self
            .by_market
            .get_mut(market)
            .and_then(|p| p[ci].as_mut())
            .expect("checked");
        state.seen = cut.seen;
        let newly_stale = item.is_none() && !state.waiting_reset;
        state.waiting_reset = item.is_none();
        match item {
            Some(item) => self.push_cached(item, CacheReason::Requested),
            // The cut covers a stale marker this subscriber has not seen yet: tell it here.
            None if newly_stale => self.pending.push_back(Delivery::Stale { market: name }),
            None => {}
        }
        Ok(outcome)
    }

    /// The next delivery, waiting for one. `None` once the stream has ended (the publisher was
    /// dropped and everything was drained) or after a [`Delivery::Disconnect`]. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if let Poll::Ready(d) = self.poll_ready(u64::MAX) {
                return d;
            }
            self.flush_metrics();
            // Park on the publisher's wake-up, registered before looking again: an item sent
            // and released in between is seen by the second look, a later one wakes us.
            let shared = Arc::clone(&self.shared);
            let woken = shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Poll::Ready(d) = self.poll_ready(u64::MAX) {
                return d;
            }
            woken.await;
        }
    }

    /// The next delivery if one is ready now; `None` when the subscriber is caught up with the
    /// stream (or it has ended: see [`Subscriber::is_done`]).
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.try_recv_until(u64::MAX)
    }

    /// Like [`Subscriber::try_recv`], but stops before a stream item published after `position`
    /// ([`Publisher::position`](crate::Publisher::position) at some moment): what was published
    /// up to then can be drained before acting on something that happened then. The item that
    /// stopped it is the next one delivered.
    pub fn try_recv_until(&mut self, position: u64) -> Option<Delivery> {
        match self.poll_ready(position) {
            Poll::Ready(d) => d,
            Poll::Pending => {
                self.flush_metrics();
                None
            }
        }
    }

    /// Whether the stream ended or a verdict was given.
    pub fn is_done(&self) -> bool {
        self.done && self.pending.is_empty() && self.stash.is_none()
    }

    /// The next delivery, not reading stream items past `limit`.
    fn poll_ready(&mut self, limit: u64) -> Poll<Option<Delivery>> {
        loop {
            if let Some(d) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    // Snapshots queue here when topics are added: once they are out, an idle
                    // subscriber keeps no buffer (10,000 of them would keep 10,000).
                    self.pending = VecDeque::new();
                }
                return Poll::Ready(Some(d));
            }
            if let Some(item) = self.stash.take() {
                if item.position > limit {
                    self.stash = Some(item);
                    return Poll::Pending;
                }
                match self.on_result(Ok(item)) {
                    Some(d) => return Poll::Ready(Some(d)),
                    None => continue,
                }
            }
            if self.done {
                return Poll::Ready(None);
            }
            let result = match self.rx.try_recv() {
                Ok(item) if item.position > limit => {
                    self.stash = Some(item);
                    return Poll::Pending;
                }
                Ok(item) => Ok(item),
                Err(TryRecvError::Empty) if self.shared.closed.load(Ordering::Acquire) => {
                    Err(RecvError::Closed)
                }
                Err(TryRecvError::Empty) => return Poll::Pending,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(d) = self.on_result(result) {
                return Poll::Ready(Some(d));
            }
        }
    }

    fn on_result(&mut self, result: Result<Arc<Item>, RecvError>) -> Option<Delivery> {
        match result {
            Ok(item) => self.on_item(item),
            // On purpose: the ring overwrote items this subscriber had not read. Repair.
            Err(RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, "subscriber lagged behind the ring");
                self.on_lag(LagCause::Messages);
                None
            }
            Err(RecvError::Closed) => {
                self.done = true;
                None
            }
        }
    }

    fn on_item(&mut self, item: Arc<Item>) -> Option<Delivery> {
        let cfg = &self.shared.config;
        let head = self.shared.head.load(Ordering::Acquire);
        if head.saturating_sub(item.position) >= cfg.queue_messages as u64 {
            self.on_lag(LagCause::Messages);
            return None;
        }
        let after = item.bytes_before + item.body.len() as u64;
        let unread = self
            .shared
            .bytes_published
            .load(Ordering::Acquire)
            .saturating_sub(after);
        self.received = self.received.wrapping_add(1);
        if self.received % QUEUE_BYTES_SAMPLE == 0 {
            self.shared.metrics.queue_bytes.record(unread as f64);
        }
        if unread > cfg.queue_bytes {
            self.on_lag(LagCause::Bytes);
            return None;
        }
        let ci = item.channel.index();
        if self.per_channel[ci] == 0 {
            return None;
        }
        let mut deliver = false;
        let mut stale = false;
        let mut gap = false;
        if let Some(state) = &mut self.channel_wide[ci] {
            if item.channel_no > state.seen {
                gap |= item.channel_no != state.seen + 1;
                state.seen = item.channel_no;
                deliver = true;
            }
        }
        if let Some(state) = item
            .market
            .as_deref()
            .and_then(|m| self.by_market.get_mut(m))
            .and_then(|p| p[ci].as_mut())
        {
            if item.topic_no > state.seen {
                gap |= item.topic_no != state.seen + 1;
                state.seen = item.topic_no;
                if item.channel != Channel::OrderbookDelta {
                    deliver = true;
                } else if item.stale {
                    state.waiting_reset = true;
                    stale = true;
                } else if item.kind == MessageType::OrderbookSnapshot {
                    state.waiting_reset = false;
                    deliver = true;
                } else {
                    deliver = !state.waiting_reset;
                }
            }
        }
        if gap {
            tracing::error!(
                position = item.position,
                "fanout items not contiguous; repairing"
            );
            debug_assert!(false, "items not contiguous at {item:?}");
            self.on_lag(LagCause::Gap);
            return None;
        }
        if stale {
            let market = item.market.clone().expect("stale markers name a market");
            return Some(Delivery::Stale { market });
        }
        if deliver && !item.stale {
            self.delivered += 1;
            if self.delivered >= DELIVERED_FLUSH {
                self.flush_metrics();
            }
            return Some(Delivery::Data(item));
        }
        None
    }

    /// Skips to the head of the stream, then either gives the verdict or repairs every topic from
    /// one consistent cut of the cache.
    fn on_lag(&mut self, cause: LagCause) {
        // Everything still unread is older than the cut below: skip it. Items published after
        // this line are all newer than the cut, so they reach the new cursor.
        self.rx = self.rx.resubscribe();
        let m = &self.shared.metrics;
        match cause {
            LagCause::Messages => m.lags_messages.increment(1),
            LagCause::Bytes => m.lags_bytes.increment(1),
            LagCause::Gap => {}
        }
        let window = self.shared.config.slow_consumer_window();
        if cause != LagCause::Gap {
            let now = Instant::now();
            self.lags.push_back(now);
            while self
                .lags
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                self.lags.pop_front();
            }
        }

        // One cut for every topic: counts (what was lost), books, tickers.
        let mut report = LagReport {
            cause,
            messages_lost: 0,
            trades_lost: 0,
            books_repaired: Vec::new(),
            books_stale: Vec::new(),
            tickers_repaired: 0,
        };
        let mut private_lost: Option<(Channel, u64)> = None;
        let mut books = Vec::new();
        let mut tickers = Vec::new();
        let mut newly_stale = Vec::new();
        {
            let mut cache = self.shared.cache.lock();
            let mut account = |topic: Topic, state: &mut TopicState, report: &mut LagReport| {
                let is_book = topic.channel == Channel::OrderbookDelta;
                let cut = cache.cut(&topic, is_book, true);
                let lost = cut.seen - state.seen;
                state.seen = cut.seen;
                report.messages_lost += lost;
                if topic.channel == Channel::Trade {
                    report.trades_lost += lost;
                }
                if topic.channel.is_private() && lost > 0 && private_lost.is_none() {
                    private_lost = Some((topic.channel, lost));
                }
                if let (Some(book), Some(market)) = (cut.book, topic.market) {
                    if let BookCut::Stale = book {
                        if !state.waiting_reset {
                            newly_stale.push(market.clone());
                        }
                        state.waiting_reset = true;
                        report.books_stale.push(market);
                    } else {
                        state.waiting_reset = false;
                        report.books_repaired.push(market.clone());
                        books.push((book, market));
                    }
                }
                tickers.extend(cut.tickers);
            };
            for (ci, slot) in self.channel_wide.iter_mut().enumerate() {
                if let Some(state) = slot {
                    account(Topic::channel(Channel::ALL[ci]), state, &mut report);
                }
            }
            for (market, per) in self.by_market.iter_mut() {
                for (ci, slot) in per.iter_mut().enumerate() {
                    if let Some(state) = slot {
                        let topic = Topic {
                            channel: Channel::ALL[ci],
                            market: Some(market.clone()),
                        };
                        account(topic, state, &mut report);
                    }
                }
            }
        }
        m.dropped.increment(report.messages_lost);
        m.trades_lost.increment(report.trades_lost);

        if let Some((channel, messages_lost)) = private_lost {
            tracing::debug!(%channel, messages_lost, "subscriber lost private messages");
            return self.disconnect(Verdict::PrivateChannelLag {
                channel,
                messages_lost,
            });
        }
        let limit = self.shared.config.slow_consumer_lags as usize;
        if self.lags.len() > limit {
            tracing::debug!(lags = self.lags.len(), "slow consumer");
            return self.disconnect(Verdict::SlowConsumer {
                lags: self.lags.len(),
                window,
            });
        }

        report.tickers_repaired = tickers.len();
        report.books_repaired.sort();
        report.books_stale.sort();
        m.repairs_book.increment(report.books_repaired.len() as u64);
        m.repairs_ticker.increment(tickers.len() as u64);
        tracing::debug!(?report, "subscriber lagged; repairing");
        self.pending.push_back(Delivery::Lagged(report));
        for market in newly_stale {
            self.pending.push_back(Delivery::Stale { market });
        }
        for (book, market) in books {
            if let Some(item) = book.into_item(&self.shared, &market) {
                self.push_cached(item, CacheReason::Repair);
            }
        }
        for item in tickers {
            self.push_cached(item, CacheReason::Repair);
        }
    }

    fn disconnect(&mut self, verdict: Verdict) {
        let m = &self.shared.metrics;
        match verdict {
            Verdict::SlowConsumer { .. } => m.disconnects_slow.increment(1),
            Verdict::PrivateChannelLag { .. } => m.disconnects_private.increment(1),
        }
        for topic in self.topics() {
            self.remove(&topic);
        }
        self.pending.clear();
        self.pending.push_back(Delivery::Disconnect(verdict));
        self.done = true;
    }

    fn push_cached(&mut self, item: Arc<Item>, reason: CacheReason) {
        if item.channel == Channel::OrderbookDelta {
            let r = match reason {
                CacheReason::Initial => 0,
                CacheReason::Requested => 1,
                CacheReason::Repair => 2,
            };
            self.shared.metrics.snapshots[r].increment(1);
        }
        self.pending.push_back(Delivery::Cached { item, reason });
    }

    fn state_mut(&mut self, topic: &Topic) -> Option<&mut TopicState> {
        let ci = topic.channel.index();
        match &topic.market {
            None => self.channel_wide[ci].as_mut(),
            Some(m) => self.by_market.get_mut(&**m).and_then(|p| p[ci].as_mut()),
        }
    }

    /// Whether a queued delivery still belongs to one of the topics.
    fn still_wanted(&self, d: &Delivery) -> bool {
        let has = |channel: Channel, market: Option<&str>| {
            let ci = channel.index();
            self.channel_wide[ci].is_some()
                || market
                    .and_then(|m| self.by_market.get(m))
                    .is_some_and(|p| p[ci].is_some())
        };
        match d {
            Delivery::Cached { item, .. } | Delivery::Data(item) => {
                has(item.channel, item.market())
            }
            Delivery::Stale { market } => has(Channel::OrderbookDelta, Some(market)),
            Delivery::Lagged(_) | Delivery::Disconnect(_) => true,
        }
    }

    fn flush_metrics(&mut self) {
        if self.delivered > 0 {
            self.shared.metrics.delivered.increment(self.delivered);
            self.delivered = 0;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.flush_metrics();
        for topic in self.topics() {
            self.remove(&topic);
        }
    }
}
