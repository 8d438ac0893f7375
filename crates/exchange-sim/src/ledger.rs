//! The simulated account's ledger: every fill, the latest state of every order and the holdings
//! per market. The engine records into it in the same step, under the same lock, as it encodes
//! the `fill`, `user_order` and `market_position` messages, from the same values, so the REST
//! answers (`rest`) and `/admin/fills` agree exactly with what the WebSocket sent.
//!
//! Pages are JSON built here by concatenating bodies encoded once at record time. Fills and
//! orders are listed newest first (as the exchange's REST API does); a cursor is the record
//! number of the last item of the previous page, so fills recorded while a client pages do not
//! shift its pages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;

use protocol::{Cost, Count, Price, Side};
use serde_json::json;

use crate::encode::{book_side, field, raw, side_str};
use crate::rest::Query;

/// Fills (and orders) the ledger keeps; older ones are forgotten, as the exchange moves old
/// records to its historical endpoints. About 2 KiB each (three encoded bodies), so at most
/// ~100 MiB: at the default rate that is hours of fills, at 50,000 msg/s about a minute.
pub(crate) const MAX_RECORDS: usize = 50_000;

/// The account's side of one trade, as the engine saw it. Money in cents.
pub(crate) struct Record<'a> {
    pub ticker: &'a str,
    pub user_id: &'a str,
    pub trade_id: &'a str,
    pub order_id: &'a str,
    pub client_order_id: &'a str,
    /// The outcome the account bought (it is always the maker, buying).
    pub side: Side,
    pub yes_price: i64,
    pub count: i64,
    pub fee_cents: i64,
    pub order_initial: i64,
    pub order_remaining: i64,
    pub order_created_rfc3339: &'a str,
    pub ts_ms: i64,
    pub rfc3339: &'a str,
    /// The holding after the fill.
    pub position: i64,
    pub position_cost_cents: i64,
    pub realized_pnl_cents: i64,
    pub fees_paid_cents: i64,
    /// The `fill` message's `msg`, exactly as the WebSocket sent it.
    pub ws_fill: &'a str,
}

struct FillEntry {
    num: u64,
    ticker: String,
    order_id: String,
    ts: i64,
    ts_ms: i64,
    /// The REST `Fill` object.
    rest: String,
    /// The WebSocket `fill` msg.
    ws: String,
}

struct OrderEntry {
    num: u64,
    order_id: String,
    ticker: String,
    event_ticker: String,
    status: &'static str,
    /// When it last changed, Unix seconds.
    updated: i64,
    rest: String,
}

#[derive(Default)]
struct PositionEntry {
    event_ticker: String,
    position: i64,
    cost: i64,
    realized: i64,
    fees_paid: i64,
    /// Cost of every contract bought in the market.
    traded: i64,
    volume: i64,
    last_updated: String,
}

/// See the module doc. Owned by the engine behind its own lock (taken after the engine lock when
/// recording; alone when answering), never held across an `.await`.
pub(crate) struct Ledger {
    /// Fills and orders kept ([`MAX_RECORDS`]).
    max: usize,
    fills: VecDeque<FillEntry>,
    orders: VecDeque<OrderEntry>,
    /// Record number of each order still kept.
    order_index: HashMap<String, u64>,
    positions: BTreeMap<String, PositionEntry>,
    next: u64,
    evicted: u64,
}

/// Cents as dollars with four decimals (`"0.4200"`).
fn dollars(cents: i64) -> String {
    Price::from_cents(cents).to_string()
}

/// Cents as dollars with six decimals (`"0.010000"`), as order costs and fees are written.
fn dollars6(cents: i64) -> String {
    Cost::from_cents(cents).to_string()
}

/// The event of a market: its ticker without the last part (`KXFED-26MAR18-T4.25` is in
/// `KXFED-26MAR18`).
fn event_of(ticker: &str) -> &str {
    ticker.rsplit_once('-').map_or(ticker, |(event, _)| event)
}

fn count(n: i64) -> String {
    Count::from_whole(n).to_string()
}

