//! Shared pieces of the end-to-end tests: a simulator and a relay in-process on random ports, and
//! a client that speaks only the exchange protocol and rebuilds its books from what it receives.
#![allow(dead_code)]

pub mod bot;
pub mod schema;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use exchange_sim::{Sim, SimConfig};
use futures_util::{SinkExt, StreamExt};
use protocol::{Envelope, Message, OrderBook, OrderbookSnapshot};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub async fn sim(config: SimConfig) -> Sim {
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    exchange_sim::start(config, ws, admin).await.unwrap()
}

/// A relay on a random port, in front of `sim`, with `tweak` applied to its configuration.
pub async fn relay(
    sim: &Sim,
    tweak: impl FnOnce(&mut relay::config::RelayConfig),
) -> relay::RelayHandle {
    let mut config = relay::config::RelayConfig::with_upstream(&sim.ws_url());
    config.fanout.linger_seconds = settings::SecondsOrZero::from_secs(0);
    config.upstream.rest.base_url = Some(sim.rest_url());
    tweak(&mut config);
    config.validate().expect("a valid test configuration");
    let listeners = relay::Listeners::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    relay::spawn(config, listeners).await.unwrap()
}

/// What `relay::session::run` needs for an anonymous client with private access, for a session
/// the test drives over its own stream.
pub fn session_options(app: &relay::App) -> relay::session::SessionOptions {
    relay::session::SessionOptions {
        relay_events: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        limits: app.config.downstream.limits(),
        identity: relay::security::Identity::Anonymous(relay::security::Permission::Private),
        admission: app.gate.admit("127.0.0.9".parse().unwrap()).ok().unwrap(),
    }
}

/// The simulator and relay of the command-limit tests: 2 markets, and at most 5 commands a second
/// per client (burst 5), closed after 20 refused.
pub async fn sim_and_rate_limited_relay() -> (Sim, relay::RelayHandle) {
    let sim = sim(SimConfig {
        markets: 2,
        rate: 50.0,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |c| {
        c.security.commands_per_second = 5.0;
        c.security.command_burst = 5.0;
        c.security.refused_commands_before_close = 20;
    })
    .await;
    (sim, relay)
}

/// Floods a relay of [`sim_and_rate_limited_relay`] with 40 commands (in binary frames if
/// `binary`): the burst is served, the excess gets error 27, then a reconnectable 1013 close
/// names the cause.
pub async fn assert_a_flood_is_rate_limited(url: &str, binary: bool) {
    let mut flood = Client::connect(url).await;
    for i in 0..40 {
        let frame = serde_json::json!({"id": 100 + i, "cmd": "list_subscriptions"}).to_string();
        let frame = if binary {
            WsMessage::binary(frame.into_bytes())
        } else {
            WsMessage::text(frame)
        };
        flood.ws.send(frame).await.unwrap();
    }
    assert_eq!(
        flood.ended().await,
        Ended::Close(1013, "rate limited: too many commands".into())
    );
    let codes: Vec<i64> = flood
        .replies
        .iter()
        .map(|r| r["msg"]["code"].as_i64().unwrap_or(0))
        .collect();
    assert!(
        codes.iter().take(5).all(|c| *c == 0),
        "the burst is served: {codes:?}"
    );
    assert!(
        codes.contains(&27),
        "excess commands get error 27: {codes:?}"
    );
}

/// Every fill the simulated account received, oldest first, as its WebSocket `msg`
/// (`/admin/fills`: the truth backfill and resume are checked against). Panics if the
/// simulator's ledger dropped any.
#[allow(dead_code)]
pub async fn admin_fills(sim: &Sim) -> Vec<Value> {
    let (status, body) = http_get(sim.admin_addr(), "/admin/fills").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["evicted"], 0, "the ledger kept every fill");
    v["fills"].as_array().unwrap().clone()
}

