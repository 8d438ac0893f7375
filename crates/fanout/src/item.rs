//! What flows through the fanout: [`Item`]s (one published message, encoded once and shared by
//! every subscriber) and the [`Topic`]s subscribers filter them by.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes};
use protocol::{Channel, MessageType, OrderbookDelta, OrderbookSnapshot};

/// What a subscriber asks for: one channel of one market, or a whole channel (`market: None`, a
/// subscription without a market filter). `orderbook_delta` topics always name a market.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub channel: Channel,
    pub market: Option<Arc<str>>,
}

impl Topic {
    /// One channel of one market.
    pub fn market(channel: Channel, market: &str) -> Topic {
        Topic {
            channel,
            market: Some(Arc::from(market)),
        }
    }

    /// A whole channel (every market, or a channel without markets such as lifecycle).
    pub fn channel(channel: Channel) -> Topic {
        Topic {
            channel,
            market: None,
        }
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.market {
            Some(m) => write!(f, "{}/{m}", self.channel),
            None => write!(f, "{}/*", self.channel),
        }
    }
}

/// One slot of the stream ring: a message, or a notice the publisher's owner gives every
/// subscriber in order with the messages ([`Publisher::notice`](crate::Publisher::notice)).
pub(crate) enum Entry<N> {
    Item(Arc<Item>),
    Notice {
        /// Stream position, numbered with the items (a notice counts toward the ring's bound).
        position: u64,
        /// 1 for the first notice, +1 per notice: a subscriber skips the ones it has.
        number: u64,
        notice: Arc<N>,
    },
}

impl<N> Clone for Entry<N> {
    fn clone(&self) -> Self {
        match self {
            Entry::Item(item) => Entry::Item(item.clone()),
            Entry::Notice {
                position,
                number,
                notice,
            } => Entry::Notice {
                position: *position,
                number: *number,
                notice: notice.clone(),
            },
        }
    }
}

/// The parsed book message an item carries, kept for the `use_yes_price` variant.
#[derive(Debug)]
pub(crate) enum Payload {
    Snapshot(OrderbookSnapshot),
    Delta(OrderbookDelta),
    None,
}

/// One message of the stream: its `msg` body encoded once as shared [`Bytes`], with what a
/// subscriber needs to route it and what the relay needs to write the envelope around it.
///
/// Items come out of [`Subscriber::recv`](crate::Subscriber::recv) as `Arc<Item>`: the relay
/// writes `{"type":<kind>,"sid":<its sid>,"seq":<its seq>,"msg":<body>}` with
/// [`Item::write_envelope`], never re-encoding the body.
pub struct Item {
    /// Position in the stream: 1 for the first item published, +1 per item.
    pub(crate) position: u64,
    pub(crate) channel: Channel,
    pub(crate) kind: MessageType,
    pub(crate) market: Option<Arc<str>>,
    /// [`crate::topics::name_hash`] of `market`, computed once here rather than by every
    /// subscriber that looks the item's topic up.
    pub(crate) market_hash: u32,
    pub(crate) body: Bytes,
    /// How many items of (channel, market) were published up to and including this one. Per
    /// topic these are contiguous in the stream; subscribers use them to skip what a snapshot
    /// already covers and to count exactly what a lag lost.
    pub(crate) topic_no: u64,
    /// The same count for the whole channel (for channel-wide topics).
    pub(crate) channel_no: u64,
    /// Bytes of bodies published before this item: "bytes behind the head" is one subtraction.
    pub(crate) bytes_before: u64,
    /// A stale marker rather than a message (never handed to the relay as an item).
    pub(crate) stale: bool,
    /// The wake groups with a subscriber of the item's topic when it was numbered.
    pub(crate) wake: u32,
    pub(crate) payload: Payload,
    /// The `use_yes_price` body, encoded at most once, by the first subscriber that asks.
    yes_body: OnceLock<Bytes>,
    /// When the message arrived from upstream, as told by the publisher's owner (for the relay's
    /// latency histogram). `None` for items made from the cache.
    pub(crate) received_at: Option<std::time::Instant>,
}

impl Item {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        position: u64,
        channel: Channel,
        kind: MessageType,
        market: Option<Arc<str>>,
        body: Bytes,
        topic_no: u64,
        channel_no: u64,
        bytes_before: u64,
        payload: Payload,
    ) -> Item {
        Item {
            position,
            channel,
            kind,
            market_hash: market.as_deref().map_or(0, crate::topics::name_hash),
            market,
            body,
            topic_no,
            channel_no,
            bytes_before,
            stale: false,
            wake: crate::cache::ALL_GROUPS,
            payload,
            yes_body: OnceLock::new(),
            received_at: None,
        }
    }

    /// When the message arrived from upstream (see [`crate::Publisher::set_received_at`]).
    pub fn received_at(&self) -> Option<std::time::Instant> {
        self.received_at
    }

    /// The stream position: items of one market (any channel) are in exchange order.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// The message `type` to write in the envelope.
    pub fn kind(&self) -> &MessageType {
        &self.kind
    }

    pub fn market(&self) -> Option<&str> {
        self.market.as_deref()
    }

    /// The `msg` body as published.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body for a client: with `use_yes_price`, book messages get their `no` prices on the
    /// yes scale (encoded once per item, then shared); every other body is returned as is.
    pub fn body_for(&self, use_yes_price: bool) -> &Bytes {
        if !use_yes_price {
            return &self.body;
        }
        match &self.payload {
            Payload::None => &self.body,
            Payload::Snapshot(s) => self.yes_body.get_or_init(|| encode(&s.to_yes_price())),
            Payload::Delta(d) => self.yes_body.get_or_init(|| encode(&d.to_yes_price())),
        }
    }

    /// Appends `{"type":..,"sid":..,"seq":..,"msg":<body>}` to `buf` (`seq` left out when `None`).
    /// The most bytes [`Item::write_envelope`] writes for this item (any sid and seq).
    pub fn envelope_max_len(&self, yes: bool) -> usize {
        envelope_max_len(self.kind.as_str(), self.body_for(yes).len())
    }

    /// The bytes [`Item::write_envelope`] writes with these arguments.
    pub fn envelope_len(&self, sid: u64, seq: Option<u64>, yes: bool) -> usize {
        envelope_len(self.kind.as_str(), sid, seq, self.body_for(yes).len())
    }

    pub fn write_envelope<B: BufMut>(&self, buf: &mut B, sid: u64, seq: Option<u64>, yes: bool) {
        write_envelope(buf, self.kind.as_str(), sid, seq, self.body_for(yes));
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("position", &self.position)
            .field("kind", &self.kind.as_str())
            .field("market", &self.market)
            .field("topic_no", &self.topic_no)
            .field("stale", &self.stale)
            .field("body", &self.body)
            .finish()
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("book messages encode"))
}

