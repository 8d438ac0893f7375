//! Every fault of the admin API, observed by a real client.

mod common;

use std::time::Duration;

use common::*;
use exchange_sim::{Fault, SimConfig};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A client subscribed to `orderbook_delta` on every market and `trade` on all; returns the
/// orderbook sid, with the snapshots consumed.
async fn book_client(sim: &exchange_sim::Sim) -> (Client, u64, u64) {
    let mut client = connect(sim).await;
    let m = sim.markets();
    let r = client
        .command(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta"],"market_tickers":{}}}}}"#,
            serde_json::to_string(&m).unwrap()
        ))
        .await;
    let sid = r["msg"]["sid"].as_u64().unwrap();
    let r = client
        .command(r#"{"id":2,"cmd":"subscribe","params":{"channels":["trade"]}}"#)
        .await;
    let trade_sid = r["msg"]["sid"].as_u64().unwrap();
    (client, sid, trade_sid)
}

/// The next sequenced frame on `sid`, as (seq, raw text).
async fn next_seq(client: &mut Client, sid: u64) -> (u64, String) {
    loop {
        let (env, value) = client.text().await;
        if env.sid == Some(sid) {
            if let Some(seq) = env.seq {
                return (seq, value.to_string());
            }
        }
    }
}

#[tokio::test]
async fn drop_ends_the_stream_without_a_close_frame() {
    let sim = start(SimConfig {
        rate: 500.0,
        ..SimConfig::default()
    })
    .await;
    let (mut client, _, _) = book_client(&sim).await;
    fault(&sim, "drop", "").await;
    loop {
        match client.frame(WAIT).await.expect("the stream never ended") {
            Ok(Message::Close(frame)) => panic!("got a close frame {frame:?}"),
            Ok(_) => continue,
            Err(WsError::Protocol(_) | WsError::Io(_) | WsError::ConnectionClosed) => break,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let s = wait_stats(&sim, "connection gone", |s| s.connections == 0).await;
    assert_eq!(s.faults.get("drop"), Some(&1));
}

#[tokio::test]
async fn blackhole_sends_nothing_not_even_pings() {
    let ping = Duration::from_millis(200);
    let sim = start(SimConfig {
        rate: 0.0,
        ping_interval: ping,
        ..SimConfig::default()
    })
    .await;
    let mut client = connect(&sim).await;
    // Pings flow before the fault.
    assert!(matches!(
        client.frame(WAIT).await,
        Some(Ok(Message::Ping(_)))
    ));
    sim.fault(Fault::Blackhole { seconds: Some(30) });
    wait_stats(&sim, "blackholed", |s| {
        s.per_connection.iter().all(|c| c.blackholed)
    })
    .await;
    client
        .ws
        .send(Message::Ping("anyone?".into()))
        .await
        .unwrap();
    let silence = client.frame(ping * 5).await;
    assert!(
        silence.is_none(),
        "a frame arrived from a blackholed connection: {silence:?}"
    );
    assert_eq!(sim.stats().connections, 1, "the TCP connection stays open");
    // A later drop ends the black hole.
    sim.fault(Fault::Drop);
    match client.frame(WAIT).await {
        Some(Err(_)) => {}
        other => panic!("expected the stream to end, got {other:?}"),
    }
    wait_stats(&sim, "connection gone", |s| s.connections == 0).await;
}

#[tokio::test]
async fn close_sends_the_given_code() {
    let sim = start(SimConfig {
        rate: 500.0,
        ..SimConfig::default()
    })
    .await;
    let (mut client, _, _) = book_client(&sim).await;
    fault(&sim, "close", r#"{"code":4000,"reason":"bye"}"#).await;
    loop {
        match client.frame(WAIT).await.expect("no close frame") {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(
                    (frame.code, frame.reason.as_str()),
                    (CloseCode::from(4000), "bye")
                );
                break;
            }
            Ok(Message::Close(None)) => panic!("close frame without code"),
            Ok(_) => continue,
            Err(e) => panic!("stream failed before the close frame: {e}"),
        }
    }
}

#[tokio::test]
async fn gap_skips_one_seq_and_duplicate_repeats_one() {
    let sim = start(SimConfig {
        rate: 2_000.0,
        markets: 3,
        ..SimConfig::default()
    })
    .await;
    let (mut client, sid, _) = book_client(&sim).await;
    let (mut last, _) = next_seq(&mut client, sid).await;
    fault(&sim, "gap", &format!(r#"{{"sid":{sid}}}"#)).await;
    loop {
        let (seq, _) = next_seq(&mut client, sid).await;
        if seq != last + 1 {
            assert_eq!(seq, last + 2, "exactly one seq is skipped");
            last = seq;
            break;
        }
        last = seq;
    }
    // Afterwards the line continues.
    let (seq, _) = next_seq(&mut client, sid).await;
    assert_eq!(seq, last + 1);
    last = seq;

    let (mut prev, mut prev_frame) = (last, String::new());
    fault(&sim, "duplicate", "").await;
    loop {
        let (seq, frame) = next_seq(&mut client, sid).await;
        if seq == prev {
            assert!(
                prev_frame.is_empty() || frame == prev_frame,
                "the duplicate is the same message"
            );
            break;
        }
        assert_eq!(seq, prev + 1);
        (prev, prev_frame) = (seq, frame);
    }
    let s = stats(&sim).await;
    assert_eq!(
        (s.faults.get("gap"), s.faults.get("duplicate")),
        (Some(&1), Some(&1))
    );
}

#[tokio::test]
async fn gap_for_one_market_skips_that_market_only() {
    let sim = start(SimConfig {
        rate: 2_000.0,
        markets: 3,
        ..SimConfig::default()
    })
    .await;
    let market = sim.markets()[1].clone();
    let (mut client, sid, _) = book_client(&sim).await;
    let (mut last, _) = next_seq(&mut client, sid).await;
    fault(&sim, "gap", &format!(r#"{{"market":"{market}"}}"#)).await;
    let mut after_gap = None;
    for _ in 0..2_000 {
        let (env, _) = client.text().await;
        // The trade sid is sequenced too (and holds the market): only the book sid is watched.
        let (Some(s), Some(seq)) = (env.sid, env.seq) else {
            continue;
        };
        if s != sid {
            continue;
        }
        if seq != last + 1 {
            assert_eq!(seq, last + 2);
            after_gap = Some(seq);
            break;
        }
        last = seq;
    }
    assert!(after_gap.is_some(), "no gap seen");
}

#[tokio::test]
async fn error_25_ends_the_sid() {
    let sim = start(SimConfig {
        rate: 3_000.0,
        markets: 3,
        ..SimConfig::default()
    })
    .await;
    let (mut client, sid, trade_sid) = book_client(&sim).await;
    next_seq(&mut client, sid).await;
    fault(&sim, "error", &format!(r#"{{"code":25,"sid":{sid}}}"#)).await;
    loop {
        let (env, v) = client.text().await;
        if env.kind == "error" {
            assert_eq!(
                (env.sid, v["msg"]["code"].as_u64()),
                (Some(sid), Some(25)),
                "{v}"
            );
            break;
        }
    }
    // Nothing more on that sid while the trade sid keeps flowing.
    let mut trades = 0;
    while trades < 50 {
        let (env, v) = client.text().await;
        assert_ne!(env.sid, Some(sid), "data after error 25: {v}");
        trades += usize::from(env.sid == Some(trade_sid));
    }
    let s = stats(&sim).await;
    let sids: Vec<u64> = s.per_connection[0].sids.iter().map(|s| s.sid).collect();
    assert_eq!(sids, vec![trade_sid]);
}

#[tokio::test]
async fn reject_auth_refuses_the_next_handshakes_only() {
    let sim = start(signed_config()).await;
    fault(&sim, "reject_auth", r#"{"count":2}"#).await;
    for _ in 0..2 {
        let h = signer().sign_now(protocol::sign::WS_PATH);
        assert_eq!(
            refused_status(connect_with(&sim.ws_url(), &h.pairs()).await),
            401
        );
    }
    let _ok = connect(&sim).await;
    let s = stats(&sim).await;
    assert_eq!((s.handshakes_rejected, s.handshakes_accepted), (2, 1));
}

#[tokio::test]
async fn stall_handshake_never_answers_the_upgrade() {
    let sim = start(SimConfig::default()).await;
    fault(&sim, "stall_handshake", "").await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        sim.ws_url(),
    )
    .unwrap();
    req.headers_mut().remove("origin");
    let stalled = tokio::time::timeout(
        Duration::from_millis(700),
        tokio_tungstenite::connect_async(req),
    )
    .await;
    assert!(stalled.is_err(), "the upgrade was answered");
    let s = wait_stats(&sim, "one stalled", |s| s.handshakes_stalled == 1).await;
    assert_eq!(s.handshakes_accepted, 0);
    let _ok = connect(&sim).await;
}

#[tokio::test]
async fn rate_changes_the_message_rate() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let generated = |s: &exchange_sim::Stats| s.events_generated;
    let before = generated(&stats(&sim).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(generated(&stats(&sim).await), before, "rate 0 is silent");
    fault(&sim, "rate", r#"{"msgs_per_sec":2000}"#).await;
    let t0 = std::time::Instant::now();
    let start_count = generated(&stats(&sim).await);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let made = generated(&stats(&sim).await) - start_count;
    let per_sec = made as f64 / t0.elapsed().as_secs_f64();
    assert!(
        (1_400.0..2_600.0).contains(&per_sec),
        "{per_sec} msgs/s at rate 2000"
    );
    assert_eq!(stats(&sim).await.rate, 2000.0);
    let (status, _) = http(
        sim.admin_addr(),
        "POST",
        "/admin/fault/rate",
        r#"{"msgs_per_sec":-1}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(sim.admin_addr(), "POST", "/admin/fault/nope", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn burst_sends_m_messages_at_once() {
    let sim = start(SimConfig {
        rate: 0.0,
        markets: 4,
        ..SimConfig::default()
    })
    .await;
    let mut client = connect(&sim).await;
    let m = serde_json::to_string(&sim.markets()).unwrap();
    client
        .send(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta","ticker","trade","fill","user_orders","market_positions","market_lifecycle_v2"],"market_tickers":{m}}}}}"#
        ))
        .await;
    let mut setup = 0;
    while setup < 7 + 4 {
        client.text().await;
        setup += 1;
    }
    let before = stats(&sim).await.events_generated;
    fault(&sim, "burst", r#"{"count":2000}"#).await;
    let made = stats(&sim).await.events_generated - before;
    assert!((2_000..2_006).contains(&made), "{made}");
    for _ in 0..made {
        let (env, _) = client
            .text_within(Duration::from_secs(2))
            .await
            .expect("burst message missing");
        assert!(env.sid.is_some());
    }
    assert!(
        client
            .text_within(Duration::from_millis(200))
            .await
            .is_none(),
        "more than the burst"
    );
}

#[tokio::test]
async fn a_reader_that_falls_behind_gets_error_25() {
    let sim = start(SimConfig {
        rate: 0.0,
        markets: 2,
        ..SimConfig::default()
    })
    .await;
    let (mut client, sid, trade_sid) = book_client(&sim).await;
    // The client reads nothing while far more than the broadcast keeps is generated. The burst
    // is answered once generated: seconds in a debug build on a loaded machine.
    let burst = tokio::task::spawn_blocking({
        let handle = tokio::runtime::Handle::current();
        let addr = sim.admin_addr();
        move || {
            handle.block_on(http_within(
                addr,
                "POST",
                "/admin/fault/burst",
                r#"{"count":400000}"#,
                Duration::from_secs(60),
            ))
        }
    });
    assert_eq!(burst.await.unwrap().0, 200);
    let mut errored = Vec::new();
    while errored.len() < 2 {
        let (env, v) = client
            .text_within(Duration::from_secs(20))
            .await
            .expect("no error 25");
        if env.kind == "error" {
            assert_eq!(v["msg"]["code"], 25, "{v}");
            errored.push(env.sid.unwrap());
        }
    }
    errored.sort();
    assert_eq!(errored, vec![sid, trade_sid]);
    assert!(sim.stats().per_connection[0].sids.is_empty());
}

/// The exempt listener (`Sim::serve_exempt`): its connections see the same market but no fault,
/// and do not use up the handshake faults armed for everyone else.
#[tokio::test]
async fn an_exempt_listener_is_out_of_every_faults_reach() {
    let sim = start(SimConfig {
        rate: 500.0,
        ..SimConfig::default()
    })
    .await;
    let exempt_url = sim
        .serve_exempt(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let headers = signer().sign_now(protocol::sign::WS_PATH);
    let pairs: Vec<(&str, &str)> = headers.pairs().to_vec();
    let mut exempt = connect_with(&exempt_url, &pairs).await.unwrap();
    let r = exempt
        .command(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta"],"market_tickers":{}}}}}"#,
            serde_json::to_string(&sim.markets()).unwrap()
        ))
        .await;
    let sid = r["msg"]["sid"].as_u64().unwrap();
    let (mut normal, _, _) = book_client(&sim).await;

    fault(&sim, "reject_auth", "").await;
    fault(&sim, "gap", "").await;
    fault(&sim, "drop", "").await;
    // The normal connection is dropped.
    loop {
        match normal
            .frame(WAIT)
            .await
            .expect("the normal stream never ended")
        {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    // The exempt one goes on, with no gap.
    let (mut last, _) = next_seq(&mut exempt, sid).await;
    for _ in 0..20 {
        let (seq, raw) = next_seq(&mut exempt, sid).await;
        assert_eq!(seq, last + 1, "{raw}");
        last = seq;
    }
    // A new exempt handshake is not refused, and leaves the refusal to the next normal one.
    connect_with(&exempt_url, &pairs).await.unwrap();
    assert_eq!(
        refused_status(connect_with(&sim.ws_url(), &pairs).await),
        401
    );
    sim.shutdown().await;
}
