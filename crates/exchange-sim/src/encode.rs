//! Hand-written JSON encoders for the message bodies the simulator emits.
//!
//! Every body is encoded once per event and shared by all connections, so these write straight
//! into a `String` instead of going through serde's map machinery. Tickers and ids are generated
//! by [`crate::market`] from `[A-Za-z0-9.-]` only and need no escaping. The output parses with
//! the `protocol` crate's types (the tests decode every body they receive).

use std::fmt::Write as _;

use protocol::{Cost, Count, Price, Side};

use crate::market::{LevelChange, Market};

pub(crate) fn price(cents: i64) -> Price {
    Price::from_cents(cents)
}

pub(crate) fn count(contracts: i64) -> Count {
    Count::from_whole(contracts)
}

fn side_str(side: Side) -> &'static str {
    match side {
        Side::Yes => "yes",
        Side::No => "no",
    }
}

/// The side of the YES book an outcome is on: buying YES is a bid, buying NO an ask.
fn book_side(side: Side) -> &'static str {
    match side {
        Side::Yes => "bid",
        Side::No => "ask",
    }
}

/// One instant in the three forms the messages carry: `ts_ms`, `ts` (seconds) and RFC3339 `time`.
/// Made once per engine batch, so the text form costs one format per batch, not per message.
#[derive(Clone, Debug)]
pub(crate) struct Stamp {
    pub ms: i64,
    pub secs: i64,
    pub rfc3339: String,
}

impl Stamp {
    pub fn at(ms: i64) -> Stamp {
        let secs = ms.div_euclid(1000);
        let rfc3339 = time::OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
        Stamp { ms, secs, rfc3339 }
    }

    pub fn now() -> Stamp {
        Stamp::at(protocol::sign::now_ms() as i64)
    }
}

/// `"key":"value"` (value needs no escaping), with a leading comma unless first.
fn field(out: &mut String, key: &str, value: impl std::fmt::Display) {
    if !out.ends_with('{') {
        out.push(',');
    }
    let _ = write!(out, "\"{key}\":\"{value}\"");
}

/// `"key":value` for numbers and booleans.
fn raw(out: &mut String, key: &str, value: impl std::fmt::Display) {
    if !out.ends_with('{') {
        out.push(',');
    }
    let _ = write!(out, "\"{key}\":{value}");
}

/// `ts` (seconds), `ts_ms`: the pair ticker, trade and fill carry.
fn ts_pair(out: &mut String, at: &Stamp) {
    raw(out, "ts", at.secs);
    raw(out, "ts_ms", at.ms);
}