fn matches(list: &Option<Vec<String>>, value: &str) -> bool {
    list.as_ref().is_none_or(|l| l.iter().any(|v| v == value))
}

fn in_range(q: &Query, ts: i64) -> bool {
    q.min_ts.is_none_or(|m| ts >= m) && q.max_ts.is_none_or(|m| ts <= m)
}

/// Parses a fill or order cursor: the record number to continue below.
fn record_cursor(cursor: &Option<String>) -> Result<u64, String> {
    match cursor.as_deref() {
        None | Some("") => Ok(u64::MAX),
        Some(c) => c
            .parse()
            .map_err(|_| format!("cursor {c:?}: not a cursor this server gave")),
    }
}

/// Walks `items` newest first from below `cursor`, keeping those that match, and returns the
/// page's bodies and the next cursor ("" when nothing older matches).
fn page<'a, T>(
    items: &'a VecDeque<T>,
    q: &Query,
    num: impl Fn(&T) -> u64,
    keep: impl Fn(&T) -> bool,
    body: impl Fn(&'a T) -> &'a str,
) -> Result<(Vec<&'a str>, String), String> {
    let below = record_cursor(&q.cursor)?;
    let mut out = Vec::new();
    let mut last = None;
    let mut more = false;
    let want = if q.truncate {
        q.limit.div_ceil(2)
    } else {
        q.limit
    };
    for item in items.iter().rev().skip_while(|i| num(i) >= below) {
        if q.nothing || !keep(item) {
            continue;
        }
        if out.len() == want {
            more = true;
            break;
        }
        out.push(body(item));
        last = Some(num(item));
    }
    // A truncated page always claims more, so a client that stops at a short page loses items.
    let cursor = match last {
        Some(n) if more || (q.truncate && out.len() < q.limit) => n.to_string(),
        _ => String::new(),
    };
    Ok((out, cursor))
}

fn list(key: &str, bodies: &[&str], cursor: &str) -> String {
    let mut out = String::with_capacity(32 + bodies.iter().map(|b| b.len() + 1).sum::<usize>());
    let _ = write!(out, "{{\"{key}\":[");
    for (i, b) in bodies.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(b);
    }
    let _ = write!(out, "],\"cursor\":\"{cursor}\"}}");
    out
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::bounded(MAX_RECORDS)
    }
}

impl Ledger {
    /// A ledger keeping the last `max` fills and orders.
    pub fn bounded(max: usize) -> Ledger {
        Ledger {
            max,
            fills: VecDeque::new(),
            orders: VecDeque::new(),
            order_index: HashMap::new(),
            positions: BTreeMap::new(),
            next: 0,
            evicted: 0,
        }
    }

