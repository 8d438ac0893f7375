//! The well-behaved population: clients that speak the exchange protocol, rebuild their books,
//! check seq per sid on every frame, and prove their books and fills at quiet points.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{Envelope, Message, OrderBook};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::fills::{self, FillSeen, FillTrack};
use crate::front::Front;
use crate::tally::Tally;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a quiet-point check may take for one client to catch up with the paused simulator.
pub const CATCH_UP: Duration = Duration::from_secs(20);
/// A fill-chain break is announced only by a close that follows it within this long (the relay
/// closes a subscriber as soon as it knows the subscriber lost something).
pub const ANNOUNCE_WITHIN: Duration = Duration::from_secs(5);
/// Silence after which a caught-up client is taken to have every fill the relay will send.
const IDLE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads everything at once.
    Normal,
    /// Reads one frame every `ms` milliseconds.
    Slow { ms: u64 },
    /// Stops reading for a few seconds now and then, then resumes.
    Stalled,
    /// Drops its TCP connection without a close frame at random intervals, and reconnects.
    Reconnecting,
    /// Private channels (fill, user_orders, market_positions), optionally with relay events.
    Private { events: bool },
    /// Private channels and it stalls (expected to be closed when it loses fills).
    StalledPrivate,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Slow { .. } => "slow",
            Kind::Stalled => "stalled",
            Kind::Reconnecting => "reconnecting",
            Kind::Private { events: true } => "private+events",
            Kind::Private { events: false } => "private",
            Kind::StalledPrivate => "stalled-private",
        }
    }

    fn private(self) -> bool {
        matches!(self, Kind::Private { .. } | Kind::StalledPrivate)
    }

    /// Reconnects with `resume_from` (it asks for relay events, so it gets positions).
    fn resumes(self) -> bool {
        self == Kind::Private { events: true }
    }

    fn stalls(self) -> bool {
        matches!(self, Kind::Stalled | Kind::StalledPrivate)
    }

    /// Closes this kind may legitimately get from the relay.
    fn allowed_close(self, code: u16, reason: &str) -> bool {
        match (code, reason) {
            (1012, _) => true,
            (1013, r)
                if r.starts_with("slow consumer") || r.starts_with("private messages lost") =>
            {
                true
            }
            // Pong and write timeouts: only a client that stopped reading earned them.
            (1001, "pong timeout") | (1013, "write timeout") => {
                self.stalls() || matches!(self, Kind::Slow { .. })
            }
            _ => false,
        }
    }
}

/// A client's fixed part.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    /// Books (with ticker and trade) this client keeps; private kinds may have none.
    pub books: Vec<String>,
    /// Market filter for the private channels (`None`: every market).
    pub private_markets: Option<Vec<String>>,
}

/// The answer to a quiet-point check.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Whether the client was connected and subscribed through the check.
    pub checked: bool,
    pub books_checked: u64,
    pub books_wrong: Vec<String>,
    pub fills_checked: u64,
    pub fills_missing: Vec<String>,
    pub fills_out_of_order: u64,
    /// `received of expected` when the connection's `subscribed` replies never all came.
    pub replies_missing: Option<String>,
    /// Topics this connection holds on the relay, as `channel/market|*`.
    pub topics: BTreeSet<String>,
    /// The node it is connected to.
    pub node: usize,
}

pub enum Ctl {
    Check {
        truths: Arc<HashMap<String, OrderBook>>,
        /// The reference's fills of the epoch being closed.
        ref_fills: Arc<Vec<FillSeen>>,
        epoch: u64,
        reply: oneshot::Sender<CheckReport>,
    },
    /// An injected client-side fault: drop the TCP connection with no close frame.
    Disconnect,
}

/// What every client task shares.
#[derive(Clone)]
pub struct Env {
    pub front: Arc<Front>,
    pub tally: Arc<Tally>,
    /// True during a quiet point: no chaos actions, no reconnects.
    pub quiet: watch::Receiver<bool>,
    pub epoch: Arc<AtomicU64>,
    pub stop: CancellationToken,
}

/// Spawns one client; returns its control sender.
pub fn spawn(spec: Spec, env: Env, seed: u64) -> (mpsc::Sender<Ctl>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let handle = tokio::spawn(run(spec, env, seed, rx));
    (tx, handle)
}

