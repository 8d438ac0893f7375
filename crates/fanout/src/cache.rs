//! The state cache: per market the current book, the latest ticker and the per-channel item
//! counts, plus the per-channel counts for channel-wide topics. One lock guards all of it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::{Channel, MessageType, OrderBook};
use tokio::sync::broadcast;

use crate::config::FanoutConfig;
use crate::item::{Entry, Item, Payload, Topic};
use crate::metrics::Metrics;
use crate::registry::RegistryShared;
use crate::WAKE_GROUPS;

/// What the publisher and every subscriber share.
pub(crate) struct Shared<N> {
    pub config: FanoutConfig,
    /// A weak handle on the stream ring, to attach new subscribers. The only strong
    /// [`broadcast::Sender`] is the [`Publisher`](crate::Publisher)'s: when it is dropped, every
    /// subscriber drains what is left and then sees the end of the stream.
    pub tx: broadcast::WeakSender<Entry<N>>,
    /// The latest notice with its number, kept for subscribers that start or skip ahead after it
    /// was sent: they are handed it instead. Written by the publisher before it sends the notice.
    pub notice: Mutex<Option<(u64, Arc<N>)>>,
    /// Parked subscribers wait here, not on the ring, each in one of [`WAKE_GROUPS`] groups:
    /// the publisher wakes the groups its items concern ([`Cache::wake_mask`]) when it releases
    /// them ([`Publisher::release`](crate::Publisher::release)), so a batch of items costs each
    /// subscriber of their topics one wake-up; the owner can wake one group
    /// ([`Fanout::wake`](crate::Fanout::wake), the relay's heartbeat), so a subscriber's task has
    /// one thing to wait on.
    pub wake: Arc<[tokio::sync::Notify]>,
    /// Set when the publisher is dropped, before it wakes the parked subscribers: one that finds
    /// the ring empty then ends, even if a subscriber being created still holds a sender.
    pub closed: std::sync::atomic::AtomicBool,
    /// The cache. Held only for short, non-blocking critical sections (never across `.await`, never
    /// while sending or encoding): the publisher updates it once per item, subscribers read a
    /// consistent cut of it when they add a topic, ask for a snapshot or repair after a lag.
    pub cache: Mutex<Cache>,
    /// The wake group of the next subscriber (groups are handed out in turn).
    pub next_group: std::sync::atomic::AtomicUsize,
    /// Position of the last item sent (written by the publisher after each send; read by
    /// subscribers for the message bound).
    pub head: AtomicU64,
    /// Bytes of bodies sent so far (written by the publisher after each send; read by
    /// subscribers for the byte bound).
    pub bytes_published: AtomicU64,
    pub registry: Arc<RegistryShared>,
    pub metrics: Metrics,
}

#[derive(Default)]
pub(crate) struct Cache {
    pub markets: HashMap<Arc<str>, MarketState>,
    /// Items published per channel (the `channel_no` of the last one).
    pub channel_counts: [u64; Channel::COUNT],
    /// The wake groups with a subscriber of each market's topics (only while one exists, so a
    /// client naming made-up tickers grows nothing for long).
    pub interest: HashMap<Arc<str>, Interest>,
    /// The wake groups with a subscriber of a whole channel.
    pub channel_interest: Interest,
}

/// Which wake groups hold a subscriber of a topic, per channel: an item wakes only those.
#[derive(Default)]
pub(crate) struct Interest {
    /// (channel index, group, subscribers).
    counts: Vec<(u8, u8, u32)>,
    masks: [u32; Channel::COUNT],
}

impl Interest {
    fn add(&mut self, channel: Channel, group: usize) {
        let (c, g) = (channel.index() as u8, group as u8);
        match self.counts.iter_mut().find(|e| e.0 == c && e.1 == g) {
            Some(e) => e.2 += 1,
            None => self.counts.push((c, g, 1)),
        }
        self.masks[channel.index()] |= 1 << group;
    }

