//! One simulated client: connect, subscribe, then read as its [`Class`] says, until cancelled.
//!
//! A client is one task holding one WebSocket. Per frame it does one wall-clock read, two short
//! byte searches (the stamp near the end of the body, the message type near the start) and one
//! record into its stats shard: no JSON parsing, no allocation beyond tungstenite's own.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::stats::{wall_ns, Class, Stats};

/// A TCP connect plus WebSocket handshake that takes longer is an error (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before a client retries after a failed connect or an unexpected close.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long a cancelled client waits for its close handshake before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// What every client of a load shares: where to connect and what to send.
#[derive(Debug)]
pub struct Plan {
    pub url: String,
    pub target: SocketAddr,
    /// Client `i` sends the `i mod len`-th (see [`crate::LoadConfig::subscribe`]).
    pub subscribe: Vec<String>,
    pub read_buffer_bytes: usize,
    pub slow_rate: f64,
    pub reconnect_secs: (f64, f64),
    /// Snapshots a client must see after an upstream fault to count as recovered.
    pub expected_snapshots: u32,
}

/// One client's identity within its load.
pub struct Client {
    pub index: usize,
    pub class: Class,
    pub source: Option<IpAddr>,
    pub plan: Arc<Plan>,
    pub stats: Arc<Stats>,
    pub cancel: CancellationToken,
}

type Ws = WebSocketStream<TcpStream>;

/// How a session ended.
enum End {
    Cancelled,
    /// Planned reconnect of a reconnecting client.
    Reconnect,
    /// Closed or failed: retry after a pause.
    Lost,
}

impl Client {
    /// Runs until the load is cancelled, reconnecting after every lost session.
    pub async fn run(self) {
        let first_start = Instant::now();
        let mut first_data_seen = false;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let ws = tokio::select! {
                _ = self.cancel.cancelled() => return,
                ws = self.connect() => ws,
            };
            let end = match ws {
                Some(ws) => {
                    self.stats.open.fetch_add(1, Ordering::Relaxed);
                    let end = self.session(ws, first_start, &mut first_data_seen).await;
                    self.stats.open.fetch_sub(1, Ordering::Relaxed);
                    end
                }
                None => End::Lost,
            };
            match end {
                End::Cancelled => return,
                End::Reconnect => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                End::Lost => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Option<Ws> {
        let started = Instant::now();
        let attempt = async {
            let socket = TcpSocket::new_v4()?;
            if let Some(ip) = self.source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(self.plan.target).await?;
            stream.set_nodelay(true)?;
            let config = WebSocketConfig::default()
                .read_buffer_size(self.plan.read_buffer_bytes)
                .write_buffer_size(0);
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                self.plan.url.as_str(),
                stream,
                Some(config),
            )
            .await
            .map_err(ConnectError::Ws)?;
            Ok::<_, ConnectError>(ws)
        };
        match timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(ws)) => {
                self.stats.connected(started.elapsed().as_micros() as u64);
                Some(ws)
            }
            Ok(Err(e)) => {
                self.stats.error(&e.kind());
                None
            }
            Err(_) => {
                self.stats.error("connect_timeout");
                None
            }
        }
    }

    async fn session(&self, mut ws: Ws, first_start: Instant, first_data_seen: &mut bool) -> End {
        let commands = &self.plan.subscribe;
        if let Some(cmd) = commands.get(self.index % commands.len().max(1)) {
            if let Err(e) = ws.send(Message::text(cmd.as_str())).await {
                self.stats.error(&ws_error_kind(&e));
                return End::Lost;
            }
        }
        if self.class == Class::Stalled {
            // Never read again: the server sees a full socket and applies its slow-client policy.
            self.cancel.cancelled().await;
            return End::Cancelled;
        }
        let reconnect_at = (self.class == Class::Reconnecting).then(|| {
            let (lo, hi) = self.plan.reconnect_secs;
            let secs = rand::thread_rng().gen_range(lo..=hi.max(lo));
            tokio::time::Instant::now() + Duration::from_secs_f64(secs)
        });
        let period = (self.class == Class::Slow && self.plan.slow_rate > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.plan.slow_rate));
        let mut next_read = tokio::time::Instant::now();
        // Snapshots seen since the last fault epoch this client noticed.
        let mut fault_epoch = 0u64;
        let mut fault_snapshots = 0u32;
        loop {
            if let Some(period) = period {
                tokio::select! {
                    _ = self.cancel.cancelled() => return close(ws).await,
                    _ = sleep_until(next_read) => {}
                }
                next_read = (next_read + period).max(tokio::time::Instant::now() - period);
            }
            let item = tokio::select! {
                _ = self.cancel.cancelled() => return close(ws).await,
                _ = sleep_until(reconnect_at.unwrap_or_else(far_future)) => {
                    let _ = timeout(CLOSE_GRACE, ws.close(None)).await;
                    return End::Reconnect;
                }
                item = ws.next() => item,
            };
            match item {
                Some(Ok(Message::Text(text))) => {
                    let body = text.as_bytes();
                    let now = wall_ns();
                    let snapshot = is_snapshot(body);
                    let latency = if snapshot {
                        None
                    } else {
                        find_stamp(body).map(|ts| now.saturating_sub(ts))
                    };
                    self.stats
                        .frame(self.class, self.index, body.len(), latency, snapshot);
                    if !*first_data_seen && (latency.is_some() || snapshot) {
                        *first_data_seen = true;
                        self.stats
                            .first_data(first_start.elapsed().as_micros() as u64, now);
                    }
                    if snapshot {
                        self.fault_snapshot(now, &mut fault_epoch, &mut fault_snapshots);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let kind = frame
                        .map_or_else(|| "no_code".to_owned(), |f| u16::from(f.code).to_string());
                    self.stats.close(&kind);
                    return End::Lost;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    self.stats.error(&ws_error_kind(&e));
                    return End::Lost;
                }
                None => {
                    self.stats.close("eof");
                    return End::Lost;
                }
            }
        }
    }

    /// Counts snapshots after an upstream fault; the `expected_snapshots`-th one is recovery.
    fn fault_snapshot(&self, now: u64, epoch: &mut u64, seen: &mut u32) {
        let current = self.stats.fault_epoch_ns.load(Ordering::Relaxed);
        if current == 0 || now < current {
            return;
        }
        if *epoch != current {
            *epoch = current;
            *seen = 0;
        }
        *seen += 1;
        if *seen == self.plan.expected_snapshots {
            self.stats.recovered((now - current) / 1000);
        }
    }
}

