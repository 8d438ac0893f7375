//! Server-to-client messages: the envelope and the typed bodies of every message type.
//!
//! The envelope (`type`, `id`, `sid`, `seq`, `msg`) is parsed on its own and the body is kept as
//! raw JSON, so a relay can forward a body without re-encoding it and can parse only the bodies
//! it needs. Unknown message types and unknown fields survive a round trip: unknown envelope keys
//! are kept in [`Envelope::extra`], unknown body fields in each body's `extra` map.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use crate::channel::Channel;
use crate::fixed::{Cost, Count, Price};

/// The `type` of a server message. Unknown types are kept by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    OrderbookSnapshot,
    OrderbookDelta,
    Ticker,
    Trade,
    Fill,
    UserOrder,
    MarketPosition,
    MarketLifecycleV2,
    EventLifecycle,
    EventFeeUpdate,
    Subscribed,
    Unsubscribed,
    Ok,
    Error,
    Other(String),
}

impl MessageType {
    /// Every type this crate knows, by wire name, in [`MessageType::index`] order.
    pub const KNOWN: [(&'static str, MessageType); 14] = [
        ("orderbook_snapshot", MessageType::OrderbookSnapshot),
        ("orderbook_delta", MessageType::OrderbookDelta),
        ("ticker", MessageType::Ticker),
        ("trade", MessageType::Trade),
        ("fill", MessageType::Fill),
        ("user_order", MessageType::UserOrder),
        ("market_position", MessageType::MarketPosition),
        ("market_lifecycle_v2", MessageType::MarketLifecycleV2),
        ("event_lifecycle", MessageType::EventLifecycle),
        ("event_fee_update", MessageType::EventFeeUpdate),
        ("subscribed", MessageType::Subscribed),
        ("unsubscribed", MessageType::Unsubscribed),
        ("ok", MessageType::Ok),
        ("error", MessageType::Error),
    ];

    pub fn parse(name: &str) -> MessageType {
        Self::KNOWN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| MessageType::Other(name.to_owned()))
    }

    /// The type's place in [`MessageType::KNOWN`] (`None` for an unknown type): an index for
    /// per-type tables.
    pub fn index(&self) -> Option<usize> {
        Some(match self {
            MessageType::OrderbookSnapshot => 0,
            MessageType::OrderbookDelta => 1,
            MessageType::Ticker => 2,
            MessageType::Trade => 3,
            MessageType::Fill => 4,
            MessageType::UserOrder => 5,
            MessageType::MarketPosition => 6,
            MessageType::MarketLifecycleV2 => 7,
            MessageType::EventLifecycle => 8,
            MessageType::EventFeeUpdate => 9,
            MessageType::Subscribed => 10,
            MessageType::Unsubscribed => 11,
            MessageType::Ok => 12,
            MessageType::Error => 13,
            MessageType::Other(_) => return None,
        })
    }

    pub fn as_str(&self) -> &str {
        match (self, self.index()) {
            (_, Some(i)) => Self::KNOWN[i].0,
            (MessageType::Other(name), None) => name,
            (known, None) => unreachable!("{known:?} has an index"),
        }
    }
}

/// One server message with its body left as raw JSON.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The `type` field, as sent.
    pub kind: String,
    pub id: Option<u64>,
    pub sid: Option<u64>,
    pub seq: Option<u64>,
    /// The `msg` body, untouched.
    pub msg: Option<Box<RawValue>>,
    /// Envelope keys this crate does not know (for example `sending_ts_ms`), in arrival order.
    pub extra: Vec<(String, Box<RawValue>)>,
}

impl Envelope {
    /// Parses one text frame. Fails only when the frame is not a JSON object with a string `type`.
    pub fn parse(frame: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(frame)
    }

    pub fn message_type(&self) -> MessageType {
        MessageType::parse(&self.kind)
    }

    /// The body's raw JSON text (`null` when absent).
    pub fn msg_json(&self) -> &str {
        self.msg.as_deref().map_or("null", RawValue::get)
    }

