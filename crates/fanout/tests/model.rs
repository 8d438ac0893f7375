//! Property test: random interleavings of publishing (snapshots, deltas, tickers, trades, stale
//! marks), subscribing, unsubscribing, snapshot requests and subscriber stalls (small queues, so
//! lags and repairs are frequent). Whenever a subscriber has caught up with the stream, every book
//! it rebuilt from its deliveries equals the true book, stale books are known to be stale, and its
//! latest ticker is the true latest ticker.

mod common;

use std::collections::HashMap;

use common::*;
use fanout::{FanoutConfig, Subscriber, Topic};
use proptest::prelude::*;
use protocol::{Channel, OrderBook, Side};

const MARKETS: [&str; 3] = ["A", "B", "C"];

#[derive(Clone, Debug)]
enum Op {
    Snapshot(usize, Vec<(bool, i64, i64)>),
    Delta(usize, bool, i64, i64),
    Ticker(usize),
    Trade(usize),
    Stale(usize),
    StaleAll,
    NewSub,
    Add(usize, usize, bool),
    Remove(usize, usize),
    Request(usize, usize),
    Drain(usize, usize),
}

/// Topic choices: a book, ticker or trade of one market, or ticker/trade channel-wide.
fn topic(i: usize) -> Topic {
    let m = MARKETS[i % 3];
    match i / 3 {
        0 => Topic::market(Channel::OrderbookDelta, m),
        1 => Topic::market(Channel::Ticker, m),
        2 => Topic::market(Channel::Trade, m),
        _ if i % 2 == 0 => Topic::channel(Channel::Ticker),
        _ => Topic::channel(Channel::Trade),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let side = any::<bool>();
    prop_oneof![
        2 => (0..3usize, prop::collection::vec((side, 1..12i64, 1..4i64), 0..6))
            .prop_map(|(m, l)| Op::Snapshot(m, l)),
        12 => (0..3usize, side, 1..12i64, prop_oneof![-3..0i64, 1..4i64])
            .prop_map(|(m, s, p, c)| Op::Delta(m, s, p, c)),
        2 => (0..3usize).prop_map(Op::Ticker),
        2 => (0..3usize).prop_map(Op::Trade),
        1 => (0..3usize).prop_map(Op::Stale),
        1 => Just(Op::StaleAll),
        1 => Just(Op::NewSub),
        4 => (0..4usize, 0..11usize, any::<bool>()).prop_map(|(s, t, i)| Op::Add(s, t, i)),
        1 => (0..4usize, 0..11usize).prop_map(|(s, t)| Op::Remove(s, t)),
        1 => (0..4usize, 0..3usize).prop_map(|(s, m)| Op::Request(s, m)),
        6 => (0..4usize, 1..40usize).prop_map(|(s, n)| Op::Drain(s, n)),
    ]
}

struct Client {
    sub: Subscriber,
    view: ClientView,
}

fn side(yes: bool) -> Side {
    if yes {
        Side::Yes
    } else {
        Side::No
    }
}

fn check(client: &Client, truth: &HashMap<&str, OrderBook>, tickers: &HashMap<&str, bytes::Bytes>) {
    for t in client.sub.topics() {
        let Some(m) = t.market.as_deref() else {
            continue;
        };
        if t.channel == Channel::OrderbookDelta {
            let want = truth.get(m).filter(|b| b.is_synced());
            let got = client.view.books.get(m).and_then(Option::as_ref);
            assert_eq!(got, want, "book {m} of a caught-up subscriber");
        }
    }
    for (m, body) in &client.view.tickers {
        assert_eq!(Some(body), tickers.get(m.as_str()), "latest ticker of {m}");
    }
}

fn run(ops: Vec<Op>, queue_messages: usize, queue_bytes: u64) {
    let config = FanoutConfig {
        queue_messages,
        queue_bytes,
        slow_consumer_lags: u32::MAX,
        ..FanoutConfig::default()
    };
    let (mut p, f, _events) = fanout::new(config);
    let mut truth: HashMap<&str, OrderBook> =
        MARKETS.iter().map(|m| (*m, OrderBook::new(*m))).collect();
    let mut tickers: HashMap<&str, bytes::Bytes> = HashMap::new();
    let mut clients: Vec<Client> = Vec::new();
    let mut n = 0u64;
    for op in ops {
        n += 1;
        match op {
            Op::Snapshot(m, levels) => {
                let mut seen = std::collections::HashSet::new();
                let levels: Vec<_> = levels
                    .into_iter()
                    .filter(|(s, p, _)| seen.insert((*s, *p)))
                    .map(|(s, p, c)| (side(s), p * 100, c * 100))
                    .collect();
                let (snap, body) = snapshot(MARKETS[m], &levels);
                truth
                    .get_mut(MARKETS[m])
                    .unwrap()
                    .apply_snapshot(&snap)
                    .unwrap();
                p.snapshot(MARKETS[m], snap, body).unwrap();
            }
            Op::Delta(m, s, price, change) => {
                let (d, body) = delta(MARKETS[m], side(s), price * 100, change * 100);
                let book = truth.get_mut(MARKETS[m]).unwrap();
                let expect_ok = book.is_synced() && book.clone().apply_delta(&d).is_ok();
                if expect_ok {
                    book.apply_delta(&d).unwrap();
                } else {
                    book.desync();
                }
                assert_eq!(p.delta(MARKETS[m], d, body).is_ok(), expect_ok);
            }
            Op::Ticker(m) => {
                publish_ticker(&mut p, MARKETS[m], n);
                tickers.insert(MARKETS[m], ticker_body(MARKETS[m], n));
            }
            Op::Trade(m) => {
                publish_trade(&mut p, MARKETS[m], n);
            }
            Op::Stale(m) => {
                p.mark_stale([MARKETS[m]]);
                truth.get_mut(MARKETS[m]).unwrap().desync();
            }
            Op::StaleAll => {
                p.mark_all_stale();
                truth.values_mut().for_each(OrderBook::desync);
            }
            Op::NewSub => clients.push(Client {
                sub: f.subscriber(),
                view: ClientView::default(),
            }),
            Op::Add(c, t, initial) => {
                if let Some(client) = clients.get_mut(c) {
                    client.sub.add(topic(t), initial).unwrap();
                }
            }
            Op::Remove(c, t) => {
                if let Some(client) = clients.get_mut(c) {
                    let t = topic(t);
                    if client.sub.remove(&t) {
                        // Forget what the topic carried, as a client does on unsubscribe.
                        match (t.channel, t.market.as_deref()) {
                            (Channel::OrderbookDelta, Some(m)) => {
                                client.view.books.remove(m);
                            }
                            (Channel::Ticker, _) => client.view.tickers.clear(),
                            _ => {}
                        }
                    }
                }
            }
            Op::Request(c, m) => {
                if let Some(client) = clients.get_mut(c) {
                    let _ = client.sub.request_snapshot(MARKETS[m]);
                }
            }
            Op::Drain(c, max) => {
                if let Some(client) = clients.get_mut(c) {
                    for _ in 0..max {
                        match client.sub.try_recv() {
                            Some(d) => client.view.apply(d),
                            None => break,
                        }
                    }
                    // Caught up when nothing more is ready.
                    match client.sub.try_recv() {
                        Some(d) => client.view.apply(d),
                        None => check(client, &truth, &tickers),
                    }
                }
            }
        }
        for m in MARKETS {
            assert_eq!(
                f.book(m),
                Some(truth[m].clone()).filter(OrderBook::is_synced)
            );
        }
    }
    for client in &mut clients {
        while let Some(d) = client.sub.try_recv() {
            client.view.apply(d);
        }
        assert!(client.view.disconnect.is_none());
        check(client, &truth, &tickers);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_caught_up_subscriber_sees_the_true_books(
        ops in prop::collection::vec(op(), 1..300),
        queue_messages in 2usize..24,
        queue_bytes in prop_oneof![Just(u64::MAX), 100u64..2000],
    ) {
        run(ops, queue_messages, queue_bytes);
    }
}
