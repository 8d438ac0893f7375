//! The fanout's guarantees, one scenario each.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fanout::{
    CacheReason, Delivery, FanoutConfig, LagCause, PublishError, SnapshotRequest, Topic,
    TopicChange, Verdict,
};
use protocol::{Channel, MessageType, Side};

fn small(queue_messages: usize) -> FanoutConfig {
    FanoutConfig {
        queue_messages,
        ..FanoutConfig::default()
    }
}

fn book_topic(m: &str) -> Topic {
    Topic::market(Channel::OrderbookDelta, m)
}

fn drain(sub: &mut fanout::Subscriber, view: &mut ClientView) {
    while let Some(d) = sub.try_recv() {
        view.apply(d);
    }
}

fn truth(fanout: &fanout::Fanout, m: &str) -> protocol::OrderBook {
    fanout.book(m).expect("synced")
}

#[test]
fn a_new_subscriber_gets_the_cached_book_then_exactly_the_later_deltas() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_snapshot(
        &mut p,
        "M",
        &[(Side::Yes, 800, 30000), (Side::No, 5400, 2000)],
    );
    publish_delta(&mut p, "M", Side::Yes, 800, -100);
    let mut sub = f.subscriber();
    let mut early = f.subscriber(); // attached before the next deltas, topic added after them
    publish_delta(&mut p, "M", Side::Yes, 900, 100);
    assert!(sub.add(book_topic("M"), false).unwrap());
    assert!(
        !sub.add(book_topic("M"), false).unwrap(),
        "adding twice is a no-op"
    );
    early.add(book_topic("M"), false).unwrap();
    publish_delta(&mut p, "M", Side::No, 5400, -2000);

    for s in [&mut sub, &mut early] {
        let first = s.try_recv().unwrap();
        let Delivery::Cached {
            item,
            reason: CacheReason::Initial,
        } = &first
        else {
            panic!("{first:?}")
        };
        assert_eq!(item.kind(), &MessageType::OrderbookSnapshot);
        let mut view = ClientView::default();
        view.apply(first);
        drain(s, &mut view);
        // `early` had the 900 delta in its queue: covered by the snapshot, so skipped.
        assert_eq!(view.data, 2, "snapshot + the one later delta");
        assert_eq!(view.books["M"].as_ref(), Some(&truth(&f, "M")));
    }
}

#[test]
fn stale_books_get_no_deltas_and_new_subscribers_wait_for_the_reset() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 30000)]);
    let mut live = f.subscriber();
    live.add(book_topic("M"), false).unwrap();
    let mut view = ClientView::default();
    drain(&mut live, &mut view);

    assert_eq!(f.stale_books(), 0);
    p.mark_stale(["M"]);
    assert_eq!(f.stale_books(), 1);
    let (d, b) = delta("M", Side::Yes, 800, 100);
    assert!(matches!(
        p.delta("M", d, b),
        Err(PublishError::NotSynced { .. })
    ));
    assert!(f.book("M").is_none());

    let mut late = f.subscriber();
    late.add(book_topic("M"), false).unwrap();
    assert!(late.try_recv().is_none(), "nothing until the reset");
    assert_eq!(
        late.request_snapshot("M").unwrap(),
        SnapshotRequest::AwaitingReset
    );

    drain(&mut live, &mut view);
    assert_eq!(view.stale_notices, 1);
    assert_eq!(view.books["M"], None);

    publish_snapshot(&mut p, "M", &[(Side::No, 100, 100)]);
    assert_eq!(f.stale_books(), 0);
    publish_delta(&mut p, "M", Side::No, 100, 50);
    let mut late_view = ClientView::default();
    drain(&mut live, &mut view);
    drain(&mut late, &mut late_view);
    assert_eq!(view.books["M"].as_ref(), Some(&truth(&f, "M")));
    assert_eq!(late_view.books["M"].as_ref(), Some(&truth(&f, "M")));
    assert_eq!(late_view.data, 2, "reset snapshot and one delta");
}

#[test]
fn a_delta_that_does_not_fit_marks_the_book_stale() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 100)]);
    let mut sub = f.subscriber();
    sub.add(book_topic("M"), false).unwrap();
    let (d, b) = delta("M", Side::Yes, 800, -200);
    assert!(matches!(
        p.delta("M", d, b),
        Err(PublishError::Inconsistent { .. })
    ));
    let (d, b) = delta("OTHER", Side::Yes, 800, 1);
    assert!(matches!(
        p.delta("M", d, b),
        Err(PublishError::NotSynced { .. })
    ));
    let mut view = ClientView::default();
    drain(&mut sub, &mut view);
    assert_eq!(view.stale_notices, 1);
    assert_eq!(view.books["M"], None);
}