/// `orderbook_snapshot`; with `yes_scale`, NO levels are reported as `1 - p` (`use_yes_price`).
pub(crate) fn snapshot(m: &Market, yes_scale: bool) -> String {
    let mut out = String::with_capacity(128 + 40 * 24);
    out.push('{');
    field(&mut out, "market_ticker", &m.ticker);
    field(&mut out, "market_id", &m.market_id);
    for (key, side) in [("yes_dollars_fp", Side::Yes), ("no_dollars_fp", Side::No)] {
        let mut levels = m.levels(side).peekable();
        if levels.peek().is_none() {
            continue;
        }
        let _ = write!(out, ",\"{key}\":[");
        for (i, (p, q)) in levels.enumerate() {
            let p = if yes_scale && side == Side::No {
                100 - p
            } else {
                p
            };
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}[\"{}\",\"{}\"]", price(p), count(q));
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// `orderbook_delta`; with `yes_scale`, a NO price is reported as `1 - p`. `time` is the RFC3339
/// form of `ts_ms` (the deprecated `ts`).
pub(crate) fn delta(
    ticker: &str,
    market_id: &str,
    c: LevelChange,
    ts_ms: i64,
    time: &str,
    yes_scale: bool,
) -> String {
    let p = if yes_scale && c.side == Side::No {
        100 - c.price
    } else {
        c.price
    };
    let mut out = String::with_capacity(200);
    out.push('{');
    field(&mut out, "market_ticker", ticker);
    field(&mut out, "market_id", market_id);
    field(&mut out, "price_dollars", price(p));
    field(&mut out, "delta_fp", count(c.delta));
    field(&mut out, "side", side_str(c.side));
    raw(&mut out, "ts_ms", ts_ms);
    field(&mut out, "ts", time);
    out.push('}');
    out
}

/// `ticker`: last trade, best bid and ask with sizes, volume and open interest, as the book
/// stands. A side without bids reads as the exchange's empty quote: bid 0, ask 1, size 0.
pub(crate) fn ticker(m: &Market, at: &Stamp) -> String {
    let (bid, bid_size) = m.best(Side::Yes).unwrap_or((0, 0));
    let (ask, ask_size) = m.best(Side::No).map_or((100, 0), |(p, q)| (100 - p, q));
    let mut out = String::with_capacity(480);
    out.push('{');
    field(&mut out, "market_id", &m.market_id);
    field(&mut out, "market_ticker", &m.ticker);
    field(&mut out, "price_dollars", price(m.last_price));
    field(&mut out, "yes_bid_dollars", price(bid));
    field(&mut out, "yes_ask_dollars", price(ask));
    field(&mut out, "volume_fp", count(m.volume));
    field(&mut out, "open_interest_fp", count(m.open_interest));
    raw(&mut out, "dollar_volume", m.volume_cents / 100);
    raw(
        &mut out,
        "dollar_open_interest",
        m.open_interest * m.last_price / 100,
    );
    field(&mut out, "yes_bid_size_fp", count(bid_size));
    field(&mut out, "yes_ask_size_fp", count(ask_size));
    field(&mut out, "last_trade_size_fp", count(m.last_trade_size));
    ts_pair(&mut out, at);
    field(&mut out, "time", &at.rfc3339);
    out.push('}');
    out
}

/// `trade`. The taker bought the outcome opposite to the bid it hit.
pub(crate) fn trade(
    m: &Market,
    trade_id: &str,
    maker_side: Side,
    yes_price: i64,
    n: i64,
    at: &Stamp,
) -> String {
    let taker = crate::market::other(maker_side);
    let mut out = String::with_capacity(360);
    out.push('{');
    field(&mut out, "trade_id", trade_id);
    field(&mut out, "market_ticker", &m.ticker);
    field(&mut out, "yes_price_dollars", price(yes_price));
    field(&mut out, "no_price_dollars", price(100 - yes_price));
    field(&mut out, "count_fp", count(n));
    field(&mut out, "taker_side", side_str(taker));
    field(&mut out, "taker_outcome_side", side_str(taker));
    field(&mut out, "taker_book_side", book_side(taker));
    raw(&mut out, "is_block_trade", false);
    ts_pair(&mut out, at);
    out.push('}');
    out
}

/// The account's side of one trade, for `fill`, `user_order` and `market_position`. Money is in
/// cents.
pub(crate) struct AccountFill<'a> {
    pub user_id: &'a str,
    pub trade_id: &'a str,
    pub order_id: &'a str,
    pub client_order_id: &'a str,
    /// The outcome the account's resting bid bought.
    pub side: Side,
    pub yes_price: i64,
    pub count: i64,
    /// The maker fee of this fill.
    pub fee_cents: i64,
    pub order_initial: i64,
    pub order_remaining: i64,
    /// When the order was placed (it rested until this fill).
    pub order_created: &'a Stamp,
    /// Signed position after the fill: YES contracts positive, NO negative.
    pub position: i64,
    /// Cost of the open position.
    pub position_cost_cents: i64,
    /// Fees paid on the open position.
    pub position_fees_cents: i64,
    pub realized_pnl_cents: i64,
    /// Fees paid in this market, in total.
    pub fees_paid_cents: i64,
    /// Contracts the account traded in this market, in total.
    pub volume: i64,
    pub at: &'a Stamp,
}

impl AccountFill<'_> {
    /// What the account paid per contract of its side, in cents.
    fn side_price(&self) -> i64 {
        match self.side {
            Side::Yes => self.yes_price,
            Side::No => 100 - self.yes_price,
        }
    }
}

