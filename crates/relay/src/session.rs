//! One client connection: commands in, deliveries out, pings, limits and the close.
//!
//! One task per client owns both halves of its WebSocket. It waits on four things at once: the
//! client's frames (commands; reading also answers the client's pings), the client's fanout
//! subscriber (data to write, and the upstream's status in order with it), its heartbeat bucket
//! (server ping and pong deadline), and the relay's shutdown. Deliveries are written as they come: every ready
//! one is fed, then one flush, so a burst costs one write. A client that cannot keep up is the
//! fanout's business (lag, repair, or a slow-consumer verdict): nothing queues here without bound, and a
//! write that blocks longer than `write_timeout_seconds` ends the connection.
//!
//! Per frame the hot path is: find the client's sid for the item's channel, write the small
//! envelope around the shared body into one reused buffer, hand it to tungstenite. Counters are
//! kept locally and flushed to the metrics once per batch.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fanout::{Delivery, Subscriber, Topic, Verdict};
use futures_util::{SinkExt, StreamExt};
use protocol::{reply, Action, Command, ErrorCode, MessageType};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument};

use crate::app::App;
use crate::client::{ClientState, Effect, Limits};
use crate::close::{CloseReason, Ending};
use crate::metrics as m;
use crate::security::{Admission, Identity, Permission, TokenBucket};
use crate::status::{Health, UpstreamStatus};

/// Per-connection choices made at the handshake.
pub struct SessionOptions {
    /// `?relay_events=1`: also send `relay_status` and `relay_lagged` events.
    pub relay_events: bool,
    pub peer: SocketAddr,
    /// What this client may do (private channels, limits).
    pub limits: Limits,
    /// Who the handshake said the client is.
    pub identity: Identity,
    /// The client's slot under the connection caps, released when the session ends.
    pub admission: Admission,
}

/// How a session ends: a close frame to send, or nothing (the client is gone).
type Close = Option<CloseReason>;

const RESTART: Close = Some(CloseReason::Restart);
const UPSTREAM_UNAVAILABLE: Close = Some(CloseReason::UpstreamUnavailable);
const UNAUTHORIZED: Close = Some(CloseReason::Unauthorized);
const PRIVATE_GAP: Close = Some(CloseReason::PrivateLost);

/// Most deliveries written before a flush, so one busy client cannot starve its own reads.
const MAX_BATCH: usize = 256;
/// Record the relay latency of one frame in this many (the histogram is a distribution; every
/// frame would cost an atomic append each).
const LATENCY_SAMPLE: u64 = 8;
/// Most commands held for a live upstream; more get error 27.
const MAX_DEFERRED: usize = 64;
/// The window over which rate-limited commands are counted toward the `rate limited` close.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// How long a close handshake may take before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Frame kinds counted per batch (`relay_downstream_messages_sent_total{type}` and bytes).
pub(crate) const KINDS: [&str; 10] = [
    "orderbook_snapshot",
    "orderbook_delta",
    "ticker",
    "trade",
    "fill",
    "user_order",
    "market_position",
    "lifecycle",
    "other",
    "reply",
];
const REPLY: usize = 9;

fn kind_index(kind: &MessageType) -> usize {
    match kind {
        MessageType::OrderbookSnapshot => 0,
        MessageType::OrderbookDelta => 1,
        MessageType::Ticker => 2,
        MessageType::Trade => 3,
        MessageType::Fill => 4,
        MessageType::UserOrder => 5,
        MessageType::MarketPosition => 6,
        MessageType::MarketLifecycleV2
        | MessageType::EventLifecycle
        | MessageType::EventFeeUpdate => 7,
        _ => 8,
    }
}