#[test]
fn requested_snapshots_skip_the_deltas_they_cover() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 100)]);
    let mut sub = f.subscriber();
    sub.add(book_topic("M"), false).unwrap();
    assert!(sub.request_snapshot("X").is_err());
    publish_delta(&mut p, "M", Side::Yes, 800, 1);
    publish_delta(&mut p, "M", Side::Yes, 800, 1);
    assert_eq!(sub.request_snapshot("M").unwrap(), SnapshotRequest::Queued);
    publish_delta(&mut p, "M", Side::Yes, 800, 1);
    let mut view = ClientView::default();
    drain(&mut sub, &mut view);
    assert_eq!(
        view.data, 3,
        "initial, requested, last delta: the two covered deltas skipped"
    );
    assert_eq!(view.books["M"].as_ref(), Some(&truth(&f, "M")));
}

#[test]
fn a_lag_is_reported_and_repaired_before_any_further_delta() {
    let (mut p, f, _r) = fanout::new(small(8));
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 100)]);
    publish_ticker(&mut p, "M", 1);
    let mut sub = f.subscriber();
    sub.add(book_topic("M"), false).unwrap();
    sub.add(Topic::market(Channel::Trade, "M"), false).unwrap();
    sub.add(Topic::market(Channel::Ticker, "M"), false).unwrap();
    let mut view = ClientView::default();
    drain(&mut sub, &mut view);
    for i in 0..20 {
        publish_delta(&mut p, "M", Side::Yes, 800, 1);
        publish_trade(&mut p, "M", i);
    }
    publish_ticker(&mut p, "M", 2);

    let Some(Delivery::Lagged(report)) = sub.try_recv() else {
        panic!("lag first")
    };
    assert_eq!(report.cause, LagCause::Messages);
    assert_eq!(
        report.trades_lost, 20,
        "every trade was overwritten or skipped"
    );
    assert_eq!(report.messages_lost, 41);
    assert_eq!(report.books_repaired, vec![Arc::<str>::from("M")]);
    assert_eq!(report.tickers_repaired, 1);
    let next = sub.try_recv().unwrap();
    assert!(
        matches!(
            next,
            Delivery::Cached {
                reason: CacheReason::Repair,
                ..
            }
        ),
        "{next:?}"
    );
    view.apply(next);
    drain(&mut sub, &mut view);
    assert_eq!(view.books["M"].as_ref(), Some(&truth(&f, "M")));
    assert_eq!(view.tickers["M"], ticker_body("M", 2));

    publish_delta(&mut p, "M", Side::Yes, 800, 5);
    drain(&mut sub, &mut view);
    assert_eq!(view.books["M"].as_ref(), Some(&truth(&f, "M")));
}

#[test]
fn the_byte_bound_lags_too_and_counts_trades_exactly() {
    let config = FanoutConfig {
        queue_bytes: 300,
        ..FanoutConfig::default()
    };
    let (mut p, f, _r) = fanout::new(config);
    let mut sub = f.subscriber();
    sub.add(Topic::channel(Channel::Trade), false).unwrap();
    for i in 0..100 {
        publish_trade(&mut p, "M", i);
    }
    let mut view = ClientView::default();
    drain(&mut sub, &mut view);
    assert_eq!(view.lags, 1);
    assert!(!view.trades.is_empty() || view.trades_lost == 100);
    assert_eq!(
        view.trades.len() as u64 + view.trades_lost,
        100,
        "delivered + lost = published"
    );
    let delivered = view.trades.len();
    publish_trade(&mut p, "M", 100);
    drain(&mut sub, &mut view);
    assert_eq!(view.trades.len(), delivered + 1);
    assert_eq!(view.trades.last().unwrap(), &trade_body("M", 100));
}

