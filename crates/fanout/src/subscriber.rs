//! The subscribing side: one [`Subscriber`] per client connection.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use protocol::Channel;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

use crate::cache::{Shared, Signal};
use crate::item::{Entry, Item, Topic};
use crate::repair::Repair;
use crate::topics::{Decision, TopicState, TopicTable};

/// What a subscriber receives, in order.
#[derive(Debug)]
pub enum Delivery<N = ()> {
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
    /// The subscriber must be disconnected (the relay closes the client with 1013). This is the
    /// last delivery: [`Subscriber::recv`] returns `None` afterwards.
    Disconnect(Verdict),
    /// A notice of the publisher's owner ([`Publisher::notice`](crate::Publisher::notice)), in
    /// order with the messages; or, first thing and after a lag, the latest one.
    Notice(Arc<N>),
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

/// How often the unread-bytes histogram is sampled (1 in N received items).
const QUEUE_BYTES_SAMPLE: u32 = 64;
/// Delivered-message counts are flushed to the shared counter at most this far apart (and
/// before waiting), so subscribers on different cores do not contend on one atomic per message.
const DELIVERED_FLUSH: u64 = 256;

/// One client connection's view of the stream.
///
/// Owned by the connection's writer task; `recv` is cancel-safe, so it can sit in a `select!`.
/// Dropping it removes its topics from the registry.
pub struct Subscriber<N = ()> {
    shared: Arc<Shared<N>>,
    /// This subscriber's cursor into the shared ring. The ring keeps `queue_messages` items; when
    /// this cursor falls further behind (or more than `queue_bytes` behind), it jumps to the head
    /// and the subscriber repairs itself from the cache.
    rx: broadcast::Receiver<Entry<N>>,
    topics: TopicTable,
    /// Deliveries made locally (cached snapshots, notices), emitted before the next stream item.
    /// Bounded by the number of topics (one snapshot or ticker per topic per event, plus notices).
    pending: VecDeque<Delivery<N>>,
    /// The number of the last notice delivered (0: none): older ones met in the ring are skipped.
    notice_seen: u64,
    /// Instants of recent lags, for the slow-consumer policy (at most `slow_consumer_lags + 1`).
    lags: VecDeque<Instant>,
    /// The stream ended or a verdict was given: `recv` yields what is pending, then `None`.
    done: bool,
    delivered: u64,
    received: u32,
    /// The wake group this subscriber parks in.
    group: usize,
    /// The position of the last entry read from the ring (0: unknown, at the start and after a
    /// lag). When it is the publisher's head, nothing is unread: the ring is not asked.
    read: u64,
}

impl<N> Subscriber<N> {
    pub(crate) fn new(shared: Arc<Shared<N>>, group: usize) -> Subscriber<N> {
        let rx = match shared.tx.upgrade() {
            Some(tx) => tx.subscribe(),
            // The publisher is gone: a receiver of a closed channel ends at once.
            None => broadcast::channel(1).1,
        };
        let mut sub = Subscriber {
            shared,
            rx,
            topics: TopicTable::default(),
            pending: VecDeque::new(),
            notice_seen: 0,
            lags: VecDeque::new(),
            done: false,
            delivered: 0,
            received: 0,
            group,
            read: 0,
        };
        // After the cursor exists: a notice sent from here on is in the ring (and skipped there
        // if it is this one).
        sub.catch_up_notice();
        sub
    }