/// Waits out a quiet point while not connected, answering its check as "not connected".
async fn wait_not_quiet(env: &mut Env, ctl: &mut mpsc::Receiver<Ctl>) {
    while *env.quiet.borrow_and_update() {
        tokio::select! {
            r = env.quiet.changed() => if r.is_err() { return },
            c = ctl.recv() => match c {
                Some(c) => answer_unconnected(c),
                None => return,
            },
        }
    }
}

async fn run(spec: Spec, mut env: Env, seed: u64, mut ctl: mpsc::Receiver<Ctl>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn_no = 0u64;
    // The fills seen so far and the last position, for the next connection to resume from.
    let mut carried: Option<(FillTrack, String)> = None;
    while !env.stop.is_cancelled() {
        wait_not_quiet(&mut env, &mut ctl).await;
        let pick = env.front.pick(&mut rng);
        let url = match spec.kind {
            Kind::Private { events: true } | Kind::StalledPrivate | Kind::Stalled => {
                format!("{}?relay_events=1", pick.url)
            }
            _ => pick.url.clone(),
        };
        let ws = tokio::select! {
            _ = env.stop.cancelled() => return,
            r = timeout(Duration::from_secs(3), connect(url, spec.kind)) => match r {
                Ok(Some(ws)) => ws,
                _ => {
                    // The relay is restarting (refused) or busy: try again shortly, answering
                    // checks meanwhile as "not connected".
                    let until = Instant::now() + Duration::from_millis(rng.gen_range(50..300));
                    while let Ok(Some(c)) = timeout(until.saturating_duration_since(Instant::now()), ctl.recv()).await {
                        answer_unconnected(c);
                    }
                    continue;
                }
            },
        };
        conn_no += 1;
        env.tally.with(|c| c.connections += 1);
        env.tally.live.fetch_add(1, Ordering::SeqCst);
        env.front.opened(pick.node);
        let mut conn = Conn::new(&spec, ws, conn_no, env.tally.clone(), env.epoch.clone());
        conn.node = pick.node;
        conn.generation = Some(pick.generation);
        if let Some((fills, position)) = carried.take() {
            conn.fills = fills;
            conn.resume_from = Some(position);
        }
        let ended = conn.session(&spec, &mut env, &mut rng, &mut ctl).await;
        env.tally.live.fetch_sub(1, Ordering::SeqCst);
        env.front.closed(pick.node);
        conn.finish(&spec, ended, &env.front);
        // A client with positions resumes where it left off: its fill chain goes on.
        if spec.kind.resumes() {
            if let Some(position) = conn.position.take() {
                carried = Some((std::mem::take(&mut conn.fills), position));
            }
        }
        let until = Instant::now() + Duration::from_millis(rng.gen_range(20..200));
        while let Ok(Some(c)) =
            timeout(until.saturating_duration_since(Instant::now()), ctl.recv()).await
        {
            answer_unconnected(c);
        }
    }
}

/// Connects; clients that read slowly or stall get a small kernel receive buffer (as a client on
/// a congested link would), so the relay, not the kernel, absorbs what they do not read.
async fn connect(url: String, kind: Kind) -> Option<Ws> {
    let small = kind.stalls() || matches!(kind, Kind::Slow { .. });
    if !small {
        return tokio_tungstenite::connect_async(url)
            .await
            .ok()
            .map(|(ws, _)| ws);
    }
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()?
        .parse()
        .ok()?;
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(4096).ok()?;
    let stream = socket.connect(addr).await.ok()?;
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream))
        .await
        .ok()?;
    Some(ws)
}

fn answer_unconnected(c: Ctl) {
    if let Ctl::Check { reply, .. } = c {
        let _ = reply.send(CheckReport::default());
    }
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    Close(u16, String),
    /// The stream ended without a close frame.
    Abrupt(String),
    /// We dropped it on purpose (reconnecting kind or an injected disconnect).
    Dropped,
    /// The soak is over.
    Stopped,
    /// The node went away (killed or frozen by the soak); the client moves to another.
    NodeLost,
    /// A protocol violation was seen; the connection was abandoned.
    Broken,
}

