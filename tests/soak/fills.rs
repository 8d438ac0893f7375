//! Fills: how the soak knows one was lost.
//!
//! Two independent detectors, neither of which trusts the relay:
//! - **The position chain.** Every simulated fill carries `post_position_fp`, the account's
//!   position in that market after the fill, and a fill moves the position by exactly its
//!   `count_fp` (up for `yes`, down for `no`; see `Holding::buy` in exchange-sim). So within one
//!   connection, per market, each fill's position before it (`post - signed count`) must equal the
//!   previous fill's `post`. A break means fills were lost (or reordered, or duplicated) while the
//!   client was connected, including fills produced while the relay's upstream was down, which no
//!   direct observer could see either. (Lost fills whose counts cancel exactly, a `yes` and a `no`
//!   of the same size in one market, would not break the chain; the second detector covers them
//!   whenever the reference was connected.)
//! - **A direct reference subscriber.** One connection straight to the simulator, subscribed to
//!   `fill` for every market, logs each fill with the epoch (the span between two quiet points) it
//!   arrived in. At a quiet point every relayed private subscriber still connected must hold, in
//!   the same order, every reference fill of that epoch for its markets that the simulator
//!   produced (its `ts_ms`, same machine clock) more than `START_MARGIN_MS` after the subscriber
//!   received its `subscribed` reply: all of them for a connection older than the epoch. This also
//!   covers a connection's first fills, which the chain cannot.
//!
//! A loss is announced, not silent, only when the connection is then closed with a close that
//! says so (`announces_loss`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use protocol::{Envelope, Message, Side};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// A fill produced this long after a client read its `subscribed` reply must reach it (the
/// simulator stamps whole milliseconds; the relay registered the client before replying).
pub const START_MARGIN_MS: i64 = 20;

/// Wall clock in ms, as the simulator stamps `ts_ms`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One fill as the soak needs it.
#[derive(Clone, Debug)]
pub struct FillSeen {
    pub trade_id: String,
    pub market: String,
    /// Position before and after, in hundredths of a contract.
    pub pre: i64,
    pub post: i64,
    /// When the simulator produced it (its wall clock, ms).
    pub ts_ms: i64,
}

/// Decodes a `fill` frame.
pub fn decode(env: &Envelope) -> Option<FillSeen> {
    match Message::decode(env) {
        Ok(Message::Fill(f)) => {
            let count = f.count_fp?.units();
            let signed = match f.outcome_side? {
                Side::Yes => count,
                Side::No => -count,
            };
            let post = f.post_position_fp?.units();
            Some(FillSeen {
                trade_id: f.trade_id?,
                market: f.market_ticker?,
                pre: post - signed,
                post,
                ts_ms: f.ts_ms?,
            })
        }
        _ => None,
    }
}

/// One private connection's fills.
#[derive(Default)]
pub struct FillTrack {
    last_post: HashMap<String, i64>,
    /// trade_id -> index of arrival.
    pub seen: HashMap<String, usize>,
    /// Chain breaks so far: (market, expected pre, actual pre, trade_id).
    pub breaks: Vec<(String, i64, i64, String)>,
    /// Set by `apply` when the fill just applied broke the chain.
    pub just_broke: bool,
    /// Fills checked against a predecessor.
    pub links: u64,
    pub duplicates: u64,
}

impl FillTrack {
    pub fn apply(&mut self, f: FillSeen) {
        self.just_broke = false;
        if self.seen.contains_key(&f.trade_id) {
            self.duplicates += 1;
            return;
        }
        let n = self.seen.len();
        self.seen.insert(f.trade_id.clone(), n);
        if let Some(last) = self.last_post.insert(f.market.clone(), f.post) {
            self.links += 1;
            if last != f.pre {
                self.breaks.push((f.market, last, f.pre, f.trade_id));
                self.just_broke = true;
            }
        }
    }
}

/// The reference subscriber's log: (epoch, fill) in arrival order, and the local addresses it
/// used (to tell its connections from the relay's in the simulator's stats).
#[derive(Default)]
pub struct RefLog {
    pub fills: Vec<(u64, FillSeen)>,
    pub sessions: u64,
    pub local_addrs: HashSet<String>,
}

/// Runs the direct reference subscriber until `stop`, reconnecting after every fault.
pub async fn reference(
    sim_url: String,
    epoch: Arc<AtomicU64>,
    log: Arc<Mutex<RefLog>>,
    tally: Arc<crate::tally::Tally>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let addr = sim_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let connect = async {
            let tcp = TcpStream::connect(&addr).await.ok()?;
            let local = tcp.local_addr().ok()?;
            log.lock().local_addrs.insert(local.to_string());
            let (ws, _) = tokio_tungstenite::client_async(
                sim_url.as_str(),
                tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            )
            .await
            .ok()?;
            Some(ws)
        };
        let Ok(Some(mut ws)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        log.lock().sessions += 1;
        tally.log("reference: connected to the simulator");
        let sub = r#"{"id":1,"cmd":"subscribe","params":{"channels":["fill"]}}"#;
        if ws.send(WsMessage::text(sub)).await.is_err() {
            continue;
        }
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                f = ws.next() => f,
            };
            match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    let Ok(env) = Envelope::parse(text.as_bytes()) else {
                        continue;
                    };
                    if env.kind == "error" {
                        // A terminal error ended the sid: start over on a new connection.
                        break;
                    }
                    if let Some(f) = decode(&env) {
                        let e = epoch.load(Ordering::SeqCst);
                        log.lock().fills.push((e, f));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        tally.log("reference: session ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a close tells a private subscriber that it may have missed messages: a relay restart
/// (1012), or a 1013 whose reason names the loss (`private messages lost`, or a slow consumer
/// cut off, which also costs it its place in the stream).
pub fn announces_loss(code: u16, reason: &str) -> bool {
    code == 1012
        || (code == 1013
            && (reason.starts_with("private messages lost") || reason.starts_with("slow consumer")))
}