    /// Queues the latest notice if this subscriber has not had it.
    fn catch_up_notice(&mut self) {
        let latest = self.shared.notice.lock().clone();
        if let Some((number, notice)) = latest {
            if number > self.notice_seen {
                self.notice_seen = number;
                self.pending.push_back(Delivery::Notice(notice));
            }
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
        if self.topics.get_mut(&topic).is_some() {
            return Ok(false);
        }
        let is_book = topic.channel == Channel::OrderbookDelta;
        // The cut and the interest together: every item numbered after the cut wakes this
        // subscriber's group.
        let (cut, topic) = {
            let mut cache = self.shared.cache.lock();
            let cut = cache.cut(&topic, is_book, initial_ticker);
            let topic = Topic {
                channel: topic.channel,
                market: cut.market.clone().or(topic.market),
            };
            cache.interested(&topic, self.group);
            (cut, topic)
        };
        let mut state = TopicState {
            seen: cut.seen,
            waiting_reset: false,
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
        if self.topics.insert(&topic, state) {
            self.shared.metrics.subscribers[topic.channel.index()].increment(1.0);
        }
        self.shared.registry.add(&topic, &self.shared.metrics);
        Ok(true)
    }

    /// Removes a topic; queued cached deliveries for it are dropped. Returns false if absent.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let Some(last_of_channel) = self.topics.remove(topic) else {
            return false;
        };
        if last_of_channel {
            self.shared.metrics.subscribers[topic.channel.index()].decrement(1.0);
        }
        self.shared.cache.lock().uninterested(topic, self.group);
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
        self.topics.topics()
    }

