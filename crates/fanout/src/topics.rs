//! A subscriber's topics ([`TopicTable`]), where each stands in the stream ([`TopicState`]), and
//! what one stream item means for a topic ([`classify`]).

use std::sync::Arc;

use protocol::{Channel, MessageType};

use crate::item::{Item, Topic};

/// Where one topic of a subscriber stands in the stream. Packed, so that a [`MarketTopic`]
/// (a client holds one per market and channel) is 32 bytes rather than 40.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub(crate) struct TopicState {
    /// The topic's count of the last item delivered or covered by a snapshot.
    pub seen: u64,
    /// Book topics: stale, waiting for the reset snapshot.
    pub waiting_reset: bool,
}

/// Which of an item's counts a topic follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A channel-wide topic: the item's `channel_no`.
    Channel,
    /// A topic of one market: the item's `topic_no`.
    Market,
}

impl Scope {
    fn number(self, item: &Item) -> u64 {
        match self {
            Scope::Channel => item.channel_no,
            Scope::Market => item.topic_no,
        }
    }
}

/// What one stream item means for a subscriber, in increasing precedence: an item that concerns
/// two of its topics (a channel-wide one and a market one) means the greater of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Decision {
    /// No topic of the subscriber follows the item (never returned by [`classify`]).
    Unwanted,
    /// Already delivered, or covered by a snapshot the subscriber was given: skip.
    Covered,
    /// A delta of a stale book: skip; the reset snapshot will replace the book.
    AwaitingReset,
    /// New for the topic: deliver.
    Deliver,
    /// A stale marker: the book is stale from here on; tell the subscriber.
    Stale,
    /// Not contiguous with the topic's last item: items went missing inside the fanout (never
    /// expected). Repair as after a lag, which counts what was lost.
    Gap,
}

/// What `item` means for a topic (following the item's count for `scope`) in `state`.
pub(crate) fn classify(item: &Item, scope: Scope, state: TopicState) -> Decision {
    let no = scope.number(item);
    if no <= state.seen {
        Decision::Covered
    } else if no != state.seen + 1 {
        Decision::Gap
    } else if item.channel != Channel::OrderbookDelta {
        Decision::Deliver
    } else if item.stale {
        Decision::Stale
    } else if item.kind == MessageType::OrderbookSnapshot {
        // A snapshot replaces the book: it ends a stale period.
        Decision::Deliver
    } else if state.waiting_reset {
        Decision::AwaitingReset
    } else {
        Decision::Deliver
    }
}

impl TopicState {
    /// Moves past an item numbered `no` for this topic that meant `decision`.
    pub fn record(&mut self, no: u64, decision: Decision) {
        match decision {
            Decision::Unwanted | Decision::Covered => {}
            Decision::AwaitingReset | Decision::Gap => self.seen = no,
            Decision::Deliver => {
                self.seen = no;
                self.waiting_reset = false;
            }
            Decision::Stale => {
                self.seen = no;
                self.waiting_reset = true;
            }
        }
    }
}

type PerChannel = [Option<TopicState>; Channel::COUNT];

/// One market topic of a subscriber.
struct MarketTopic {
    /// [`name_hash`] of `market`: a lookup compares it first and reads a name only on a match.
    hash: u32,
    channel: Channel,
    state: TopicState,
    market: Arc<str>,
}

/// A cheap hash of a market name (FxHash's mixing, 8 bytes a step). Only where the table looks
/// first depends on it: equal hashes fall back to the names.
pub(crate) fn name_hash(name: &str) -> u32 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0u64;
    for chunk in name.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    (h >> 32) as u32
}

/// A subscriber's topics and their states: channel-wide ones in an array, market ones in a
/// vector in the order they were added, found through a small open-addressing index by (market
/// hash, channel). Every subscriber holds one and looks up every item it reads: a bisection over
/// a few dozen entries missed the cache at most of its steps (200 clients' tables do not stay
/// cached), a lookup here reads one slot and one entry. A client on 20 books pays 20 entries of
/// 32 bytes plus 2 bytes per slot (twice as many slots as entries, rounded up to a power of two).
#[derive(Default)]
pub(crate) struct TopicTable {
    channel_wide: PerChannel,
    by_market: Vec<MarketTopic>,
    index: Index,
    /// Topics per channel (0 lets an item of another channel be skipped without a lookup).
    per_channel: [u32; Channel::COUNT],
}

