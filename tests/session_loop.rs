//! The session's I/O loop over an in-memory socket whose client side the test reads, or does not:
//! a client's frames are read even while more deliveries wait than one batch takes.

mod common;

use std::time::Duration;

use common::*;
use exchange_sim::{Fault, SimConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
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