async fn close(mut ws: Ws) -> End {
    let _ = timeout(CLOSE_GRACE, ws.close(None)).await;
    End::Cancelled
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

enum ConnectError {
    Io(std::io::Error),
    Ws(tungstenite::Error),
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        ConnectError::Io(e)
    }
}

impl ConnectError {
    fn kind(&self) -> String {
        match self {
            ConnectError::Io(e) => format!("connect_{}", io_kind(e)),
            ConnectError::Ws(e) => format!("handshake_{}", ws_error_kind(e)),
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind()).to_lowercase()
}

/// A small fixed vocabulary for errors, so reports stay readable.
pub fn ws_error_kind(e: &tungstenite::Error) -> String {
    use tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => "closed".into(),
        E::Io(e) => io_kind(e),
        E::Http(resp) => format!("http_{}", resp.status().as_u16()),
        E::Protocol(_) => "protocol".into(),
        E::Capacity(_) => "capacity".into(),
        E::Utf8(_) => "utf8".into(),
        E::WriteBufferFull(_) => "write_buffer_full".into(),
        _ => "other".into(),
    }
}

const STAMP_KEY: &[u8] = b"\"sim_ts_ns\":";

/// The simulator's send time in a frame, found by a byte search from the end (the simulator adds
/// the stamp last in the body, so this usually looks at a few dozen bytes).
pub fn find_stamp(frame: &[u8]) -> Option<u64> {
    let at = rfind(frame, STAMP_KEY)? + STAMP_KEY.len();
    let digits = frame[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// Whether the frame is an `orderbook_snapshot`, looking only before the body (`"msg"`).
pub fn is_snapshot(frame: &[u8]) -> bool {
    const TYPE: &[u8] = b"\"orderbook_snapshot\"";
    let head = match find(frame, b"\"msg\"") {
        Some(end) => &frame[..end],
        None => frame,
    };
    find(head, TYPE).is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stamp() {
        let f = br#"{"type":"trade","sid":1,"msg":{"market_ticker":"A","sim_ts_ns":1712345678901234567}}"#;
        assert_eq!(find_stamp(f), Some(1_712_345_678_901_234_567));
        assert_eq!(find_stamp(br#"{"sim_ts_ns": 42}"#), Some(42));
        assert_eq!(find_stamp(br#"{"type":"trade","msg":{}}"#), None);
        assert_eq!(find_stamp(br#"{"sim_ts_ns":"x"}"#), None);
    }

    #[test]
    fn recognises_snapshots_by_type_only() {
        assert!(is_snapshot(
            br#"{"type":"orderbook_snapshot","sid":2,"seq":1,"msg":{"market_ticker":"M"}}"#
        ));
        assert!(is_snapshot(
            br#"{"sid":2,"type":"orderbook_snapshot","msg":{}}"#
        ));
        assert!(!is_snapshot(
            br#"{"type":"orderbook_delta","msg":{"note":"orderbook_snapshot"}}"#
        ));
    }
}