#[test]
fn private_channel_loss_is_a_disconnect_never_a_gap() {
    let (mut p, f, _r) = fanout::new::<()>(small(4));
    let mut sub = f.subscriber();
    sub.add(Topic::channel(Channel::Fill), false).unwrap();
    sub.add(book_topic("M"), false).unwrap();
    for i in 0..10 {
        p.message(
            Channel::Fill,
            Some("M"),
            MessageType::Fill,
            trade_body("M", i),
        );
    }
    match sub.try_recv() {
        Some(Delivery::Disconnect(Verdict::PrivateChannelLag {
            channel,
            messages_lost,
        })) => {
            assert_eq!(channel, Channel::Fill);
            assert!(messages_lost >= 6, "{messages_lost}");
        }
        other => panic!("{other:?}"),
    }
    assert!(sub.try_recv().is_none());
    assert!(sub.is_done());
    assert!(
        f.topics().is_empty(),
        "a disconnected subscriber holds no topics"
    );
    assert!(sub.add(book_topic("M"), false).is_err());

    // A lag that lost nothing private is repaired as usual.
    let mut sub = f.subscriber();
    sub.add(Topic::channel(Channel::Fill), false).unwrap();
    sub.add(Topic::channel(Channel::Trade), false).unwrap();
    for i in 0..10 {
        publish_trade(&mut p, "M", i);
    }
    assert!(matches!(sub.try_recv(), Some(Delivery::Lagged(_))));
}

#[tokio::test(start_paused = true)]
async fn more_than_k_lags_in_the_window_is_a_slow_consumer() {
    let config = FanoutConfig {
        queue_messages: 4,
        slow_consumer_lags: 3,
        slow_consumer_window_seconds: settings::Seconds::from_secs(60),
        ..FanoutConfig::default()
    };
    let (mut p, f, _r) = fanout::new(config);
    let mut sub = f.subscriber();
    sub.add(Topic::channel(Channel::Trade), false).unwrap();
    let lag_once = |p: &mut fanout::Publisher, sub: &mut fanout::Subscriber| {
        for i in 0..10 {
            publish_trade(p, "M", i);
        }
        let mut view = ClientView::default();
        drain(sub, &mut view);
        view
    };
    // Lags spread wider than the window never add up.
    for _ in 0..5 {
        assert_eq!(lag_once(&mut p, &mut sub).lags, 1);
        tokio::time::advance(Duration::from_secs(30)).await;
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    // Four within the window do.
    for _ in 0..3 {
        let v = lag_once(&mut p, &mut sub);
        assert_eq!(v.lags, 1, "{v:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let view = lag_once(&mut p, &mut sub);
    assert!(
        matches!(view.disconnect, Some(Verdict::SlowConsumer { lags: 4, .. })),
        "{view:?}"
    );
    assert!(sub.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_subscriber_costs_the_others_nothing() {
    const NORMAL: usize = 50;
    const ITEMS: u64 = 20_000;
    const BATCH: u64 = 500;
    let (mut p, f, _r) = fanout::new(small(1024));
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 100)]);
    let mut stalled = f.subscriber();
    stalled.add(book_topic("M"), false).unwrap();

    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    for _ in 0..NORMAL {
        let mut sub = f.subscriber();
        sub.add(book_topic("M"), false).unwrap();
        let progress = progress_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut view = ClientView::default();
            while let Some(d) = sub.recv().await {
                view.apply(d);
                if (view.data as u64 - 1) % BATCH == 0 {
                    let _ = progress.send(());
                }
            }
            view
        }));
    }
    drop(progress_tx);
    for _ in 0..NORMAL {
        progress_rx.recv().await.unwrap(); // each got its initial snapshot
    }
    for batch in 0..ITEMS / BATCH {
        let started = std::time::Instant::now();
        for _ in 0..BATCH {
            publish_delta(&mut p, "M", Side::Yes, 800 + (batch as i64 % 7), 1);
        }
        // Publishing is synchronous: it cannot wait on anyone, the stalled one included.
        assert!(started.elapsed() < Duration::from_secs(5));
        // Pace the test (not the publisher) so the normal subscribers stay within their queue.
        for _ in 0..NORMAL {
            progress_rx.recv().await.unwrap();
        }
    }
    let final_book = truth(&f, "M");
    drop(p);
    for task in tasks {
        let view = task.await.unwrap();
        assert_eq!(view.lags, 0);
        assert_eq!(view.data as u64, 1 + ITEMS, "every message");
        assert_eq!(view.books["M"].as_ref(), Some(&final_book));
    }
    let mut view = ClientView::default();
    while let Some(d) = stalled.recv().await {
        view.apply(d);
    }
    assert_eq!(view.lags, 1);
    assert_eq!(
        view.books["M"].as_ref(),
        Some(&final_book),
        "the stalled one is repaired"
    );
}