/// Per slot, a position in `by_market` plus one (0: empty); never more than half full. Two
/// bytes a slot, four only for a table of more than 65,534 topics.
enum Index {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl Default for Index {
    fn default() -> Self {
        Index::Narrow(Box::default())
    }
}

impl Index {
    /// An empty index of `slots` slots (a power of two) for `entries` entries.
    fn new(slots: usize, entries: usize) -> Index {
        if entries < usize::from(u16::MAX) {
            Index::Narrow(vec![0; slots].into_boxed_slice())
        } else {
            Index::Wide(vec![0; slots].into_boxed_slice())
        }
    }

    fn len(&self) -> usize {
        match self {
            Index::Narrow(s) => s.len(),
            Index::Wide(s) => s.len(),
        }
    }

    /// The position plus one held by slot `s` (0: empty).
    fn get(&self, s: usize) -> usize {
        match self {
            Index::Narrow(slots) => usize::from(slots[s]),
            Index::Wide(slots) => slots[s] as usize,
        }
    }

    /// Puts position `i` in the first free slot from the probe start `s`.
    fn put(&mut self, mut s: usize, i: usize) {
        let mask = self.len() - 1;
        while self.get(s) != 0 {
            s = (s + 1) & mask;
        }
        match self {
            // `new` chose the width for the entry count: the cast fits.
            Index::Narrow(slots) => slots[s] = (i + 1) as u16,
            Index::Wide(slots) => slots[s] = (i + 1) as u32,
        }
    }
}

/// Where the probe for (hash, channel) starts in an index of `mask + 1` slots.
fn slot(hash: u32, channel: Channel, mask: usize) -> usize {
    (hash ^ (channel.index() as u32).wrapping_mul(0x9e37_79b9)) as usize & mask
}

impl TopicTable {
    fn find(&self, market: &str, channel: Channel) -> Option<usize> {
        self.find_hashed(name_hash(market), market, channel)
    }