struct Conn {
    ws: Ws,
    no: u64,
    tally: Arc<Tally>,
    books: HashMap<String, OrderBook>,
    seqs: HashMap<u64, u64>,
    subscribed_replies: usize,
    expected_replies: usize,
    /// Epoch in which the private subscription was acknowledged.
    private_epoch: Option<u64>,
    /// Wall clock (ms) when that ack was read.
    private_ack_ms: Option<i64>,
    fills: FillTrack,
    epoch: Arc<AtomicU64>,
    /// When the first break in the fill chain was read.
    first_break_at: Option<Instant>,
    /// Set when a check saw the connection end.
    ended: Option<End>,
    /// The last `relay_position` received.
    position: Option<String>,
    /// The position this connection resumes from (its fills carried over from the last one).
    resume_from: Option<String>,
    /// The node it is connected to, and that node's generation (changes when it is lost).
    node: usize,
    generation: Option<watch::Receiver<u64>>,
}

impl Conn {
    fn new(spec: &Spec, ws: Ws, no: u64, tally: Arc<Tally>, epoch: Arc<AtomicU64>) -> Conn {
        let mut expected = 0;
        if !spec.books.is_empty() {
            expected += 3;
        }
        if spec.kind.private() {
            expected += 3;
        }
        Conn {
            ws,
            no,
            tally,
            books: HashMap::new(),
            seqs: HashMap::new(),
            subscribed_replies: 0,
            expected_replies: expected,
            private_epoch: None,
            private_ack_ms: None,
            fills: FillTrack::default(),
            epoch,
            first_break_at: None,
            ended: None,
            position: None,
            resume_from: None,
            node: 0,
            generation: None,
        }
    }

    fn who(&self, spec: &Spec) -> String {
        format!("{}#{}", spec.name, self.no)
    }

    async fn send(&mut self, v: serde_json::Value) -> bool {
        self.ws.send(WsMessage::text(v.to_string())).await.is_ok()
    }

    async fn session(
        &mut self,
        spec: &Spec,
        env: &mut Env,
        rng: &mut StdRng,
        ctl: &mut mpsc::Receiver<Ctl>,
    ) -> End {
        if !spec.books.is_empty() {
            let sub = json!({"id":1,"cmd":"subscribe","params":{
                "channels":["orderbook_delta","ticker","trade"],
                "market_tickers": spec.books,
                "use_yes_price": false}});
            if !self.send(sub).await {
                return End::Abrupt("send failed".into());
            }
        }
        if spec.kind.private() {
            let mut params = json!({"channels":["fill","user_orders","market_positions"]});
            if let Some(m) = &spec.private_markets {
                params["market_tickers"] = json!(m);
            }
            if let Some(from) = &self.resume_from {
                params["resume_from"] = json!(from);
                self.position = Some(from.clone());
            }
            if !self
                .send(json!({"id":2,"cmd":"subscribe","params":params}))
                .await
            {
                return End::Abrupt("send failed".into());
            }
        }
        let mut next_action = Instant::now() + action_delay(spec.kind, rng);
        let mut stalled_until: Option<Instant> = None;
        loop {
            let stalled = stalled_until.is_some_and(|t| Instant::now() < t);
            if !stalled {
                stalled_until = None;
            }
            let frame = tokio::select! {
                biased;
                _ = env.stop.cancelled() => return End::Stopped,
                c = ctl.recv() => {
                    match c {
                        Some(Ctl::Check { truths, ref_fills, epoch, reply }) => {
                            let report = self.check(spec, &truths, &ref_fills, epoch).await;
                            let _ = reply.send(report);
                            if let Some(end) = self.ended.take() {
                                return end;
                            }
                        }
                        Some(Ctl::Disconnect) => return End::Dropped,
                        None => return End::Stopped,
                    }
                    continue;
                }
                _ = node_lost(&mut self.generation) => return End::NodeLost,
                _ = sleep_until(stalled_until.unwrap_or(next_action)), if stalled || matches!(spec.kind, Kind::Reconnecting) || spec.kind.stalls() => {
                    if stalled {
                        continue;
                    }
                    next_action = Instant::now() + action_delay(spec.kind, rng);
                    if *env.quiet.borrow() {
                        continue;
                    }
                    match spec.kind {
                        Kind::Reconnecting => return End::Dropped,
                        _ => {
                            stalled_until = Some(Instant::now() + Duration::from_millis(rng.gen_range(2000..8000)));
                        }
                    }
                    continue;
                }
                f = self.ws.next(), if !stalled => f,
            };
            match self.on_frame(spec, frame) {
                Ok(()) => {}
                Err(end) => return end,
            }
            if let Kind::Slow { ms } = spec.kind {
                sleep(Duration::from_millis(ms)).await;
            }
        }
    }

