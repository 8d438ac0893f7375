//! Who may connect and what hostile clients get: tokens, Origins, limits, TLS, and the exact
//! status or close code of each refusal.

mod common;

use std::time::Duration;

use common::tls::{make_ca, write_leaf, wss_client};
use common::*;
use exchange_sim::{Fault, SimConfig};
use futures_util::SinkExt;
use rand::{Rng, SeedableRng};
use relay::config::RelayConfig;
use relay::security::{hash_token, Permission, TokenConfig};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const PRIVATE: &str = "bot-fleet-token";
const PUBLIC: &str = "dashboard-token";

fn with_tokens(c: &mut RelayConfig) {
    c.security.tokens = vec![
        TokenConfig {
            name: "bots".into(),
            sha256: hash_token(PRIVATE),
            permission: Permission::Private,
        },
        TokenConfig {
            name: "dash".into(),
            sha256: hash_token(PUBLIC),
            permission: Permission::Public,
        },
    ];
    c.security.allowed_origins = vec!["https://*.example.com".into()];
    c.security.auth_timeout_seconds = settings::Seconds::from_secs(1);
}

/// The handshake's HTTP status (101 when it upgrades) with extra headers and a URL suffix.
async fn handshake(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(http_name(k), v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    k.parse().unwrap()
}

async fn subscribe_fill(c: &mut Client, id: u64) -> Value {
    c.send(json!({"id": id, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    c.replies_until(c.replies.len() + 1).await;
    c.replies.last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_presenting_a_token_works_and_bad_ones_are_refused() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 50.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, with_tokens).await;
    let url = relay.ws_url();
    let subscribed = |v: &Value| v["type"] == "subscribed";

    // Authorization: Bearer, ?token=, the relay_token cookie.
    let mut c = handshake(&url, &[("authorization", &format!("Bearer {PRIVATE}"))])
        .await
        .unwrap();
    assert!(subscribed(&subscribe_fill(&mut c, 1).await));
    let mut c = handshake(&format!("{url}?token={PRIVATE}"), &[])
        .await
        .unwrap();
    assert!(subscribed(&subscribe_fill(&mut c, 1).await));
    let mut c = handshake(
        &url,
        &[("cookie", &format!("theme=x; relay_token={PRIVATE}"))],
    )
    .await
    .unwrap();
    assert!(subscribed(&subscribe_fill(&mut c, 1).await));

    // First message, answered exactly.
    let mut c = handshake(&url, &[]).await.unwrap();
    c.send(json!({"id": 7, "cmd": "auth", "params": {"token": PRIVATE}}))
        .await;
    c.replies_until(1).await;
    assert_eq!(
        c.replies[0],
        json!({"id": 7, "type": "ok", "msg": {"authenticated": true}})
    );
    assert!(subscribed(&subscribe_fill(&mut c, 8).await));

    // A public token may not read the account's fills: error 9.
    let mut c = handshake(&url, &[("authorization", &format!("Bearer {PUBLIC}"))])
        .await
        .unwrap();
    assert_eq!(
        subscribe_fill(&mut c, 3).await,
        json!({"id": 3, "type": "error", "msg": {"code": 9, "msg": "Authentication required"}})
    );

    // Bad tokens in the handshake: 401, no upgrade.
    for (suffix, headers) in [
        ("", vec![("authorization", "Bearer nope".to_owned())]),
        ("?token=nope", vec![]),
        ("", vec![("cookie", "relay_token=nope".to_owned())]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            handshake(&format!("{url}{suffix}"), &headers).await.err(),
            Some(401)
        );
    }
    // A bad first-message token, a first message that is not auth, and silence: 4001.
    let mut c = handshake(&url, &[]).await.unwrap();
    c.send(json!({"id": 1, "cmd": "auth", "params": {"token": "nope"}}))
        .await;
    assert_eq!(c.ended().await, Ended::Close(4001, "unauthorized".into()));
    let mut c = handshake(&url, &[]).await.unwrap();
    c.send(subscribe(1, &["ticker"], &sim.markets())).await;
    assert_eq!(c.ended().await, Ended::Close(4001, "unauthorized".into()));
    let mut c = handshake(&url, &[]).await.unwrap();
    assert_eq!(
        c.ended().await,
        Ended::Close(4001, "unauthorized: no auth within the timeout".into())
    );

    // Origins: on the list (wildcard) upgrades, anything else is 403 before any upgrade.
    let bearer = format!("Bearer {PRIVATE}");
    let ok = handshake(
        &url,
        &[
            ("authorization", &bearer),
            ("origin", "https://app.example.com"),
        ],
    )
    .await;
    assert!(ok.is_ok());
    for origin in [
        "https://evil.com",
        "https://example.com.evil.com",
        "http://app.example.com",
    ] {
        let refused = handshake(&url, &[("authorization", &bearer), ("origin", origin)]).await;
        assert_eq!(refused.err(), Some(403), "{origin}");
    }
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_their_documented_codes() {
    let (sim, relay) = sim_and_rate_limited_relay().await;
    let url = relay.ws_url();

    // Malformed JSON: the reference's error reply, and the connection stays.
    let mut c = Client::connect(&url).await;
    c.send_text("{\"id\":1,").await;
    c.replies_until(1).await;
    assert_eq!(
        c.replies[0],
        json!({"type": "error", "msg": {"code": 1, "msg": "Unable to process message"}})
    );
    c.send(json!({"id": 2, "cmd": "ping"})).await;
    c.replies_until(2).await;
    assert_eq!(c.replies[1], json!({"id": 2, "type": "pong"}));

    // A binary frame that is not a JSON command: the same error reply as a text frame, connection stays.
    c.ws.send(WsMessage::binary(vec![1u8, 2, 3])).await.unwrap();
    c.replies_until(3).await;
    assert_eq!(c.replies[2]["msg"]["code"], 1);

    // A flood: error 27 past the burst, then a reconnectable 1013 close naming the cause.
    assert_a_flood_is_rate_limited(&url, false).await;

    // Over 64 KiB: 1009.
    let mut big = Client::connect(&url).await;
    big.send_text(&format!(
        "{{\"id\":1,\"cmd\":\"{}\"}}",
        "x".repeat(70 * 1024)
    ))
    .await;
    assert_eq!(
        big.ended().await,
        Ended::Close(1009, "message too big".into())
    );

    // Invalid UTF-8 in a text frame: 1007.
    let mut bad = Client::connect(&url).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    bad.ws.send(WsMessage::Frame(frame)).await.unwrap();
    assert_eq!(
        bad.ended().await,
        Ended::Close(1007, "invalid UTF-8".into())
    );

    // The first client was never disturbed.
    c.send(json!({"id": 3, "cmd": "ping"})).await;
    c.replies_until(4).await;
    assert_eq!(c.replies[3], json!({"id": 3, "type": "pong"}));
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_and_rate_answer_503_with_retry_after() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 10.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.security.max_connections_per_ip = std::num::NonZeroUsize::new(3).unwrap()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(&relay.ws_url()).await);
    }
    let (status, head) = raw_upgrade(relay.addr).await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "the per-IP cap says when to retry: {head}"
    );
    held.pop();
    // The slot comes back once the relay has seen the close.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while handshake(&relay.ws_url(), &[]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;

    let relay = relay_with(&sim, |c| {
        c.security.new_connection_burst = 2.0;
        c.security.new_connections_per_second = 0.01;
    })
    .await;
    let _a = Client::connect(&relay.ws_url()).await;
    let _b = Client::connect(&relay.ws_url()).await;
    let (status, headers) = raw_upgrade(relay.addr).await;
    assert_eq!(status, 503);
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: "),
        "{headers}"
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

async fn relay_with(
    sim: &exchange_sim::Sim,
    tweak: impl FnOnce(&mut RelayConfig),
) -> relay::RelayHandle {
    relay(sim, tweak).await
}

/// A hand-written upgrade request: (status, response head).
async fn raw_upgrade(addr: std::net::SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = "GET /trade-api/ws/v2 HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\n\
               Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    (
        head.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head,
    )
}

/// Random bytes and random JSON as commands: the relay answers, stays up, and a normal client on
/// the same relay keeps receiving every message with exact books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_strings_and_json_values_leave_the_relay_and_others_unharmed() {
    let sim = sim(SimConfig {
        markets: 3,
        rate: 200.0,
        seed: 4,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.security.commands_per_second = 1_000_000.0;
        c.security.command_burst = 1_000_000.0;
    })
    .await;
    let m = sim.markets();
    let mut normal = Client::connect(&relay.ws_url()).await;
    normal
        .send(subscribe(1, &["orderbook_delta", "ticker"], &m))
        .await;
    normal
        .until("snapshots", |c| c.books.len() == m.len())
        .await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut hostile = Client::connect(&relay.ws_url()).await;
    for i in 0..20_000u32 {
        let frame = if i % 2 == 0 {
            let bytes: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            random_json(&mut rng, 3).to_string()
        };
        hostile.ws.feed(WsMessage::text(frame)).await.unwrap();
        if i % 500 == 0 {
            hostile.ws.flush().await.unwrap();
            // Keep both clients draining so neither is a slow consumer.
            while normal.step(Duration::from_millis(1)).await.is_some() {}
            while hostile.step(Duration::from_millis(1)).await.is_some() {}
        }
    }
    hostile
        .send(json!({"id": 999_999_999u64, "cmd": "ping"}))
        .await;
    hostile
        .until("the final pong", |c| {
            c.replies
                .iter()
                .any(|r| r["type"] == "pong" && r["id"] == 999_999_999u64)
        })
        .await;
    assert_eq!(
        hostile.ended, None,
        "random commands get replies, not a close"
    );
    let (status, _) = http_get(relay.addr, "/healthz").await;
    assert_eq!(status, 200);

    // Once the hostile client is gone, the relay's state is back to what the normal client
    // alone needs: one client, its topics only, and upstream subscriptions for its markets only.
    drop(hostile);
    let topics_of_normal = 2 * m.len();
    let expected: std::collections::BTreeSet<String> = m.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, body) = http_get(relay.addr, "/status").await;
        let status: Value = serde_json::from_str(&body).unwrap();
        let upstream_markets: std::collections::BTreeSet<String> = sim
            .stats()
            .per_connection
            .iter()
            .flat_map(|c| c.sids.iter())
            .flat_map(|s| s.markets.clone().unwrap_or_default())
            .collect();
        if status["clients"] == 1
            && status["topics"] == topics_of_normal
            && upstream_markets == expected
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state never returned to baseline: {status} upstream {upstream_markets:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sim.pause();
    normal.converge(&sim, &m).await;
    assert_eq!(normal.ended, None);
    relay.shutdown().await;
    sim.shutdown().await;
}