    /// [`Self::find`] with the market's [`name_hash`] known (an item carries its own).
    fn find_hashed(&self, hash: u32, market: &str, channel: Channel) -> Option<usize> {
        if self.index.len() == 0 {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut s = slot(hash, channel, mask);
        loop {
            let i = self.index.get(s).checked_sub(1)?;
            let t = &self.by_market[i];
            if t.hash == hash && t.channel == channel && *t.market == *market {
                return Some(i);
            }
            s = (s + 1) & mask;
        }
    }

    /// Builds the index for `by_market` as it is now, sized for its length.
    fn reindex(&mut self) {
        let n = self.by_market.len();
        if n == 0 {
            self.index = Index::default();
            return;
        }
        let mut index = Index::new((2 * n).next_power_of_two(), n);
        let mask = index.len() - 1;
        for (i, t) in self.by_market.iter().enumerate() {
            index.put(slot(t.hash, t.channel, mask), i);
        }
        self.index = index;
    }

    /// Adds the last entry to the index, rebuilt when it would be more than half full or its
    /// slots too narrow.
    fn index_last(&mut self) {
        let n = self.by_market.len();
        if 2 * n > self.index.len() || n == usize::from(u16::MAX) {
            self.reindex();
            return;
        }
        let t = &self.by_market[n - 1];
        let s = slot(t.hash, t.channel, self.index.len() - 1);
        self.index.put(s, n - 1);
    }

    fn market_state(&mut self, market: &str, channel: Channel) -> Option<&mut TopicState> {
        let i = self.find(market, channel)?;
        Some(&mut self.by_market[i].state)
    }

    pub fn get_mut(&mut self, topic: &Topic) -> Option<&mut TopicState> {
        match &topic.market {
            None => self.channel_wide[topic.channel.index()].as_mut(),
            Some(m) => self.market_state(m, topic.channel),
        }
    }

    /// Whether an item of `channel` for `market` belongs to one of the topics (the market's own
    /// or the channel-wide one).
    pub fn wants(&self, channel: Channel, market: Option<&str>) -> bool {
        self.channel_wide[channel.index()].is_some()
            || market.is_some_and(|m| self.find(m, channel).is_some())
    }

    /// The interned name of `market`, if its book is one of the topics.
    pub fn book(&self, market: &str) -> Option<Arc<str>> {
        let i = self.find(market, Channel::OrderbookDelta)?;
        Some(self.by_market[i].market.clone())
    }

    /// Adds a topic that is not present. True when it is the first of its channel.
    pub fn insert(&mut self, topic: &Topic, state: TopicState) -> bool {
        let ci = topic.channel.index();
        match &topic.market {
            None => {
                debug_assert!(self.channel_wide[ci].is_none(), "{topic:?} added twice");
                self.channel_wide[ci] = Some(state);
            }
            Some(m) => match self.find(m, topic.channel) {
                // Present already (the subscriber looks first): one entry, counted once.
                Some(i) => {
                    self.by_market[i].state = state;
                    return false;
                }
                None => {
                    // Exactly the room needed: the table lives as long as the client.
                    self.by_market.reserve_exact(1);
                    self.by_market.push(MarketTopic {
                        hash: name_hash(m),
                        channel: topic.channel,
                        state,
                        market: m.clone(),
                    });
                    self.index_last();
                }
            },
        }
        self.per_channel[ci] += 1;
        self.per_channel[ci] == 1
    }

    /// Removes a topic: `None` if absent, else whether it was the last of its channel.
    pub fn remove(&mut self, topic: &Topic) -> Option<bool> {
        let ci = topic.channel.index();
        match &topic.market {
            None => {
                self.channel_wide[ci].take()?;
            }
            Some(m) => {
                let i = self.find(m, topic.channel)?;
                self.by_market.swap_remove(i);
                if self.by_market.len() <= self.by_market.capacity() / 2 {
                    self.by_market.shrink_to_fit();
                }
                self.reindex();
            }
        }
        self.per_channel[ci] -= 1;
        Some(self.per_channel[ci] == 0)
    }

    /// The topics, sorted.
    pub fn topics(&self) -> Vec<Topic> {
        let mut out: Vec<Topic> = Channel::ALL
            .into_iter()
            .filter(|c| self.channel_wide[c.index()].is_some())
            .map(Topic::channel)
            .collect();
        out.extend(self.by_market.iter().map(|t| Topic {
            channel: t.channel,
            market: Some(t.market.clone()),
        }));
        out.sort();
        out
    }

    /// Every topic with its state: channel-wide ones first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Topic, &mut TopicState)> {
        let wide = self
            .channel_wide
            .iter_mut()
            .zip(Channel::ALL)
            .filter_map(|(s, c)| Some((Topic::channel(c), s.as_mut()?)));
        let by_market = self.by_market.iter_mut().map(|t| {
            let topic = Topic {
                channel: t.channel,
                market: Some(t.market.clone()),
            };
            (topic, &mut t.state)
        });
        wide.chain(by_market)
    }