    /// Queues a fresh snapshot of a subscribed book from the cache (the client's `get_snapshot`),
    /// in order with the stream: deltas it already covers are skipped, later ones follow.
    pub fn request_snapshot(&mut self, market: &str) -> Result<SnapshotRequest, TopicError> {
        if self.done {
            return Err(TopicError::Disconnected);
        }
        let Some(name) = self.topics.book(market) else {
            return Err(TopicError::NotSubscribed(market.to_owned()));
        };
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
        let state = self.topics.get_mut(&topic).expect("checked");
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
    pub async fn recv(&mut self) -> Option<Delivery<N>> {
        loop {
            if let Poll::Ready(d) = self.poll_ready() {
                return d;
            }
            self.flush_metrics();
            // Park on the publisher's wake-up, registered before looking again: an item sent
            // and released in between is seen by the second look, a later one wakes us.
            let shared = Arc::clone(&self.shared);
            let woken = shared.wake[self.group].notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Poll::Ready(d) = self.poll_ready() {
                return d;
            }
            woken.await;
        }
    }

    /// Where this subscriber parks, for a task that waits on it together with other things of
    /// the same group: enable a `notified()`, look with [`Subscriber::try_recv`], then wait.
    pub fn signal(&self) -> Signal {
        Signal::new(&self.shared, self.group)
    }

    /// The next delivery if one is ready now; `None` when the subscriber is caught up with the
    /// stream (or it has ended: see [`Subscriber::is_done`]).
    pub fn try_recv(&mut self) -> Option<Delivery<N>> {
        match self.poll_ready() {
            Poll::Ready(d) => d,
            Poll::Pending => {
                self.flush_metrics();
                None
            }
        }
    }

    /// Whether the stream ended or a verdict was given.
    pub fn is_done(&self) -> bool {
        self.done && self.pending.is_empty()
    }

    /// The next delivery.
    fn poll_ready(&mut self) -> Poll<Option<Delivery<N>>> {
        loop {
            if let Some(d) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    // Snapshots queue here when topics are added: once they are out, an idle
                    // subscriber keeps no buffer (10,000 of them would keep 10,000).
                    self.pending = VecDeque::new();
                }
                return Poll::Ready(Some(d));
            }
            if self.done {
                return Poll::Ready(None);
            }
            // The head is stored before an entry is sent: an entry past `read` raises it first.
            if self.read != 0
                && self.read >= self.shared.head.load(Ordering::Acquire)
                && !self.shared.closed.load(Ordering::Acquire)
            {
                return Poll::Pending;
            }
            let result = match self.rx.try_recv() {
                Ok(Entry::Item(item)) => {
                    self.read = item.position;
                    Ok(item)
                }
                Ok(Entry::Notice {
                    position,
                    number,
                    notice,
                }) => {
                    self.read = position;
                    if number > self.notice_seen {
                        self.notice_seen = number;
                        return Poll::Ready(Some(Delivery::Notice(notice)));
                    }
                    continue;
                }
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

    fn on_result(&mut self, result: Result<Arc<Item>, RecvError>) -> Option<Delivery<N>> {
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

    fn on_item(&mut self, item: Arc<Item>) -> Option<Delivery<N>> {
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
        match self.topics.classify(&item) {
            Decision::Gap => {
                tracing::error!(
                    position = item.position,
                    "fanout items not contiguous; repairing"
                );
                debug_assert!(false, "items not contiguous at {item:?}");
                self.on_lag(LagCause::Gap);
                None
            }
            Decision::Stale => {
                let market = item.market.clone().expect("stale markers name a market");
                Some(Delivery::Stale { market })
            }
            Decision::Deliver => {
                self.delivered += 1;
                if self.delivered >= DELIVERED_FLUSH {
                    self.flush_metrics();
                }
                Some(Delivery::Data(item))
            }
            Decision::Unwanted | Decision::Covered | Decision::AwaitingReset => None,
        }
    }

    /// Skips to the head of the stream, then either gives the verdict or repairs every topic from
    /// one consistent cut of the cache.
    fn on_lag(&mut self, cause: LagCause) {
        // Everything still unread is older than the cut below: skip it. Items published after
        // this line are all newer than the cut, so they reach the new cursor.
        self.rx = self.rx.resubscribe();
        self.read = 0;

        // One cut for every topic: counts (what was lost), books, tickers.
        let mut repair = Repair::new(cause);
        {
            let mut cache = self.shared.cache.lock();
            for (topic, state) in self.topics.iter_mut() {
                let is_book = topic.channel == Channel::OrderbookDelta;
                let cut = cache.cut(&topic, is_book, true);
                repair.account(topic, state, cut);
            }
        }
        if cause != LagCause::Gap && repair.lost_nothing() {
            // Parked while only other topics' items went by (items wake only the groups of
            // their topic): nothing to repair, and not a slow consumer.
            self.catch_up_notice();
            return;
        }
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
        m.dropped.increment(repair.messages_lost());
        m.trades_lost.increment(repair.trades_lost());

        if let Some(verdict) = repair.private_loss() {
            tracing::debug!(?verdict, "subscriber lost private messages");
            return self.disconnect(verdict);
        }
        let limit = self.shared.config.slow_consumer_lags as usize;
        if self.lags.len() > limit {
            tracing::debug!(lags = self.lags.len(), "slow consumer");
            return self.disconnect(Verdict::SlowConsumer {
                lags: self.lags.len(),
                window,
            });
        }

        let plan = repair.finish();
        m.repairs_book
            .increment(plan.report.books_repaired.len() as u64);
        m.repairs_ticker.increment(plan.tickers.len() as u64);
        tracing::debug!(report = ?plan.report, "subscriber lagged; repairing");
        self.pending.push_back(Delivery::Lagged(plan.report));
        // What the skipped notices said, summed up by the latest one (read after the cursor
        // moved, like the cut).
        self.catch_up_notice();
        for market in plan.newly_stale {
            self.pending.push_back(Delivery::Stale { market });
        }
        for (book, market) in plan.books {
            if let Some(item) = book.into_item(&self.shared, &market) {
                self.push_cached(item, CacheReason::Repair);
            }
        }
        for item in plan.tickers {
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

    /// Whether a queued delivery still belongs to one of the topics.
    fn still_wanted(&self, d: &Delivery<N>) -> bool {
        match d {
            Delivery::Cached { item, .. } | Delivery::Data(item) => {
                self.topics.wants(item.channel, item.market())
            }
            Delivery::Stale { market } => self.topics.wants(Channel::OrderbookDelta, Some(market)),
            Delivery::Lagged(_) | Delivery::Disconnect(_) | Delivery::Notice(_) => true,
        }
    }

    fn flush_metrics(&mut self) {
        if self.delivered > 0 {
            self.shared.metrics.delivered.increment(self.delivered);
            self.delivered = 0;
        }
    }
}

impl<N> Drop for Subscriber<N> {
    fn drop(&mut self) {
        self.flush_metrics();
        for topic in self.topics() {
            self.remove(&topic);
        }
    }
}
