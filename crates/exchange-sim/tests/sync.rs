//! A client that takes snapshots + deltas rebuilds every book exactly; data bodies are valid and
//! consistent with the book.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use exchange_sim::SimConfig;
use protocol::{Count, Message, OrderBook, OrderbookSnapshot, Price, Side};

/// Applies one data frame to the books, checking seq continuity per sid.
fn apply(
    books: &mut HashMap<String, OrderBook>,
    seqs: &mut HashMap<u64, u64>,
    env: &protocol::Envelope,
) {
    if let (Some(sid), Some(seq)) = (env.sid, env.seq) {
        let last = seqs.entry(sid).or_insert(0);
        assert_eq!(seq, *last + 1, "seq gap on sid {sid}");
        *last = seq;
    }
    match Message::decode(env).unwrap() {
        Message::OrderbookSnapshot(s) => {
            let book = books
                .entry(s.market_ticker.clone())
                .or_insert_with(|| OrderBook::new(&s.market_ticker));
            book.apply_snapshot(&s).unwrap();
        }
        Message::OrderbookDelta(d) => books
            .get_mut(&d.market_ticker)
            .expect("delta before snapshot")
            .apply_delta(&d)
            .unwrap(),
        _ => {}
    }
}

fn truth_book(snap: &OrderbookSnapshot) -> OrderBook {
    let mut book = OrderBook::new(&snap.market_ticker);
    book.apply_snapshot(snap).unwrap();
    book
}