    /// Decodes the body as `T`.
    pub fn body<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.msg_json())
    }

    /// The market of the body (`market_ticker`, or `ticker` as `user_order` names it), without
    /// decoding the rest of it.
    pub fn market_ticker(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct OnlyTicker {
            market_ticker: Option<String>,
            ticker: Option<String>,
        }
        self.body::<OnlyTicker>()
            .ok()
            .and_then(|b| b.market_ticker.or(b.ticker))
    }

    /// Encodes the envelope back to one JSON text frame.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.msg_json().len());
        out.push_str("{\"type\":");
        out.push_str(&serde_json::to_string(&self.kind).expect("strings encode"));
        for (key, value) in [("id", self.id), ("sid", self.sid), ("seq", self.seq)] {
            if let Some(v) = value {
                out.push_str(&format!(",\"{key}\":{v}"));
            }
        }
        if let Some(msg) = &self.msg {
            out.push_str(",\"msg\":");
            out.push_str(msg.get());
        }
        for (key, value) in &self.extra {
            out.push(',');
            out.push_str(&serde_json::to_string(key).expect("strings encode"));
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object with a `type`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut env = Envelope {
                    kind: String::new(),
                    id: None,
                    sid: None,
                    seq: None,
                    msg: None,
                    extra: Vec::new(),
                };
                let mut have_type = false;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => {
                            env.kind = map.next_value()?;
                            have_type = true;
                        }
                        "id" => env.id = map.next_value()?,
                        "sid" => env.sid = map.next_value()?,
                        "seq" => env.seq = map.next_value()?,
                        "msg" => env.msg = Some(map.next_value()?),
                        _ => env.extra.push((key.into_owned(), map.next_value()?)),
                    }
                }
                if !have_type {
                    return Err(de::Error::missing_field("type"));
                }
                Ok(env)
            }
        }
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

/// Which side of a binary market a level or a fill is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Yes,
    No,
}

/// One price level: `["0.0800","300.00"]` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level(pub Price, pub Count);

/// `orderbook_snapshot`: the whole book of one market. A side's key is absent when it is empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderbookSnapshot {
    pub market_ticker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yes_dollars_fp: Option<Vec<Level>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_dollars_fp: Option<Vec<Level>>,
    /// Legacy: `[[cents, count], ...]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yes: Option<Vec<[i64; 2]>>,
    /// Legacy: `[[cents, count], ...]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no: Option<Vec<[i64; 2]>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl OrderbookSnapshot {
    /// The levels of one side, from the fixed-point field or else the legacy integer one.
    pub fn levels(&self, side: Side) -> Vec<Level> {
        let (fp, legacy) = match side {
            Side::Yes => (&self.yes_dollars_fp, &self.yes),
            Side::No => (&self.no_dollars_fp, &self.no),
        };
        match (fp, legacy) {
            (Some(levels), _) => levels.clone(),
            (None, Some(legacy)) => legacy
                .iter()
                .map(|[cents, count]| Level(Price::from_cents(*cents), Count::from_whole(*count)))
                .collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The same snapshot with `no` levels on the yes scale (`use_yes_price: true`).
    pub fn to_yes_price(&self) -> OrderbookSnapshot {
        let mut out = self.clone();
        if let Some(no) = &mut out.no_dollars_fp {
            for level in no.iter_mut() {
                level.0 = level.0.complement();
            }
        }
        if let Some(no) = &mut out.no {
            for level in no.iter_mut() {
                level[0] = 100 - level[0];
            }
        }
        out
    }
}

/// `orderbook_delta`: one level of one side changed by `delta_fp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderbookDelta {
    pub market_ticker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_dollars: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_fp: Option<Count>,
    pub side: Side,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<i64>,
    /// Legacy integer cents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<i64>,
    /// Legacy integer contracts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl OrderbookDelta {
    /// The level's price, from the fixed-point field or else the legacy cents.
    pub fn level_price(&self) -> Option<Price> {
        self.price_dollars.or(self.price.map(Price::from_cents))
    }

    /// The change in size, from the fixed-point field or else the legacy integer.
    pub fn level_delta(&self) -> Option<Count> {
        self.delta_fp.or(self.delta.map(Count::from_whole))
    }

    /// The same delta with a `no` price on the yes scale (`use_yes_price: true`).
    pub fn to_yes_price(&self) -> OrderbookDelta {
        let mut out = self.clone();
        if self.side == Side::No {
            out.price_dollars = self.price_dollars.map(Price::complement);
            out.price = self.price.map(|c| 100 - c);
        }
        out
    }
}

