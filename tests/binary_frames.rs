//! Commands sent as binary frames, as some published clients send their JSON, are handled exactly
//! like text frames: the same replies, limits and closes.

mod common;

use std::time::Duration;

use common::*;
use exchange_sim::SimConfig;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Every command of the reference and the usual mistakes, one frame each, with the number of
/// frames each is answered with (replies, snapshots, initial tickers).
fn script(markets: &[String]) -> Vec<(String, usize)> {
    let (a, b) = (&markets[0], &markets[1]);
    let commands = [
        // 3 subscribed, a's snapshot, a's initial ticker.
        (
            json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta", "ticker", "trade"], "market_tickers": [a], "send_initial_snapshot": true}}),
            5,
        ),
        (json!({"id": 2, "cmd": "list_subscriptions"}), 1),
        // ok, b's snapshot.
        (
            json!({"id": 3, "cmd": "update_subscription", "params": {"sid": 1, "market_tickers": [b], "action": "add_markets"}}),
            2,
        ),
        // ok, a's snapshot.
        (
            json!({"id": 4, "cmd": "update_subscription", "params": {"sids": [1], "market_tickers": [a], "action": "get_snapshot"}}),
            2,
        ),
        (
            json!({"id": 5, "cmd": "update_subscription", "params": {"sid": 1, "market_tickers": [b], "action": "delete_markets"}}),
            1,
        ),
        (
            json!({"id": 6, "cmd": "unsubscribe", "params": {"sids": [3]}}),
            1,
        ),
        (
            json!({"id": 7, "cmd": "subscribe", "params": {"channels": ["no_such_channel"]}}),
            1,
        ),
        (json!({"id": 8, "cmd": "no_such_command"}), 1),
        (json!({"id": 10, "cmd": "unsubscribe", "params": {}}), 1),
        (
            json!({"id": 11, "cmd": "update_subscription", "params": {"sid": 1, "market_tickers": [a]}}),
            1,
        ),
        (
            json!({"id": 12, "cmd": "unsubscribe", "params": {"sids": [99]}}),
            1,
        ),
        (
            json!({"id": 13, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_ticker": a, "market_tickers": [b]}}),
            1,
        ),
        (json!({"id": 14, "cmd": "ping"}), 1),
    ];
    commands
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .chain([(r#"{"id":9,"cmd":"#.to_owned(), 1)]) // malformed JSON
        .collect()
}

/// Sends each frame as text or binary, reads what it is answered with, and returns it all.
async fn run_script(url: &str, script: &[(String, usize)], binary: bool) -> Vec<Value> {
    let mut c = Client::connect(url).await;
    let mut got = Vec::new();
    for (frame, answers) in script {
        let message = if binary {
            WsMessage::binary(frame.clone().into_bytes())
        } else {
            WsMessage::text(frame.clone())
        };
        c.ws.send(message).await.unwrap();
        let want = got.len() + answers;
        let deadline = Instant::now() + DEADLINE;
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "{frame} was answered with fewer than {answers} frames: {got:#?}"
            );
            assert_eq!(c.ended, None, "the connection ended; got {got:#?}");
            if let Some(v) = c.step(Duration::from_millis(100)).await {
                got.push(v);
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_a_binary_frame_gets_the_text_frames_reply() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 50.0,
        ..SimConfig::default()
    })
    .await;
    let markets = sim.markets();
    let relay = relay(&sim, |c| c.warm_markets = markets.clone()).await;
    await_ready(relay.addr, 200).await;
    // A client holding every topic keeps the relay's cache in one state for both runs, and a
    // still market means both connections see exactly the same frames.
    let mut holder = Client::connect(&relay.ws_url()).await;
    holder
        .send(subscribe(
            1,
            &["orderbook_delta", "ticker", "trade"],
            &markets,
        ))
        .await;
    holder
        .until("books and tickers", |c| {
            c.books.len() == 2 && c.counts.get("ticker") >= Some(&2)
        })
        .await;
    sim.pause();
    let script = script(&markets);
    let text = run_script(&relay.ws_url(), &script, false).await;
    let binary = run_script(&relay.ws_url(), &script, true).await;
    assert_eq!(binary, text);
    // The script did reach every command: a reply (or error) for each id.
    for id in 1..=14 {
        assert!(
            text.iter().any(|v| v["id"] == id) || id == 9,
            "no reply to command {id}: {text:#?}"
        );
    }
    let errors: Vec<&Value> = text.iter().filter(|v| v["type"] == "error").collect();
    assert_eq!(
        errors
            .iter()
            .map(|v| v["msg"]["code"].clone())
            .collect::<Vec<_>>(),
        [8, 5, 4, 15, 7, 11, 1].map(Value::from).to_vec(),
        "{errors:#?}"
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_meet_the_same_limits_as_text_frames() {
    let (sim, relay) = sim_and_rate_limited_relay().await;
    let url = relay.ws_url();

    // Invalid UTF-8: 1007, as in a text frame.
    let mut bad = Client::connect(&url).await;
    bad.ws
        .send(WsMessage::binary(vec![b'{', 0xff, 0xfe, b'}']))
        .await
        .unwrap();
    assert_eq!(
        bad.ended().await,
        Ended::Close(1007, "invalid UTF-8".into())
    );

    // Over the size limit: 1009.
    let mut big = Client::connect(&url).await;
    let frame = format!("{{\"id\":1,\"cmd\":\"{}\"}}", "x".repeat(70 * 1024));
    big.ws
        .send(WsMessage::binary(frame.into_bytes()))
        .await
        .unwrap();
    assert_eq!(
        big.ended().await,
        Ended::Close(1009, "message too big".into())
    );

    // A flood: error 27 past the burst, then the rate-limit close.
    assert_a_flood_is_rate_limited(&url, true).await;
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_auth_in_a_binary_frame_authenticates() {
    const TOKEN: &str = "binary-token";
    let sim = sim(SimConfig {
        markets: 1,
        rate: 50.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.security.tokens = vec![relay::security::TokenConfig {
            name: "bot".into(),
            sha256: relay::security::hash_token(TOKEN),
            permission: relay::security::Permission::Private,
        }];
    })
    .await;
    let mut c = Client::connect(&relay.ws_url()).await;
    let auth = json!({"id": 7, "cmd": "auth", "params": {"token": TOKEN}}).to_string();
    c.ws.send(WsMessage::binary(auth.into_bytes()))
        .await
        .unwrap();
    c.replies_until(1).await;
    assert_eq!(
        c.replies[0],
        json!({"id": 7, "type": "ok", "msg": {"authenticated": true}})
    );
    // A bad token in a binary first message is refused like a text one.
    let mut bad = Client::connect(&relay.ws_url()).await;
    let auth = json!({"id": 1, "cmd": "auth", "params": {"token": "wrong"}}).to_string();
    bad.ws
        .send(WsMessage::binary(auth.into_bytes()))
        .await
        .unwrap();
    assert_eq!(bad.ended().await, Ended::Close(4001, "unauthorized".into()));
    relay.shutdown().await;
    sim.shutdown().await;
}
