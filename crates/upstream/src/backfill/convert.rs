//! REST answers as the WebSocket messages they stand for (reference §8.6), and what the stage
//! remembers of live private messages to fill in what REST lacks.
//!
//! REST fills have no `post_position_fp`, no `client_order_id` and no millisecond time; REST
//! positions have no `volume_fp` and no `position_fee_cost_dollars`. The missing values are
//! taken from the live messages before the outage (the last position per market, walked forward
//! by each recovered fill), from the orders fetched with the fills, or from the positions REST
//! reports now, walked back.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use protocol::{Channel, Count, MessageType};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::event::Data;
use crate::rest::{Fill, MarketPosition, Order};

/// Trade ids delivered recently. A backfill looks back `overlap` before the outage, so only the
/// fills of the last few seconds can come back twice; this many covers any realistic rate.
const RECENT_FILLS: usize = 4096;

/// What the stage knows from the private messages it passed on.
#[derive(Default)]
pub(super) struct Memo {
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    /// Per market: the position after the last fill delivered.
    post_position: HashMap<String, Count>,
    /// Per market: the last `market_position` msg delivered.
    positions: HashMap<String, Map<String, Value>>,
    user_id: Option<String>,
    /// Unix second from which this stage's private subscription was live: fills before it were
    /// never this stage's to deliver (they predate this relay's session).
    floor: Option<i64>,
}

impl Memo {
    /// The private subscription is live from `ts` (the first time only).
    pub fn live_from(&mut self, ts: i64) {
        self.floor.get_or_insert(ts);
    }

    /// The `fill` subscription is live again from `ts` after a time nobody held it: what was
    /// delivered before belongs to earlier subscribers, fills before `ts` are not a gap, and
    /// positions known from earlier fills no longer chain on.
    pub fn restart(&mut self, ts: i64) {
        self.recent.clear();
        self.recent_set.clear();
        self.post_position.clear();
        self.positions.clear();
        self.floor = Some(ts);
    }

    /// Fills were lost: the positions known from delivered fills no longer chain on.
    pub fn forget_positions(&mut self) {
        self.post_position.clear();
    }

    pub fn delivered(&self, trade_id: &str) -> bool {
        self.recent_set.contains(trade_id)
    }

    /// Notes one private message on its way to the owner. False for a fill already delivered
    /// (by trade id): a repeat, not noted, not to be sent.
    pub fn note(&mut self, data: &Data) -> bool {
        let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(&data.body) else {
            return true;
        };
        let text = |key: &str| msg.get(key).and_then(Value::as_str);
        if let Some(user) = text("user_id") {
            if self.user_id.as_deref() != Some(user) {
                self.user_id = Some(user.to_owned());
            }
        }
        match data.kind {
            MessageType::Fill => {
                let (Some(trade_id), Some(market)) = (text("trade_id"), text("market_ticker"))
                else {
                    return true;
                };
                if self.delivered(trade_id) {
                    return false;
                }
                if let Some(post) = text("post_position_fp").and_then(|p| p.parse().ok()) {
                    self.post_position.insert(market.to_owned(), post);
                }
                self.remember(trade_id);
            }
            MessageType::MarketPosition => {
                if let Some(market) = text("market_ticker") {
                    self.positions.insert(market.to_owned(), msg);
                }
            }
            _ => {}
        }
        true
    }