/// The most bytes [`write_envelope`] writes for a body of `body_len` bytes: the fixed keys, the
/// type name, two 20-digit numbers and the closing brace.
pub fn envelope_max_len(kind: &str, body_len: usize) -> usize {
    const FIXED: usize = r#"{"type":"","sid":,"seq":,"msg":}"#.len();
    FIXED + kind.len() + 2 * 20 + body_len
}

/// The bytes [`write_envelope`] writes with these arguments (a frame header needs the exact
/// length before the payload).
pub fn envelope_len(kind: &str, sid: u64, seq: Option<u64>, body_len: usize) -> usize {
    const FIXED: usize = r#"{"type":"","sid":,"msg":}"#.len();
    const SEQ: usize = r#","seq":"#.len();
    FIXED + kind.len() + digits(sid) + seq.map_or(0, |s| SEQ + digits(s)) + body_len
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends one server envelope around an already-encoded body. `kind` must not need JSON
/// escaping (every message type name is plain ASCII).
pub fn write_envelope<B: BufMut>(buf: &mut B, kind: &str, sid: u64, seq: Option<u64>, body: &[u8]) {
    buf.put_slice(b"{\"type\":\"");
    buf.put_slice(kind.as_bytes());
    buf.put_slice(b"\",\"sid\":");
    push_u64(buf, sid);
    if let Some(seq) = seq {
        buf.put_slice(b",\"seq\":");
        push_u64(buf, seq);
    }
    buf.put_slice(b",\"msg\":");
    buf.put_slice(body);
    buf.put_u8(b'}');
}

fn push_u64<B: BufMut>(buf: &mut B, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_len_is_exact() {
        for (sid, seq) in [
            (0, None),
            (9, Some(10)),
            (10, Some(0)),
            (u64::MAX, Some(u64::MAX)),
        ] {
            let mut buf = Vec::new();
            write_envelope(&mut buf, "trade", sid, seq, b"{\"a\":1}");
            assert_eq!(
                buf.len(),
                envelope_len("trade", sid, seq, 7),
                "{sid} {seq:?}"
            );
        }
    }

    #[test]
    fn envelope_is_the_exchange_form() {
        let mut buf = Vec::new();
        write_envelope(
            &mut buf,
            "orderbook_delta",
            2,
            Some(18446744073709551615),
            b"{\"a\":1}",
        );
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"type":"orderbook_delta","sid":2,"seq":18446744073709551615,"msg":{"a":1}}"#
        );
        // The bound holds for the longest numbers, so a buffer reserved with it never grows.
        let mut longest = Vec::new();
        write_envelope(
            &mut longest,
            "orderbook_delta",
            u64::MAX,
            Some(u64::MAX),
            b"{}",
        );
        assert_eq!(longest.len(), envelope_max_len("orderbook_delta", 2));
        buf.clear();
        write_envelope(&mut buf, "ticker", 0, None, b"{}");
        assert_eq!(buf, br#"{"type":"ticker","sid":0,"msg":{}}"#);
        let env = protocol::Envelope::parse(&buf).unwrap();
        assert_eq!(env.sid, Some(0));
    }

    #[test]
    fn yes_price_body_is_encoded_once_and_flips_no_prices() {
        let body =
            br#"{"market_ticker":"M","price_dollars":"0.4000","delta_fp":"5.00","side":"no"}"#;
        let delta: OrderbookDelta = serde_json::from_slice(body).unwrap();
        let item = Item::new(
            1,
            Channel::OrderbookDelta,
            MessageType::OrderbookDelta,
            Some("M".into()),
            Bytes::from_static(body),
            1,
            1,
            0,
            Payload::Delta(delta),
        );
        assert_eq!(item.body_for(false), &Bytes::from_static(body));
        let yes = item.body_for(true).clone();
        let parsed: OrderbookDelta = serde_json::from_slice(&yes).unwrap();
        assert_eq!(parsed.price_dollars.unwrap().to_string(), "0.6000");
        assert_eq!(
            item.body_for(true).as_ptr(),
            yes.as_ptr(),
            "cached, not re-encoded"
        );
    }
}
