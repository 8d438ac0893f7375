//! Helpers for the integration tests: start a simulator on 127.0.0.1:0, connect a
//! tokio-tungstenite client (optionally signed), read frames with timeouts, call the admin API.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use exchange_sim::{SimAuth, SimConfig, Stats};
use futures_util::{SinkExt, StreamExt};
use protocol::{Envelope, Signer, Verifier};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected thing may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// One RSA key pair per test binary (generation is slow), as (private PEM, public PEM).
pub fn keys() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| protocol::sign::generate_key_pair(2048))
}

pub fn signer() -> Signer {
    Signer::from_pem("test-key", &keys().0).unwrap()
}

/// A config that verifies signatures made by [`signer`].
pub fn signed_config() -> SimConfig {
    let mut verifier = Verifier::new(0);
    verifier.add_public_pem(&keys().1).unwrap();
    SimConfig {
        auth: SimAuth::Verifier(verifier),
        ..SimConfig::default()
    }
}

pub async fn start(config: SimConfig) -> exchange_sim::Sim {
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    exchange_sim::start(config, ws, admin).await.unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to `url` with extra headers; the error carries the HTTP refusal, if any.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, WsError> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")?;
    Ok(Client { ws })
}

/// Connects signed by [`signer`] (the simulator accepts it whatever its auth mode).
pub async fn connect(sim: &exchange_sim::Sim) -> Client {
    let headers = signer().sign_now(protocol::sign::WS_PATH);
    let pairs: Vec<(&str, &str)> = headers.pairs().to_vec();
    connect_with(&sim.ws_url(), &pairs).await.expect("connect")
}

/// The HTTP status of a refused handshake.
pub fn refused_status(result: Result<Client, WsError>) -> u16 {
    match result {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn send(&mut self, frame: &str) {
        self.ws.send(Message::Text(frame.into())).await.unwrap();
    }

    /// The next frame of any kind, `None` on timeout; `Some(Err)` when the stream failed.
    pub async fn frame(&mut self, timeout: Duration) -> Option<Result<Message, WsError>> {
        match tokio::time::timeout(timeout, self.ws.next()).await {
            Ok(Some(r)) => Some(r),
            Ok(None) => Some(Err(WsError::ConnectionClosed)),
            Err(_) => None,
        }
    }

    /// The next text frame (skipping pings and pongs), parsed; panics after [`WAIT`].
    pub async fn text(&mut self) -> (Envelope, Value) {
        self.text_within(WAIT).await.expect("no text frame in time")
    }

    /// The next text frame within `timeout`, or `None`.
    pub async fn text_within(&mut self, timeout: Duration) -> Option<(Envelope, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame(left).await? {
                Ok(Message::Text(t)) => {
                    let env = Envelope::parse(t.as_bytes()).unwrap();
                    let value: Value = serde_json::from_str(t.as_str()).unwrap();
                    return Some((env, value));
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => panic!("stream failed: {e}"),
            }
        }
    }

    /// Sends a command and returns the next reply that is not a data message.
    pub async fn command(&mut self, frame: &str) -> Value {
        self.send(frame).await;
        self.reply().await
    }

    /// The next `subscribed` / `unsubscribed` / `ok` / `error` frame, skipping data.
    pub async fn reply(&mut self) -> Value {
        loop {
            let (env, value) = self.text().await;
            if matches!(
                env.kind.as_str(),
                "subscribed" | "unsubscribed" | "ok" | "error"
            ) {
                return value;
            }
        }
    }
}

/// The error code of an `error` reply.
pub fn code(reply: &Value) -> u64 {
    assert_eq!(reply["type"], "error", "not an error: {reply}");
    reply["msg"]["code"].as_u64().unwrap()
}

/// One HTTP/1.1 request to the admin API; returns (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    http_within(addr, method, path, body, WAIT).await
}

/// [`http`] with its own deadline, for requests whose answer takes long by design (a burst).
pub async fn http_within(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    wait: Duration,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(wait, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn stats(sim: &exchange_sim::Sim) -> Stats {
    let (status, body) = http(sim.admin_addr(), "GET", "/admin/stats", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub async fn fault(sim: &exchange_sim::Sim, kind: &str, body: &str) {
    let (status, resp) = http(
        sim.admin_addr(),
        "POST",
        &format!("/admin/fault/{kind}"),
        body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
}

/// Polls `check` on the stats until it holds, failing after [`WAIT`].
pub async fn wait_stats(
    sim: &exchange_sim::Sim,
    what: &str,
    check: impl Fn(&Stats) -> bool,
) -> Stats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = stats(sim).await;
        if check(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