    pub fn remember(&mut self, trade_id: &str) {
        if self.recent_set.insert(trade_id.to_owned()) {
            self.recent.push_back(trade_id.to_owned());
            if self.recent.len() > RECENT_FILLS {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_set.remove(&old);
                }
            }
        }
    }

    /// What of `fills` (oldest first) the owner has not had: everything after the last fill it
    /// was delivered. Fills before that one are its past even when never delivered here (a
    /// relay started since, or the owner's window reaches back before its start); delivering
    /// them would put older fills after newer ones.
    /// With none of them delivered, fills from before the subscription went live are its past
    /// too.
    pub fn missing<'a>(&self, fills: &'a [Fill]) -> &'a [Fill] {
        let cut = match fills.iter().rposition(|f| self.delivered(&f.trade_id)) {
            Some(i) => i + 1,
            None => self.floor.map_or(0, |floor| {
                (fills.iter())
                    .take_while(|f| f.ts.is_some_and(|ts| ts < floor))
                    .count()
            }),
        };
        &fills[cut..]
    }

    /// The recovered fills (oldest first, none already delivered) as `fill` messages.
    /// `positions` (REST, now) anchors markets the stage saw no fill for; `orders` gives
    /// `client_order_id`.
    pub fn fills(
        &mut self,
        fills: &[Fill],
        orders: &[Order],
        positions: &[MarketPosition],
        held: &[LiveFill],
    ) -> Vec<Data> {
        let fills = self.missing(fills);
        let client_ids: HashMap<&str, &str> = orders
            .iter()
            .filter_map(|o| Some((o.order_id.as_str(), o.client_order_id.as_deref()?)))
            .collect();
        // A market without a known position: anchored on the first held live fill there (exact),
        // else on REST's current position, and walked back through the fills REST lists from
        // its first missing one on.
        let mut markets: Vec<&str> = Vec::new();
        for f in fills {
            if !self.post_position.contains_key(&f.ticker)
                && !self.delivered(&f.trade_id)
                && !markets.contains(&f.ticker.as_str())
            {
                markets.push(&f.ticker);
            }
        }
        for market in markets {
            let list: Vec<&Fill> = fills
                .iter()
                .filter(|f| f.ticker == market)
                .skip_while(|f| self.delivered(&f.trade_id))
                .collect();
            let anchor = match held.iter().find(|h| h.market == market) {
                Some(h) => match list.iter().position(|f| f.trade_id == h.trade_id) {
                    Some(j) => Some((j, h.post)),
                    None => Some((list.len() - 1, h.post - h.signed)),
                },
                None => positions
                    .iter()
                    .find(|p| p.ticker == market)
                    .map(|p| (list.len() - 1, p.position_fp.units())),
            };
            if let Some((j, post)) = anchor {
                let moved: i64 = list[..=j].iter().map(|f| signed(f)).sum();
                self.post_position
                    .insert(market.to_owned(), Count::from_units(post - moved));
            }
        }
        let mut out = Vec::new();
        for f in fills {
            if self.delivered(&f.trade_id) {
                continue;
            }
            let before = self.post_position.get(&f.ticker).map_or(0, |c| c.units());
            let post = Count::from_units(before + signed(f));
            self.post_position.insert(f.ticker.clone(), post);
            self.remember(&f.trade_id);
            let ts = fill_ts(f);
            let mut msg = Map::new();
            msg.insert("trade_id".into(), json!(f.trade_id));
            msg.insert("order_id".into(), json!(f.order_id));
            if let Some(id) = client_ids.get(f.order_id.as_str()) {
                msg.insert("client_order_id".into(), json!(id));
            }
            msg.insert("market_ticker".into(), json!(f.ticker));
            msg.insert(
                "exchange_index".into(),
                json!(f.exchange_index.unwrap_or(0)),
            );
            msg.insert("is_taker".into(), json!(f.is_taker));
            let side = f.side.clone().or_else(|| f.outcome_side.clone());
            if let Some(side) = &side {
                msg.insert("side".into(), json!(side));
            }
            if let Some(s) = &f.outcome_side {
                msg.insert("outcome_side".into(), json!(s));
            }
            if let Some(s) = &f.book_side {
                msg.insert("book_side".into(), json!(s));
            }
            msg.insert(
                "yes_price_dollars".into(),
                json!(f.yes_price_dollars.to_string()),
            );
            msg.insert("count_fp".into(), json!(f.count_fp.to_string()));
            msg.insert("fee_cost".into(), json!(f.fee_cost));
            if let Some(a) = &f.action {
                msg.insert("action".into(), json!(a));
            }
            msg.insert("post_position_fp".into(), json!(post.to_string()));
            if let Some(side) = &side {
                msg.insert("purchased_side".into(), json!(side));
            }
            if let Some(ts) = ts {
                msg.insert("ts".into(), json!(ts));
                msg.insert("ts_ms".into(), json!(ts * 1000));
            }
            if let Some(sub) = f.subaccount_number {
                msg.insert("subaccount".into(), json!(sub));
            }
            out.push(data(
                Channel::Fill,
                MessageType::Fill,
                Some(f.ticker.clone()),
                msg,
            ));
        }
        out
    }

    /// `orders` as `user_order` messages.
    pub fn orders(&mut self, orders: &[Order]) -> Vec<Data> {
        orders
            .iter()
            .map(|o| {
                if self.user_id.is_none() {
                    self.user_id.clone_from(&o.user_id);
                }
                let side = o.side.clone().or_else(|| o.outcome_side.clone());
                let mut msg = Map::new();
                msg.insert("order_id".into(), json!(o.order_id));
                msg.insert(
                    "user_id".into(),
                    json!(o.user_id.as_ref().or(self.user_id.as_ref())),
                );
                msg.insert("client_order_id".into(), json!(o.client_order_id));
                msg.insert("ticker".into(), json!(o.ticker));
                msg.insert(
                    "exchange_index".into(),
                    json!(o.exchange_index.unwrap_or(0)),
                );
                msg.insert("status".into(), json!(o.status));
                for (key, v) in [
                    ("outcome_side", &o.outcome_side),
                    ("book_side", &o.book_side),
                    ("side", &side),
                ] {
                    if let Some(v) = v {
                        msg.insert(key.into(), json!(v));
                    }
                }
                if let Some(side) = &side {
                    msg.insert("is_yes".into(), json!(side == "yes"));
                }
                msg.insert(
                    "yes_price_dollars".into(),
                    json!(o.yes_price_dollars.to_string()),
                );
                msg.insert("fill_count_fp".into(), json!(o.fill_count_fp.to_string()));
                msg.insert(
                    "remaining_count_fp".into(),
                    json!(o.remaining_count_fp.to_string()),
                );
                let initial = o
                    .initial_count_fp
                    .unwrap_or(Count::from_units(
                        o.fill_count_fp.units() + o.remaining_count_fp.units(),
                    ))
                    .to_string();
                msg.insert("initial_count_fp".into(), json!(initial));
                for (key, v) in [
                    ("taker_fill_cost_dollars", &o.taker_fill_cost_dollars),
                    ("maker_fill_cost_dollars", &o.maker_fill_cost_dollars),
                    ("taker_fees_dollars", &o.taker_fees_dollars),
                    ("maker_fees_dollars", &o.maker_fees_dollars),
                ] {
                    msg.insert(key.into(), json!(v.as_deref().unwrap_or("0.000000")));
                }
                msg.insert("created_time".into(), json!(o.created_time));
                msg.insert(
                    "created_ts_ms".into(),
                    json!(o.created_time.as_deref().and_then(rfc3339_ms)),
                );
                if let Some(t) = &o.last_update_time {
                    msg.insert("last_update_time".into(), json!(t));
                    msg.insert("last_updated_ts_ms".into(), json!(rfc3339_ms(t)));
                }
                data(
                    Channel::UserOrders,
                    MessageType::UserOrder,
                    Some(o.ticker.clone()),
                    msg,
                )
            })
            .collect()
    }

    /// The positions of `markets` as `market_position` messages. `volume_fp` and
    /// `position_fee_cost_dollars` are not in REST: the last live values, the volume grown by the
    /// recovered fills (`volume_added`).
    pub fn positions(
        &mut self,
        positions: &[MarketPosition],
        markets: &HashSet<String>,
        volume_added: &HashMap<String, Count>,
    ) -> Vec<Data> {
        positions
            .iter()
            .filter(|p| markets.contains(&p.ticker))
            .map(|p| {
                let last = self.positions.get(&p.ticker);
                let last_text = |key: &str| {
                    last.and_then(|m| m.get(key))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                let volume = last_text("volume_fp")
                    .and_then(|v| v.parse::<Count>().ok())
                    .unwrap_or(Count::ZERO)
                    .units()
                    + volume_added.get(&p.ticker).map_or(0, |c| c.units());
                let mut msg = Map::new();
                msg.insert("user_id".into(), json!(self.user_id));
                msg.insert("market_ticker".into(), json!(p.ticker));
                msg.insert("position_fp".into(), json!(p.position_fp.to_string()));
                msg.insert(
                    "position_cost_dollars".into(),
                    json!(p.market_exposure_dollars),
                );
                msg.insert("realized_pnl_dollars".into(), json!(p.realized_pnl_dollars));
                msg.insert("fees_paid_dollars".into(), json!(p.fees_paid_dollars));
                msg.insert(
                    "position_fee_cost_dollars".into(),
                    json!(last_text("position_fee_cost_dollars")
                        .unwrap_or_else(|| "0.0000".to_owned())),
                );
                msg.insert(
                    "volume_fp".into(),
                    json!(Count::from_units(volume).to_string()),
                );
                self.positions.insert(p.ticker.clone(), msg.clone());
                data(
                    Channel::MarketPositions,
                    MessageType::MarketPosition,
                    Some(p.ticker.clone()),
                    msg,
                )
            })
            .collect()
    }
}