    /// Records one fill of the account, its order's new state and its holding.
    pub fn record(&mut self, r: &Record<'_>) {
        self.next += 1;
        let num = self.next;
        let side = side_str(r.side);
        let no_price = 100 - r.yes_price;
        let side_price = if r.side == Side::Yes {
            r.yes_price
        } else {
            no_price
        };
        let ts = r.ts_ms.div_euclid(1000);
        let yes = dollars(r.yes_price);
        let (count_fp, fee) = (count(r.count), dollars6(r.fee_cents));
        // Written by hand like `encode`: this runs in the engine's step, under its lock.
        let mut fill = String::with_capacity(520);
        fill.push('{');
        field(&mut fill, "fill_id", r.trade_id);
        field(&mut fill, "trade_id", r.trade_id);
        field(&mut fill, "order_id", r.order_id);
        field(&mut fill, "ticker", r.ticker);
        field(&mut fill, "market_ticker", r.ticker);
        raw(&mut fill, "exchange_index", 0);
        field(&mut fill, "side", side);
        field(&mut fill, "action", "buy");
        field(&mut fill, "outcome_side", side);
        field(&mut fill, "book_side", book_side(r.side));
        field(&mut fill, "count_fp", &count_fp);
        field(&mut fill, "yes_price_dollars", &yes);
        field(&mut fill, "no_price_dollars", dollars(no_price));
        field(&mut fill, "fee_cost", &fee);
        raw(&mut fill, "is_taker", false);
        field(&mut fill, "created_time", r.rfc3339);
        raw(&mut fill, "ts", ts);
        raw(&mut fill, "subaccount_number", 0);
        fill.push('}');
        self.fills.push_back(FillEntry {
            num,
            ticker: r.ticker.to_owned(),
            order_id: r.order_id.to_owned(),
            ts,
            ts_ms: r.ts_ms,
            rest: fill,
            ws: r.ws_fill.to_owned(),
        });

        let status = if r.order_remaining == 0 {
            "executed"
        } else {
            "resting"
        };
        let mut order = String::with_capacity(900);
        order.push('{');
        field(&mut order, "order_id", r.order_id);
        field(&mut order, "user_id", r.user_id);
        field(&mut order, "client_order_id", r.client_order_id);
        field(&mut order, "ticker", r.ticker);
        field(&mut order, "type", "limit");
        field(&mut order, "status", status);
        field(&mut order, "side", side);
        field(&mut order, "action", "buy");
        field(&mut order, "outcome_side", side);
        field(&mut order, "book_side", book_side(r.side));
        field(&mut order, "yes_price_dollars", &yes);
        field(&mut order, "no_price_dollars", dollars(no_price));
        field(&mut order, "fill_count_fp", &count_fp);
        field(&mut order, "remaining_count_fp", count(r.order_remaining));
        field(&mut order, "initial_count_fp", count(r.order_initial));
        field(&mut order, "taker_fill_cost_dollars", dollars6(0));
        field(
            &mut order,
            "maker_fill_cost_dollars",
            dollars6(r.count * side_price),
        );
        field(&mut order, "taker_fees_dollars", dollars6(0));
        field(&mut order, "maker_fees_dollars", &fee);
        raw(&mut order, "expiration_time", "null");
        field(&mut order, "created_time", r.order_created_rfc3339);
        field(&mut order, "last_update_time", r.rfc3339);
        raw(&mut order, "self_trade_prevention_type", "null");
        raw(&mut order, "order_group_id", "null");
        raw(&mut order, "cancel_order_on_pause", false);
        raw(&mut order, "subaccount_number", 0);
        raw(&mut order, "exchange_index", 0);
        order.push('}');
        // In the simulator every fill is its order's only one; an update replaces the old state.
        if let Some(old) = self.order_index.insert(r.order_id.to_owned(), num) {
            self.orders.retain(|o| o.num != old);
        }
        self.orders.push_back(OrderEntry {
            num,
            order_id: r.order_id.to_owned(),
            ticker: r.ticker.to_owned(),
            event_ticker: event_of(r.ticker).to_owned(),
            status,
            updated: ts,
            rest: order,
        });

        let p = self.positions.entry(r.ticker.to_owned()).or_default();
        p.event_ticker = event_of(r.ticker).to_owned();
        p.position = r.position;
        p.cost = r.position_cost_cents;
        p.realized = r.realized_pnl_cents;
        p.fees_paid = r.fees_paid_cents;
        p.traded += r.count * side_price;
        p.volume += r.count;
        p.last_updated = r.rfc3339.to_owned();

        while self.fills.len() > self.max {
            self.fills.pop_front();
            self.evicted += 1;
        }
        while self.orders.len() > self.max {
            if let Some(o) = self.orders.pop_front() {
                self.order_index.remove(&o.order_id);
            }
        }
    }

    /// `GET /portfolio/fills`: `{"fills":[..],"cursor":".."}`, or the problem with the query.
    pub fn fills(&self, q: &Query) -> Result<String, String> {
        let (bodies, cursor) = page(
            &self.fills,
            q,
            |f| f.num,
            |f| {
                matches(&q.tickers, &f.ticker)
                    && q.order_id.as_ref().is_none_or(|o| *o == f.order_id)
                    && in_range(q, f.ts)
            },
            |f| f.rest.as_str(),
        )?;
        Ok(list("fills", &bodies, &cursor))
    }