/// The trade ids of [`admin_fills`], oldest first.
#[allow(dead_code)]
pub async fn admin_trade_ids(sim: &Sim) -> Vec<String> {
    admin_fills(sim)
        .await
        .iter()
        .map(|f| f["trade_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A plain HTTP GET on the relay's listener: (status, body). Panics after `DEADLINE`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} unanswered after {DEADLINE:?}"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `/readyz` until it answers `want`, or panics at the deadline.
pub async fn await_ready(addr: std::net::SocketAddr, want: u16) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = http_get(addr, "/readyz").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} ({body}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series (name and labels) in a Prometheus text scrape (0 when absent).
pub fn series(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Backfills that ended well. Like every counter, one for the whole process: every in-process
/// relay of a test binary adds to it.
pub const BACKFILLS_OK: &str = r#"relay_upstream_backfills_total{outcome="ok"}"#;

/// Polls the relay's `/metrics` until `name` (with labels) exceeds `above`; returns the page.
pub async fn metric_above(addr: std::net::SocketAddr, name: &str, above: f64) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = http_get(addr, "/metrics").await.1;
        if series(&page, name) > above {
            return page;
        }
        assert!(Instant::now() < deadline, "{name} never rose above {above}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `/status` until `pred` holds of its document, or panics at the deadline.
pub async fn await_status(addr: std::net::SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, body) = http_get(addr, "/status").await;
        let status: Value = serde_json::from_str(&body).unwrap_or_default();
        if pred(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/status never showed {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The simulator's true book of `market`.
pub fn truth(sim: &Sim, market: &str) -> OrderBook {
    let snap: OrderbookSnapshot = sim.book(market).expect("a known market");
    let mut book = OrderBook::new(market);
    book.apply_snapshot(&snap).unwrap();
    book
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Close(u16, String),
    /// The stream ended without a close frame.
    Abrupt,
}

/// A client of the exchange protocol only: it records replies, checks seq per sid, and rebuilds
/// every book from snapshots and deltas.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames with an `id` (replies), in arrival order.
    pub replies: Vec<Value>,
    pub books: BTreeMap<String, OrderBook>,
    /// Last seq per sid.
    pub seqs: HashMap<u64, u64>,
    /// Live sids and their channels, as the `subscribed` replies announced them: data comes only
    /// on these, each on its own channel's sid, for the connection's whole life.
    pub sids: HashMap<u64, String>,
    /// Data messages by type.
    pub counts: BTreeMap<String, u64>,
    /// Frames with a type this client does not apply (relay events and the like).
    pub other: Vec<Value>,
    pub snapshots: u64,
    pub ended: Option<Ended>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connected within the deadline")
            .expect("connect");
        Client::from_ws(ws)
    }

    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            replies: Vec::new(),
            books: BTreeMap::new(),
            seqs: HashMap::new(),
            sids: HashMap::new(),
            counts: BTreeMap::new(),
            other: Vec::new(),
            snapshots: 0,
            ended: None,
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends one text frame; panics if the relay has not taken it within `DEADLINE`.
    pub async fn send_text(&mut self, frame: &str) {
        timeout(DEADLINE, self.ws.send(WsMessage::text(frame.to_owned())))
            .await
            .expect("the frame sent within the deadline")
            .unwrap();
    }

    /// Reads one frame (or `None` on timeout or end) and applies it.
    pub async fn step(&mut self, wait: Duration) -> Option<Value> {
        if self.ended.is_some() {
            return None;
        }
        let frame = match timeout(wait, self.ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => {
                self.ended.get_or_insert(Ended::Abrupt);
                return None;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            WsMessage::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("frames are JSON");
                self.apply(text.as_bytes(), &value);
                Some(value)
            }
            WsMessage::Close(close) => {
                self.ended = Some(match close {
                    Some(c) => Ended::Close(u16::from(c.code), c.reason.to_string()),
                    None => Ended::Close(u16::from(CloseCode::Status), String::new()),
                });
                None
            }
            other => Some(Value::String(format!("{other:?}"))),
        }
    }

    fn apply(&mut self, raw: &[u8], value: &Value) {
        match value["type"].as_str() {
            Some("subscribed") => {
                let sid = value["msg"]["sid"]
                    .as_u64()
                    .expect("subscribed names its sid");
                let channel = value["msg"]["channel"].as_str().expect("and its channel");
                let before = self.sids.insert(sid, channel.to_owned());
                assert!(before.is_none(), "sid {sid} announced twice: {value}");
            }
            Some("unsubscribed") => {
                let sid = value["sid"].as_u64().expect("unsubscribed names its sid");
                assert!(
                    self.sids.remove(&sid).is_some(),
                    "unknown sid unsubscribed: {value}"
                );
            }
            _ => {}
        }
        if value.get("id").is_some() || value["type"] == "error" {
            self.replies.push(value.clone());
            return;
        }
        let env = Envelope::parse(raw).expect("an envelope");
        if let (Some(sid), Some(channel)) = (env.sid, channel_of(&env.kind)) {
            assert_eq!(
                self.sids.get(&sid).map(String::as_str),
                Some(channel),
                "a {} on sid {sid}, which no subscribed reply gave to {channel} (live: {:?})",
                env.kind,
                self.sids
            );
        }
        if let (Some(sid), Some(seq)) = (env.sid, env.seq) {
            match self.seqs.insert(sid, seq) {
                Some(last) => assert_eq!(
                    seq,
                    last + 1,
                    "seq on sid {sid} must be contiguous: {value}"
                ),
                None => assert_eq!(seq, 1, "sid {sid} must start at seq 1: {value}"),
            }
        }
        *self.counts.entry(env.kind.clone()).or_default() += 1;
        match Message::decode(&env) {
            Ok(Message::OrderbookSnapshot(snap)) => {
                self.snapshots += 1;
                let book = self
                    .books
                    .entry(snap.market_ticker.clone())
                    .or_insert_with(|| OrderBook::new(snap.market_ticker.clone()));
                book.apply_snapshot(&snap).unwrap();
            }
            Ok(Message::OrderbookDelta(delta)) => {
                let book = self.books.get_mut(&delta.market_ticker).unwrap_or_else(|| {
                    panic!("a delta before any snapshot of {}", delta.market_ticker)
                });
                book.apply_delta(&delta)
                    .unwrap_or_else(|e| panic!("delta does not apply: {e}"));
            }
            Ok(Message::Other(_)) => self.other.push(value.clone()),
            _ => {}
        }
    }

    /// Reads until `pred` holds, or panics at the deadline.
    pub async fn until(&mut self, what: &str, mut pred: impl FnMut(&Client) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !pred(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            assert!(
                self.ended.is_none(),
                "connection ended ({:?}) while waiting for {what}",
                self.ended
            );
            self.step(Duration::from_millis(100)).await;
        }
    }

    /// Reads until this client has `n` replies.
    pub async fn replies_until(&mut self, n: usize) {
        self.until(&format!("{n} replies"), |c| c.replies.len() >= n)
            .await;
    }

    /// Reads until every book in `markets` equals the simulator's truth (the simulator paused).
    pub async fn converge(&mut self, sim: &Sim, markets: &[String]) {
        let truths: Vec<OrderBook> = markets.iter().map(|m| truth(sim, m)).collect();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let wrong: Vec<&String> = markets
                .iter()
                .zip(&truths)
                .filter(|(m, t)| self.books.get(*m) != Some(*t))
                .map(|(m, _)| m)
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "books never matched the truth: {wrong:?} (ended: {:?})",
                self.ended
            );
            self.step(Duration::from_millis(100)).await;
        }
    }

    /// Reads until the connection ends; returns how.
    pub async fn ended(&mut self) -> Ended {
        let deadline = Instant::now() + DEADLINE;
        while self.ended.is_none() {
            assert!(Instant::now() < deadline, "the connection never ended");
            self.step(Duration::from_millis(100)).await;
        }
        self.ended.clone().unwrap()
    }

    /// Reads until the connection ends, which must be the private-loss close (1013 `private
    /// messages lost`).
    pub async fn told_of_a_private_loss(&mut self) {
        match self.ended().await {
            Ended::Close(1013, reason) => {
                assert!(reason.starts_with("private messages lost"), "{reason}")
            }
            other => panic!("expected a private-loss close, got {other:?}"),
        }
    }
}

/// The channel a data message type belongs to (the reference's §2), for the types the relay
/// serves; `None` for relay events and anything else.
pub fn channel_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "orderbook_snapshot" | "orderbook_delta" => "orderbook_delta",
        "ticker" => "ticker",
        "trade" => "trade",
        "fill" => "fill",
        "user_order" => "user_orders",
        "market_position" => "market_positions",
        "market_lifecycle_v2" | "event_lifecycle" | "event_fee_update" => "market_lifecycle_v2",
        _ => return None,
    })
}

