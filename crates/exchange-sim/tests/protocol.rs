//! Handshake checks, the command protocol with every error code, and heartbeats.

mod common;

use std::time::{Duration, Instant};

use common::*;
use exchange_sim::{DuplicatePolicy, SimConfig};
use futures_util::SinkExt;
use protocol::Signer;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn handshakes_are_checked() {
    let sim = start(SimConfig {
        reject_origin: true,
        ..signed_config()
    })
    .await;
    let url = sim.ws_url();
    assert_eq!(
        refused_status(connect_with(&url, &[]).await),
        401,
        "no headers"
    );

    let (other_private, _) = protocol::sign::generate_key_pair(1024);
    let stranger = Signer::from_pem("test-key", &other_private).unwrap();
    let h = stranger.sign_now(protocol::sign::WS_PATH);
    assert_eq!(
        refused_status(connect_with(&url, &h.pairs()).await),
        401,
        "bad signature"
    );

    let stale = signer().sign(protocol::sign::now_ms() - 60_000, protocol::sign::WS_PATH);
    assert_eq!(
        refused_status(connect_with(&url, &stale.pairs()).await),
        401,
        "expired"
    );

    let good = signer().sign_now(protocol::sign::WS_PATH);
    let mut with_origin = good.pairs().to_vec();
    with_origin.push(("Origin", "https://example.com"));
    assert_eq!(
        refused_status(connect_with(&url, &with_origin).await),
        403,
        "Origin"
    );

    let wrong_path = url.replace("/trade-api/ws/v2", "/ws");
    assert_eq!(
        refused_status(connect_with(&wrong_path, &good.pairs()).await),
        404,
        "path"
    );

    let _client = connect(&sim).await;
    let s = wait_stats(&sim, "one connection", |s| s.connections == 1).await;
    assert_eq!((s.handshakes_accepted, s.handshakes_rejected), (1, 5));
    assert!(s.per_connection[0].authenticated);
}