/// `fill`: the account's resting bid was hit (it is the maker, buying its side).
pub(crate) fn fill(m: &Market, f: &AccountFill<'_>) -> String {
    let side = side_str(f.side);
    let mut out = String::with_capacity(560);
    out.push('{');
    field(&mut out, "trade_id", f.trade_id);
    field(&mut out, "order_id", f.order_id);
    field(&mut out, "client_order_id", f.client_order_id);
    field(&mut out, "market_ticker", &m.ticker);
    raw(&mut out, "exchange_index", 0);
    raw(&mut out, "is_taker", false);
    field(&mut out, "side", side);
    field(&mut out, "outcome_side", side);
    field(&mut out, "book_side", book_side(f.side));
    field(&mut out, "yes_price_dollars", price(f.yes_price));
    field(&mut out, "count_fp", count(f.count));
    field(&mut out, "fee_cost", Cost::from_cents(f.fee_cents));
    field(&mut out, "action", "buy");
    field(&mut out, "post_position_fp", count(f.position));
    field(&mut out, "purchased_side", side);
    ts_pair(&mut out, f.at);
    out.push('}');
    out
}

/// `user_order`: the account's order after the fill (its only fill: it rested since creation).
pub(crate) fn user_order(m: &Market, f: &AccountFill<'_>) -> String {
    let status = if f.order_remaining == 0 {
        "executed"
    } else {
        "resting"
    };
    let side = side_str(f.side);
    let mut out = String::with_capacity(900);
    out.push('{');
    field(&mut out, "order_id", f.order_id);
    field(&mut out, "user_id", f.user_id);
    field(&mut out, "client_order_id", f.client_order_id);
    field(&mut out, "ticker", &m.ticker);
    raw(&mut out, "exchange_index", 0);
    field(&mut out, "status", status);
    field(&mut out, "outcome_side", side);
    field(&mut out, "book_side", book_side(f.side));
    field(&mut out, "side", side);
    raw(&mut out, "is_yes", f.side == Side::Yes);
    field(&mut out, "yes_price_dollars", price(f.yes_price));
    field(&mut out, "fill_count_fp", count(f.count));
    field(&mut out, "remaining_count_fp", count(f.order_remaining));
    field(&mut out, "initial_count_fp", count(f.order_initial));
    field(&mut out, "taker_fill_cost_dollars", Cost::ZERO);
    field(
        &mut out,
        "maker_fill_cost_dollars",
        Cost::from_cents(f.count * f.side_price()),
    );
    field(&mut out, "taker_fees_dollars", Cost::ZERO);
    field(
        &mut out,
        "maker_fees_dollars",
        Cost::from_cents(f.fee_cents),
    );
    field(&mut out, "created_time", &f.order_created.rfc3339);
    raw(&mut out, "created_ts_ms", f.order_created.ms);
    field(&mut out, "last_update_reason", "Trade");
    field(&mut out, "last_update_time", &f.at.rfc3339);
    raw(&mut out, "last_updated_ts_ms", f.at.ms);
    out.push('}');
    out
}

/// `market_position`: the account's position after the fill (the message has no timestamp).
pub(crate) fn position(m: &Market, f: &AccountFill<'_>) -> String {
    let mut out = String::with_capacity(320);
    out.push('{');
    field(&mut out, "user_id", f.user_id);
    field(&mut out, "market_ticker", &m.ticker);
    field(&mut out, "position_fp", count(f.position));
    field(
        &mut out,
        "position_cost_dollars",
        price(f.position_cost_cents),
    );
    field(
        &mut out,
        "realized_pnl_dollars",
        price(f.realized_pnl_cents),
    );
    field(&mut out, "fees_paid_dollars", price(f.fees_paid_cents));
    field(
        &mut out,
        "position_fee_cost_dollars",
        price(f.position_fees_cents),
    );
    field(&mut out, "volume_fp", count(f.volume));
    out.push('}');
    out
}

/// `market_lifecycle_v2`: the market's close time moved (`close_ts` in Unix seconds).
pub(crate) fn lifecycle(m: &Market, close_ts: i64) -> String {
    let mut out = String::with_capacity(120);
    out.push('{');
    field(&mut out, "market_ticker", &m.ticker);
    field(&mut out, "event_type", "close_date_updated");
    raw(&mut out, "close_ts", close_ts);
    out.push('}');
    out
}