/// Runs one client session to its end.
pub async fn run<S>(app: Arc<App>, ws: WebSocketStream<S>, options: SessionOptions)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let span = tracing::debug_span!("client", peer = %options.peer);
    async move {
        app.clients.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        metrics::counter!(m::CONNECTIONS_TOTAL).increment(1);
        debug!("connected");
        let mut session = Session::new(&app, ws, options);
        let close = session.run_loop().await;
        let ending = match (close, session.client_close) {
            (Some(reason), _) => Ending::Relay(reason),
            (None, Some(code)) => Ending::Client(code),
            (None, None) => Ending::Abrupt,
        };
        // Cold paths are boxed: a task's allocation is sized for its largest state, and every
        // idle client would otherwise pay for the close handshake's.
        Box::pin(session.close(close)).await;
        session.flush_counters();
        metrics::counter!(
            m::DISCONNECTS_TOTAL,
            "code" => ending.code_label(),
            "reason" => ending.reason_label()
        )
        .increment(1);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        app.clients.fetch_sub(1, Ordering::Relaxed);
        debug!(?ending, "disconnected");
    }
    .instrument(span)
    .await
}

/// What woke a session.
enum Wake {
    Frame(Option<Result<Message, WsError>>),
    Delivery(Option<Delivery<UpstreamStatus>>),
    /// The connection's heartbeat bucket: a ping is due.
    Ping,
    Check,
}

struct Session<'a, S> {
    app: &'a App,
    ws: WebSocketStream<S>,
    options: SessionOptions,
    state: ClientState,
    sub: Subscriber<UpstreamStatus>,
    /// Every outgoing frame is written here and split off; tungstenite copies it into its own
    /// buffer and drops it, so within a batch the space is reused without an allocation per
    /// frame. It is released after each flush: an idle client keeps no buffer.
    out: BytesMut,
    /// A server ping is outstanding and nothing has arrived since it was sent.
    awaiting_pong: bool,
    frames_written: u64,
    /// The upstream arrival time of the sampled frame of the current batch, recorded once the
    /// batch is flushed to the socket.
    latency_sample: Option<Instant>,
    /// Frames and bytes written per kind since the last flush of the counters.
    sent: [(u64, u64); KINDS.len()],
    /// Commands per second (token bucket); excess commands get error 27.
    commands: TokenBucket,
    /// Rate-limited commands in the current refusal window, and when it began.
    refused: u32,
    refused_since: Instant,
    /// The client holds a private channel and the upstream was up since it subscribed: if the
    /// upstream connection is lost, fills may be missed and the client must be told (a `private messages lost` close).
    private_exposed: bool,
    /// The last upstream status this session acted on (`None` before the first).
    status: Option<std::sync::Arc<UpstreamStatus>>,
    /// The code of the client's own close frame, if it closed.
    client_close: Option<u16>,
    /// Commands held until the upstream is subscribed (a private subscription, and whatever
    /// the client sent after it), at most `MAX_DEFERRED`.
    deferred: Vec<Command>,
}