/// A live `fill` message, as much of it as the backfill needs.
#[derive(Debug, serde::Deserialize)]
pub(super) struct LiveFillMsg {
    trade_id: String,
    market_ticker: String,
    post_position_fp: Count,
    count_fp: Count,
    book_side: Option<String>,
    side: Option<String>,
    action: Option<String>,
    outcome_side: Option<String>,
}

/// A live fill: its trade id, market, the position after it and its effect on the position.
#[derive(Debug)]
pub(super) struct LiveFill {
    pub trade_id: String,
    pub market: String,
    pub post: i64,
    pub signed: i64,
}

impl LiveFill {
    pub fn parse(data: &Data) -> Option<LiveFill> {
        LiveFill::from_body(&data.body)
    }

    pub fn from_body(body: &[u8]) -> Option<LiveFill> {
        let m: LiveFillMsg = serde_json::from_slice(body).ok()?;
        let signed = direction(
            m.count_fp,
            m.book_side.as_deref(),
            m.side.as_deref(),
            m.action.as_deref(),
            m.outcome_side.as_deref(),
        );
        Some(LiveFill {
            trade_id: m.trade_id,
            market: m.market_ticker,
            post: m.post_position_fp.units(),
            signed,
        })
    }
}

/// The fill's effect on the YES position.
pub(super) fn signed(f: &Fill) -> i64 {
    direction(
        f.count_fp,
        f.book_side.as_deref(),
        f.side.as_deref(),
        f.action.as_deref(),
        f.outcome_side.as_deref(),
    )
}