    /// What `item` means for the subscriber; every topic it concerns moves past it.
    pub fn classify(&mut self, item: &Item) -> Decision {
        let ci = item.channel.index();
        if self.per_channel[ci] == 0 {
            return Decision::Unwanted;
        }
        let mut decision = Decision::Unwanted;
        if let Some(state) = &mut self.channel_wide[ci] {
            decision = decision.max(advance(item, Scope::Channel, state));
        }
        if let Some(m) = item.market.as_deref() {
            if let Some(i) = self.find_hashed(item.market_hash, m, item.channel) {
                let state = &mut self.by_market[i].state;
                decision = decision.max(advance(item, Scope::Market, state));
            }
        }
        decision
    }
}

fn advance(item: &Item, scope: Scope, state: &mut TopicState) -> Decision {
    let decision = classify(item, scope, *state);
    state.record(scope.number(item), decision);
    decision
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::item::Payload;

    fn item(channel: Channel, kind: MessageType, topic_no: u64, channel_no: u64) -> Item {
        Item::new(
            1,
            channel,
            kind,
            Some("M".into()),
            Bytes::new(),
            topic_no,
            channel_no,
            0,
            Payload::None,
        )
    }

    fn delta(no: u64) -> Item {
        item(Channel::OrderbookDelta, MessageType::OrderbookDelta, no, no)
    }

    fn snapshot(no: u64) -> Item {
        item(
            Channel::OrderbookDelta,
            MessageType::OrderbookSnapshot,
            no,
            no,
        )
    }

    fn stale_marker(no: u64) -> Item {
        let mut i = item(
            Channel::OrderbookDelta,
            MessageType::Other(String::new()),
            no,
            no,
        );
        i.stale = true;
        i
    }

    fn trade(topic_no: u64, channel_no: u64) -> Item {
        item(Channel::Trade, MessageType::Trade, topic_no, channel_no)
    }

    const SYNCED: TopicState = TopicState {
        seen: 5,
        waiting_reset: false,
    };
    const STALE: TopicState = TopicState {
        seen: 5,
        waiting_reset: true,
    };

    #[test]
    fn a_market_topic_is_32_bytes() {
        assert_eq!(std::mem::size_of::<MarketTopic>(), 32);
    }

    #[test]
    fn market_topics_are_found_whatever_order_they_came_in() {
        let mut table = TopicTable::default();
        for m in ["C", "A", "B"] {
            assert_eq!(
                table.insert(&Topic::market(Channel::OrderbookDelta, m), SYNCED),
                m == "C"
            );
            table.insert(&Topic::market(Channel::Trade, m), SYNCED);
        }
        assert!(table.wants(Channel::Trade, Some("A")) && !table.wants(Channel::Trade, Some("D")));
        assert!(!table.wants(Channel::Ticker, Some("A")));
        assert_eq!(
            table.remove(&Topic::market(Channel::OrderbookDelta, "A")),
            Some(false)
        );
        assert_eq!(
            table.remove(&Topic::market(Channel::OrderbookDelta, "A")),
            None
        );
        assert!(table.book("A").is_none() && table.book("B").as_deref() == Some("B"));
        assert!(table.wants(Channel::Trade, Some("A")));
        let topics: Vec<String> = table.topics().iter().map(|t| format!("{t:?}")).collect();
        assert_eq!(topics.len(), 5);
        for m in ["B", "C"] {
            table.remove(&Topic::market(Channel::OrderbookDelta, m));
        }
        assert!(!table.wants(Channel::OrderbookDelta, Some("B")));
        assert_eq!(table.classify(&delta(6)), Decision::Unwanted);
    }

    proptest::proptest! {
        /// The index finds exactly the topics present, whatever the adds and removes (many
        /// markets, so probes collide and the index is rebuilt as it grows and shrinks).
        #[test]
        fn the_table_finds_exactly_what_was_added_and_not_removed(
            ops in proptest::collection::vec((proptest::bool::weighted(0.7), 0..40usize, 0..Channel::COUNT), 1..300)
        ) {
            let mut table = TopicTable::default();
            let mut model = std::collections::BTreeSet::new();
            for (add, m, c) in ops {
                let (market, channel) = (format!("KX-{m}"), Channel::ALL[c]);
                let topic = Topic::market(channel, &market);
                if add {
                    if model.insert((m, c)) {
                        table.insert(&topic, SYNCED);
                    }
                } else {
                    proptest::prop_assert_eq!(table.remove(&topic).is_some(), model.remove(&(m, c)));
                }
                for m in 0..40 {
                    for (c, channel) in Channel::ALL.into_iter().enumerate() {
                        let market = format!("KX-{m}");
                        proptest::prop_assert_eq!(
                            table.wants(channel, Some(&market)),
                            model.contains(&(m, c)),
                            "{}/{}", channel, market
                        );
                    }
                }
                proptest::prop_assert_eq!(table.topics().len(), model.len());
            }
        }
    }

    #[test]
    fn items_a_snapshot_covers_are_skipped_and_the_next_one_is_delivered() {
        for no in [1, 4, 5] {
            assert_eq!(
                classify(&delta(no), Scope::Market, SYNCED),
                Decision::Covered
            );
            assert_eq!(
                classify(&delta(no), Scope::Market, STALE),
                Decision::Covered
            );
        }
        assert_eq!(
            classify(&delta(6), Scope::Market, SYNCED),
            Decision::Deliver
        );
        assert_eq!(
            classify(&trade(6, 90), Scope::Market, SYNCED),
            Decision::Deliver
        );
    }

    #[test]
    fn a_stale_book_skips_deltas_until_a_snapshot() {
        assert_eq!(
            classify(&delta(6), Scope::Market, STALE),
            Decision::AwaitingReset
        );
        assert_eq!(
            classify(&snapshot(6), Scope::Market, STALE),
            Decision::Deliver
        );
        assert_eq!(
            classify(&snapshot(6), Scope::Market, SYNCED),
            Decision::Deliver
        );
        assert_eq!(
            classify(&stale_marker(6), Scope::Market, SYNCED),
            Decision::Stale
        );
        assert_eq!(
            classify(&stale_marker(6), Scope::Market, STALE),
            Decision::Stale
        );
    }

    #[test]
    fn a_number_skipped_is_a_gap_whatever_the_item() {
        for i in [delta(7), snapshot(7), stale_marker(9), trade(7, 7)] {
            assert_eq!(classify(&i, Scope::Market, SYNCED), Decision::Gap, "{i:?}");
        }
    }

    #[test]
    fn the_scope_picks_the_count() {
        let t = trade(2, 6);
        assert_eq!(classify(&t, Scope::Channel, SYNCED), Decision::Deliver);
        assert_eq!(classify(&t, Scope::Market, SYNCED), Decision::Covered);
        let t = trade(6, 50);
        assert_eq!(classify(&t, Scope::Channel, SYNCED), Decision::Gap);
        assert_eq!(classify(&t, Scope::Market, SYNCED), Decision::Deliver);
    }

    #[test]
    fn recording_a_decision_moves_the_state() {
        let cases = [
            (Decision::Covered, SYNCED, SYNCED),
            (
                Decision::AwaitingReset,
                STALE,
                TopicState { seen: 6, ..STALE },
            ),
            (Decision::Deliver, STALE, TopicState { seen: 6, ..SYNCED }),
            (Decision::Stale, SYNCED, TopicState { seen: 6, ..STALE }),
            (Decision::Gap, SYNCED, TopicState { seen: 6, ..SYNCED }),
        ];
        for (decision, mut state, after) in cases {
            state.record(6, decision);
            assert_eq!(state, after, "{decision:?}");
        }
    }

    #[test]
    fn the_table_merges_a_channel_wide_and_a_market_topic() {
        let mut table = TopicTable::default();
        assert_eq!(table.classify(&trade(1, 1)), Decision::Unwanted);
        assert!(table.insert(&Topic::market(Channel::Trade, "M"), SYNCED));
        assert!(!table.insert(&Topic::channel(Channel::Trade), SYNCED));
        // New for both: delivered once.
        assert_eq!(table.classify(&trade(6, 6)), Decision::Deliver);
        // Covered for the market topic, new for the channel-wide one: delivered.
        assert_eq!(table.classify(&trade(6, 7)), Decision::Deliver);
        assert_eq!(table.classify(&trade(6, 7)), Decision::Covered);
        // A gap in either is a gap.
        assert_eq!(table.classify(&trade(7, 9)), Decision::Gap);
        let seen = { table.get_mut(&Topic::channel(Channel::Trade)).unwrap().seen };
        assert_eq!(seen, 9);
        assert_eq!(
            table.topics(),
            vec![
                Topic::channel(Channel::Trade),
                Topic::market(Channel::Trade, "M")
            ]
        );
        assert_eq!(
            table.remove(&Topic::market(Channel::Trade, "M")),
            Some(false)
        );
        assert_eq!(table.remove(&Topic::market(Channel::Trade, "M")), None);
        assert_eq!(table.remove(&Topic::channel(Channel::Trade)), Some(true));
        assert!(table.by_market.is_empty(), "an empty market leaves the map");
        assert_eq!(table.classify(&trade(8, 10)), Decision::Unwanted);
    }

    #[test]
    fn the_table_follows_a_book_through_a_stale_period() {
        let mut table = TopicTable::default();
        let book = Topic::market(Channel::OrderbookDelta, "M");
        table.insert(&book, SYNCED);
        assert_eq!(table.book("M").as_deref(), Some("M"));
        assert_eq!(table.book("N"), None);
        let seq = [
            (delta(6), Decision::Deliver),
            (stale_marker(7), Decision::Stale),
            (delta(8), Decision::AwaitingReset),
            (snapshot(9), Decision::Deliver),
            (delta(10), Decision::Deliver),
        ];
        for (i, want) in seq {
            assert_eq!(table.classify(&i), want, "{i:?}");
        }
        assert!(table.wants(Channel::OrderbookDelta, Some("M")));
        assert!(!table.wants(Channel::Ticker, Some("M")));
    }
}