impl<'a, S> Session<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(app: &'a App, ws: WebSocketStream<S>, options: SessionOptions) -> Self {
        let security = &app.config.security;
        let mut limits = options.limits.clone();
        limits.private_allowed = options.identity.permission() == Some(Permission::Private);
        Session {
            app,
            ws,
            commands: TokenBucket::new(security.commands_per_second, security.command_burst),
            refused: 0,
            refused_since: Instant::now(),
            state: ClientState::new(limits),
            options,
            sub: app.fanout.subscriber(),
            out: BytesMut::new(),
            awaiting_pong: false,
            frames_written: 0,
            latency_sample: None,
            sent: [(0, 0); KINDS.len()],
            private_exposed: false,
            status: None,
            client_close: None,
            deferred: Vec::new(),
        }
    }

    async fn run_loop(&mut self) -> Close {
        let app = self.app;
        if self.options.identity == Identity::Pending {
            tokio::select! {
                _ = app.shutdown.cancelled() => return RESTART,
                result = Box::pin(self.authenticate_first()) => if let Err(close) = result { return close },
            }
        }
        let mut slot = app.heartbeat.slot();
        let mut pings_seen = *slot.ping.borrow_and_update();
        // Pinned once: a wake-up does not register with the shutdown token again.
        let stopping = app.shutdown.cancelled();
        tokio::pin!(stopping);
        loop {
            // Only a connection still waiting for its pong listens for its bucket's check: a
            // live one is not woken for it. The check is marked seen when the ping goes out.
            let awaiting_pong = self.awaiting_pong;
            // The select only says what woke the session; the work happens in one boxed handler,
            // so the task's resting allocation holds just these waits (an idle client's cost).
            // Biased: the client's own frames (pongs, commands) are never starved by a busy
            // stream. Status changes come in the stream, in order with the data.
            let wake = tokio::select! {
                biased;
                () = &mut stopping => return RESTART,
                Ok(()) = slot.ping.changed() => {
                    let pings = *slot.ping.borrow_and_update();
                    if pings == pings_seen {
                        continue;
                    }
                    pings_seen = pings;
                    slot.check.borrow_and_update();
                    Wake::Ping
                }
                Ok(()) = slot.check.changed(), if awaiting_pong => Wake::Check,
                frame = self.ws.next() => Wake::Frame(frame),
                delivery = self.sub.recv() => Wake::Delivery(delivery),
            };
            if let Err(close) = Box::pin(self.on_wake(wake)).await {
                return close;
            }
        }
    }

    async fn on_wake(&mut self, wake: Wake) -> Result<(), Close> {
        match wake {
            Wake::Frame(frame) => self.on_frame(frame).await,
            Wake::Delivery(delivery) => self.on_delivery(delivery).await,
            Wake::Ping => self.ping().await,
            Wake::Check if self.awaiting_pong => Err(Some(CloseReason::PongTimeout)),
            // A frame arrived between the check and this handler.
            Wake::Check => Ok(()),
        }
    }

    /// An upstream status from the stream: the first one, a change, or a loss notice (or,
    /// after a lag, the latest, which sums up those skipped).
    async fn on_notice(&mut self, now: std::sync::Arc<UpstreamStatus>) -> Result<(), Close> {
        // The first status is the one as of the session's start: nothing to compare it with.
        if let Some(before) = self.status.replace(now.clone()) {
            let lost_held_private = protocol::Channel::ALL.iter().any(|c| {
                c.is_private()
                    && now.lost[c.index()] > before.lost[c.index()]
                    && self.state.subscriptions().any(|s| s.channel == *c)
            });
            let outage = now.outages != before.outages || now.health.is_outage();
            if private_messages_lost(self.private_exposed, outage, lost_held_private) {
                return Err(PRIVATE_GAP);
            }
            if now.changes == before.changes {
                return Ok(());
            }
        }
        if now.health.is_up() {
            self.private_exposed |= self.holds_private();
        }
        if now.health == Health::Subscribed && !self.deferred.is_empty() {
            self.release_deferred().await?;
        }
        if self.options.relay_events {
            self.send_event("relay_status", now.to_json()).await
        } else if matches!(now.health, Health::GaveUp { .. }) {
            // Those who did not ask for events are not left hanging on a dead feed.
            Err(UPSTREAM_UNAVAILABLE)
        } else {
            Ok(())
        }
    }

    fn holds_private(&self) -> bool {
        self.state.subscriptions().any(|s| s.channel.is_private())
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), Close> {
        self.awaiting_pong = false;
        let message = match frame {
            None => return Err(None),
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(classify_read_error(&e)),
        };
        match message {
            Message::Text(text) => self.on_command(text.as_bytes()).await,
            // Some clients send their JSON commands as binary frames, as the exchange accepts.
            Message::Binary(data) => match std::str::from_utf8(&data) {
                Ok(_) => self.on_command(&data).await,
                Err(_) => Err(Some(CloseReason::InvalidUtf8)),
            },
            // tungstenite answers pings itself while we keep reading; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            Message::Close(frame) => {
                // tungstenite queued the echo: send it, so the client's close completes cleanly.
                self.client_close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.flush()).await;
                Err(None)
            }
        }
    }

    async fn on_command(&mut self, frame: &[u8]) -> Result<(), Close> {
        let parsed = Command::parse(frame);
        let now = Instant::now();
        if !self.commands.try_take(now) {
            if now.duration_since(self.refused_since) > REFUSAL_WINDOW {
                self.refused = 0;
                self.refused_since = now;
            }
            self.refused += 1;
            metrics::counter!(m::COMMANDS_TOTAL, "command" => "any", "result" => "rate_limited")
                .increment(1);
            if self.refused >= self.app.config.security.refused_commands_before_close {
                return Err(Some(CloseReason::RateLimited));
            }
            let id = parsed.as_ref().map_or_else(|e| e.id, |c| c.id);
            return self
                .send_now(reply::error(id, ErrorCode::TooManyRequests, None))
                .await;
        }
        let command = match parsed {
            Ok(Command {
                id,
                action: Action::Auth { token },
            }) => {
                return self.reauthenticate(id, &token).await;
            }
            Ok(command) => command,
            Err(e) => {
                metrics::counter!(m::COMMANDS_TOTAL, "command" => "invalid", "result" => "error")
                    .increment(1);
                return self.send_now(e.reply()).await;
            }
        };
        // A subscription to the account's fills, orders or positions is answered only once the
        // upstream has them live, as the exchange would: acknowledging it earlier would promise
        // messages nobody is receiving. Later commands wait behind it, so replies keep their order.
        if !self.deferred.is_empty()
            || (needs_live_upstream(&command) && !self.upstream_subscribed())
        {
            if self.deferred.len() >= MAX_DEFERRED {
                return self
                    .send_now(reply::error(command.id, ErrorCode::TooManyRequests, None))
                    .await;
            }
            self.deferred.push(command);
            return Ok(());
        }
        self.apply_command(command).await
    }

    fn upstream_subscribed(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.health == Health::Subscribed)
    }

    /// Answers the commands held while the upstream was not subscribed.
    async fn release_deferred(&mut self) -> Result<(), Close> {
        for command in std::mem::take(&mut self.deferred) {
            self.apply_command(command).await?;
        }
        Ok(())
    }

    /// Applies one validated command: replies, topic changes, one flush.
    async fn apply_command(&mut self, command: Command) -> Result<(), Close> {
        let name = command_name(&command);
        let effects = self.state.handle(command);
        let ok = !effects.iter().any(|e| matches!(e, Effect::Error(_)));
        let result = if ok { "ok" } else { "error" };
        metrics::counter!(m::COMMANDS_TOTAL, "command" => name, "result" => result).increment(1);
        for effect in effects {
            match effect {
                Effect::Reply(frame) | Effect::Error(frame) => self.feed_reply(frame).await?,
                Effect::Pong(id) => self.feed_reply(reply::pong(id)).await?,
                Effect::Add {
                    channel,
                    market,
                    initial,
                } => {
                    let topic = match &market {
                        Some(m) => Topic::market(channel, m),
                        None => Topic::channel(channel),
                    };
                    if self.sub.add(topic, initial).is_err() {
                        // Only a disconnected subscriber refuses; its verdict is next in recv.
                        debug!(%channel, "topic refused");
                    }
                }
                Effect::Remove { channel, market } => {
                    let topic = match &market {
                        Some(m) => Topic::market(channel, m),
                        None => Topic::channel(channel),
                    };
                    self.sub.remove(&topic);
                }
                Effect::Snapshot { market } => {
                    if let Err(e) = self.sub.request_snapshot(&market) {
                        debug!(%market, error = %e, "snapshot request refused");
                    }
                }
            }
        }
        // Exposed from now on if the upstream is up as far as this session has been told (an
        // outage that comes later in the stream closes it).
        if self.status.as_ref().is_some_and(|s| s.health.is_up()) {
            self.private_exposed |= self.holds_private();
        }
        self.flush().await
    }

    /// A client with no handshake token must send `{"cmd":"auth"}` first, within the timeout.
    async fn authenticate_first(&mut self) -> Result<(), Close> {
        let deadline = self.app.config.security.auth_timeout();
        let first = match tokio::time::timeout(deadline, self.ws.next()).await {
            Err(_) => return Err(Some(CloseReason::AuthTimeout)),
            Ok(frame) => frame,
        };
        let bytes = match first {
            None => return Err(None),
            Some(Err(e)) => return Err(classify_read_error(&e)),
            Some(Ok(Message::Text(text))) => bytes::Bytes::from(text),
            Some(Ok(Message::Binary(data))) if std::str::from_utf8(&data).is_ok() => data,
            Some(Ok(Message::Binary(_))) => return Err(Some(CloseReason::InvalidUtf8)),
            Some(Ok(_)) => return Err(UNAUTHORIZED),
        };
        match Command::parse(&bytes) {
            Ok(Command {
                id,
                action: Action::Auth { token },
            }) => self.reauthenticate(id, &token).await,
            _ => Err(UNAUTHORIZED),
        }
    }

    /// `{"cmd":"auth"}`: a valid token sets the client's permission; a bad one closes with 4001.
    async fn reauthenticate(&mut self, id: u64, token: &str) -> Result<(), Close> {
        let Some(identity) = self.app.gate.check_token(token) else {
            metrics::counter!(m::COMMANDS_TOTAL, "command" => "auth", "result" => "error")
                .increment(1);
            return Err(UNAUTHORIZED);
        };
        if let Identity::Token { name, .. } = &identity {
            debug!(token = %name, "authenticated");
        }
        self.state
            .set_private_allowed(identity.permission() == Some(Permission::Private));
        self.options.identity = identity;
        metrics::counter!(m::COMMANDS_TOTAL, "command" => "auth", "result" => "ok").increment(1);
        self.send_now(reply::ok(
            id,
            Some(serde_json::json!({ "authenticated": true })),
        ))
        .await
    }

    async fn on_delivery(
        &mut self,
        delivery: Option<Delivery<UpstreamStatus>>,
    ) -> Result<(), Close> {
        let Some(first) = delivery else {
            // The fanout's stream ended: the relay is stopping.
            return Err(RESTART);
        };
        self.write_delivery(first).await?;
        // With a coalescing window, the feed publishes a window's messages together, so this
        // batch already holds them all: no timer per client.
        self.write_ready(MAX_BATCH - 1).await
    }

    /// Writes up to `limit` deliveries that are ready now, flushing every [`MAX_BATCH`] and at
    /// the end.
    async fn write_ready(&mut self, limit: usize) -> Result<(), Close> {
        let mut written = 0;
        while written < limit {
            match self.sub.try_recv() {
                Some(next) => self.write_delivery(next).await?,
                None => break,
            }
            written += 1;
            if written % MAX_BATCH == 0 {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    async fn write_delivery(&mut self, delivery: Delivery<UpstreamStatus>) -> Result<(), Close> {
        match delivery {
            Delivery::Notice(status) => Box::pin(self.on_notice(status)).await,
            Delivery::Data(item) | Delivery::Cached { item, .. } => {
                let Some(sub) = self.state.by_channel(item.channel()) else {
                    return Ok(()); // unsubscribed while the item was in flight
                };
                let (sid, seq, yes) = (sub.sid, sub.next_seq(), sub.use_yes_price);
                self.out.reserve(item.envelope_max_len(yes));
                item.write_envelope(&mut self.out, sid, seq, yes);
                self.frames_written += 1;
                if self.frames_written % LATENCY_SAMPLE == 0 && self.latency_sample.is_none() {
                    self.latency_sample = item.received_at();
                }
                let frame = self.out.split().freeze();
                let counter = &mut self.sent[kind_index(item.kind())];
                counter.0 += 1;
                counter.1 += frame.len() as u64;
                self.feed(Message::Frame(Frame::message(
                    frame,
                    OpCode::Data(Data::Text),
                    true,
                )))
                .await
            }
            Delivery::Stale { .. } => Ok(()),
            Delivery::Lagged(report) => {
                if !self.options.relay_events {
                    return Ok(());
                }
                let msg = serde_json::json!({
                    "cause": format!("{:?}", report.cause).to_lowercase(),
                    "messages_lost": report.messages_lost,
                    "trades_lost": report.trades_lost,
                    "books_repaired": report.books_repaired.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
                    "books_stale": report.books_stale.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
                });
                self.send_event("relay_lagged", msg).await
            }
            Delivery::Disconnect(verdict) => Err(Some(match verdict {
                Verdict::SlowConsumer { .. } => CloseReason::SlowConsumer,
                Verdict::PrivateChannelLag { .. } => CloseReason::PrivateLag,
            })),
        }
    }

    async fn send_event(&mut self, kind: &str, msg: serde_json::Value) -> Result<(), Close> {
        let frame = serde_json::json!({ "type": kind, "msg": msg }).to_string();
        self.send_now(frame).await
    }

    async fn ping(&mut self) -> Result<(), Close> {
        self.awaiting_pong = true;
        self.feed(Message::Ping(bytes::Bytes::from_static(b"relay")))
            .await?;
        self.flush().await
    }

    /// Queues a reply (every piece is valid text already: no UTF-8 re-validation).
    async fn feed_reply(&mut self, frame: String) -> Result<(), Close> {
        let counter = &mut self.sent[REPLY];
        counter.0 += 1;
        counter.1 += frame.len() as u64;
        let frame = Frame::message(frame.into_bytes(), OpCode::Data(Data::Text), true);
        self.feed(Message::Frame(frame)).await
    }

    async fn send_now(&mut self, frame: String) -> Result<(), Close> {
        self.feed_reply(frame).await?;
        self.flush().await
    }

    /// One socket operation, bounded by the write timeout and abandoned at shutdown.
    async fn io<T>(
        app: &App,
        op: impl std::future::Future<Output = Result<T, WsError>>,
    ) -> Result<T, Close> {
        let timeout = tokio::time::timeout(app.config.downstream.write_timeout(), op);
        tokio::select! {
            biased;
            result = timeout => match result {
                Ok(Ok(value)) => Ok(value),
                // A failed write means the peer is gone or the socket is broken.
                Ok(Err(_)) => Err(None),
                Err(_) => Err(Some(CloseReason::WriteTimeout)),
            },
            _ = app.shutdown.cancelled() => Err(RESTART),
        }
    }

    async fn feed(&mut self, message: Message) -> Result<(), Close> {
        Self::io(self.app, self.ws.feed(message)).await
    }

    async fn flush(&mut self) -> Result<(), Close> {
        Self::io(self.app, self.ws.flush()).await?;
        self.out = BytesMut::new();
        if let Some(at) = self.latency_sample.take() {
            metrics::histogram!(m::LATENCY_SECONDS).record(at.elapsed().as_secs_f64());
        }
        self.flush_counters();
        Ok(())
    }

    /// Adds the frames and bytes written since the last call to the shared counters.
    fn flush_counters(&mut self) {
        let mut total = 0;
        for ((frames, bytes), counters) in self.sent.iter_mut().zip(&self.app.sent_counters) {
            if *frames > 0 {
                total += *frames;
                counters.frames.increment(*frames);
                counters.bytes.increment(*bytes);
                (*frames, *bytes) = (0, 0);
            }
        }
        if total > 0 {
            self.app
                .downstream_messages
                .fetch_add(total, Ordering::Relaxed);
        }
    }

    /// Sends the close frame (if the client is still there) and waits briefly for its echo.
    async fn close(&mut self, close: Close) {
        let Some(reason) = close else { return };
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.reason().into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            if self.ws.close(Some(frame)).await.is_ok() {
                // Read until the client's close arrives or the stream ends.
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

/// Whether an upstream status closes a client holding private channels (`private messages
/// lost`): their messages carry no seq and the exchange does not replay them. `exposed`: it held
/// one while the upstream was up; `outage`: the upstream went down since the last status;
/// `lost_held_private`: messages of a private channel it holds were lost upstream.
fn private_messages_lost(exposed: bool, outage: bool, lost_held_private: bool) -> bool {
    lost_held_private || (exposed && outage)
}

/// Whether a command subscribes to a private channel (answered only with the upstream live).
fn needs_live_upstream(command: &Command) -> bool {
    matches!(&command.action, Action::Subscribe(s) if s.channels.iter().any(|c| c.is_private()))
}

fn command_name(command: &Command) -> &'static str {
    match command.action {
        Action::Subscribe(_) => "subscribe",
        Action::Unsubscribe { .. } => "unsubscribe",
        Action::UpdateSubscription(_) => "update_subscription",
        Action::ListSubscriptions => "list_subscriptions",
        Action::Ping => "ping",
        Action::Auth { .. } => "auth",
    }
}

/// A read error: what to tell the client, if it is still there to hear it.
fn classify_read_error(e: &WsError) -> Close {
    match e {
        WsError::Capacity(_) => Some(CloseReason::TooBig),
        WsError::Utf8(_) => Some(CloseReason::InvalidUtf8),
        // TCP closed without a close frame: the peer went away, it did not break the protocol.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(CloseReason::ProtocolError),
        // The peer went away: nothing to tell it.
        _ => None,
    }
}
