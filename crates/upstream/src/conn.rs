//! One open connection: establish the desired subscriptions, read frames in order, check
//! sequences and repair gaps, keep liveness, and close cleanly on shutdown.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{Channel, Command, Envelope, MessageType, SeqCheck};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tracing::{debug, info, warn};

use crate::connect::Ws;
use crate::event::{BookUpdate, Data, DisconnectReason, Event, State};
use crate::metrics;
use crate::session::Ctx;
use crate::subs::{Actual, Outcome, Sid};

/// Longest wait for one outgoing frame to be written: a send stuck this long means the
/// connection is dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn<'a> {
    ws: Ws,
    ctx: &'a mut Ctx,
    actual: Actual,
    /// Sids under gap repair, with the time after which the channel is resubscribed instead.
    repairs: HashMap<Sid, Instant>,
    /// Until every subscription wanted at connect has been answered.
    awaiting_subscribed: bool,
    last_frame: Instant,
    frames: metrics::FrameCounters,
}

/// Runs one connection until it ends; returns why.
pub(crate) async fn run(ws: Ws, ctx: &mut Ctx) -> DisconnectReason {
    ctx.out.set_state(State::Connected).await;
    let mut conn = Conn {
        ws,
        ctx,
        actual: Actual::new(false),
        repairs: HashMap::new(),
        awaiting_subscribed: true,
        last_frame: Instant::now(),
        frames: metrics::FrameCounters::new(),
    };
    conn.actual = Actual::new(conn.ctx.settings.use_yes_price);
    // Snapshot requests made while disconnected are moot: every book gets a fresh snapshot now.
    conn.ctx.shared.desired().snapshot_requests.clear();
    match conn.serve().await {
        Ok(()) => DisconnectReason::Shutdown,
        Err(reason) => {
            debug!(%reason, "connection ended");
            reason
        }
    }
}

