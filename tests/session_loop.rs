//! The session's I/O loop over an in-memory socket whose client side the test reads, or does not:
//! a client's frames are read even while more deliveries wait than one batch takes.

mod common;

use std::time::Duration;

use common::*;
use exchange_sim::{Fault, SimConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Upstream messages the client falls behind by: many batches of the session's (256 items).
const BACKLOG: u64 = 3_000;

/// A client that stops reading while a burst arrives, then asks for its subscriptions: the
/// reply comes within the first batches of the backlog, not after all of it. A loop that kept
/// writing while more was ready, without looking at the socket, would starve the client's
/// commands and pongs for as long as the stream stays busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_behind_a_backlog_is_answered_within_its_first_batches() {
    let sim = sim(SimConfig {
        markets: 4,
        rate: 100.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        // The whole backlog fits in the ring: the client is behind, never lagged.
        c.fanout.queue_messages = 16_384;
        c.fanout.queue_bytes = 64 << 20;
    })
    .await;
    let app = relay.app().clone();
    // Small, so the session's writes wait for the client while it does not read.
    let (client_io, server_io) = tokio::io::duplex(16 * 1024);
    let server =
        WebSocketStream::from_raw_socket(server_io, Role::Server, Some(app.ws_config())).await;
    let options = session_options(&app);
    tokio::spawn(relay::session::run(app.clone(), server, options));
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

    let markets = sim.markets();
    let channels = ["orderbook_delta", "ticker", "trade"];
    let sub = subscribe(1, &channels, &markets).to_string();
    client.send(Message::text(sub)).await.unwrap();
    let mut snapshots = 0;
    while snapshots < markets.len() {
        if next_json(&mut client).await["type"] == "orderbook_snapshot" {
            snapshots += 1;
        }
    }

    // Not reading now: the burst queues behind the session's blocked write.
    let upstream_total = || {
        let status: Value = serde_json::from_str(&app.status_json()).unwrap();
        status["upstream_messages_total"].as_u64().unwrap()
    };
    let before = upstream_total();
    sim.fault(Fault::Burst { count: BACKLOG });
    let deadline = Instant::now() + DEADLINE;
    while upstream_total() < before + BACKLOG {
        assert!(
            Instant::now() < deadline,
            "the burst never reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ask = serde_json::json!({"id": 2, "cmd": "list_subscriptions"}).to_string();
    client.send(Message::text(ask)).await.unwrap();

    let mut data_before_reply = 0u64;
    loop {
        let frame = next_json(&mut client).await;
        if frame["id"] == 2 {
            assert_eq!(frame["type"], "ok", "{frame}");
            break;
        }
        if frame.get("sid").is_some() {
            data_before_reply += 1;
        }
    }
    // Every upstream message of the burst is one frame for this client: the backlog is at least
    // BACKLOG frames, the reply due within about two batches of it.
    assert!(
        data_before_reply < 1_000,
        "{data_before_reply} frames were written before the command was read"
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Two commands that reach the relay in one TCP segment, on a connection with no data flowing,
/// are both answered: the session reads the second from what it already holds, without waiting
/// for the socket to become readable again (it will not: nothing more is coming). Over plain TCP
/// and over TLS, whose records the session reads through rustls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_arrive_together_on_a_quiet_connection_are_each_answered() {
    let sim = sim(SimConfig::default()).await;
    let plain = quiet_relay(&sim, |_| {}).await;
    let mut client = Client::connect(&plain.ws_url()).await;
    assert_two_commands_in_one_write_are_answered(&mut client).await;

    let dir = std::env::temp_dir().join(format!("relay-tls-loop-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, ca_pem) = common::tls::make_ca();
    common::tls::write_leaf(&dir, &ca);
    let tls = quiet_relay(&sim, |c| {
        c.security.tls = Some(relay::security::TlsConfig {
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
        });
    })
    .await;
    let mut client = common::tls::wss_client(&tls.ws_url(), &ca_pem).await;
    assert_two_commands_in_one_write_are_answered(&mut client).await;

    plain.shutdown().await;
    tls.shutdown().await;
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A relay whose sessions nothing wakes but their sockets: no heartbeat within a test's time,
/// and an upstream already subscribed (a status change would wake every session).
async fn quiet_relay(
    sim: &exchange_sim::Sim,
    tweak: impl FnOnce(&mut relay::config::RelayConfig),
) -> relay::RelayHandle {
    let relay = relay(sim, |c| {
        c.downstream.ping_interval_seconds = settings::Seconds::from_secs(3_600);
        tweak(c);
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status: Value = serde_json::from_str(&relay.app().status_json()).unwrap();
        if status["upstream"]["upstream"] == "subscribed" {
            return relay;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream never subscribed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends two commands in one write, after the session has parked, and waits for both replies.
async fn assert_two_commands_in_one_write_are_answered(client: &mut Client) {
    // The first exchange proves the session is up and has parked on its socket since.
    client
        .send(json!({"id": 1, "cmd": "list_subscriptions"}))
        .await;
    client.replies_until(1).await;
    for id in [2, 3] {
        let ask = json!({"id": id, "cmd": "list_subscriptions"}).to_string();
        // Queued, not sent: the flush below writes both frames at once.
        client.ws.feed(Message::text(ask)).await.unwrap();
    }
    client.ws.flush().await.unwrap();
    client.replies_until(3).await;
    let ids: Vec<&Value> = client.replies.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [1, 2, 3], "{:?}", client.replies);
}

/// A client that sends a frame right behind its upgrade request, in the same write, without
/// waiting for the answer, has it read: the bytes the HTTP server read past the request go to the
/// WebSocket first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = sim(SimConfig::default()).await;
    let relay = relay(&sim, |_| {}).await;
    let mut socket = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut bytes = b"GET /trade-api/ws/v2 HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    bytes.extend(masked_text_frame(br#"{"id":7,"cmd":"list_subscriptions"}"#));
    socket.write_all(&bytes).await.unwrap();

    let mut received = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let reply = loop {
        let mut chunk = [0u8; 4096];
        let n = timeout(deadline - Instant::now(), socket.read(&mut chunk))
            .await
            .expect("the reply before the deadline")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&received);
        if let Some(at) = text.find(r#"{"id":7"#) {
            break text[at..].to_owned();
        }
    };
    let head = String::from_utf8_lossy(&received);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(reply.contains(r#""type":"ok""#), "{reply}");
    relay.shutdown().await;
    sim.shutdown().await;
}

/// One client-to-server text frame (masked, as clients must), for a payload under 126 bytes.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

async fn next_json<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = timeout(DEADLINE, ws.next())
            .await
            .expect("a frame before the deadline")
            .expect("the session still open")
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}