macro_rules! body {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $(
                $(#[$fdoc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
            /// Fields this crate does not know, kept for forwarding.
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        }
    };
}

body!(
    /// `ticker`: the market's latest price, best bid and ask, volume (`kalshi-messages.md` 6.2).
    Ticker {
        market_id: String,
        market_ticker: String,
        price_dollars: Price,
        yes_bid_dollars: Price,
        yes_ask_dollars: Price,
        volume_fp: Count,
        open_interest_fp: Count,
        /// Whole dollars.
        dollar_volume: i64,
        /// Whole dollars.
        dollar_open_interest: i64,
        yes_bid_size_fp: Count,
        yes_ask_size_fp: Count,
        last_trade_size_fp: Count,
        /// Unix seconds (deprecated).
        ts: i64,
        ts_ms: i64,
        /// RFC3339 (deprecated).
        time: String,
    }
);

body!(
    /// `trade`: one public trade (6.4).
    Trade {
        trade_id: String,
        market_ticker: String,
        yes_price_dollars: Price,
        no_price_dollars: Price,
        count_fp: Count,
        /// Deprecated twin of `taker_outcome_side`.
        taker_side: Side,
        taker_outcome_side: Side,
        /// `bid` (the taker bought YES) or `ask` (NO).
        taker_book_side: String,
        is_block_trade: bool,
        /// Unix seconds (deprecated).
        ts: i64,
        ts_ms: i64,
    }
);

body!(
    /// `fill`: one of the account's own orders traded (6.5).
    Fill {
        trade_id: String,
        order_id: String,
        client_order_id: String,
        market_ticker: String,
        exchange_index: i64,
        is_taker: bool,
        /// Deprecated twin of `outcome_side`.
        side: Side,
        outcome_side: Side,
        book_side: String,
        yes_price_dollars: Price,
        count_fp: Count,
        fee_cost: Cost,
        action: String,
        post_position_fp: Count,
        purchased_side: Side,
        /// Unix seconds (deprecated).
        ts: i64,
        ts_ms: i64,
    }
);

body!(
    /// `user_order`: one of the account's orders was placed, changed or ended (6.6). Its market
    /// is in `ticker`, not `market_ticker`.
    UserOrder {
        order_id: String,
        user_id: String,
        client_order_id: String,
        ticker: String,
        exchange_index: i64,
        status: String,
        outcome_side: Side,
        book_side: String,
        side: Side,
        is_yes: bool,
        yes_price_dollars: Price,
        fill_count_fp: Count,
        remaining_count_fp: Count,
        initial_count_fp: Count,
        taker_fill_cost_dollars: Cost,
        maker_fill_cost_dollars: Cost,
        taker_fees_dollars: Cost,
        maker_fees_dollars: Cost,
        created_time: String,
        created_ts_ms: i64,
        last_update_reason: String,
        last_update_time: String,
        last_updated_ts_ms: i64,
    }
);

body!(
    /// `market_position`: the account's position in one market (6.7). It has no timestamp.
    MarketPosition {
        user_id: String,
        market_ticker: String,
        position_fp: Count,
        position_cost_dollars: Price,
        realized_pnl_dollars: Price,
        fees_paid_dollars: Price,
        position_fee_cost_dollars: Price,
        volume_fp: Count,
    }
);