#[tokio::test]
async fn snapshot_plus_deltas_rebuild_every_book_exactly() {
    let sim = start(SimConfig {
        markets: 6,
        rate: 5_000.0,
        ..signed_config()
    })
    .await;
    let markets = sim.markets();
    let mut client = connect(&sim).await;
    let watched = &markets[..3];
    let sub = format!(
        r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta"],"market_tickers":{}}}}}"#,
        serde_json::to_string(watched).unwrap()
    );
    client.send(&sub).await;
    let (env, reply) = client.text().await;
    assert_eq!(
        (env.kind.as_str(), reply["id"].as_u64()),
        ("subscribed", Some(1)),
        "{reply}"
    );
    let sid = reply["msg"]["sid"].as_u64().unwrap();

    let mut books = HashMap::new();
    let mut seqs = HashMap::new();
    let mut deltas = 0;
    let mut resynced = false;
    while deltas < 1_500 {
        let (env, value) = client.text().await;
        if env.kind == "ok" {
            continue;
        }
        assert_eq!(env.sid, Some(sid), "{value}");
        deltas += usize::from(env.kind == "orderbook_delta");
        apply(&mut books, &mut seqs, &env);
        if deltas == 500 && !resynced {
            // A mid-stream snapshot must fit between the deltas too.
            resynced = true;
            let cmd = format!(
                r#"{{"id":2,"cmd":"update_subscription","params":{{"sid":{sid},"market_tickers":["{}"],"action":"get_snapshot"}}}}"#,
                watched[1]
            );
            client.send(&cmd).await;
        }
    }
    assert_eq!(books.len(), 3);

    let (status, _) = http(sim.admin_addr(), "POST", "/admin/pause", "").await;
    assert_eq!(status, 200);
    // After the pause no event is generated: read until every rebuilt book is the truth.
    let mut truths = HashMap::new();
    for ticker in watched {
        let (status, body) = http(
            sim.admin_addr(),
            "GET",
            &format!("/admin/books/{ticker}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let snap: OrderbookSnapshot = serde_json::from_str(&body).unwrap();
        assert_eq!(
            Some(&snap),
            sim.book(ticker).as_ref(),
            "HTTP and Sim::book agree"
        );
        truths.insert(ticker.clone(), truth_book(&snap));
    }
    while watched.iter().any(|t| books[t] != truths[t]) {
        let (env, _) = client
            .text_within(WAIT)
            .await
            .expect("books never converged to the truth");
        apply(&mut books, &mut seqs, &env);
    }
    assert!(
        client
            .text_within(Duration::from_millis(300))
            .await
            .is_none(),
        "data after the pause"
    );
    for ticker in watched {
        assert_eq!(books[ticker], truth_book(&sim.book(ticker).unwrap()));
        let yes = books[ticker].best_bid(Side::Yes).map(|l| l.0);
        let yes_ask = books[ticker].best_yes_ask().map(|l| l.0);
        if let (Some(bid), Some(ask)) = (yes, yes_ask) {
            assert!(bid < ask, "{ticker} crossed");
        }
    }
    let (status, _) = http(sim.admin_addr(), "GET", "/admin/books/NOPE-1", "").await;
    assert_eq!(status, 404);
    let (_, body) = http(sim.admin_addr(), "GET", "/admin/markets", "").await;
    assert_eq!(serde_json::from_str::<Vec<String>>(&body).unwrap(), markets);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_channel_carries_valid_bodies_consistent_with_the_book() {
    let sim = start(SimConfig {
        markets: 2,
        rate: 4_000.0,
        stamp: true,
        ..SimConfig::default()
    })
    .await;
    let markets = sim.markets();
    let mut client = connect(&sim).await;
    let sub = format!(
        r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta","ticker","trade","fill","user_orders","market_positions","market_lifecycle_v2"],"market_tickers":{}}}}}"#,
        serde_json::to_string(&markets).unwrap()
    );
    client.send(&sub).await;
    let mut books = HashMap::new();
    let mut seqs = HashMap::new();
    let mut seen = HashMap::<String, usize>::new();
    let mut subscribed = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 9 || seen.get("orderbook_delta").copied().unwrap_or(0) < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "some message type never arrived: {seen:?}"
        );
        let (env, value) = client.text().await;
        *seen.entry(env.kind.clone()).or_default() += 1;
        if env.kind == "subscribed" {
            subscribed += 1;
            continue;
        }
        let stamp = value["msg"]["sim_ts_ns"].as_u64().expect("stamped");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(
            stamp <= now && now - stamp < 5_000_000_000,
            "sim_ts_ns is a recent wall-clock time"
        );
        apply(&mut books, &mut seqs, &env);
        match Message::decode(&env).unwrap() {
            Message::Ticker(t) => {
                // The ticker quotes the book as it stands; an empty side is bid 0 / ask 1, size 0.
                let book = &books[t.market_ticker.as_ref().unwrap()];
                let bid = book
                    .best_bid(Side::Yes)
                    .unwrap_or((Price::ZERO, Count::ZERO));
                let ask = book.best_yes_ask().unwrap_or((Price::ONE, Count::ZERO));
                assert_eq!(
                    (t.yes_bid_dollars, t.yes_bid_size_fp),
                    (Some(bid.0), Some(bid.1)),
                    "{value}"
                );
                assert_eq!(
                    (t.yes_ask_dollars, t.yes_ask_size_fp),
                    (Some(ask.0), Some(ask.1)),
                    "{value}"
                );
            }
            Message::Trade(t) => {
                let (yes, no) = (t.yes_price_dollars.unwrap(), t.no_price_dollars.unwrap());
                assert_eq!(yes.units() + no.units(), 10_000);
                assert!(t.count_fp.unwrap().units() > 0);
            }
            Message::Fill(_)
            | Message::UserOrder(_)
            | Message::MarketPosition(_)
            | Message::Lifecycle(_) => {}
            Message::OrderbookSnapshot(_) | Message::OrderbookDelta(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(seen.len() <= 9, "unexpected types: {seen:?}");
    }
    assert_eq!(subscribed, 7, "one subscribed per channel");
    sim.shutdown().await;
}

#[tokio::test]
async fn use_yes_price_reports_no_levels_on_the_yes_scale() {
    let sim = start(SimConfig {
        markets: 1,
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let ticker = sim.markets()[0].clone();
    let mut client = connect(&sim).await;
    client
        .send(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta"],"market_ticker":"{ticker}","use_yes_price":true}}}}"#
        ))
        .await;
    client.reply().await;
    let (env, _) = client.text().await;
    let Message::OrderbookSnapshot(snap) = Message::decode(&env).unwrap() else {
        panic!()
    };
    assert_eq!(snap, sim.book(&ticker).unwrap().to_yes_price());
}