    /// Applies one frame; `Err` ends the connection.
    fn on_frame(
        &mut self,
        spec: &Spec,
        frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), End> {
        let frame = match frame {
            None => return Err(End::Abrupt("stream ended".into())),
            Some(Err(e)) => return Err(End::Abrupt(e.to_string())),
            Some(Ok(f)) => f,
        };
        match frame {
            WsMessage::Text(text) => self.on_text(spec, text.as_bytes()),
            WsMessage::Close(c) => Err(match c {
                Some(c) => End::Close(u16::from(c.code), c.reason.to_string()),
                None => End::Close(1005, String::new()),
            }),
            _ => Ok(()),
        }
    }

    fn on_text(&mut self, spec: &Spec, raw: &[u8]) -> Result<(), End> {
        let env = match Envelope::parse(raw) {
            Ok(env) => env,
            Err(e) => {
                self.broken(spec, format!("a frame that is not an envelope ({e})"));
                return Err(End::Broken);
            }
        };
        if env.id.is_some() || env.kind == "error" {
            match env.kind.as_str() {
                "subscribed" => {
                    self.subscribed_replies += 1;
                    if env.id == Some(2) && self.private_epoch.is_none() {
                        // The first of the three private acks: the subscription is live from
                        // this epoch on.
                        self.private_epoch = Some(self.epoch.load(Ordering::SeqCst));
                        self.private_ack_ms = Some(fills::now_ms());
                    }
                }
                _ => {
                    self.broken(
                        spec,
                        format!("unexpected reply {}", String::from_utf8_lossy(raw)),
                    );
                    return Err(End::Broken);
                }
            }
            return Ok(());
        }
        if let (Some(sid), Some(seq)) = (env.sid, env.seq) {
            if let Some(last) = self.seqs.insert(sid, seq) {
                if seq != last + 1 {
                    self.broken(spec, format!("seq on sid {sid} went {last} -> {seq}"));
                    return Err(End::Broken);
                }
            }
        }
        match env.kind.as_str() {
            "relay_status" => {
                // One events client's view of the upstream is enough for the timeline.
                if spec.kind == (Kind::Private { events: true }) {
                    self.tally.log(&format!(
                        "{}: {}",
                        self.who(spec),
                        String::from_utf8_lossy(raw)
                    ));
                }
                return Ok(());
            }
            "relay_lagged" => {
                self.tally.with(|c| c.relay_lagged_events += 1);
                return Ok(());
            }
            "relay_resume" => {
                let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
                if v["msg"]["recovered"] == true {
                    self.tally.with(|c| c.resumes += 1);
                } else {
                    self.broken(spec, format!("a resume not recovered: {}", v["msg"]));
                    return Err(End::Broken);
                }
                return Ok(());
            }
            "fill" | "user_order" | "market_position" if spec.kind.resumes() => {
                let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
                match v["relay_position"].as_str() {
                    Some(p) => self.position = Some(p.to_owned()),
                    None => {
                        self.broken(spec, format!("a {} without relay_position", env.kind));
                        return Err(End::Broken);
                    }
                }
            }
            _ => {}
        }
        self.tally.messages.fetch_add(1, Ordering::Relaxed);
        match Message::decode(&env) {
            Ok(Message::OrderbookSnapshot(snap)) => {
                self.tally.with(|c| c.snapshots += 1);
                let mut book = OrderBook::new(snap.market_ticker.clone());
                if let Err(e) = book.apply_snapshot(&snap) {
                    self.broken(spec, format!("a snapshot that does not apply: {e}"));
                    return Err(End::Broken);
                }
                self.books.insert(snap.market_ticker.clone(), book);
            }
            Ok(Message::OrderbookDelta(delta)) => {
                let Some(book) = self.books.get_mut(&delta.market_ticker) else {
                    self.broken(
                        spec,
                        format!("a delta before any snapshot of {}", delta.market_ticker),
                    );
                    return Err(End::Broken);
                };
                if let Err(e) = book.apply_delta(&delta) {
                    let m = delta.market_ticker.clone();
                    self.broken(spec, format!("a delta on {m} does not apply: {e}"));
                    return Err(End::Broken);
                }
            }
            Ok(Message::Fill(_)) => {
                if let Some(f) = fills::decode(&env) {
                    self.tally.with(|c| c.fills_received += 1);
                    let what = format!("{} {} pre {} post {}", f.trade_id, f.market, f.pre, f.post);
                    let duplicates = self.fills.duplicates;
                    self.fills.apply(f);
                    if self.fills.duplicates > duplicates {
                        self.tally
                            .log(&format!("{}: duplicate fill {what}", self.who(spec)));
                    }
                    if self.fills.just_broke {
                        self.first_break_at.get_or_insert_with(Instant::now);
                        let (_, expected, _, _) = self.fills.breaks.last().unwrap();
                        self.tally.log(&format!(
                            "{}: fill chain break: expected pre {expected}, got fill {what}",
                            self.who(spec)
                        ));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.broken(spec, format!("a {} that does not decode: {e}", env.kind));
                return Err(End::Broken);
            }
        }
        Ok(())
    }

    fn broken(&self, spec: &Spec, what: String) {
        self.tally.violation(format!("{}: {what}", self.who(spec)));
    }

    /// Quiet point: read until every book equals the truth and (for a private connection) every
    /// reference fill of the epoch it owes has arrived, or the deadline (see `fills.rs`).
    async fn check(
        &mut self,
        spec: &Spec,
        truths: &HashMap<String, OrderBook>,
        ref_fills: &[FillSeen],
        epoch: u64,
    ) -> CheckReport {
        let mut report = CheckReport {
            node: self.node,
            ..CheckReport::default()
        };
        // A connection spans the epoch only if its private subscription was acknowledged before
        // the epoch began (epochs are numbered when the simulator resumes).
        // Younger connections owe the fills produced after their ack (plus a margin).
        let whole_epoch = self.private_epoch.is_some_and(|e| e < epoch);
        let from_ms = match self.private_ack_ms {
            _ if whole_epoch => Some(i64::MIN),
            Some(ack) => Some(ack + fills::START_MARGIN_MS),
            None => None,
        };
        let wanted_fills: Vec<&FillSeen> = match from_ms {
            None => Vec::new(),
            Some(from) => ref_fills
                .iter()
                .filter(|f| {
                    f.ts_ms > from
                        && spec
                            .private_markets
                            .as_ref()
                            .is_none_or(|ms| ms.contains(&f.market))
                })
                .collect(),
        };
        let deadline = Instant::now() + CATCH_UP;
        let mut last_text = Instant::now();
        loop {
            let books_ok = self.subscribed_replies >= self.expected_replies
                && spec
                    .books
                    .iter()
                    .all(|m| self.books.get(m) == truths.get(m));
            let fills_ok = wanted_fills
                .iter()
                .all(|f| self.fills.seen.contains_key(&f.trade_id));
            // With the simulator paused and the books caught up, a client that has received
            // nothing for IDLE has everything the relay will ever send it for this epoch.
            let idle = last_text.elapsed() >= IDLE;
            if (books_ok && (fills_ok || idle)) || Instant::now() >= deadline {
                break;
            }
            match timeout(Duration::from_millis(100), self.ws.next()).await {
                Err(_) => {}
                Ok(frame) => {
                    if matches!(frame, Some(Ok(WsMessage::Text(_)))) {
                        last_text = Instant::now();
                    }
                    if let Err(end) = self.on_frame(spec, frame) {
                        self.ended = Some(end);
                        return report;
                    }
                }
            }
        }
        report.checked = true;
        if self.subscribed_replies < self.expected_replies {
            report.replies_missing = Some(format!(
                "{} of {}",
                self.subscribed_replies, self.expected_replies
            ));
        }
        for m in &spec.books {
            report.books_checked += 1;
            if self.books.get(m) != truths.get(m) {
                report.books_wrong.push(m.clone());
            }
        }
        report.fills_checked = wanted_fills.len() as u64;
        let mut last_index = None;
        for f in &wanted_fills {
            match self.fills.seen.get(&f.trade_id) {
                None => report.fills_missing.push(f.trade_id.clone()),
                Some(&i) => {
                    if last_index.is_some_and(|l| i < l) {
                        report.fills_out_of_order += 1;
                    }
                    last_index = Some(i);
                }
            }
        }
        for m in &spec.books {
            for ch in ["orderbook_delta", "ticker", "trade"] {
                report.topics.insert(format!("{ch}/{m}"));
            }
        }
        if spec.kind.private() {
            for ch in ["fill", "user_orders", "market_positions"] {
                match &spec.private_markets {
                    None => {
                        report.topics.insert(format!("{ch}/*"));
                    }
                    Some(ms) => {
                        for m in ms {
                            report.topics.insert(format!("{ch}/{m}"));
                        }
                    }
                }
            }
        }
        report
    }

    /// Records how the connection ended and classifies its fill losses.
    fn finish(&mut self, spec: &Spec, end: End, front: &Front) {
        let who = self.who(spec);
        // The connection broke because the soak killed or froze its node.
        let end = match end {
            End::Abrupt(_)
                if self
                    .generation
                    .as_ref()
                    .is_some_and(|g| g.has_changed().unwrap_or(false)) =>
            {
                End::NodeLost
            }
            other => other,
        };
        let key = match &end {
            End::Close(code, _) => format!("{}:{code}", spec.kind.label()),
            End::Abrupt(_) => format!("{}:abrupt", spec.kind.label()),
            End::Dropped => format!("{}:dropped-by-client", spec.kind.label()),
            End::Stopped => format!("{}:open-at-end", spec.kind.label()),
            End::NodeLost => format!("{}:node-lost", spec.kind.label()),
            End::Broken => format!("{}:violation", spec.kind.label()),
        };
        self.tally.end(key);
        // Counted once: a resuming client carries its track to the next connection.
        self.tally
            .chain_links
            .fetch_add(std::mem::take(&mut self.fills.links), Ordering::Relaxed);
        match &end {
            // Redis restarted empty: the stream that held what the node missed is gone, and
            // the loss is announced (README, "Running several relays").
            End::Close(1013, reason)
                if reason.starts_with("private messages lost") && front.loss_allowed() =>
            {
                self.tally.with(|c| c.losses_announced_after_redis += 1);
            }
            // The soak's REST API never fails: every outage and dead sid must be backfilled.
            End::Close(1013, reason) if reason.starts_with("private messages lost") => {
                self.tally.violation(format!(
                    "{who}: closed {reason:?}: outages and dead sids must be backfilled"
                ));
            }
            End::Close(code, reason) if !spec.kind.allowed_close(*code, reason) => {
                self.tally
                    .violation(format!("{who}: closed by the relay with {code} {reason:?}"));
            }
            // A client that stops reading can lose the close frame: the relay waits a bounded
            // time for it to drain (close grace, shutdown drain), then the socket goes and TCP
            // resets. Anyone else must always get a close frame with a code.
            End::Abrupt(_) if spec.kind.stalls() || matches!(spec.kind, Kind::Slow { .. }) => {}
            End::Abrupt(why) => {
                self.tally.violation(format!(
                    "{who}: connection ended with no close frame ({why})"
                ));
            }
            _ => {}
        }
        let announced = matches!(&end, End::Close(code, reason) if fills::announces_loss(*code, reason))
            && self
                .first_break_at
                .is_some_and(|t| t.elapsed() <= ANNOUNCE_WITHIN);
        let breaks = std::mem::take(&mut self.fills.breaks);
        let gaps = breaks.len() as u64;
        if gaps > 0 {
            if announced {
                self.tally.with(|c| c.fill_gaps_announced += gaps);
            } else {
                let (m, expected, got, trade) = &breaks[0];
                self.tally.with(|c| c.fill_gaps_silent += gaps);
                self.tally.violation(format!(
                    "{who}: {gaps} silent gap(s) in the fill stream (first on {m}: position {expected} then a fill from {got}, trade {trade}); connection ended {end:?}"
                ));
            }
        }
        let duplicates = std::mem::take(&mut self.fills.duplicates);
        if duplicates > 0 {
            self.tally
                .violation(format!("{who}: {duplicates} duplicated fill(s)"));
        }
    }
}

fn action_delay(kind: Kind, rng: &mut StdRng) -> Duration {
    match kind {
        Kind::Reconnecting => Duration::from_millis(rng.gen_range(1000..5000)),
        _ => Duration::from_millis(rng.gen_range(3000..9000)),
    }
}

/// Resolves when the node behind this connection is lost (never without one).
async fn node_lost(generation: &mut Option<watch::Receiver<u64>>) {
    match generation {
        Some(g) => {
            if g.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