#[test]
fn tickers_initial_and_channel_wide() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_ticker(&mut p, "A", 1);
    publish_ticker(&mut p, "B", 1);
    publish_ticker(&mut p, "A", 2);
    let mut one = f.subscriber();
    one.add(Topic::market(Channel::Ticker, "A"), true).unwrap();
    let mut all = f.subscriber();
    all.add(Topic::channel(Channel::Ticker), true).unwrap();
    let mut none = f.subscriber();
    none.add(Topic::market(Channel::Ticker, "A"), false)
        .unwrap();
    publish_ticker(&mut p, "B", 2);
    let (mut v1, mut v2, mut v3) = Default::default();
    drain(&mut one, &mut v1);
    drain(&mut all, &mut v2);
    drain(&mut none, &mut v3);
    let v1: ClientView = v1;
    let v2: ClientView = v2;
    let v3: ClientView = v3;
    assert_eq!(v1.data, 1);
    assert_eq!(v1.tickers["A"], ticker_body("A", 2));
    assert_eq!(v2.data, 3, "two cached, one live");
    assert_eq!(v2.tickers["B"], ticker_body("B", 2));
    assert_eq!(v3.data, 0);
    assert!(matches!(
        f.subscriber()
            .add(Topic::channel(Channel::OrderbookDelta), false),
        Err(fanout::TopicError::MarketRequired(_))
    ));
}

#[test]
fn yes_price_bodies_and_envelopes() {
    let (mut p, f, _r) = fanout::new::<()>(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::No, 4000, 100)]);
    let mut sub = f.subscriber();
    sub.add(book_topic("M"), false).unwrap();
    let Some(Delivery::Cached { item, .. }) = sub.try_recv() else {
        panic!()
    };
    let yes: protocol::OrderbookSnapshot = serde_json::from_slice(item.body_for(true)).unwrap();
    assert_eq!(yes.levels(Side::No)[0].0.to_string(), "0.6000");
    let mut buf = Vec::new();
    item.write_envelope(&mut buf, 7, Some(1), false);
    let env = protocol::Envelope::parse(&buf).unwrap();
    assert_eq!(
        (env.kind.as_str(), env.sid, env.seq),
        ("orderbook_snapshot", Some(7), Some(1))
    );
    assert_eq!(env.msg_json().as_bytes(), &item.body()[..]);
}

#[tokio::test]
async fn dropping_the_publisher_ends_every_stream_after_the_drain() {
    let (mut p, f, _r) = fanout::new::<()>(FanoutConfig::default());
    let mut sub = f.subscriber();
    sub.add(Topic::channel(Channel::Trade), false).unwrap();
    publish_trade(&mut p, "M", 1);
    drop(p);
    assert!(matches!(sub.recv().await, Some(Delivery::Data(_))));
    assert!(sub.recv().await.is_none());
    let mut late = f.subscriber();
    assert!(late.recv().await.is_none());
}

#[test]
fn removing_a_topic_stops_its_items_and_drops_its_queued_snapshot() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 100)]);
    let mut sub = f.subscriber();
    sub.add(book_topic("M"), false).unwrap();
    sub.add(Topic::market(Channel::Trade, "M"), false).unwrap();
    assert!(sub.remove(&book_topic("M")));
    assert!(!sub.remove(&book_topic("M")));
    publish_delta(&mut p, "M", Side::Yes, 800, 1);
    publish_trade(&mut p, "M", 1);
    let mut view = ClientView::default();
    drain(&mut sub, &mut view);
    assert_eq!((view.data, view.trades.len()), (1, 1));
    assert_eq!(sub.topics(), vec![Topic::market(Channel::Trade, "M")]);
}

#[tokio::test(start_paused = true)]
async fn registry_wants_and_unwants_after_the_linger() {
    let (_p, f, mut events) = fanout::new::<()>(FanoutConfig::default());
    let topic = book_topic("M");
    let mut a = f.subscriber();
    let mut b = f.subscriber();
    a.add(topic.clone(), false).unwrap();
    b.add(topic.clone(), false).unwrap();
    assert_eq!(
        events.next().await,
        vec![TopicChange::Wanted(topic.clone())]
    );
    assert_eq!(f.topics(), vec![(topic.clone(), 2)]);
    drop(a);
    drop(b);
    assert!(f.topics().is_empty());
    let early = tokio::time::timeout(Duration::from_secs(59), events.next()).await;
    assert!(early.is_err(), "nothing within the linger");

    // Re-wanted within the linger: the unwanted is cancelled, and no new wanted either.
    let mut c = f.subscriber();
    c.add(topic.clone(), false).unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(120), events.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");

    drop(c);
    let start = tokio::time::Instant::now();
    assert_eq!(
        events.next().await,
        vec![TopicChange::Unwanted(topic.clone())]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(60));

    let mut d = f.subscriber();
    d.add(topic.clone(), false).unwrap();
    assert_eq!(events.next().await, vec![TopicChange::Wanted(topic)]);
}

