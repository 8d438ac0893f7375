//! End to end: the simulator, the relay and clients that speak only the exchange protocol.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use exchange_sim::{DuplicatePolicy, Fault, SimConfig};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

fn markets(sim: &exchange_sim::Sim) -> Vec<String> {
    sim.markets()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_one_upstream_session_and_every_book_is_right() {
    let sim = sim(SimConfig {
        markets: 20,
        rate: 400.0,
        seed: 11,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |_| {}).await;
    let all = markets(&sim);

    // Overlapping sets: client i wants markets i, i+3 and i+7 (mod 20), books and trades.
    let wanted = |i: usize| -> Vec<String> {
        [i, i + 3, i + 7]
            .iter()
            .map(|k| all[k % all.len()].clone())
            .collect()
    };
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = relay.ws_url();
        let mine = wanted(i);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.send(subscribe(1, &["orderbook_delta", "trade"], &mine))
                .await;
            c.replies_until(2).await;
            c.until("initial snapshots", |c| c.books.len() == mine.len())
                .await;
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }

    // The exchange sees one session whose subscriptions are exactly the union.
    let union: BTreeSet<String> = (0..200).flat_map(wanted).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = sim.stats();
        let held: BTreeSet<String> = stats
            .per_connection
            .iter()
            .flat_map(|c| c.sids.iter())
            .filter(|s| s.channel == protocol::Channel::OrderbookDelta)
            .flat_map(|s| s.markets.clone().unwrap_or_default())
            .collect();
        if stats.connections == 1 && held == union {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sim has {} connections holding {held:?}",
            stats.connections
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sim.pause();
    for (i, c) in clients.iter_mut().enumerate() {
        c.converge(&sim, &wanted(i)).await;
    }
    assert_eq!(sim.stats().connections, 1);
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The script a bot written for the exchange would run.
async fn run_script(url: &str, m: &[String]) -> Client {
    let mut c = Client::connect(url).await;
    let script = [
        json!({"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":[m[0],m[1]],"use_yes_price":false}}),
        json!({"id":2,"cmd":"subscribe","params":{"channels":["ticker"],"market_ticker":m[0]}}),
        json!({"id":3,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_ticker":m[2]}}),
        json!({"id":4,"cmd":"list_subscriptions"}),
        json!({"id":5,"cmd":"update_subscription","params":{"sid":1,"market_tickers":[m[3]],"action":"add_markets"}}),
        json!({"id":6,"cmd":"update_subscription","params":{"sids":[1],"market_tickers":[m[0]],"action":"delete_markets"}}),
        json!({"id":7,"cmd":"update_subscription","params":{"sid":1,"market_tickers":[m[1]],"action":"get_snapshot"}}),
        json!({"id":8,"cmd":"unsubscribe","params":{"sids":[2]}}),
        json!({"id":9,"cmd":"dance"}),
        json!({"id":10,"cmd":"subscribe","params":{"channels":["bogus"]}}),
        json!({"id":11,"cmd":"update_subscription","params":{"sid":99,"market_tickers":[m[1]],"action":"add_markets"}}),
        json!({"id":12,"cmd":"unsubscribe","params":{}}),
        json!({"id":13,"cmd":"subscribe","params":{"channels":["orderbook_delta"]}}),
        json!({"id":14,"cmd":"update_subscription","params":{"sid":1,"market_tickers":[m[1]],"action":"explode"}}),
    ];
    let mut expected = 0;
    for (i, frame) in script.iter().enumerate() {
        c.send(frame.clone()).await;
        // Replies per command: 1 each, except the first subscribe (one per channel: 1) and
        // the get_snapshot (ok). Wait for each before the next, as a careful bot would.
        expected += 1;
        c.replies_until(expected).await;
        if i == 0 {
            c.until("first snapshots", |c| c.books.len() == 2).await;
        }
    }
    c.send_text("{not json").await;
    c.replies_until(expected + 1).await;
    c
}

/// Replies with their seq values blanked: the relay's seq counts what it sent to this client,
/// the exchange's what it sent on its own connection; both must be present in the same places.
fn normalized(replies: &[Value]) -> Vec<Value> {
    replies
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r.get("seq").is_some() {
                r["seq"] = json!("N");
            }
            r
        })
        .collect()
}

/// What `run_script` must be answered, written from `shared/reference/kalshi-messages.md` §2-§5
/// and `kalshi-ws-v2.md` §5-§6 (not from either implementation's output): one `subscribed` per
/// channel with a new sid; a second `subscribe` on a held channel merges into its sid and answers
/// `ok` with the full market list (the newer servers' behaviour, configured here); `ok` to an
/// update carries the sid, a seq and the full list after the update (`get_snapshot` changes
/// nothing); `list_subscriptions` lists the live sids; `unsubscribed` names the sid and carries a
/// seq (required on `unsubscribed` in the newest spec, §2); errors by their reference code and text; a frame that is not JSON
/// gets error 1 with no id.
fn reference_replies(m: &[String]) -> Vec<Value> {
    let ok = |id: u64, markets: &[&String]| json!({"id":id,"type":"ok","sid":1,"seq":"N","msg":{"market_tickers":markets}});
    let error = |id: Option<u64>, code: u64, text: &str| {
        let mut e = json!({"type":"error","msg":{"code":code,"msg":text}});
        if let Some(id) = id {
            e["id"] = json!(id);
        }
        e
    };
    vec![
        json!({"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}),
        json!({"id":2,"type":"subscribed","msg":{"channel":"ticker","sid":2}}),
        ok(3, &[&m[0], &m[1], &m[2]]),
        json!({"id":4,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},{"channel":"ticker","sid":2}]}),
        ok(5, &[&m[0], &m[1], &m[2], &m[3]]),
        ok(6, &[&m[1], &m[2], &m[3]]),
        ok(7, &[&m[1], &m[2], &m[3]]),
        json!({"id":8,"type":"unsubscribed","sid":2,"seq":"N"}),
        error(Some(9), 5, "Unknown command"),
        error(Some(10), 8, "Unknown channel name"),
        error(Some(11), 7, "Unknown subscription ID"),
        error(Some(12), 4, "Subscription IDs required"),
        error(Some(13), 14, "Market Ticker required"),
        error(Some(14), 13, "Unsupported action"),
        error(None, 1, "Unable to process message"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_gets_the_same_replies_and_books_from_the_relay_as_from_the_exchange() {
    let sim = sim(SimConfig {
        markets: 6,
        rate: 300.0,
        seed: 5,
        duplicate_subscribe: DuplicatePolicy::Merge,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.downstream.duplicate_subscribe = relay::config::DuplicateSubscribe::Merge;
    })
    .await;
    let m = markets(&sim);

    let mut direct = run_script(&sim.ws_url(), &m).await;
    let mut relayed = run_script(&relay.ws_url(), &m).await;
    let expected = reference_replies(&m);
    assert_eq!(
        normalized(&relayed.replies),
        expected,
        "the relay's replies"
    );
    assert_eq!(
        normalized(&direct.replies),
        expected,
        "the simulator's replies"
    );

    sim.pause();
    let held = vec![m[1].clone(), m[2].clone(), m[3].clone()];
    direct.converge(&sim, &held).await;
    relayed.converge(&sim, &held).await;
    for market in &held {
        assert_eq!(relayed.books[market], direct.books[market]);
    }
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Clients on three books through an upstream fault: they stay connected, get fresh snapshots,
/// and their books are right afterwards; `/readyz` is 503 during the outage and 200 after.
async fn survive(fault: Fault, extra: Option<Fault>) {
    let sim = sim(SimConfig {
        markets: 6,
        rate: 200.0,
        seed: 9,
        ping_interval: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.upstream.liveness_window_seconds = settings::Seconds::from_secs_f64(1.5);
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.2);
        c.upstream.backoff_cap_seconds = settings::Seconds::from_secs(1);
    })
    .await;
    let m: Vec<String> = markets(&sim)[..3].to_vec();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&relay.ws_url()).await;
        c.send(subscribe(1, &["orderbook_delta", "ticker"], &m))
            .await;
        c.until("initial snapshots", |c| c.books.len() == 3).await;
        clients.push(c);
    }
    await_ready(relay.addr, 200).await;
    let before: Vec<u64> = clients.iter().map(|c| c.snapshots).collect();

    if let Some(extra) = extra {
        sim.fault(extra);
    }
    sim.fault(fault);
    await_ready(relay.addr, 503).await;
    // The three books are stale until their fresh snapshots, and `/status` says so.
    await_status(relay.addr, "3 stale books", |s| s["stale_books"] == 3).await;
    await_ready(relay.addr, 200).await;
    await_status(relay.addr, "no stale book", |s| s["stale_books"] == 0).await;

    for (c, before) in clients.iter_mut().zip(before) {
        c.until("fresh snapshots", |c| c.snapshots >= before + 3)
            .await;
    }
    sim.pause();
    for c in clients.iter_mut() {
        c.converge(&sim, &m).await;
        assert_eq!(
            c.ended, None,
            "clients stay connected through an upstream fault"
        );
    }
    // One live session (a blackholed socket is the simulator's own, held until its time is up).
    let live = sim
        .stats()
        .per_connection
        .iter()
        .filter(|c| !c.blackholed)
        .count();
    assert_eq!(live, 1);
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_drop_is_survived_with_fresh_snapshots() {
    // Two refused handshakes keep the outage long enough for /readyz to be seen at 503.
    survive(Fault::Drop, Some(Fault::RejectAuth { count: 2 })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_blackhole_is_detected_and_survived() {
    survive(Fault::Blackhole { seconds: Some(30) }, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_costs_the_others_nothing() {
    let sim = sim(SimConfig {
        markets: 4,
        rate: 2000.0,
        seed: 3,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.fanout.queue_messages = 128;
        c.fanout.queue_bytes = 32 * 1024;
        c.downstream.write_timeout_seconds = settings::Seconds::from_secs(60);
        c.downstream.socket_send_buffer_bytes = Some(8192);
    })
    .await;
    let m = markets(&sim);

    // A client with a tiny receive window that stops reading after its subscription.
    let stalled_url = format!("{}?relay_events=1", relay.ws_url());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(relay.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(stalled_url.as_str(), stream)
        .await
        .unwrap();
    let mut stalled = Client::from_ws(ws);
    stalled
        .send(subscribe(1, &["orderbook_delta", "trade"], &m))
        .await;
    stalled.replies_until(2).await;

    // Readers ask for relay events, so a lag repair would show as `relay_lagged`.
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&format!("{}?relay_events=1", relay.ws_url())).await;
        c.send(subscribe(1, &["orderbook_delta", "trade"], &m))
            .await;
        c.until("initial snapshots", |c| c.books.len() == m.len())
            .await;
        readers.push(c);
    }
    // The readers read, each in its own task, while the stalled one does not, until the
    // exchange has produced far more than the stalled client's ring (128) and socket buffers
    // (8 KiB each way) can hold.
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    c.step(Duration::from_millis(20)).await;
                }
                c
            })
        })
        .collect();
    let start = sim.stats().events_generated;
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().events_generated < start + 3000 {
        assert!(Instant::now() < deadline, "the exchange stopped producing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.pause();
    stop.cancel();
    for t in tasks {
        let mut c = timeout(DEADLINE, t).await.expect("a reader stops").unwrap();
        // Every message: seq contiguous on every sid (checked per frame), books exact, and
        // exactly one snapshot per book: never lagged, never repaired.
        c.converge(&sim, &m).await;
        let lagged: Vec<&Value> = c
            .other
            .iter()
            .filter(|f| f["type"] == "relay_lagged")
            .collect();
        assert!(lagged.is_empty(), "a reader was lagged: {lagged:?}");
        assert_eq!(
            c.snapshots,
            m.len() as u64,
            "a reader got a repair snapshot"
        );
        assert_eq!(c.ended, None);
    }
    // The stalled client resumes: it was either repaired (told, then books exact) or closed as a
    // slow consumer.
    let deadline = Instant::now() + DEADLINE;
    loop {
        stalled.step(Duration::from_millis(50)).await;
        match &stalled.ended {
            Some(Ended::Close(code, reason)) => {
                assert_eq!((*code, reason.as_str()), (1013, "slow consumer"));
                break;
            }
            Some(other) => panic!("the stalled client ended {other:?}"),
            None => {}
        }
        let told = stalled.other.iter().any(|f| f["type"] == "relay_lagged");
        let right = m
            .iter()
            .all(|k| stalled.books.get(k) == Some(&truth(&sim, k)));
        if told && right {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client was neither repaired nor closed"
        );
    }
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1012_and_exits_zero() {
    let sim = sim(SimConfig {
        markets: 4,
        rate: 100.0,
        ..SimConfig::default()
    })
    .await;
    let mut relay = RelayChild::spawn(
        &["--listen", "127.0.0.1:0", "--upstream-url", &sim.ws_url()],
        &[],
    );
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(&relay.url).await;
        c.send(subscribe(1, &["orderbook_delta"], &markets(&sim)))
            .await;
        c.until("snapshots", |c| c.books.len() == 4).await;
        clients.push(c);
    }
    relay.signal("TERM");
    for c in clients.iter_mut() {
        assert_eq!(
            c.ended().await,
            Ended::Close(1012, "service restart".into())
        );
    }
    // Within the default drain (10 s) and a margin.
    let exit = relay.exit_within(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_data_within_two_seconds_of_start() {
    // From the ready line (the process is up and listening): starting the process itself is
    // the machine's business, bounded separately by the spawn deadline.
    let mut relay = RelayChild::spawn(&["--demo", "--listen", "127.0.0.1:0"], &[]);
    let started = Instant::now();
    let _ = relay.line();
    let hint = relay.line();
    let market = hint
        .split("\"market_ticker\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the hint names a market")
        .to_owned();
    let mut c = Client::connect(&relay.url).await;
    c.send(json!({"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_ticker":market}}))
        .await;
    c.until("a snapshot", |c| c.books.contains_key(&market))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "first data {elapsed:?} after the ready line"
    );
    relay.signal("TERM");
    assert!(relay.exit_within(DEADLINE).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_coalescing_keeps_every_message_in_order() {
    let sim = sim(SimConfig {
        markets: 4,
        rate: 1500.0,
        seed: 21,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.downstream.coalesce_window_seconds = settings::SecondsOrZero::from_millis(5)
    })
    .await;
    let m = markets(&sim);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&relay.ws_url()).await;
        c.send(subscribe(1, &["orderbook_delta", "trade", "ticker"], &m))
            .await;
        c.until("snapshots", |c| c.books.len() == m.len()).await;
        clients.push(c);
    }
    let start = sim.stats().events_generated;
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().events_generated < start + 1500 {
        assert!(Instant::now() < deadline, "the exchange stopped producing");
        for c in clients.iter_mut() {
            while c.step(Duration::from_millis(1)).await.is_some() {}
        }
    }
    sim.pause();
    for c in clients.iter_mut() {
        // Seq is checked contiguous on every frame; the books must end exact.
        c.converge(&sim, &m).await;
        assert!(c.counts["orderbook_delta"] > 100, "{:?}", c.counts);
    }
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The share of a client's data frames that arrive within 2 ms of the frame before them, over
/// `frames` frames: frames written together arrive together.
async fn share_arriving_together(relay: &relay::RelayHandle, m: &[String], frames: usize) -> f64 {
    let mut c = Client::connect(&relay.ws_url()).await;
    c.send(subscribe(1, &["orderbook_delta", "trade", "ticker"], m))
        .await;
    c.until("snapshots", |c| c.books.len() == m.len()).await;
    let mut arrivals = Vec::with_capacity(frames);
    let deadline = Instant::now() + DEADLINE;
    while arrivals.len() < frames && Instant::now() < deadline {
        if let Some(frame) = c.step(Duration::from_millis(500)).await {
            if frame.get("id").is_none() {
                arrivals.push(Instant::now());
            }
        }
    }
    assert_eq!(arrivals.len(), frames, "frames kept flowing");
    let together = arrivals
        .windows(2)
        .filter(|w| w[1] - w[0] < Duration::from_millis(2))
        .count();
    together as f64 / (frames - 1) as f64
}

/// With a 100 ms window at 200 messages/s, each window's ~20 frames reach a client in one write;
/// without it, frames leave as the simulator's 5 ms ticks produce them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalescing_window_delivers_each_windows_frames_together() {
    let sim = sim(SimConfig {
        markets: 4,
        rate: 200.0,
        seed: 23,
        ..SimConfig::default()
    })
    .await;
    let m = markets(&sim);
    let plain = relay(&sim, |_| {}).await;
    let without = share_arriving_together(&plain, &m, 300).await;
    plain.shutdown().await;
    let coalescing = relay(&sim, |c| {
        c.downstream.coalesce_window_seconds = settings::SecondsOrZero::from_millis(100)
    })
    .await;
    let with = share_arriving_together(&coalescing, &m, 300).await;
    coalescing.shutdown().await;
    println!("frames arriving within 2 ms of the previous one: {without:.2} without a window, {with:.2} with");
    assert!(
        with >= 0.85,
        "with a 100 ms window only {with:.2} arrived together"
    );
    assert!(
        without <= 0.7,
        "without a window {without:.2} arrived together"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_book_released_upstream_is_never_served_frozen_to_its_next_subscriber() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 400.0,
        seed: 17,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |_| {}).await; // linger 0: released as soon as unwanted
    let m = markets(&sim)[0].clone();
    let held_upstream = |sim: &exchange_sim::Sim| {
        sim.stats()
            .per_connection
            .iter()
            .flat_map(|c| c.sids.clone())
            .any(|s| {
                s.channel == protocol::Channel::OrderbookDelta
                    && s.markets.as_ref().is_some_and(|ms| ms.contains(&m))
            })
    };

    let mut first = Client::connect(&relay.ws_url()).await;
    first
        .send(subscribe(1, &["orderbook_delta"], std::slice::from_ref(&m)))
        .await;
    first
        .until("the snapshot", |c| c.books.contains_key(&m))
        .await;
    first
        .send(json!({"id": 2, "cmd": "unsubscribe", "params": {"sids": [1]}}))
        .await;
    let deadline = Instant::now() + DEADLINE;
    while held_upstream(&sim) {
        assert!(
            Instant::now() < deadline,
            "the book was never released upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The market moves on while nobody holds it.
    let start = sim.stats().events_generated;
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().events_generated < start + 400 {
        assert!(Instant::now() < deadline, "the exchange stopped producing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.pause();
    let now = truth(&sim, &m);

    let mut second = Client::connect(&relay.ws_url()).await;
    second
        .send(subscribe(1, &["orderbook_delta"], std::slice::from_ref(&m)))
        .await;
    second.until("the snapshot", |c| c.snapshots >= 1).await;
    assert_eq!(
        second.books[&m], now,
        "the first snapshot must be the current book"
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_and_one_that_reads_stays() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 20.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.downstream.ping_interval_seconds = settings::Seconds::from_secs(2);
        c.downstream.pong_timeout_seconds = settings::Seconds::from_secs(1);
    })
    .await;
    // tungstenite answers pings while it reads: this one reads, the other never does.
    let mut reader = Client::connect(&relay.ws_url()).await;
    let mut deaf = Client::connect(&relay.ws_url()).await;
    let started = Instant::now();
    // Within two ping intervals plus the timeout, the deaf client must be closed.
    while started.elapsed() < Duration::from_secs(5) {
        reader.step(Duration::from_millis(100)).await;
        assert_eq!(
            reader.ended, None,
            "a client that reads answers pings and stays"
        );
    }
    let mut pings = 0;
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "pinged {pings} times, never closed"
        );
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut deaf.ws),
        )
        .await
        {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(close))))) => {
                assert_eq!(u16::from(close.code), 1001);
                assert_eq!(close.reason.as_str(), "pong timeout");
                break;
            }
            other => panic!("expected pings then a 1001 close, got {other:?}"),
        }
    }
    assert!(pings >= 1, "the relay pinged before giving up");
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_move_to_the_admin_listener_when_configured() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 20.0,
        ..SimConfig::default()
    })
    .await;
    let mut config = relay::config::RelayConfig::with_upstream(&sim.ws_url());
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let listeners = relay::Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let relay = relay::spawn(config, listeners).await.unwrap();
    let admin = relay.admin_addr.unwrap();
    assert_eq!(http_get(relay.addr, "/metrics").await.0, 404);
    assert_eq!(http_get(relay.addr, "/status").await.0, 404);
    assert_eq!(http_get(relay.addr, "/healthz").await.0, 200);
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("relay_upstream_up"), "{metrics}");
    let (status, body) = http_get(admin, "/status").await;
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert!(status["upstream"]["upstream"].is_string(), "{status}");
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 20.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |_| {}).await;
    let mut c = Client::connect(&relay.ws_url()).await;
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000u16.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The relay answers the close handshake: the client sees the echo, not a reset.
    assert_eq!(c.ended().await, Ended::Close(1000, "bye".into()));
    relay.shutdown().await;
    sim.shutdown().await;
}