/// A server envelope around a pre-encoded body: `{"type":..,"sid":..,"seq":..,"msg":..}`. With
/// `stamp_ns`, `"sim_ts_ns"` is added as the last field of `msg` (the body is a JSON object).
pub(crate) fn envelope(
    kind: &str,
    sid: u64,
    seq: Option<u64>,
    body: &str,
    stamp_ns: Option<u128>,
) -> String {
    let mut out = String::with_capacity(body.len() + 80);
    let _ = write!(out, "{{\"type\":\"{kind}\",\"sid\":{sid}");
    if let Some(seq) = seq {
        let _ = write!(out, ",\"seq\":{seq}");
    }
    out.push_str(",\"msg\":");
    match (stamp_ns, body.strip_suffix('}')) {
        (Some(ns), Some(open)) => {
            out.push_str(open);
            let sep = if open.ends_with('{') { "" } else { "," };
            let _ = write!(out, "{sep}\"sim_ts_ns\":{ns}}}");
        }
        _ => out.push_str(body),
    }
    out.push('}');
    out
}

/// `{"type":"error","sid":N,"msg":{"code":C,"msg":"..."}}`: an error about one sid (a terminal
/// error such as 25, or an injected one).
pub(crate) fn sid_error(sid: u64, code: u32) -> String {
    let text = protocol::ErrorCode::from_code(code).map_or("Error", protocol::ErrorCode::message);
    format!("{{\"type\":\"error\",\"sid\":{sid},\"msg\":{{\"code\":{code},\"msg\":\"{text}\"}}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Envelope, Message};
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn bodies_decode_with_the_protocol_types() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut m = Market::new("KXFED-26MAR18-T4.25".into(), &mut rng);
        let exec = m.execute(&mut rng).unwrap();
        let at = Stamp::at(1_669_149_841_000);
        assert_eq!(
            (at.secs, at.rfc3339.as_str()),
            (1_669_149_841, "2022-11-22T20:44:01Z")
        );
        let f = AccountFill {
            user_id: "u",
            trade_id: "t",
            order_id: "o",
            client_order_id: "c",
            side: Side::No,
            yes_price: 40,
            count: 3,
            fee_cents: 2,
            order_initial: 10,
            order_remaining: 7,
            order_created: &at,
            position: -3,
            position_cost_cents: 180,
            position_fees_cents: 2,
            realized_pnl_cents: -5,
            fees_paid_cents: 2,
            volume: 3,
            at: &at,
        };
        let bodies = [
            ("orderbook_snapshot", snapshot(&m, false)),
            (
                "orderbook_delta",
                delta(
                    &m.ticker,
                    &m.market_id,
                    exec.change,
                    at.ms,
                    &at.rfc3339,
                    false,
                ),
            ),
            ("ticker", ticker(&m, &at)),
            (
                "trade",
                trade(&m, "t", exec.maker_side, exec.yes_price, exec.count, &at),
            ),
            ("fill", fill(&m, &f)),
            ("user_order", user_order(&m, &f)),
            ("market_position", position(&m, &f)),
            ("market_lifecycle_v2", lifecycle(&m, 5)),
        ];
        for (kind, body) in bodies {
            for stamp in [None, Some(123)] {
                let frame = envelope(kind, 3, Some(9), &body, stamp);
                let env = Envelope::parse(frame.as_bytes()).unwrap();
                assert_eq!(
                    (env.kind.as_str(), env.sid, env.seq),
                    (kind, Some(3), Some(9))
                );
                let msg = Message::decode(&env).unwrap_or_else(|e| panic!("{frame}: {e}"));
                assert!(!matches!(msg, Message::Other(_)), "{frame}");
                let v: serde_json::Value = serde_json::from_str(env.msg_json()).unwrap();
                assert_eq!(
                    v.get("sim_ts_ns").and_then(|v| v.as_u64()),
                    stamp.map(|s| s as u64)
                );
            }
        }
        let snap: protocol::OrderbookSnapshot = serde_json::from_str(&snapshot(&m, false)).unwrap();
        assert_eq!(snap, m.snapshot());
        let err = Envelope::parse(sid_error(4, 25).as_bytes()).unwrap();
        assert_eq!(err.sid, Some(4));
        let Message::Error(body) = Message::decode(&err).unwrap() else {
            panic!()
        };
        assert_eq!(
            (body.code, body.msg.as_str()),
            (25, "Subscription buffer overflow")
        );
    }
}
