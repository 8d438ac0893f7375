//! Message builders and a client-side model that rebuilds books from deliveries.
#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use fanout::{Delivery, Publisher};
use protocol::{Channel, MessageType, OrderBook, OrderbookDelta, OrderbookSnapshot, Side};

pub fn snapshot(market: &str, levels: &[(Side, i64, i64)]) -> (OrderbookSnapshot, Bytes) {
    let side = |s: Side| {
        levels
            .iter()
            .filter(|l| l.0 == s)
            .map(|(_, p, c)| {
                serde_json::json!([
                    protocol::Price::from_units(*p).to_string(),
                    protocol::Count::from_units(*c).to_string()
                ])
            })
            .collect::<Vec<_>>()
    };
    let body = serde_json::json!({
        "market_ticker": market, "market_id": "id",
        "yes_dollars_fp": side(Side::Yes), "no_dollars_fp": side(Side::No),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

pub fn delta(market: &str, side: Side, price: i64, change: i64) -> (OrderbookDelta, Bytes) {
    let body = serde_json::json!({
        "market_ticker": market, "side": side,
        "price_dollars": protocol::Price::from_units(price).to_string(),
        "delta_fp": protocol::Count::from_units(change).to_string(),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

pub fn ticker_body(market: &str, n: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"market_ticker":"{market}","volume_fp":"{n}.00"}}"#
    ))
}

pub fn trade_body(market: &str, n: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"market_ticker":"{market}","trade_id":"{n}"}}"#
    ))
}

pub fn publish_snapshot<N>(p: &mut Publisher<N>, market: &str, levels: &[(Side, i64, i64)]) -> u64 {
    let (s, b) = snapshot(market, levels);
    p.snapshot(market, s, b).unwrap()
}

pub fn publish_delta<N>(
    p: &mut Publisher<N>,
    market: &str,
    side: Side,
    price: i64,
    change: i64,
) -> u64 {
    let (d, b) = delta(market, side, price, change);
    p.delta(market, d, b).unwrap()
}

pub fn publish_ticker<N>(p: &mut Publisher<N>, market: &str, n: u64) -> u64 {
    p.message(
        Channel::Ticker,
        Some(market),
        MessageType::Ticker,
        ticker_body(market, n),
    )
}

pub fn publish_trade<N>(p: &mut Publisher<N>, market: &str, n: u64) -> u64 {
    p.message(
        Channel::Trade,
        Some(market),
        MessageType::Trade,
        trade_body(market, n),
    )
}

/// What a client rebuilds from its deliveries, as a Kalshi client would.
#[derive(Default, Debug)]
pub struct ClientView {
    /// `None`: told stale (or never had a snapshot).
    pub books: HashMap<String, Option<OrderBook>>,
    pub tickers: HashMap<String, Bytes>,
    pub trades: Vec<Bytes>,
    pub trades_lost: u64,
    pub lags: usize,
    pub stale_notices: usize,
    pub disconnect: Option<fanout::Verdict>,
    pub data: usize,
}

impl ClientView {
    pub fn apply<N>(&mut self, d: Delivery<N>) {
        match d {
            Delivery::Data(item) | Delivery::Cached { item, .. } => {
                self.data += 1;
                let market = item.market().unwrap().to_owned();
                match item.kind() {
                    MessageType::OrderbookSnapshot => {
                        let snap: OrderbookSnapshot = serde_json::from_slice(item.body()).unwrap();
                        let mut book = OrderBook::new(&market);
                        book.apply_snapshot(&snap).unwrap();
                        self.books.insert(market, Some(book));
                    }
                    MessageType::OrderbookDelta => {
                        let d: OrderbookDelta = serde_json::from_slice(item.body()).unwrap();
                        let book = self
                            .books
                            .get_mut(&market)
                            .and_then(Option::as_mut)
                            .unwrap_or_else(|| panic!("delta for {market} without a book"));
                        book.apply_delta(&d).unwrap_or_else(|e| panic!("{e}"));
                    }
                    MessageType::Ticker => {
                        self.tickers.insert(market, item.body().clone());
                    }
                    MessageType::Trade => self.trades.push(item.body().clone()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            Delivery::Stale { market } => {
                self.stale_notices += 1;
                self.books.insert(market.to_string(), None);
            }
            Delivery::Lagged(report) => {
                self.lags += 1;
                self.trades_lost += report.trades_lost;
            }
            Delivery::Disconnect(v) => self.disconnect = Some(v),
            Delivery::Notice(_) => {}
        }
    }
}