/// Buying YES (the bid side of the YES book) adds `count`, buying NO takes it away; a sale the
/// reverse.
fn direction(
    count: Count,
    book_side: Option<&str>,
    side: Option<&str>,
    action: Option<&str>,
    outcome_side: Option<&str>,
) -> i64 {
    let yes_up = match (book_side, side, action) {
        (Some(book), _, _) => book == "bid",
        (None, Some(side), Some(action)) => (side == "yes") == (action == "buy"),
        (None, Some(side), None) => side == "yes",
        _ => outcome_side == Some("yes"),
    };
    if yes_up {
        count.units()
    } else {
        -count.units()
    }
}

/// Unix seconds of a fill: `ts`, else `created_time`.
pub(super) fn fill_ts(f: &Fill) -> Option<i64> {
    f.ts.or_else(|| {
        f.created_time
            .as_deref()
            .and_then(rfc3339_ms)
            .map(|ms| ms.div_euclid(1000))
    })
}

pub(super) fn rfc3339_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn data(
    channel: Channel,
    kind: MessageType,
    market: Option<String>,
    msg: Map<String, Value>,
) -> Data {
    Data {
        channel,
        kind,
        market,
        seq: None,
        body: Bytes::from(Value::Object(msg).to_string()),
        book: None,
        received_at: std::time::Instant::now(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::backfill) fn fill(id: &str, ticker: &str, book_side: &str, count: i64) -> Fill {
        Fill {
            trade_id: id.into(),
            order_id: format!("order-{id}"),
            ticker: ticker.into(),
            outcome_side: Some(if book_side == "bid" { "yes" } else { "no" }.into()),
            book_side: Some(book_side.into()),
            side: None,
            action: None,
            count_fp: Count::from_whole(count),
            yes_price_dollars: "0.4200".parse().unwrap(),
            no_price_dollars: "0.5800".parse().unwrap(),
            fee_cost: "0.010000".into(),
            is_taker: false,
            created_time: Some("2026-12-02T10:00:01Z".into()),
            ts: None,
            exchange_index: None,
            subaccount_number: None,
        }
    }

    pub(in crate::backfill) fn live(id: &str, ticker: &str, post: i64) -> Data {
        let body = json!({"trade_id": id, "market_ticker": ticker, "post_position_fp": Count::from_whole(post).to_string(),
            "count_fp": "1.00", "book_side": "bid", "outcome_side": "yes"});
        data(
            Channel::Fill,
            MessageType::Fill,
            Some(ticker.into()),
            body.as_object().unwrap().clone(),
        )
    }

    fn posts(out: &[Data]) -> Vec<(String, String)> {
        out.iter()
            .map(|d| {
                let v: Value = serde_json::from_slice(&d.body).unwrap();
                (
                    v["trade_id"].as_str().unwrap().to_owned(),
                    v["post_position_fp"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub(in crate::backfill) fn position(ticker: &str, whole: i64) -> MarketPosition {
        MarketPosition {
            ticker: ticker.into(),
            position_fp: Count::from_whole(whole),
            market_exposure_dollars: "1.0000".into(),
            total_traded_dollars: "1.0000".into(),
            realized_pnl_dollars: "0.0000".into(),
            fees_paid_dollars: "0.0100".into(),
            last_updated_ts: None,
            exchange_index: None,
        }
    }

    #[test]
    fn missing_fills_walk_forward_from_the_last_one_delivered() {
        let mut memo = Memo::default();
        memo.note(&live("x", "A", 5));
        let rest = [
            fill("x", "A", "bid", 1),
            fill("y", "A", "bid", 2),
            fill("z", "A", "ask", 1),
        ];
        // REST's position disagrees on purpose: the delivered fill is the exact anchor.
        let out = memo.fills(&rest, &[], &[position("A", 99)], &[]);
        assert_eq!(
            posts(&out),
            [("y".into(), "7.00".into()), ("z".into(), "6.00".into())]
        );
        assert!(memo.delivered("y") && memo.delivered("z"));
        assert!(
            memo.fills(&rest, &[], &[], &[]).is_empty(),
            "each fill once"
        );
    }

    /// A fill of market `A` made at `ts`.
    fn at(id: &str, ts: i64) -> Fill {
        Fill {
            ts: Some(ts),
            ..fill(id, "A", "bid", 1)
        }
    }

    fn missing_ids<'a>(memo: &Memo, rest: &'a [Fill]) -> Vec<&'a str> {
        (memo.missing(rest).iter())
            .map(|f| f.trade_id.as_str())
            .collect()
    }

    #[test]
    fn fills_before_the_subscription_went_live_are_the_past_not_a_gap() {
        // A relay that delivered no fill yet: its backfill's overlap reaches back before its
        // own subscription.
        let mut memo = Memo::default();
        memo.live_from(5);
        memo.live_from(9);
        let rest = [at("a", 3), at("b", 4), at("c", 5), at("d", 6)];
        assert_eq!(missing_ids(&memo, &rest), ["c", "d"]);
        // Once a fill was delivered it is the exact cut.
        memo.remember("c");
        assert_eq!(missing_ids(&memo, &rest), ["d"]);
    }

    #[test]
    fn fills_made_while_nobody_held_the_subscription_are_the_past_not_a_gap() {
        let mut memo = Memo::default();
        memo.live_from(2);
        memo.remember("a");
        // Unsubscribed after `a`, subscribed again at 5.
        memo.restart(5);
        let rest = [at("a", 3), at("b", 4), at("c", 5), at("d", 6)];
        assert_eq!(missing_ids(&memo, &rest), ["c", "d"]);
    }

    #[test]
    fn fills_before_the_last_one_delivered_are_the_past_not_a_gap() {
        // A relay started after `a` and `b`: it never delivered them, and its owner holds `c`.
        let mut memo = Memo::default();
        memo.note(&live("c", "A", 5));
        let rest = [
            fill("a", "A", "bid", 1),
            fill("b", "B", "bid", 1),
            fill("c", "A", "bid", 1),
            fill("d", "A", "bid", 2),
        ];
        let out = memo.fills(&rest, &[], &[position("A", 7)], &[]);
        assert_eq!(posts(&out), [("d".into(), "7.00".into())]);
    }

    #[test]
    fn an_unknown_market_walks_back_from_a_held_fill_else_from_the_position() {
        let rest = [fill("b1", "B", "bid", 3), fill("b2", "B", "ask", 1)];
        // No held fill: REST's position after the last listed fill.
        let out = Memo::default().fills(&rest, &[], &[position("B", 10)], &[]);
        assert_eq!(
            posts(&out),
            [("b1".into(), "11.00".into()), ("b2".into(), "10.00".into())]
        );
        // A held fill after the listed ones is exact, whatever REST's position says.
        let held = LiveFill::parse(&live("b3", "B", 11)).unwrap();
        let out = Memo::default().fills(&rest, &[], &[position("B", 99)], &[held]);
        assert_eq!(
            posts(&out),
            [("b1".into(), "11.00".into()), ("b2".into(), "10.00".into())]
        );
        // A held fill REST also listed anchors at its own place.
        let rest3 = [rest[0].clone(), rest[1].clone(), fill("b3", "B", "bid", 1)];
        let held = LiveFill::parse(&live("b3", "B", 12)).unwrap();
        let out = Memo::default().fills(&rest3, &[], &[position("B", 99)], &[held]);
        assert_eq!(
            posts(&out),
            [
                ("b1".into(), "12.00".into()),
                ("b2".into(), "11.00".into()),
                ("b3".into(), "12.00".into())
            ]
        );
    }

    #[test]
    fn a_recovered_fill_carries_the_websocket_fields() {
        let mut f = fill("t", "A", "bid", 2);
        f.side = Some("yes".into());
        f.action = Some("buy".into());
        let order = Order {
            order_id: "order-t".into(),
            client_order_id: Some("mine-1".into()),
            ..serde_json::from_value(json!({"order_id": "order-t", "ticker": "A", "status": "executed",
                "yes_price_dollars": "0.4200", "fill_count_fp": "2.00", "remaining_count_fp": "0.00"})).unwrap()
        };
        let out = Memo::default().fills(&[f], &[order], &[position("A", 2)], &[]);
        let v: Value = serde_json::from_slice(&out[0].body).unwrap();
        assert_eq!(v["client_order_id"], "mine-1");
        assert_eq!(v["ts"], 1796205601);
        assert_eq!(v["ts_ms"], 1796205601000i64);
        assert_eq!(v["post_position_fp"], "2.00");
        assert_eq!(v["purchased_side"], "yes");
        assert_eq!(out[0].market.as_deref(), Some("A"));
    }

    #[test]
    fn the_direction_of_a_fill() {
        let c = Count::from_whole(3);
        assert_eq!(direction(c, Some("bid"), None, None, None), 300);
        assert_eq!(
            direction(c, Some("ask"), Some("yes"), Some("buy"), None),
            -300
        );
        assert_eq!(direction(c, None, Some("yes"), Some("sell"), None), -300);
        assert_eq!(direction(c, None, Some("no"), Some("sell"), None), 300);
        assert_eq!(direction(c, None, Some("no"), None, None), -300);
        assert_eq!(direction(c, None, None, None, Some("yes")), 300);
    }
}
