//! README claims that had no test: the exact inbound size limit, the default command limits,
//! the pending-handshake cap and the request-head timeout, the upstream's clean goodbye on
//! shutdown, and a TLS reload by a real SIGHUP to the binary.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tls::{make_ca, try_wss_client, write_leaf, wss_client};
use common::*;
use exchange_sim::SimConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn quiet_sim() -> SimConfig {
    SimConfig {
        markets: 2,
        rate: 20.0,
        ..SimConfig::default()
    }
}

/// A `ping` command padded with spaces to exactly `len` bytes.
fn ping_of_len(id: u64, len: usize) -> String {
    let head = format!("{{\"id\":{id},\"cmd\":\"ping\"");
    format!("{head}{}}}", " ".repeat(len - head.len() - 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_64_kib_is_accepted_and_one_byte_more_is_closed_1009() {
    let sim = sim(quiet_sim()).await;
    let relay = relay(&sim, |_| {}).await;
    let mut c = Client::connect(&relay.ws_url()).await;
    let limit = 64 * 1024;
    c.send_text(&ping_of_len(1, limit)).await;
    c.replies_until(1).await;
    assert_eq!(c.replies[0], json!({"id": 1, "type": "pong"}));
    c.send_text(&ping_of_len(2, limit + 1)).await;
    assert_eq!(
        c.ended().await,
        Ended::Close(1009, "message too big".into())
    );
    assert_eq!(c.replies.len(), 1);
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Sends `n` pings in one write (ids from `first`); returns when they were handed to the socket.
async fn burst_of_pings(c: &mut Client, first: u64, n: u64) -> Instant {
    for id in first..first + n {
        let frame = json!({"id": id, "cmd": "ping"}).to_string();
        c.ws.feed(WsMessage::text(frame)).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    Instant::now()
}

/// Reads until `n` more replies have come (or the connection ended); returns (pongs, error 27s).
async fn count_replies(c: &mut Client, n: usize) -> (u64, u64) {
    let from = c.replies.len();
    let deadline = Instant::now() + DEADLINE;
    while c.replies.len() < from + n && c.ended.is_none() {
        assert!(Instant::now() < deadline, "replies never came");
        c.step(Duration::from_millis(100)).await;
    }
    let new = &c.replies[from..];
    let pongs = new.iter().filter(|r| r["type"] == "pong").count() as u64;
    let refused = new.iter().filter(|r| r["msg"]["code"] == 27).count() as u64;
    assert_eq!(
        pongs + refused,
        new.len() as u64,
        "only pongs and error 27: {new:?}"
    );
    (pongs, refused)
}

/// Default limits (README, `[security]`): 20 commands/s, a burst of 50, and the 50th refusal
/// within 10 s closes 1013 `rate limited`. The refill is bounded by times measured around it,
/// so a slow machine widens the window instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_command_limits_are_20_per_second_a_burst_of_50_and_50_refusals() {
    let sim = sim(quiet_sim()).await;
    let relay = relay(&sim, |_| {}).await;
    let mut c = Client::connect(&relay.ws_url()).await;

    // The burst: 60 at once, 50 (plus what refilled meanwhile) answered.
    let sent = Instant::now();
    burst_of_pings(&mut c, 1, 60).await;
    let (pongs, refused) = count_replies(&mut c, 60).await;
    let drained = Instant::now();
    let refill = (20.0 * (drained - sent).as_secs_f64()).ceil() as u64;
    assert!(
        (50..=50 + refill).contains(&pongs),
        "{pongs} of 60 answered (burst 50, {refill} refilled at most)"
    );

    // The rate: after a second, about 20 more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = Instant::now();
    burst_of_pings(&mut c, 100, 40).await;
    let (more, refused_more) = count_replies(&mut c, 40).await;
    let done = Instant::now();
    let least = (20.0 * (at - drained).as_secs_f64()).floor() as u64;
    let most = (20.0 * (done - sent).as_secs_f64()).ceil() as u64 + 50 - pongs;
    assert!(
        (least..=most).contains(&more),
        "{more} of 40 answered after {:?} (between {least} and {most} at 20/s)",
        at - drained
    );

    // Refusals: the 50th within 10 s closes instead of answering.
    let so_far = refused + refused_more;
    assert!(so_far < 49, "{so_far} refusals before the last round");
    burst_of_pings(&mut c, 200, 100).await;
    assert_eq!(
        c.ended().await,
        Ended::Close(1013, "rate limited: too many commands".into())
    );
    let total_refused = c.replies.iter().filter(|r| r["msg"]["code"] == 27).count();
    assert_eq!(total_refused, 49, "49 refusals answered, the 50th closes");
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Reads until the peer closes; returns how long that took from `since`.
async fn closed_after(s: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    let mut buf = [0u8; 512];
    let deadline = since + within;
    loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// `max_pending_handshakes` sockets may sit before their request; one more is closed at once;
/// a socket that sends no request head is closed after 5 s; then the slots serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_capped_and_a_silent_socket_is_closed_after_5_s() {
    let sim = sim(quiet_sim()).await;
    let relay = relay(&sim, |c| c.security.max_pending_handshakes = 2).await;
    let opened = Instant::now();
    let mut a = TcpStream::connect(relay.addr).await.unwrap();
    let mut b = TcpStream::connect(relay.addr).await.unwrap();
    let mut c = TcpStream::connect(relay.addr).await.unwrap();
    let third = Instant::now();
    let took = closed_after(&mut c, third, Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_secs(3),
        "the third socket was closed at once"
    );

    // The head timeout (5 s) starts at accept, after our connect: never early; late by at most
    // a loaded machine's margin.
    let took_a = closed_after(&mut a, opened, Duration::from_secs(12)).await;
    let took_b = closed_after(&mut b, opened, Duration::from_secs(12)).await;
    for took in [took_a, took_b] {
        assert!(
            took >= Duration::from_millis(4900),
            "closed after {took:?}, before the 5 s head timeout"
        );
    }
    let mut ok = Client::connect(&relay.ws_url()).await;
    ok.send(json!({"id": 1, "cmd": "ping"})).await;
    ok.replies_until(1).await;
    relay.shutdown().await;
    sim.shutdown().await;
}

/// A scripted exchange: answers `subscribe` with `subscribed` (and a snapshot for each book),
/// `unsubscribe` with `unsubscribed`; records every command and the close code it receives.
struct ScriptedExchange {
    url: String,
    commands: Arc<Mutex<Vec<Value>>>,
    close: Arc<Mutex<Option<u16>>>,
    done: tokio::task::JoinHandle<()>,
}

async fn scripted_exchange() -> ScriptedExchange {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/trade-api/ws/v2", listener.local_addr().unwrap());
    let commands = Arc::new(Mutex::new(Vec::new()));
    let close = Arc::new(Mutex::new(None));
    let (log, closed) = (commands.clone(), close.clone());
    let done = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut next_sid = 0u64;
        while let Some(Ok(frame)) = ws.next().await {
            let text = match frame {
                WsMessage::Text(t) => t.to_string(),
                WsMessage::Close(c) => {
                    *closed.lock().unwrap() = Some(c.map_or(1005, |c| u16::from(c.code)));
                    break;
                }
                _ => continue,
            };
            let cmd: Value = serde_json::from_str(&text).unwrap();
            log.lock().unwrap().push(cmd.clone());
            let id = cmd["id"].clone();
            let mut out = Vec::new();
            match cmd["cmd"].as_str() {
                Some("subscribe") => {
                    for ch in cmd["params"]["channels"].as_array().unwrap() {
                        next_sid += 1;
                        out.push(json!({"id": id, "type": "subscribed", "msg": {"channel": ch, "sid": next_sid}}));
                        if ch == "orderbook_delta" {
                            for m in cmd["params"]["market_tickers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                            {
                                out.push(json!({"type": "orderbook_snapshot", "sid": next_sid, "seq": 1, "msg": {
                                    "market_ticker": m, "yes_dollars_fp": [["0.0800", "300.00"]],
                                    "no_dollars_fp": [["0.5400", "20.00"]]}}));
                            }
                        }
                    }
                }
                Some("unsubscribe") => {
                    for sid in cmd["params"]["sids"].as_array().unwrap() {
                        out.push(json!({"id": id, "type": "unsubscribed", "sid": sid, "seq": 1}));
                    }
                }
                _ => {}
            }
            for v in out {
                if ws.send(WsMessage::text(v.to_string())).await.is_err() {
                    return;
                }
            }
        }
    });
    ScriptedExchange {
        url,
        commands,
        close,
        done,
    }
}

/// Shutdown through the relay: the upstream session unsubscribes what it holds and closes with
/// 1000 (README, "Shutdown").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_the_relay_unsubscribes_upstream_and_closes_with_1000() {
    let exchange = scripted_exchange().await;
    let mut config = relay::config::RelayConfig::with_upstream(&exchange.url);
    config.fanout.linger_seconds = settings::SecondsOrZero::from_secs(0);
    let listeners = relay::Listeners::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let relay = relay::spawn(config, listeners).await.unwrap();
    let mut c = Client::connect(&relay.ws_url()).await;
    c.send(subscribe(1, &["orderbook_delta"], &["TEST-1".to_owned()]))
        .await;
    c.until("the snapshot", |c| c.books.contains_key("TEST-1"))
        .await;

    timeout(DEADLINE, relay.shutdown())
        .await
        .expect("the relay shut down within the deadline");
    timeout(DEADLINE, exchange.done)
        .await
        .expect("the upstream connection ended")
        .unwrap();
    let commands = exchange.commands.lock().unwrap().clone();
    let subscribed: Vec<u64> = (1..=commands
        .iter()
        .filter(|c| c["cmd"] == "subscribe")
        .map(|c| c["params"]["channels"].as_array().unwrap().len() as u64)
        .sum())
        .collect();
    let mut unsubscribed: Vec<u64> = commands
        .iter()
        .filter(|c| c["cmd"] == "unsubscribe")
        .flat_map(|c| c["params"]["sids"].as_array().unwrap().clone())
        .map(|s| s.as_u64().unwrap())
        .collect();
    unsubscribed.sort();
    assert_eq!(
        unsubscribed, subscribed,
        "every sid unsubscribed: {commands:?}"
    );
    assert_eq!(*exchange.close.lock().unwrap(), Some(1000));
}

/// SIGHUP to the binary re-reads the certificate: a client that trusts only a new CA connects
/// once the files hold that CA's certificate and the signal was sent; the old connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_to_the_binary_reloads_the_certificate_and_keeps_connections() {
    let dir = std::env::temp_dir().join(format!("relay-sighup-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca1, ca1_pem) = make_ca();
    write_leaf(&dir, &ca1);
    let sim = sim(quiet_sim()).await;
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let mut relay = RelayChild::spawn(
        &["--listen", "127.0.0.1:0", "--upstream-url", &sim.ws_url()],
        &[
            ("RELAY__SECURITY__TLS__CERT_PATH", cert.as_str()),
            ("RELAY__SECURITY__TLS__KEY_PATH", key.as_str()),
        ],
    );
    assert!(relay.url.starts_with("wss://"), "{}", relay.url);
    let mut old = wss_client(&relay.url, &ca1_pem).await;

    let (ca2, ca2_pem) = make_ca();
    write_leaf(&dir, &ca2);
    relay.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    let mut fresh = loop {
        if let Some(c) = try_wss_client(&relay.url, &ca2_pem).await {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    fresh.send(json!({"id": 1, "cmd": "ping"})).await;
    fresh.replies_until(1).await;
    old.send(json!({"id": 2, "cmd": "ping"})).await;
    old.replies_until(1).await;
    assert_eq!(old.replies[0], json!({"id": 2, "type": "pong"}));
    relay.signal("TERM");
    assert!(relay.exit_within(DEADLINE).await.success());
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