    /// `GET /portfolio/orders`: `{"orders":[..],"cursor":".."}`. `min_ts`/`max_ts` select by the
    /// time of the order's last change (what a backfill wants).
    pub fn orders(&self, q: &Query) -> Result<String, String> {
        let (bodies, cursor) = page(
            &self.orders,
            q,
            |o| o.num,
            |o| {
                matches(&q.tickers, &o.ticker)
                    && matches(&q.event_tickers, &o.event_ticker)
                    && q.status.as_ref().is_none_or(|s| s == o.status)
                    && in_range(q, o.updated)
            },
            |o| o.rest.as_str(),
        )?;
        Ok(list("orders", &bodies, &cursor))
    }

    /// `GET /portfolio/positions`: market positions in ticker order (the cursor is the last
    /// ticker of the page) and the event positions of the markets on the page.
    pub fn positions(&self, q: &Query) -> Result<String, String> {
        let after = q.cursor.as_deref().unwrap_or("");
        let want = if q.truncate {
            q.limit.div_ceil(2)
        } else {
            q.limit
        };
        let mut page: Vec<(&String, &PositionEntry)> = Vec::new();
        let mut more = false;
        let all = self
            .positions
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded));
        for (ticker, p) in all {
            let keep = !q.nothing
                && matches(&q.tickers, ticker)
                && matches(&q.event_tickers, &p.event_ticker)
                && (!q.nonzero_position || p.position != 0)
                && (!q.traded || p.volume > 0);
            if !keep {
                continue;
            }
            if page.len() == want {
                more = true;
                break;
            }
            page.push((ticker, p));
        }
        let cursor = match page.last() {
            Some((t, _)) if more || (q.truncate && page.len() < q.limit) => (*t).clone(),
            _ => String::new(),
        };
        let markets: Vec<_> = page
            .iter()
            .map(|(ticker, p)| {
                json!({
                    "ticker": ticker, "exchange_index": 0,
                    "total_traded_dollars": dollars(p.traded), "position_fp": count(p.position),
                    "market_exposure_dollars": dollars(p.cost),
                    "realized_pnl_dollars": dollars(p.realized),
                    "fees_paid_dollars": dollars(p.fees_paid), "last_updated_ts": p.last_updated,
                })
            })
            .collect();
        let mut events: BTreeMap<&str, [i64; 4]> = BTreeMap::new();
        for (_, p) in &page {
            let e = events.entry(p.event_ticker.as_str()).or_default();
            e[0] += p.cost;
            e[1] += p.position.abs();
            e[2] += p.realized;
            e[3] += p.fees_paid;
        }
        let events: Vec<_> = events
            .into_iter()
            .map(|(event, [cost, shares, realized, fees])| {
                json!({
                    "event_ticker": event, "total_cost_dollars": dollars(cost),
                    "total_cost_shares_fp": count(shares), "event_exposure_dollars": dollars(cost),
                    "realized_pnl_dollars": dollars(realized), "fees_paid_dollars": dollars(fees),
                })
            })
            .collect();
        Ok(
            json!({"market_positions": markets, "event_positions": events, "cursor": cursor})
                .to_string(),
        )
    }

    /// `GET /admin/fills`: every fill kept, oldest first, as the WebSocket `fill` msg, from
    /// `since_ms` on; `evicted` counts those forgotten (see [`MAX_RECORDS`]).
    pub fn admin_fills(&self, since_ms: Option<i64>) -> String {
        let mut out = String::from("{\"fills\":[");
        let mut first = true;
        for f in self
            .fills
            .iter()
            .filter(|f| since_ms.is_none_or(|s| f.ts_ms >= s))
        {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&f.ws);
        }
        let _ = write!(out, "],\"evicted\":{}}}", self.evicted);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ledger(n: usize) -> Ledger {
        bounded_ledger(n, MAX_RECORDS)
    }

    fn bounded_ledger(n: usize, max: usize) -> Ledger {
        let mut l = Ledger::bounded(max);
        for i in 0..n {
            let (trade, order) = (format!("t{i}"), format!("o{i}"));
            let ticker = if i % 2 == 0 { "A-1" } else { "B-1" };
            let ws = format!("{{\"trade_id\":\"{trade}\"}}");
            l.record(&Record {
                ticker,
                user_id: "u",
                trade_id: &trade,
                order_id: &order,
                client_order_id: "c",
                side: if i % 3 == 0 { Side::Yes } else { Side::No },
                yes_price: 40,
                count: 2,
                fee_cents: 1,
                order_initial: 2,
                order_remaining: 0,
                order_created_rfc3339: "2026-01-01T00:00:00Z",
                ts_ms: 1_000 * i as i64,
                rfc3339: "2026-01-01T00:00:00Z",
                position: 2,
                position_cost_cents: 80,
                realized_pnl_cents: 0,
                fees_paid_cents: 1,
                ws_fill: &ws,
            });
        }
        l
    }

    fn all_fill_ids(l: &Ledger, mut q: Query) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let page: Value = serde_json::from_str(&l.fills(&q).unwrap()).unwrap();
            for f in page["fills"].as_array().unwrap() {
                ids.push(f["fill_id"].as_str().unwrap().to_owned());
            }
            match page["cursor"].as_str().unwrap() {
                "" => return ids,
                c => q.cursor = Some(c.to_owned()),
            }
        }
    }

    #[test]
    fn pages_go_newest_first_to_the_end_with_filters() {
        let l = ledger(25);
        let ids = all_fill_ids(
            &l,
            Query {
                limit: 4,
                ..Query::default()
            },
        );
        let want: Vec<String> = (0..25).rev().map(|i| format!("t{i}")).collect();
        assert_eq!(ids, want);
        let q = Query {
            limit: 3,
            truncate: true,
            ..Query::default()
        };
        assert_eq!(
            all_fill_ids(&l, q),
            want,
            "truncated pages still reach the end"
        );
        let q = Query {
            limit: 5,
            tickers: Some(vec!["B-1".into()]),
            min_ts: Some(4),
            max_ts: Some(9),
            ..Query::default()
        };
        assert_eq!(all_fill_ids(&l, q), ["t9", "t7", "t5"]);
        let q = Query {
            limit: 5,
            nothing: true,
            ..Query::default()
        };
        assert!(all_fill_ids(&l, q).is_empty());
        let bad = Query {
            limit: 5,
            cursor: Some("x".into()),
            ..Query::default()
        };
        assert!(l.fills(&bad).is_err());
    }

    #[test]
    fn admin_fills_oldest_first_since() {
        let l = ledger(5);
        let v: Value = serde_json::from_str(&l.admin_fills(Some(3_000))).unwrap();
        assert_eq!(v["fills"], json!([{"trade_id":"t3"},{"trade_id":"t4"}]));
        assert_eq!(v["evicted"], 0);
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_bound_and_counted() {
        let l = bounded_ledger(13, 10);
        let v: Value = serde_json::from_str(&l.admin_fills(None)).unwrap();
        assert_eq!(v["evicted"], 3);
        assert_eq!(v["fills"].as_array().unwrap().len(), 10);
        assert_eq!(v["fills"][0]["trade_id"], "t3");
        assert_eq!((l.orders.len(), l.order_index.len()), (10, 10));
        let ids = all_fill_ids(
            &l,
            Query {
                limit: 4,
                ..Query::default()
            },
        );
        assert_eq!(
            ids.last().map(String::as_str),
            Some("t3"),
            "REST pages end at the oldest kept"
        );
    }

    #[test]
    fn positions_page_by_ticker() {
        let l = ledger(4);
        let q = Query {
            limit: 1,
            ..Query::default()
        };
        let v: Value = serde_json::from_str(&l.positions(&q).unwrap()).unwrap();
        assert_eq!(v["market_positions"][0]["ticker"], "A-1");
        assert_eq!(v["event_positions"][0]["event_ticker"], "A");
        assert_eq!(v["cursor"], "A-1");
        let q = Query {
            limit: 1,
            cursor: Some("A-1".into()),
            ..Query::default()
        };
        let v: Value = serde_json::from_str(&l.positions(&q).unwrap()).unwrap();
        assert_eq!(v["market_positions"][0]["ticker"], "B-1");
        assert_eq!(v["cursor"], "");
        assert_eq!(dollars6(123), "1.230000");
    }
}