#[tokio::test]
async fn anonymous_connections_get_public_channels_only() {
    let sim = start(SimConfig {
        allow_anonymous: true,
        ..signed_config()
    })
    .await;
    let mut client = connect_with(&sim.ws_url(), &[]).await.unwrap();
    let r = client
        .command(r#"{"id":1,"cmd":"subscribe","params":{"channels":["fill"]}}"#)
        .await;
    assert_eq!(code(&r), 9);
    let r = client
        .command(r#"{"id":2,"cmd":"subscribe","params":{"channels":["trade"]}}"#)
        .await;
    assert_eq!(r["type"], "subscribed");
}

#[tokio::test]
async fn bad_commands_get_the_reference_error_codes() {
    let config = SimConfig {
        rate: 0.0,
        max_markets_per_subscription: Some(2),
        // Error 6 is retired in the newest spec; older servers' behaviour stays available.
        duplicate_subscribe: DuplicatePolicy::Error6,
        ..SimConfig::default()
    };
    let sim = start(config).await;
    let m = sim.markets();
    let mut client = connect(&sim).await;
    let r = client
        .command(r#"{"id":1,"cmd":"subscribe","params":{"channels":["trade"]}}"#)
        .await;
    assert_eq!(r["type"], "subscribed");
    let sid = r["msg"]["sid"].as_u64().unwrap();
    let table: Vec<(String, u64)> = vec![
        ("not json".into(), 1),
        (r#"{"id":3,"cmd":"subscribe"}"#.into(), 2),
        (r#"{"id":3,"cmd":"subscribe","params":{}}"#.into(), 3),
        (r#"{"id":3,"cmd":"unsubscribe","params":{}}"#.into(), 4),
        (r#"{"id":3,"cmd":"dance"}"#.into(), 5),
        (r#"{"id":3,"cmd":"ping"}"#.into(), 5),
        (r#"{"id":3,"cmd":"auth","params":{"token":"t"}}"#.into(), 5),
        (r#"{"id":3,"cmd":"subscribe","params":{"channels":["trade"]}}"#.into(), 6),
        (r#"{"id":3,"cmd":"unsubscribe","params":{"sids":[99]}}"#.into(), 7),
        (r#"{"id":3,"cmd":"update_subscription","params":{"sid":99,"market_tickers":["A"],"action":"add_markets"}}"#.into(), 7),
        (r#"{"id":3,"cmd":"subscribe","params":{"channels":["nope"]}}"#.into(), 8),
        (format!(r#"{{"id":3,"cmd":"subscribe","params":{{"channels":["ticker"],"market_ticker":"{}","market_tickers":["{}"]}}}}"#, m[0], m[1]), 11),
        (r#"{"id":3,"cmd":"update_subscription","params":{"sids":[1,2],"market_tickers":["A"],"action":"add_markets"}}"#.into(), 12),
        (format!(r#"{{"id":3,"cmd":"update_subscription","params":{{"sid":{sid},"market_tickers":["{}"],"action":"dance"}}}}"#, m[0]), 13),
        (format!(r#"{{"id":3,"cmd":"update_subscription","params":{{"sid":{sid},"market_tickers":["{}"],"action":"get_snapshot"}}}}"#, m[0]), 13),
        (r#"{"id":3,"cmd":"subscribe","params":{"channels":["orderbook_delta"]}}"#.into(), 14),
        (format!(r#"{{"id":3,"cmd":"update_subscription","params":{{"sid":{sid},"market_tickers":["{}"]}}}}"#, m[0]), 15),
        (r#"{"id":3,"cmd":"subscribe","params":{"channels":["ticker"],"market_ticker":"NOPE-1"}}"#.into(), 11),
        (format!(r#"{{"id":3,"cmd":"subscribe","params":{{"channels":["ticker"],"market_tickers":{}}}}}"#, serde_json::to_string(&m[..3]).unwrap()), 26),
    ];
    for (frame, want) in table {
        let r = client.command(&frame).await;
        assert_eq!(code(&r), want, "{frame} -> {r}");
        if frame.starts_with("{\"id\":3") {
            assert_eq!(r["id"], 3, "the id is echoed: {r}");
        }
    }
    let r = client.command(r#"{"id":4,"cmd":"subscribe","params":{"channels":["ticker"],"market_ticker":"NOPE-1"}}"#).await;
    assert_eq!(r["msg"]["market_ticker"], "NOPE-1");
    // The connection survived all of that.
    let r = client
        .command(r#"{"id":5,"cmd":"list_subscriptions"}"#)
        .await;
    assert_eq!(r["msg"], serde_json::json!([{"channel":"trade","sid":sid}]));
}

#[tokio::test]
async fn subscriptions_follow_the_reference() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let m = sim.markets();
    let mut client = connect(&sim).await;
    client
        .send(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta","ticker"],"market_tickers":["{}","{}"]}}}}"#,
            m[0], m[1]
        ))
        .await;
    let (mut book_sid, mut ticker_sid, mut snapshots) = (0, 0, 0);
    while snapshots < 2 || book_sid == 0 || ticker_sid == 0 {
        let (env, v) = client.text().await;
        match env.kind.as_str() {
            "subscribed" if v["msg"]["channel"] == "orderbook_delta" => {
                book_sid = v["msg"]["sid"].as_u64().unwrap()
            }
            "subscribed" => ticker_sid = v["msg"]["sid"].as_u64().unwrap(),
            "orderbook_snapshot" => {
                snapshots += 1;
                assert_eq!((env.sid, env.seq), (Some(book_sid), Some(snapshots)));
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_ne!(book_sid, ticker_sid);
    // add_markets: ok with the whole list, then the new market's snapshot on the same seq line.
    let r = client
        .command(&format!(
            r#"{{"id":2,"cmd":"update_subscription","params":{{"sid":{book_sid},"market_tickers":["{}"],"action":"add_markets"}}}}"#,
            m[2]
        ))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["sid"].as_u64(), r["seq"].as_u64()),
        (Some("ok"), Some(book_sid), Some(2))
    );
    assert_eq!(r["msg"]["market_tickers"], serde_json::json!(&m[..3]));
    let (env, _) = client.text().await;
    assert_eq!(
        (env.kind.as_str(), env.seq),
        ("orderbook_snapshot", Some(3))
    );
    assert_eq!(env.market_ticker().as_deref(), Some(m[2].as_str()));
    // get_snapshot for a market the sid does not hold.
    let r = client
        .command(&format!(
            r#"{{"id":3,"cmd":"update_subscription","params":{{"sid":{book_sid},"market_tickers":["{}"],"action":"get_snapshot"}}}}"#,
            m[3]
        ))
        .await;
    assert_eq!(code(&r), 11);
    let r = client
        .command(&format!(
            r#"{{"id":4,"cmd":"update_subscription","params":{{"sid":{book_sid},"market_tickers":["{}"],"action":"delete_markets"}}}}"#,
            m[0]
        ))
        .await;
    assert_eq!(r["msg"]["market_tickers"], serde_json::json!(&m[1..3]));
    let r = client
        .command(r#"{"id":5,"cmd":"list_subscriptions"}"#)
        .await;
    assert_eq!(r["msg"].as_array().unwrap().len(), 2);
    let stats = stats(&sim).await;
    let sids = &stats.per_connection[0].sids;
    assert_eq!(sids[0].seq, Some(3));
    assert_eq!(sids[0].markets.as_deref(), Some(&m[1..3]));
    assert_eq!(sids[1].seq, None, "ticker is not sequenced");
    client
        .send(&format!(
            r#"{{"id":6,"cmd":"unsubscribe","params":{{"sids":[{book_sid},{ticker_sid}]}}}}"#
        ))
        .await;
    let a = client.reply().await;
    let b = client.reply().await;
    assert_eq!(
        (a["type"].as_str(), a["sid"].as_u64(), a["seq"].as_u64()),
        (Some("unsubscribed"), Some(book_sid), Some(3))
    );
    // The newest spec requires seq (at least 1) on every unsubscribed, even without a sequence.
    assert_eq!(
        (b["sid"].as_u64(), b["seq"].as_u64()),
        (Some(ticker_sid), Some(1))
    );
    let r = client
        .command(r#"{"id":7,"cmd":"list_subscriptions"}"#)
        .await;
    assert_eq!(r["msg"], serde_json::json!([]));
}

#[tokio::test]
async fn duplicate_subscribe_can_merge() {
    let config = SimConfig {
        rate: 0.0,
        duplicate_subscribe: DuplicatePolicy::Merge,
        ..SimConfig::default()
    };
    let sim = start(config).await;
    let m = sim.markets();
    let mut client = connect(&sim).await;
    let sub = |id: u64, ticker: &str| {
        format!(
            r#"{{"id":{id},"cmd":"subscribe","params":{{"channels":["orderbook_delta"],"market_ticker":"{ticker}"}}}}"#
        )
    };
    let r = client.command(&sub(1, &m[0])).await;
    let sid = r["msg"]["sid"].as_u64().unwrap();
    let r = client.command(&sub(2, &m[1])).await;
    assert_eq!(
        (r["type"].as_str(), r["sid"].as_u64()),
        (Some("ok"), Some(sid)),
        "{r}"
    );
    assert_eq!(r["msg"]["market_tickers"], serde_json::json!(&m[..2]));
}

#[tokio::test]
async fn heartbeat_pings_arrive_at_the_configured_interval() {
    let sim = start(SimConfig {
        rate: 0.0,
        ping_interval: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    let mut client = connect(&sim).await;
    let started = Instant::now();
    for n in 1..=3u32 {
        match client.frame(WAIT).await {
            Some(Ok(Message::Ping(payload))) => assert_eq!(&payload[..], b"heartbeat"),
            other => panic!("expected a ping, got {other:?}"),
        }
        let elapsed = started.elapsed();
        let want = Duration::from_millis(200) * n;
        assert!(
            elapsed + Duration::from_millis(30) >= want
                && elapsed < want + Duration::from_millis(150),
            "ping {n} at {elapsed:?}"
        );
    }
    // Client pings are answered.
    client.ws.send(Message::Ping("hello".into())).await.unwrap();
    loop {
        match client.frame(WAIT).await {
            Some(Ok(Message::Pong(payload))) => break assert_eq!(&payload[..], b"hello"),
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn skip_ticker_ack_leaves_the_market_list_out_of_ok() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let m = sim.markets();
    let mut client = connect(&sim).await;
    let r = client
        .command(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["ticker"],"market_ticker":"{}","skip_ticker_ack":true}}}}"#,
            m[0]
        ))
        .await;
    assert_eq!(
        r["type"], "subscribed",
        "the subscribe itself is acknowledged"
    );
    let sid = r["msg"]["sid"].as_u64().unwrap();
    let r = client
        .command(&format!(
            r#"{{"id":2,"cmd":"update_subscription","params":{{"sid":{sid},"market_tickers":["{}"],"action":"add_markets"}}}}"#,
            m[1]
        ))
        .await;
    assert_eq!(r, serde_json::json!({"id": 2, "type": "ok", "sid": sid}));
}