fn random_json(rng: &mut impl Rng, depth: u32) -> Value {
    let keys = [
        "id",
        "cmd",
        "params",
        "channels",
        "sids",
        "sid",
        "market_ticker",
        "market_tickers",
        "action",
        "token",
        "x",
    ];
    let cmds = [
        "subscribe",
        "unsubscribe",
        "update_subscription",
        "list_subscriptions",
        "ping",
        "auth",
        "nope",
    ];
    match rng.gen_range(0..if depth == 0 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen_range(-5i64..100)),
        3 => json!(cmds[rng.gen_range(0..cmds.len())]),
        4 => json!(["orderbook_delta", "ticker", "fill", "bogus"][rng.gen_range(0..4)]),
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut obj = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..5) {
                obj.insert(
                    keys[rng.gen_range(0..keys.len())].into(),
                    random_json(rng, depth - 1),
                );
            }
            Value::Object(obj)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_connect_with_the_generated_ca_and_a_reload_keeps_them() {
    let dir = std::env::temp_dir().join(format!("relay-tls-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, ca_pem) = make_ca();
    write_leaf(&dir, &ca);
    let sim = sim(SimConfig {
        markets: 2,
        rate: 50.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.security.tls = Some(relay::security::TlsConfig {
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
        });
    })
    .await;
    let url = relay.ws_url();
    assert!(url.starts_with("wss://"));

    let mut first = wss_client(&url, &ca_pem).await;
    first
        .send(subscribe(1, &["orderbook_delta"], &sim.markets()))
        .await;
    first
        .until("snapshots over TLS", |c| c.books.len() == 2)
        .await;

    // A new certificate from the same CA: existing connections stay, new ones use it.
    write_leaf(&dir, &ca);
    relay.reload_tls().unwrap();
    let mut second = wss_client(&url, &ca_pem).await;
    second.send(json!({"id": 1, "cmd": "ping"})).await;
    second.replies_until(1).await;
    first.send(json!({"id": 2, "cmd": "ping"})).await;
    first
        .until("pong on the old connection", |c| {
            c.replies.iter().any(|r| r["id"] == 2)
        })
        .await;

    // A broken file is refused and the old pair stays in use.
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    assert!(relay.reload_tls().is_err());
    let _third = wss_client(&url, &ca_pem).await;
    relay.shutdown().await;
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_upstream_gives_up_clients_are_told_and_readyz_says_so() {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 50.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.upstream.max_consecutive_failures = std::num::NonZeroU32::new(2).unwrap();
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.05);
        c.upstream.backoff_cap_seconds = settings::Seconds::from_secs_f64(0.2);
    })
    .await;
    await_ready(relay.addr, 200).await;
    let mut plain = Client::connect(&relay.ws_url()).await;
    let mut watcher = Client::connect(&format!("{}?relay_events=1", relay.ws_url())).await;
    watcher
        .until("the first status", |c| {
            c.other.iter().any(|f| f["type"] == "relay_status")
        })
        .await;

    sim.fault(Fault::RejectAuth { count: 1000 });
    sim.fault(Fault::Drop);
    assert_eq!(
        plain.ended().await,
        Ended::Close(1013, "upstream unavailable, reconnect later".into())
    );
    watcher
        .until("gave_up", |c| {
            c.other.iter().any(|f| f["msg"]["upstream"] == "gave_up")
        })
        .await;
    let (status, body) = http_get(relay.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("gave up"), "{body}");
    assert_eq!(
        watcher.ended, None,
        "clients that asked for events stay and are told"
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

#[test]
fn the_relay_refuses_to_start_exposed_without_tokens() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--upstream-url",
            "ws://127.0.0.1:9/trade-api/ws/v2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a loopback address and no client tokens"),
        "{stderr}"
    );
}

/// A certificate and key that do not belong together stop the relay at configuration time: exit
/// 64, one line naming the key, and nothing started (no ready line).
#[test]
fn a_bad_tls_pair_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(format!("relay-badtls-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, _) = make_ca();
    write_leaf(&dir, &ca);
    // A second leaf's key, written over: a valid key that fits no certificate here.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    write_leaf(&other, &ca);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = |key: &std::path::Path| {
        let config = dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\n[security.tls]\ncert_path = {:?}\nkey_path = {:?}\n",
                dir.join("cert.pem"),
                key
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["--config", config.to_str().unwrap()])
            .args(["--upstream-url", "ws://127.0.0.1:9/trade-api/ws/v2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A relay that accepted the pair would run until stopped.
        let deadline = std::time::Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("the relay started with {key:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    for (key, reason) in [
        (other.join("key.pem"), "does not fit the certificate"),
        (dir.join("missing.pem"), "cannot read"),
        (dir.join("cert.pem"), "no PEM private key"),
    ] {
        let out = run(&key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("security.tls"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains(&format!("security.tls.key_path = {key:?}"))
                && lines[0].contains(reason),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing started");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
