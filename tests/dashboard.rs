//! `/dashboard`: the page and every file it references are served (on the admin listener when
//! there is one), its own origin may open the WebSocket and a foreign one may not, and the browser
//! suite (`tests/browser`: headless Chromium against this build's `relay --demo`) passes. The
//! suite installs its locked node dependencies when `node_modules` is missing or stale.

mod common;
#[path = "common/node.rs"]
mod node;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node::{install, run};

use exchange_sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole browser run (install and tests) must finish within this.
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);

/// The files the page references: `src`/`href` attributes and module imports, same-origin only.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["src=\"", "href=\"", "from \""] {
        let mut rest = text;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            let target = &rest[..end];
            if !target.starts_with("data:") {
                found.push(target.to_owned());
            }
        }
    }
    found
}

/// A raw request on `addr`: the status code and the response's head.
async fn request(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = vec![0u8; 4096];
    let n = tokio::time::timeout(common::DEADLINE, s.read(&mut raw))
        .await
        .expect("a response")
        .unwrap();
    let text = String::from_utf8_lossy(&raw[..n]).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn upgrade(host: &str, origin: &str) -> String {
    format!(
        "GET /trade-api/ws/v2 HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn the_page_and_every_file_it_references_are_served() {
    let sim = common::sim(SimConfig::default()).await;
    let relay = common::relay(&sim, |_| {}).await;
    let (status, page) = common::http_get(relay.addr, "/dashboard").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<title>kalshi-relay dashboard</title>"),
        "{page}"
    );
    let mut pending = references(&page);
    let mut served = Vec::new();
    while let Some(path) = pending.pop() {
        assert!(
            path.starts_with("/dashboard/"),
            "{path}: the page loads nothing from elsewhere"
        );
        if served.contains(&path) {
            continue;
        }
        let (status, body) = common::http_get(relay.addr, &path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path} is empty");
        if path.ends_with(".js") || path.ends_with(".css") {
            pending.extend(references(&body).into_iter().filter(|r| r.starts_with('/')));
        }
        served.push(path);
    }
    served.sort();
    assert_eq!(
        served,
        [
            "/dashboard/dashboard.css",
            "/dashboard/dashboard.js",
            "/dashboard/relay-client.js"
        ]
    );
    assert_eq!(
        common::http_get(relay.addr, "/dashboard/nope.js").await.0,
        404
    );
    // The figures the page reads.
    let (_, status) = common::http_get(relay.addr, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["websocket"]["port"], relay.addr.port());
    assert_eq!(status["websocket"]["token_required"], false);
    assert!(status["upstream"]["connects"].is_u64());
    assert!(status["throughput"]["in"].is_array());
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn with_an_admin_listener_the_page_is_there_and_not_on_the_client_port() {
    let sim = common::sim(SimConfig::default()).await;
    let mut config = relay::config::RelayConfig::with_upstream(&sim.ws_url());
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let listeners = relay::Listeners::bind("127.0.0.1:0".parse().unwrap(), config.admin_listen)
        .await
        .unwrap();
    let relay = relay::spawn(config, listeners).await.unwrap();
    let admin = relay.admin_addr.unwrap();
    assert_eq!(common::http_get(admin, "/dashboard").await.0, 200);
    assert_eq!(common::http_get(relay.addr, "/dashboard").await.0, 404);
    // The page on the admin port connects to the client port: its origin is the relay's own.
    let host = relay.addr.to_string();
    let own = format!("http://{admin}");
    assert_eq!(request(relay.addr, &upgrade(&host, &own)).await.0, 101);
    let own_localhost = format!("http://localhost:{}", admin.port());
    let localhost = format!("localhost:{}", relay.addr.port());
    assert_eq!(
        request(relay.addr, &upgrade(&localhost, &own_localhost))
            .await
            .0,
        101
    );
    // Any other page (another port of the same host, a name) is refused as before.
    let (status, _) = request(relay.addr, &upgrade(&host, "http://127.0.0.1:1")).await;
    assert_eq!(status, 403);
    let name = format!("rebound.example:{}", relay.addr.port());
    let (status, _) = request(
        relay.addr,
        &upgrade(&name, &format!("http://rebound.example:{}", admin.port())),
    )
    .await;
    assert_eq!(status, 403);
    relay.shutdown().await;
    sim.shutdown().await;
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// The page in headless Chromium: loads clean, OPEN, books equal to the simulator's, an upstream
/// drop and a relay restart shown and recovered, a token asked for; writes docs/dashboard.png.
/// Also checks that the embedded client bundle equals a fresh build of clients/js.
#[test]
fn the_dashboard_in_headless_chromium() {
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let dir = browser_dir();
    install(&dir, deadline);
    let output = run(
        &dir,
        "node",
        &[
            "--test",
            "--test-concurrency=1",
            "--test-reporter=spec",
            "bundle.test.mjs",
            "dashboard.test.mjs",
        ],
        deadline,
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