    fn remove(&mut self, channel: Channel, group: usize) {
        let (c, g) = (channel.index() as u8, group as u8);
        if let Some(i) = self.counts.iter().position(|e| e.0 == c && e.1 == g) {
            self.counts[i].2 -= 1;
            if self.counts[i].2 == 0 {
                self.counts.swap_remove(i);
                self.masks[channel.index()] &= !(1 << group);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Every wake group.
pub(crate) const ALL_GROUPS: u32 = u32::MAX >> (32 - WAKE_GROUPS);
const _: () = assert!(WAKE_GROUPS <= 32, "wake masks are u32");

pub(crate) struct MarketState {
    /// The interned name: every item and topic of this market shares this allocation.
    pub name: Arc<str>,
    /// The book as of the last applied book item; not synced while stale.
    pub book: OrderBook,
    /// A snapshot item of `book` built for a subscriber, valid while its `topic_no` equals
    /// `counts[orderbook_delta]` (rebuilt lazily after the next book change).
    pub book_item: Option<Arc<Item>>,
    /// Position of the last book item (snapshot, delta or stale marker).
    pub book_position: u64,
    /// The latest ticker message.
    pub ticker: Option<Arc<Item>>,
    /// Items published per channel for this market (the `topic_no` of the last one).
    pub counts: [u64; Channel::COUNT],
}

impl MarketState {
    fn new(name: Arc<str>) -> MarketState {
        MarketState {
            book: OrderBook::new(&*name),
            name,
            book_item: None,
            book_position: 0,
            ticker: None,
            counts: [0; Channel::COUNT],
        }
    }

    pub fn book_no(&self) -> u64 {
        self.counts[Channel::OrderbookDelta.index()]
    }
}

/// A book as a subscriber will receive it, cut from the cache.
pub(crate) enum BookCut {
    /// Already encoded (shared by every subscriber that asks before the book changes).
    Ready(Arc<Item>),
    /// Encoded outside the lock by the subscriber that asked, then offered back to the cache.
    Build {
        book: OrderBook,
        topic_no: u64,
        position: u64,
    },
    /// No valid book (stale, or no snapshot yet): wait for the reset snapshot in the stream.
    Stale,
}

/// A consistent view of one topic at one instant of the stream.
pub(crate) struct Cut {
    /// The topic's count at the cut: stream items numbered above it are new to the cut.
    pub seen: u64,
    pub book: Option<BookCut>,
    pub tickers: Vec<Arc<Item>>,
    /// The interned market name, when the topic has a market.
    pub market: Option<Arc<str>>,
}

impl<N> Shared<N> {
    /// Wakes every parked subscriber.
    pub fn wake_all(&self) {
        self.wake_groups(ALL_GROUPS);
    }

    /// Wakes the parked subscribers of the groups in `mask`.
    pub fn wake_groups(&self, mut mask: u32) {
        while mask != 0 {
            let group = mask.trailing_zeros() as usize;
            self.wake[group].notify_waiters();
            mask &= mask - 1;
        }
    }
}

/// Where one subscriber parks: its wake group (see [`Fanout::wake`](crate::Fanout::wake)).
#[derive(Clone)]
pub struct Signal {
    groups: Arc<[tokio::sync::Notify]>,
    group: usize,
}

impl Signal {
    pub(crate) fn new<N>(shared: &Shared<N>, group: usize) -> Signal {
        debug_assert_eq!(shared.wake.len(), WAKE_GROUPS);
        Signal {
            groups: shared.wake.clone(),
            group,
        }
    }

    /// Resolves at the next wake-up of the group. Enable it (`Notified::enable`) before the
    /// last look for work, or a wake-up in between is missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.groups[self.group].notified()
    }

    /// The group, in `0..WAKE_GROUPS`.
    pub fn group(&self) -> usize {
        self.group
    }
}

impl Cache {
    /// The state of `market`, created (unsynced, nothing published) on first use.
    pub fn market_mut(&mut self, market: &str) -> &mut MarketState {
        if !self.markets.contains_key(market) {
            let name: Arc<str> = Arc::from(market);
            self.markets.insert(name.clone(), MarketState::new(name));
        }
        self.markets.get_mut(market).expect("inserted above")
    }

    /// A subscriber in `group` now holds `topic`: the topic's items wake its group.
    pub fn interested(&mut self, topic: &Topic, group: usize) {
        match &topic.market {
            None => self.channel_interest.add(topic.channel, group),
            Some(m) => (self.interest.entry(m.clone()).or_default()).add(topic.channel, group),
        }
    }

    /// A subscriber in `group` no longer holds `topic`.
    pub fn uninterested(&mut self, topic: &Topic, group: usize) {
        match &topic.market {
            None => self.channel_interest.remove(topic.channel, group),
            Some(m) => {
                if let Some(i) = self.interest.get_mut(&**m) {
                    i.remove(topic.channel, group);
                    if i.is_empty() {
                        self.interest.remove(&**m);
                    }
                }
            }
        }
    }

    /// The wake groups an item of `channel` (and `market`) concerns. An item without a market
    /// wakes every group.
    pub fn wake_mask(&self, channel: Channel, market: Option<&str>) -> u32 {
        let Some(market) = market else {
            return ALL_GROUPS;
        };
        let of_market = (self.interest.get(market)).map_or(0, |i| i.masks[channel.index()]);
        of_market | self.channel_interest.masks[channel.index()]
    }

    /// Cuts `topic`: its count, and for books the snapshot, for tickers (when `tickers`) the latest
    /// ticker of the market or, channel-wide, of every market.
    pub fn cut(&mut self, topic: &Topic, with_book: bool, tickers: bool) -> Cut {
        let ci = topic.channel.index();
        match &topic.market {
            None => {
                let tickers = if tickers && topic.channel == Channel::Ticker {
                    self.markets
                        .values()
                        .filter_map(|m| m.ticker.clone())
                        .collect()
                } else {
                    Vec::new()
                };
                Cut {
                    seen: self.channel_counts[ci],
                    book: None,
                    tickers,
                    market: None,
                }
            }
            Some(name) => {
                // A market nothing was ever published for is answered without an entry: a
                // client naming made-up tickers must not grow the cache. Its count is 0 (every
                // item the publisher will number is new) and its book awaits its first snapshot.
                let Some(m) = self.markets.get_mut(&**name) else {
                    return Cut {
                        seen: 0,
                        book: with_book.then_some(BookCut::Stale),
                        tickers: Vec::new(),
                        market: Some(name.clone()),
                    };
                };
                let book = with_book.then(|| {
                    if !m.book.is_synced() {
                        BookCut::Stale
                    } else {
                        match &m.book_item {
                            Some(item) if item.topic_no == m.book_no() => {
                                BookCut::Ready(item.clone())
                            }
                            _ => BookCut::Build {
                                book: m.book.clone(),
                                topic_no: m.book_no(),
                                position: m.book_position,
                            },
                        }
                    }
                });
                let tickers = if tickers && topic.channel == Channel::Ticker {
                    m.ticker.iter().cloned().collect()
                } else {
                    Vec::new()
                };
                Cut {
                    seen: m.counts[ci],
                    book,
                    tickers,
                    market: Some(m.name.clone()),
                }
            }
        }
    }

    /// Keeps a snapshot item built outside the lock, unless the book moved on meanwhile.
    pub fn offer_book_item(&mut self, item: &Arc<Item>) {
        if let Some(m) = item.market.as_deref().and_then(|n| self.markets.get_mut(n)) {
            if m.book_no() == item.topic_no && m.book.is_synced() {
                m.book_item = Some(item.clone());
            }
        }
    }
}

/// Encodes a cached book as an `orderbook_snapshot` item numbered like the book item it follows.
pub(crate) fn snapshot_item(
    market: Arc<str>,
    book: &OrderBook,
    topic_no: u64,
    position: u64,
) -> Arc<Item> {
    let snap = book.to_snapshot();
    let body = Bytes::from(serde_json::to_vec(&snap).expect("snapshots encode"));
    Arc::new(Item::new(
        position,
        Channel::OrderbookDelta,
        MessageType::OrderbookSnapshot,
        Some(market),
        body,
        topic_no,
        0,
        0,
        Payload::Snapshot(snap),
    ))
}

impl BookCut {
    /// The snapshot item, encoding it if needed (call without the cache lock).
    pub fn into_item<N>(self, shared: &Shared<N>, market: &Arc<str>) -> Option<Arc<Item>> {
        match self {
            BookCut::Ready(item) => Some(item),
            BookCut::Build {
                book,
                topic_no,
                position,
            } => {
                let item = snapshot_item(market.clone(), &book, topic_no, position);
                shared.cache.lock().offer_book_item(&item);
                Some(item)
            }
            BookCut::Stale => None,
        }
    }
}