impl Conn<'_> {
    async fn serve(&mut self) -> Result<(), DisconnectReason> {
        self.reconcile().await?;
        let s = &self.ctx.settings;
        let (ping_interval, pong_timeout, window) =
            (s.ping_interval, s.pong_timeout, s.liveness_window);
        let mut ping_sent: Option<(Instant, u64)> = None;
        let mut ping_counter: u64 = 0;
        let shutdown = self.ctx.shutdown.clone();
        let shared = self.ctx.shared.clone();
        // The timers and the wake-up outlive each turn of the loop: a frame, the common turn,
        // registers and cancels none of them. The liveness deadline moves with every frame, so
        // its timer fires at the deadline it was armed with and is re-armed if a frame came since.
        let changed = shared.changed.notified();
        let next_ping = sleep_until(Instant::now() + ping_interval);
        let liveness = sleep_until(self.last_frame + window);
        let pong = sleep_until(Instant::now());
        let repair = sleep_until(Instant::now());
        tokio::pin!(changed, next_ping, liveness, pong, repair);
        loop {
            // Aimed at the earliest repair deadline; when it fires, the repairs it timed out are
            // gone, so the next earliest differs and re-arms it.
            if let Some(at) = self.repairs.values().min().copied() {
                if repair.deadline() != at {
                    repair.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.close().await;
                    return Ok(());
                }
                frame = self.ws.next() => {
                    self.last_frame = Instant::now();
                    match frame {
                        None => return Err(DisconnectReason::ClosedByServer { code: None }),
                        Some(Err(e)) => return Err(classify(&e)),
                        Some(Ok(WsMessage::Text(text))) => self.on_text(Bytes::from(text)).await?,
                        Some(Ok(WsMessage::Pong(payload))) => {
                            if let Some((at, n)) = ping_sent {
                                if payload.as_ref() == n.to_be_bytes() {
                                    metrics::ping_rtt(at.elapsed());
                                    ping_sent = None;
                                }
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code));
                            info!(?code, reason = ?frame.as_ref().map(|f| f.reason.as_str()), "exchange closed the connection");
                            return Err(DisconnectReason::ClosedByServer { code });
                        }
                        // Pings are answered by tungstenite as we keep reading.
                        Some(Ok(_)) => {}
                    }
                }
                () = &mut changed => {
                    changed.set(shared.changed.notified());
                    self.reconcile().await?;
                }
                () = &mut next_ping => {
                    next_ping.as_mut().reset(Instant::now() + ping_interval);
                    if ping_sent.is_none() {
                        ping_counter += 1;
                        self.send(WsMessage::Ping(ping_counter.to_be_bytes().to_vec().into())).await?;
                        let at = Instant::now();
                        ping_sent = Some((at, ping_counter));
                        pong.as_mut().reset(at + pong_timeout);
                    }
                }
                () = &mut pong, if ping_sent.is_some() => {
                    warn!(timeout_ms = pong_timeout.as_millis() as u64, "no pong for our ping: connection is dead");
                    return Err(DisconnectReason::PongTimeout);
                }
                () = &mut liveness => {
                    let due = self.last_frame + window;
                    if due > Instant::now() {
                        liveness.as_mut().reset(due);
                    } else {
                        warn!(window_ms = window.as_millis() as u64, "no frame from the exchange: connection is dead");
                        return Err(DisconnectReason::LivenessTimeout);
                    }
                }
                () = &mut repair, if !self.repairs.is_empty() => self.repair_timeouts().await?,
            }
        }
    }

    async fn send(&mut self, msg: WsMessage) -> Result<(), DisconnectReason> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(DisconnectReason::StreamError),
        }
    }

    async fn send_commands(&mut self, commands: Vec<Command>) -> Result<(), DisconnectReason> {
        for command in commands {
            let json = command.to_json();
            debug!(command = %json, "sending");
            self.send(WsMessage::Text(json.into())).await?;
        }
        Ok(())
    }

    async fn emit(&mut self, event: Event) {
        if self.ctx.out.emit(event).await {
            // We were not reading while the owner was slow: that silence is not the exchange's.
            self.last_frame = Instant::now();
        }
    }

    /// Moves the exchange towards the desired state, and serves owner snapshot requests.
    async fn reconcile(&mut self) -> Result<(), DisconnectReason> {
        let (wanted, requests) = {
            let mut desired = self.ctx.shared.desired();
            (
                desired.wanted(),
                std::mem::take(&mut desired.snapshot_requests),
            )
        };
        let books: BTreeSet<String> = match wanted.get(&Channel::OrderbookDelta) {
            Some(Some(markets)) => markets.clone(),
            _ => BTreeSet::new(),
        };
        self.ctx.books.track(&books);
        let mut commands = self.actual.reconcile(&wanted);
        if !requests.is_empty() {
            let snapshots = self.actual.snapshot_commands(&requests);
            snapshots.iter().for_each(|_| metrics::snapshot_request());
            commands.extend(snapshots);
        }
        self.send_commands(commands).await?;
        if self.awaiting_subscribed && !self.actual.subscribing() {
            self.awaiting_subscribed = false;
            self.ctx.out.set_state(State::Subscribed).await;
        }
        Ok(())
    }

    async fn on_text(&mut self, frame: Bytes) -> Result<(), DisconnectReason> {
        let env = match Envelope::parse(&frame) {
            Ok(env) => env,
            Err(e) => {
                self.frames.frame(None, frame.len());
                warn!(error = %e, len = frame.len(), "unparsable frame from the exchange");
                return Ok(());
            }
        };
        let kind = env.message_type();
        self.frames.frame(Some(&kind), frame.len());
        match kind {
            MessageType::Subscribed
            | MessageType::Unsubscribed
            | MessageType::Ok
            | MessageType::Error => {
                for outcome in self.actual.on_reply(&env) {
                    let (sid, channel, markets) = match outcome {
                        Outcome::Dead {
                            sid,
                            channel,
                            markets,
                        } => (sid, channel, markets),
                        Outcome::Live { channel } => {
                            self.ctx.out.live(channel).await;
                            continue;
                        }
                    };
                    warn!(%sid, %channel, "subscription died at the exchange: resubscribing");
                    self.repairs.remove(&sid);
                    let stale = self.ctx.books.mark_stale(&markets);
                    if !stale.is_empty() {
                        self.emit(Event::BookStale { markets: stale }).await;
                    }
                    if channel != Channel::OrderbookDelta {
                        self.emit(Event::MessagesLost { channel }).await;
                    }
                }
                self.reconcile().await
            }
            _ => self.on_data(env, kind).await,
        }
    }

    async fn on_data(&mut self, env: Envelope, kind: MessageType) -> Result<(), DisconnectReason> {
        let received_at = std::time::Instant::now();
        let Some(sid) = env.sid.map(Sid) else {
            debug!(kind = %env.kind, "data without sid dropped");
            return Ok(());
        };
        let Some(channel) = self.actual.channel_of(sid) else {
            debug!(%sid, kind = %env.kind, "data for a sid we do not hold dropped");
            return Ok(());
        };
        if let (true, Some(seq)) = (channel.is_sequenced(), env.seq) {
            match self.actual.seq.observe(sid.0, seq) {
                SeqCheck::InOrder => {}
                SeqCheck::Duplicate => {
                    debug!(%sid, seq, "duplicate dropped");
                    return Ok(());
                }
                SeqCheck::Gap {
                    expected,
                    got,
                    stale_markets,
                    ..
                } => {
                    metrics::seq_gap();
                    warn!(
                        %sid,
                        expected,
                        got,
                        markets = stale_markets.len(),
                        "sequence gap"
                    );
                    if channel == Channel::OrderbookDelta {
                        return self.on_gap(sid, stale_markets).await;
                    }
                }
            }
        }
        let market = env.market_ticker();
        let book = match kind {
            MessageType::OrderbookSnapshot => match env.body() {
                Ok(snapshot) => Some(BookUpdate::Snapshot(snapshot)),
                Err(e) => return self.on_bad_book(sid, &env, e).await,
            },
            MessageType::OrderbookDelta => match env.body() {
                Ok(delta) => Some(BookUpdate::Delta(delta)),
                Err(e) => return self.on_bad_book(sid, &env, e).await,
            },
            _ => None,
        };
        match (&book, &market) {
            (Some(BookUpdate::Snapshot(_)), Some(m)) => {
                if self.ctx.books.on_snapshot(m) {
                    self.emit(Event::BookReset { market: m.clone() }).await;
                }
                self.repair_progress(sid);
            }
            (Some(BookUpdate::Delta(_)), Some(m)) if !self.ctx.books.is_fresh(m) => {
                debug!(%sid, market = %m, "delta for a book awaiting its snapshot dropped");
                return Ok(());
            }
            _ => {}
        }
        let body = Bytes::copy_from_slice(env.msg_json().as_bytes());
        let data = Data {
            channel,
            kind,
            market,
            seq: env.seq,
            body,
            book,
            received_at,
        };
        self.emit(Event::Data(data)).await;
        Ok(())
    }

    /// A book message we cannot read is as bad as a lost one.
    async fn on_bad_book(
        &mut self,
        sid: Sid,
        env: &Envelope,
        e: serde_json::Error,
    ) -> Result<(), DisconnectReason> {
        warn!(%sid, kind = %env.kind, error = %e, "unreadable order book message: treating as a gap");
        let markets = match env.market_ticker() {
            Some(m) => vec![m],
            None => self.actual.seq.markets(sid.0).cloned().collect(),
        };
        self.on_gap(sid, markets).await
    }

    /// Marks the sid's books stale and asks for their snapshots; a second gap while repairing
    /// resubscribes the channel instead.
    async fn on_gap(&mut self, sid: Sid, markets: Vec<String>) -> Result<(), DisconnectReason> {
        let stale = self.ctx.books.mark_stale(&markets);
        if !stale.is_empty() {
            self.emit(Event::BookStale { markets: stale }).await;
        }
        if self.repairs.remove(&sid).is_some() {
            warn!(%sid, "second gap while repairing: resubscribing");
            let unsubscribe = self.actual.resubscribe(sid);
            self.send_commands(unsubscribe.into_iter().collect())
                .await?;
            return self.reconcile().await;
        }
        if let Some(command) = self.actual.snapshot_sid(sid, markets) {
            metrics::snapshot_request();
            self.send_commands(vec![command]).await?;
            self.repairs
                .insert(sid, Instant::now() + self.ctx.settings.snapshot_timeout);
        }
        Ok(())
    }

    /// Ends the repair of `sid` once all its books are fresh again.
    fn repair_progress(&mut self, sid: Sid) {
        if self.repairs.contains_key(&sid)
            && self
                .actual
                .seq
                .markets(sid.0)
                .all(|m| self.ctx.books.is_fresh(m))
        {
            self.repairs.remove(&sid);
        }
    }

    async fn repair_timeouts(&mut self) -> Result<(), DisconnectReason> {
        let now = Instant::now();
        let expired: Vec<Sid> = self
            .repairs
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(s, _)| *s)
            .collect();
        for sid in expired {
            self.repairs.remove(&sid);
            warn!(%sid, "gap repair timed out: resubscribing");
            let unsubscribe = self.actual.resubscribe(sid);
            self.send_commands(unsubscribe.into_iter().collect())
                .await?;
        }
        self.reconcile().await
    }

    /// Unsubscribes, sends close 1000 and waits briefly for the echo.
    async fn close(&mut self) {
        let sids: Vec<u64> = self.actual.sids().into_iter().map(|s| s.0).collect();
        if !sids.is_empty() {
            let command = Command {
                id: 0,
                action: protocol::Action::Unsubscribe { sids },
            };
            if self
                .send(WsMessage::Text(command.to_json().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "shutdown".into(),
        };
        if self.send(WsMessage::Close(Some(frame))).await.is_err() {
            return;
        }
        let echo = async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        };
        if tokio::time::timeout(self.ctx.settings.close_timeout, echo)
            .await
            .is_err()
        {
            debug!("no close echo from the exchange in time");
        }
    }
}

/// Sorts read and write errors: a peer going away is not an error.
fn classify(e: &WsError) -> DisconnectReason {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            DisconnectReason::ClosedByServer { code: None }
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            debug!("exchange dropped the connection without a close frame");
            DisconnectReason::ClosedByServer { code: Some(1006) }
        }
        other => {
            debug!(error = %other, "connection error");
            DisconnectReason::StreamError
        }
    }
}