#[test]
fn made_up_markets_do_not_grow_the_cache_and_real_ones_still_sync() {
    let (mut p, f, _r) = fanout::new(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 100)]);
    let mut sub = f.subscriber();
    for i in 0..1000 {
        let name = format!("BOGUS-{i}");
        sub.add(book_topic(&name), false).unwrap();
        sub.add(Topic::market(Channel::Trade, &name), false)
            .unwrap();
        let _ = sub.request_snapshot(&name);
        sub.remove(&book_topic(&name));
    }
    assert_eq!(f.cached_markets(), 1, "only what was published is cached");

    // A market unknown at subscription time is served from its first snapshot on.
    sub.add(book_topic("LATER"), false).unwrap();
    assert!(sub.try_recv().is_none(), "nothing to send yet: no book");
    publish_snapshot(&mut p, "LATER", &[(Side::No, 4000, 500)]);
    publish_delta(&mut p, "LATER", Side::No, 4000, 100);
    let mut view = ClientView::default();
    drain(&mut sub, &mut view);
    assert_eq!(view.books["LATER"].as_ref(), Some(&truth(&f, "LATER")));
    assert!(f.is_synced("LATER") && !f.is_synced("BOGUS-1"));
}

/// The market of a data delivery, or the notice.
fn seen(d: Delivery<&'static str>) -> String {
    match d {
        Delivery::Data(item) => item.market().unwrap().to_owned(),
        Delivery::Notice(n) => format!("notice {n}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn notices_reach_every_subscriber_in_order_with_the_messages() {
    let (mut p, f, _r) = fanout::new::<&'static str>(FanoutConfig::default());
    let mut trades = f.subscriber();
    trades.add(Topic::channel(Channel::Trade), false).unwrap();
    // A subscriber with no topic gets notices too.
    let mut bare = f.subscriber();
    publish_trade(&mut p, "A", 1);
    p.notice("down");
    publish_trade(&mut p, "B", 2);
    p.hold();
    p.notice("up");
    assert_eq!(p.unreleased(), 1, "held like an item");
    let got: Vec<String> = std::iter::from_fn(|| trades.try_recv()).map(seen).collect();
    assert_eq!(got, ["A", "notice down", "B", "notice up"]);
    let got: Vec<String> = std::iter::from_fn(|| bare.try_recv()).map(seen).collect();
    assert_eq!(got, ["notice down", "notice up"]);
    // A subscriber that starts later is handed the latest notice first, once.
    let mut late = f.subscriber();
    late.add(Topic::channel(Channel::Trade), false).unwrap();
    publish_trade(&mut p, "C", 3);
    let got: Vec<String> = std::iter::from_fn(|| late.try_recv()).map(seen).collect();
    assert_eq!(got, ["notice up", "C"]);
    assert_eq!(f.notice().as_deref(), Some(&"up"));
}

#[test]
fn a_lagged_subscriber_gets_the_latest_notice_right_after_its_report() {
    let (mut p, f, _r) = fanout::new::<&'static str>(small(8));
    let mut sub = f.subscriber();
    sub.add(Topic::channel(Channel::Trade), false).unwrap();
    p.notice("down");
    for n in 0..20 {
        publish_trade(&mut p, "A", n);
    }
    p.notice("down and up again");
    for n in 20..40 {
        publish_trade(&mut p, "A", n);
    }
    let Some(Delivery::Lagged(report)) = sub.try_recv() else {
        panic!("expected a lag")
    };
    assert!(report.trades_lost > 0);
    assert!(
        matches!(sub.try_recv(), Some(Delivery::Notice(n)) if *n == "down and up again"),
        "the latest notice sums up the ones skipped"
    );
    // Then only data: neither notice again.
    while let Some(d) = sub.try_recv() {
        assert!(matches!(d, Delivery::Data(_)), "{d:?}");
    }
}