/// A client that closes its TCP connection without a close frame went away; it did not break the
/// protocol: counted as 1006 `abrupt`, never as 1002. The relay is a process of its own, so its
/// counters hold this client's end and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_client_exit_is_counted_as_1006() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 20.0,
        ..SimConfig::default()
    })
    .await;
    let relay = RelayChild::spawn(
        &["--listen", "127.0.0.1:0", "--upstream-url", &sim.ws_url()],
        &[],
    );
    const DISCONNECTS: &str = "relay_downstream_disconnects_total{";
    let counted = |page: &str| -> Vec<String> {
        (page.lines())
            .filter(|l| l.starts_with(DISCONNECTS) && !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect()
    };
    let mut c = Client::connect(&relay.url).await;
    c.send(subscribe(1, &["ticker"], &markets(&sim))).await;
    c.replies_until(1).await;
    // Drop the socket: no close frame, TCP FIN.
    drop(c);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = http_get(relay.addr, "/metrics").await.1;
        let ends = counted(&page);
        if !ends.is_empty() {
            assert_eq!(
                ends,
                [r#"relay_downstream_disconnects_total{code="1006",reason="abrupt"} 1"#]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no end counted: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backfill_private_subscribers_are_told_when_the_upstream_connection_is_lost() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 200.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.1);
        c.upstream.backfill = false;
    })
    .await;
    await_ready(relay.addr, 200).await;
    let mut private = Client::connect(&relay.ws_url()).await;
    private
        .send(json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill", "user_orders"]}}))
        .await;
    private.replies_until(2).await;
    let mut public = Client::connect(&relay.ws_url()).await;
    public
        .send(subscribe(1, &["orderbook_delta"], &markets(&sim)))
        .await;
    public.until("snapshots", |c| c.books.len() == 2).await;

    sim.fault(Fault::Drop);
    // Fills during the outage are gone for good: never a silent gap.
    private.told_of_a_private_loss().await;
    let before = public.snapshots;
    public
        .until("fresh snapshots", |c| c.snapshots >= before + 2)
        .await;
    assert_eq!(
        public.ended, None,
        "public books are repaired, the client stays"
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The client keeps receiving trades and stays connected.
async fn trades_keep_flowing(public: &mut Client) {
    let before = public.counts.get("trade").copied().unwrap_or(0);
    public
        .until("more trades", |c| {
            c.counts.get("trade").copied().unwrap_or(0) > before + 3
        })
        .await;
    assert_eq!(public.ended, None);
}

/// One client subscribed to the account's fills and one to every market's trades, both answered.
async fn fill_and_trade_clients(
    relay: &relay::RelayHandle,
    sim: &exchange_sim::Sim,
) -> (Client, Client) {
    let mut private = Client::connect(&relay.ws_url()).await;
    private
        .send(json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    private.replies_until(1).await;
    let mut public = Client::connect(&relay.ws_url()).await;
    public.send(subscribe(1, &["trade"], &markets(sim))).await;
    public.replies_until(1).await;
    (private, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backfill_fills_lost_to_a_dead_upstream_sid_are_announced_with_a_close() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 200.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| c.upstream.backfill = false).await;
    let (mut private, mut public) = fill_and_trade_clients(&relay, &sim).await;

    let fill_sid = || {
        sim.stats()
            .per_connection
            .iter()
            .flat_map(|c| c.sids.clone())
            .find(|s| s.channel == protocol::Channel::Fill)
            .map(|s| s.sid)
    };
    let deadline = Instant::now() + DEADLINE;
    let sid = loop {
        if let Some(sid) = fill_sid() {
            break sid;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never subscribed fills upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sim.fault(Fault::Error {
        code: 25,
        sid: Some(sid),
    });
    private.told_of_a_private_loss().await;
    // The public client is not affected: trades keep flowing.
    trades_keep_flowing(&mut public).await;
    relay.shutdown().await;
    sim.shutdown().await;
}

/// What the upstream sent before it was lost reaches a `relay_events` client before the
/// `relay_status` that reports the loss, even when a coalescing window was holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_before_an_upstream_loss_arrives_before_the_status_that_reports_it() {
    let sim = sim(SimConfig {
        markets: 4,
        rate: 2000.0,
        seed: 5,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.downstream.coalesce_window_seconds = settings::SecondsOrZero::from_millis(200);
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.2);
        c.upstream.backoff_cap_seconds = settings::Seconds::from_secs(1);
    })
    .await;
    let m = markets(&sim);
    let url = format!("{}?relay_events=1", relay.ws_url());
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&url).await;
        c.send(subscribe(1, &["trade"], &m)).await;
        c.replies_until(1).await;
        clients.push(c);
    }
    for round in 0..3 {
        await_ready(relay.addr, 200).await;
        // Trades are flowing to everyone (and a window's worth is held) when the upstream drops.
        for c in clients.iter_mut() {
            let seen = c.counts.get("trade").copied().unwrap_or(0);
            c.until("trades", |c| {
                c.counts.get("trade").copied().unwrap_or(0) > seen + 50
            })
            .await;
        }
        sim.fault(Fault::Drop);
        for (i, c) in clients.iter_mut().enumerate() {
            // Trades between "disconnected" and the next status would be data from before the
            // loss delivered after its report.
            let mut after_disconnect: Option<u64> = None;
            let deadline = Instant::now() + DEADLINE;
            loop {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no status after the drop"
                );
                let Some(frame) = c.step(Duration::from_millis(100)).await else {
                    continue;
                };
                if frame["type"] == "relay_status" {
                    let state = frame["msg"]["upstream"].as_str().unwrap_or("").to_owned();
                    match after_disconnect {
                        None if state == "disconnected" => after_disconnect = Some(0),
                        Some(n) if state != "disconnected" => {
                            assert_eq!(
                                n, 0,
                                "round {round}, client {i}: {n} trades after relay_status disconnected"
                            );
                            break;
                        }
                        _ => {}
                    }
                } else if frame["type"] == "trade" {
                    if let Some(n) = after_disconnect.as_mut() {
                        *n += 1;
                    }
                }
            }
        }
    }
    relay.shutdown().await;
    sim.shutdown().await;
}

/// A relay's shared state whose stream the test publishes itself (no feed: the upstream handle
/// points nowhere), and clients served by real sessions over real sockets.
struct Bare {
    app: std::sync::Arc<relay::App>,
    publisher: fanout::Publisher<relay::UpstreamStatus>,
    listener: tokio::net::TcpListener,
}

impl Bare {
    async fn new(tweak: impl FnOnce(&mut relay::config::RelayConfig)) -> Bare {
        let mut config = relay::config::RelayConfig::with_upstream("ws://127.0.0.1:9/");
        tweak(&mut config);
        let (publisher, fanout, _registry) = fanout::new(config.fanout.clone());
        let (upstream, _events) = upstream::spawn(
            config.upstream.clone(),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let app = std::sync::Arc::new(relay::App::new(
            config,
            fanout,
            upstream,
            relay::install_metrics_recorder(),
            None,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Bare {
            app,
            publisher,
            listener,
        }
    }

    async fn client(&self) -> Client {
        let url = format!("ws://{}/", self.listener.local_addr().unwrap());
        let connecting = tokio::spawn(tokio_tungstenite::connect_async(url));
        let (socket, peer) = self.listener.accept().await.unwrap();
        let app = self.app.clone();
        tokio::spawn(async move {
            let ws = tokio_tungstenite::accept_async_with_config(socket, Some(app.ws_config()))
                .await
                .unwrap();
            let options = relay::session::SessionOptions {
                relay_events: false,
                peer,
                limits: app.config.downstream.limits(),
                identity: relay::security::Identity::Anonymous(
                    relay::security::Permission::Private,
                ),
                admission: app.gate.admit(peer.ip()).ok().unwrap(),
            };
            relay::session::run(app, ws, options).await
        });
        Client::from_ws(connecting.await.unwrap().unwrap().0)
    }

    fn trades(&mut self, from: u64, n: u64) {
        for i in from..from + n {
            self.publisher.message(
                protocol::Channel::Trade,
                Some("M"),
                protocol::MessageType::Trade,
                bytes::Bytes::from(format!(r#"{{"market_ticker":"M","trade_id":"{i}"}}"#)),
            );
        }
    }
}

/// A session that sees only the latest upstream status (it lagged past a loss notice, an outage
/// and the recovery) still learns that private messages were lost, and closes a private holder
/// (`private messages lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_seen_only_through_the_latest_status_still_closes_private_holders() {
    use relay::UpstreamStatus;
    use upstream::{DisconnectReason, State};
    let mut bare = Bare::new(|c| c.fanout.queue_messages = 16).await;
    let up = UpstreamStatus::starting(0)
        .entered(&State::Connected, 1)
        .entered(&State::Subscribed, 2);
    bare.publisher.notice(up.clone());
    let mut private = bare.client().await;
    private
        .send(json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    private.replies_until(1).await;
    let mut public = bare.client().await;
    public
        .send(json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}))
        .await;
    public.replies_until(1).await;
    // The loss (a backfill that failed), an outage and its recovery, then more than the ring
    // holds, released together: both sessions wake up lagged and see only the latest status.
    bare.publisher.hold();
    let down = up.lost(protocol::Channel::Fill).entered(
        &State::Disconnected {
            reason: DisconnectReason::StreamError,
        },
        3,
    );
    bare.publisher.notice(down.clone());
    bare.publisher.notice(
        down.entered(&State::Connecting, 4)
            .entered(&State::Connected, 5)
            .entered(&State::Subscribed, 6),
    );
    bare.trades(0, 40);
    bare.publisher.release();
    match private.ended().await {
        Ended::Close(1013, reason) if reason.starts_with("private messages lost") => {}
        other => panic!("expected a private-loss close, got {other:?}"),
    }
    // A public client has nothing to reconcile: it stays.
    let trades = tokio::spawn(async move {
        let mut i = 100;
        loop {
            bare.trades(i, 1);
            bare.publisher.release();
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    trades_keep_flowing(&mut public).await;
    trades.abort();
}
