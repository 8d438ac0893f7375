//! End-to-end tests against the in-process `exchange-sim` on random ports, real clock (the
//! simulator runs its own timers). Intervals are configured short so every test is quick.

use std::collections::HashMap;
use std::time::Duration;

use exchange_sim::{Fault, Sim, SimAuth, SimConfig};
use protocol::{Channel, OrderBook, Verifier};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use upstream::{BookUpdate, DisconnectReason, Event, State, UpstreamConfig};

const WAIT: Duration = Duration::from_secs(10);

async fn sim(config: SimConfig) -> Sim {
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    exchange_sim::start(config, ws, admin).await.unwrap()
}

fn config(sim: &Sim) -> UpstreamConfig {
    UpstreamConfig {
        url: sim.ws_url(),
        backoff_base_seconds: settings::Seconds::from_secs_f64(0.2),
        backoff_cap_seconds: settings::Seconds::from_secs(1),
        ..UpstreamConfig::default()
    }
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("session alive")
}

async fn until_state(events: &mut mpsc::Receiver<Event>, want: impl Fn(&State) -> bool) -> State {
    loop {
        if let Event::State(s) = next(events).await {
            if want(&s) {
                return s;
            }
        }
    }
}

#[tokio::test]
async fn signed_connect_succeeds_and_a_wrong_key_is_auth_failed_with_backoff() {
    let (private_pem, public_pem) = protocol::sign::generate_key_pair(2048);
    let (wrong_pem, _) = protocol::sign::generate_key_pair(2048);
    let mut verifier = Verifier::new(10_000);
    verifier.add_public_pem(&public_pem).unwrap();
    let sim = sim(SimConfig {
        auth: SimAuth::Verifier(verifier),
        ..SimConfig::default()
    })
    .await;
    let market = sim.markets()[0].clone();

    let shutdown = CancellationToken::new();
    let good = UpstreamConfig {
        key_id: Some("key-1".into()),
        private_key_pem: Some(private_pem),
        ..config(&sim)
    };
    let (up, mut events) = upstream::spawn(good, shutdown.clone()).unwrap();
    up.subscribe(Channel::OrderbookDelta, Some(vec![market.clone()]));
    until_state(&mut events, |s| *s == State::Subscribed).await;
    loop {
        if let Event::Data(d) = next(&mut events).await {
            assert_eq!(d.channel, Channel::OrderbookDelta);
            assert!(
                matches!(d.book, Some(BookUpdate::Snapshot(_))),
                "first data is the snapshot"
            );
            break;
        }
    }

    let bad = UpstreamConfig {
        key_id: Some("key-1".into()),
        private_key_pem: Some(wrong_pem),
        ..config(&sim)
    };
    let (_bad_up, mut bad_events) = upstream::spawn(bad, shutdown.clone()).unwrap();
    let mut failures = Vec::new();
    while failures.len() < 3 {
        if let Event::State(State::AuthFailed) = next(&mut bad_events).await {
            failures.push(Instant::now());
        }
    }
    for w in failures.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(100),
            "backed off, not a tight loop"
        );
    }
    shutdown.cancel();
    up.closed().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_reconnects_resubscribes_and_keeps_sub_ids() {
    let sim = sim(SimConfig::default()).await;
    let markets: Vec<String> = sim.markets()[..2].to_vec();
    let shutdown = CancellationToken::new();
    let (up, mut events) = upstream::spawn(config(&sim), shutdown.clone()).unwrap();
    up.subscribe(Channel::OrderbookDelta, Some(markets.clone()));
    up.subscribe(Channel::Trade, None);
    let mut snapshots = 0;
    while snapshots < 2 {
        if let Event::Data(d) = next(&mut events).await {
            if matches!(d.book, Some(BookUpdate::Snapshot(_))) {
                snapshots += 1;
            }
        }
    }
    sim.fault(Fault::Drop);
    // In order: the books go stale, the drop is reported, the session reconnects and
    // resubscribes, and each book is reset right before its fresh snapshot, under the same id.
    let mut seen = Vec::new();
    let mut resets = HashMap::new();
    while resets.len() < 2 {
        match next(&mut events).await {
            Event::BookStale { mut markets } => {
                markets.sort();
                seen.push(format!("stale {}", markets.join(",")));
            }
            Event::State(s) => seen.push(format!("{s:?}")),
            Event::BookReset { market } => {
                let Event::Data(d) = next(&mut events).await else {
                    panic!("reset without data")
                };
                assert_eq!(d.market.as_deref(), Some(market.as_str()));
                assert!(matches!(d.book, Some(BookUpdate::Snapshot(_))));
                assert_eq!(d.channel, Channel::OrderbookDelta);
                resets.insert(market, ());
            }
            Event::MessagesLost { channel } => panic!("a drop is not a dead sid: {channel}"),
            Event::Data(d) => {
                assert!(
                    matches!(d.channel, Channel::Trade | Channel::OrderbookDelta),
                    "{:?}",
                    d.channel
                );
            }
        }
    }
    let mut sorted = markets.clone();
    sorted.sort();
    let from = seen.iter().position(|s| s.starts_with("stale")).unwrap();
    assert_eq!(
        seen[from..from + 4],
        [
            format!("stale {}", sorted.join(",")),
            "Disconnected { reason: ClosedByServer { code: Some(1006) } }".to_owned(),
            "Connecting".to_owned(),
            "Connected".to_owned(),
        ]
    );
    shutdown.cancel();
    up.closed().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn blackhole_is_detected_within_the_liveness_window() {
    let sim = sim(SimConfig {
        ping_interval: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let shutdown = CancellationToken::new();
    let cfg = UpstreamConfig {
        liveness_window_seconds: settings::Seconds::from_secs(2),
        ..config(&sim)
    };
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    up.subscribe(Channel::Ticker, None);
    until_state(&mut events, |s| *s == State::Subscribed).await;
    sim.pause(); // a quiet market: only pings for a while, no reconnect
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *up.state().borrow(),
        State::Subscribed,
        "pings keep a quiet connection alive"
    );
    let started = Instant::now();
    sim.fault(Fault::Blackhole { seconds: Some(60) });
    let s = until_state(&mut events, |s| matches!(s, State::Disconnected { .. })).await;
    assert_eq!(
        s,
        State::Disconnected {
            reason: DisconnectReason::LivenessTimeout
        }
    );
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    until_state(&mut events, |s| *s == State::Connected).await;
    shutdown.cancel();
    up.closed().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn stalled_handshake_times_out_and_is_retried() {
    let sim = sim(SimConfig::default()).await;
    sim.fault(Fault::StallHandshake { count: 1 });
    let shutdown = CancellationToken::new();
    let cfg = UpstreamConfig {
        handshake_timeout_seconds: settings::Seconds::from_secs_f64(0.5),
        ..config(&sim)
    };
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    let s = until_state(&mut events, |s| !matches!(s, State::Connecting)).await;
    assert_eq!(
        s,
        State::Disconnected {
            reason: DisconnectReason::HandshakeTimeout
        }
    );
    until_state(&mut events, |s| *s == State::Connected).await;
    shutdown.cancel();
    up.closed().await;
    sim.shutdown().await;
}

/// The simulator holds one sid per channel (a second subscribe is error 6 or merged), so error 26
/// cannot split there (the fake-exchange test covers the split); a gap on the shared sid
/// re-snapshots exactly that sid's markets, and every rebuilt book equals the truth.
#[tokio::test]
async fn a_gap_resnapshots_the_sids_markets_and_the_books_match_the_truth() {
    let sim = sim(SimConfig::default()).await;
    let mut markets: Vec<String> = sim.markets()[..3].to_vec();
    markets.sort();
    let shutdown = CancellationToken::new();
    let (up, mut events) = upstream::spawn(config(&sim), shutdown.clone()).unwrap();
    up.subscribe(Channel::OrderbookDelta, Some(markets.clone()));
    let mut books: HashMap<String, OrderBook> = HashMap::new();
    let apply = |books: &mut HashMap<String, OrderBook>, e: &Event| {
        if let Event::Data(d) = e {
            let m = d.market.clone().unwrap();
            let book = books.entry(m.clone()).or_insert_with(|| OrderBook::new(m));
            match &d.book {
                Some(BookUpdate::Snapshot(s)) => book.apply_snapshot(s).unwrap(),
                Some(BookUpdate::Delta(x)) => book.apply_delta(x).unwrap(),
                None => {}
            }
        }
    };
    while books.len() < 3 {
        let e = next(&mut events).await;
        apply(&mut books, &e);
    }
    sim.fault(Fault::Gap {
        sid: None,
        market: Some(markets[1].clone()),
    });
    loop {
        let e = next(&mut events).await;
        if let Event::BookStale { markets: stale } = &e {
            let mut stale = stale.clone();
            stale.sort();
            assert_eq!(stale, markets, "the sid's markets, no others");
            break;
        }
        apply(&mut books, &e);
    }
    let mut reset = Vec::new();
    while reset.len() < 3 {
        let e = next(&mut events).await;
        match &e {
            Event::BookReset { market } => reset.push(market.clone()),
            Event::BookStale { .. } => panic!("a second gap"),
            Event::MessagesLost { .. } => panic!("a gap is not a dead sid"),
            Event::Data(d) => assert!(
                matches!(d.book, Some(BookUpdate::Snapshot(_)))
                    || reset.contains(d.market.as_ref().unwrap()),
                "deltas of a stale book are withheld"
            ),
            Event::State(_) => {}
        }
        apply(&mut books, &e);
    }
    // Quiesce, then compare with the simulator's truth.
    sim.pause();
    while let Ok(Some(e)) = timeout(Duration::from_millis(300), events.recv()).await {
        apply(&mut books, &e);
    }
    for m in &markets {
        let mut expected = OrderBook::new(m.clone());
        expected.apply_snapshot(&sim.book(m).unwrap()).unwrap();
        assert_eq!(books[m], expected, "{m}");
    }
    shutdown.cancel();
    up.closed().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backfill_a_dead_private_sid_is_reported_as_lost_messages_and_resubscribed() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 100.0,
        ..SimConfig::default()
    })
    .await;
    let shutdown = CancellationToken::new();
    // (With backfill, the default, the gap is fetched instead: tests/backfill.rs.)
    let config = UpstreamConfig {
        backfill: false,
        ..config(&sim)
    };
    let (up, mut events) = upstream::spawn(config, shutdown.clone()).unwrap();
    up.subscribe(Channel::Fill, None);
    until_state(&mut events, |s| *s == State::Subscribed).await;
    let fill_sid = |sim: &Sim| {
        sim.stats()
            .per_connection
            .iter()
            .flat_map(|c| c.sids.clone())
            .find(|s| s.channel == Channel::Fill)
            .map(|s| s.sid)
    };
    let sid = fill_sid(&sim).expect("the fill channel is subscribed");
    sim.fault(Fault::Error {
        code: 25,
        sid: Some(sid),
    });
    // Fills in between are gone for good: the owner is told, in order with the data.
    loop {
        match next(&mut events).await {
            Event::MessagesLost { channel } => {
                assert_eq!(channel, Channel::Fill);
                break;
            }
            Event::Data(d) => assert_eq!(d.channel, Channel::Fill),
            other => panic!("unexpected {other:?}"),
        }
    }
    // And the channel is subscribed again under a new sid.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fill_sid(&sim).is_none_or(|s| s == sid) {
        assert!(
            Instant::now() < deadline,
            "the fill channel was never resubscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    up.closed().await;
    sim.shutdown().await;
}