pub fn subscribe(id: u64, channels: &[&str], markets: &[String]) -> Value {
    serde_json::json!({"id": id, "cmd": "subscribe", "params": {"channels": channels, "market_tickers": markets}})
}

/// The relay binary as a child process, killed when dropped (a failing test leaves nothing
/// behind); every wait on it has a deadline.
pub struct RelayChild {
    pub child: std::process::Child,
    /// The `ws=` URL from its ready line.
    pub url: String,
    /// The main listener's address, from the `http=` URL of its ready line (`/metrics`, `/status`).
    pub addr: std::net::SocketAddr,
    /// Lines after the ready line, read on demand.
    lines: std::sync::mpsc::Receiver<String>,
}

impl RelayChild {
    /// Spawns the relay with `args` and waits (up to `DEADLINE`) for its `relay ready` line.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> RelayChild {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the relay binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let ready = lines
            .recv_timeout(DEADLINE)
            .expect("a ready line from the relay within the deadline");
        let field = |name: &str| {
            (ready.split_whitespace())
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in the ready line: {ready}"))
                .to_owned()
        };
        let http = field("http=");
        let addr = (http.split_once("://").map(|(_, rest)| rest))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address in http={http}"));
        RelayChild {
            child,
            url: field("ws="),
            addr,
            lines,
        }
    }

    /// The next line of its stdout, or a panic after `DEADLINE`.
    pub fn line(&mut self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("a line from the relay within the deadline")
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits up to `within` for the exit; panics (and kills it) after.
    pub async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the relay had not exited after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