body!(
    /// `market_lifecycle_v2` (and `event_lifecycle`, `event_fee_update`): status changes.
    Lifecycle {
        market_ticker: String,
        event_ticker: String,
        event_type: String,
        close_ts: i64,
    }
);

/// `subscribed`: one per channel of a `subscribe` command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub channel: String,
    pub sid: u64,
}

/// `error`: a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market_ticker: Option<String>,
}

/// A server message with its body decoded by type.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    OrderbookSnapshot(OrderbookSnapshot),
    OrderbookDelta(OrderbookDelta),
    Ticker(Ticker),
    Trade(Trade),
    Fill(Fill),
    UserOrder(UserOrder),
    MarketPosition(MarketPosition),
    Lifecycle(Lifecycle),
    Subscribed(Subscribed),
    /// `unsubscribed`: the envelope's `sid` is gone.
    Unsubscribed,
    /// `ok`: the body varies by command (markets after an update, the list of subscriptions).
    Ok(Option<Value>),
    Error(ErrorBody),
    /// A type this crate does not know; forward it untouched.
    Other(Option<Value>),
}

impl Message {
    /// Decodes the body of `env` according to its type.
    pub fn decode(env: &Envelope) -> Result<Message, serde_json::Error> {
        Ok(match env.message_type() {
            MessageType::OrderbookSnapshot => Message::OrderbookSnapshot(env.body()?),
            MessageType::OrderbookDelta => Message::OrderbookDelta(env.body()?),
            MessageType::Ticker => Message::Ticker(env.body()?),
            MessageType::Trade => Message::Trade(env.body()?),
            MessageType::Fill => Message::Fill(env.body()?),
            MessageType::UserOrder => Message::UserOrder(env.body()?),
            MessageType::MarketPosition => Message::MarketPosition(env.body()?),
            MessageType::MarketLifecycleV2
            | MessageType::EventLifecycle
            | MessageType::EventFeeUpdate => Message::Lifecycle(env.body()?),
            MessageType::Subscribed => Message::Subscribed(env.body()?),
            MessageType::Unsubscribed => Message::Unsubscribed,
            MessageType::Ok => Message::Ok(env.body()?),
            MessageType::Error => Message::Error(env.body()?),
            MessageType::Other(_) => Message::Other(env.body()?),
        })
    }

    /// The body encoded back to JSON (for `Unsubscribed`, no body).
    pub fn body_json(&self) -> Option<String> {
        let enc = |v: Result<String, serde_json::Error>| Some(v.expect("bodies encode"));
        match self {
            Message::OrderbookSnapshot(b) => enc(serde_json::to_string(b)),
            Message::OrderbookDelta(b) => enc(serde_json::to_string(b)),
            Message::Ticker(b) => enc(serde_json::to_string(b)),
            Message::Trade(b) => enc(serde_json::to_string(b)),
            Message::Fill(b) => enc(serde_json::to_string(b)),
            Message::UserOrder(b) => enc(serde_json::to_string(b)),
            Message::MarketPosition(b) => enc(serde_json::to_string(b)),
            Message::Lifecycle(b) => enc(serde_json::to_string(b)),
            Message::Subscribed(b) => enc(serde_json::to_string(b)),
            Message::Unsubscribed => None,
            Message::Ok(b) | Message::Other(b) => b.as_ref().map(|v| v.to_string()),
            Message::Error(b) => enc(serde_json::to_string(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_type_round_trips_through_its_name_and_its_index() {
        for (i, (name, kind)) in MessageType::KNOWN.iter().enumerate() {
            assert_eq!(kind.index(), Some(i), "{name}");
            assert_eq!(kind.as_str(), *name);
            assert_eq!(&MessageType::parse(name), kind);
        }
        let unknown = MessageType::parse("market_halted");
        assert_eq!(unknown, MessageType::Other("market_halted".into()));
        assert_eq!((unknown.index(), unknown.as_str()), (None, "market_halted"));
    }
}
