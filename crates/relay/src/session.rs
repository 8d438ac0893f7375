//! One client connection: a thin I/O loop ([`run`]) around the session's sans-IO core
//! (`session/core.rs`).
//!
//! One task per client owns both halves of its WebSocket and waits on two things: the client's
//! frames (commands; reading also answers the client's pings) and its fanout subscriber's wake
//! group. Everything else the session acts on arrives through that one wake-up: data, the
//! upstream's status in order with it (fanout notices), heartbeat pings and pong checks (the
//! heartbeat wakes the group; see `heartbeat.rs`) and the relay's shutdown.
//!
//! On each wake-up the loop looks at what is due, in order: shutdown, the pong check, a ping,
//! then up to `MAX_BATCH` deliveries, written by the core straight into one outgoing buffer
//! that goes to the socket in one write. A client that cannot keep up is the fanout's business
//! (lag, repair, or a slow-consumer verdict): nothing queues here without bound, and a write
//! that blocks longer than `write_timeout_seconds` ends the connection.
//!
//! Frames the session sends are written to the socket directly (`session/out.rs`), after
//! tungstenite's own (its answers to the client's pings, its close echo) are flushed whole;
//! tungstenite reads, answers pings and runs the close handshake.

mod commands;
mod core;
mod out;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

pub(crate) use self::core::CommandLimits;
use self::core::{Close, Core, Incoming};
use crate::app::{App, SentCounters};
use crate::client::Limits;
use crate::close::{CloseReason, Ending};
use crate::heartbeat::{Beat, Heartbeat};
use crate::metrics as m;
use crate::resume::History;
use crate::security::{Admission, Gate, Identity};
use crate::status::UpstreamStatus;
use crate::throughput::Traffic;

pub(crate) use self::out::KINDS;
pub use self::transport::{ClientSocket, Transport};

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

/// What a session uses of the running relay, and nothing more: built once by [`App::new`],
/// shared by every session.
pub(crate) struct Context {
    pub fanout: fanout::Fanout<UpstreamStatus>,
    pub gate: Arc<Gate>,
    pub heartbeat: Arc<Heartbeat>,
    /// Cancelled when the relay stops: sessions close with 1012.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The recent private stream and REST, for `resume_from`.
    pub history: Arc<parking_lot::Mutex<History>>,
    pub rest: Option<upstream::RestClient>,
    pub commands: CommandLimits,
    pub auth_timeout: Duration,
    pub write_timeout: Duration,
    /// How far before a resume position REST is asked from (`upstream.backfill_overlap_seconds`).
    pub resume_overlap_seconds: i64,
    /// Connected clients, for `/status` and the shutdown log.
    pub clients: std::sync::atomic::AtomicUsize,
    /// Per frame kind ([`KINDS`]), registered once: a session's flush adds to them without a
    /// registry lookup per batch.
    pub sent_counters: Vec<SentCounters>,
    pub traffic: Arc<Traffic>,
    /// `relay_latency_seconds`, registered once.
    pub latency: metrics::Histogram,
}

/// Most deliveries written before a socket write and a look at the client's frames, so one busy
/// client cannot starve its own reads.
const MAX_BATCH: usize = 256;
/// How long a close handshake may take before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs one client session to its end. [`Transport`] is implemented for TCP, TLS over TCP and
/// in-memory streams; a stream that cannot tell when it is readable is read at every wake-up.
pub async fn run<S>(app: Arc<App>, ws: WebSocketStream<S>, options: SessionOptions)
where
    S: Transport,
{
    serve(&app.sessions, ws, options).await
}

async fn serve<S>(app: &Context, ws: WebSocketStream<S>, options: SessionOptions)
where
    S: Transport,
{
    app.clients.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    metrics::counter!(m::CONNECTIONS_TOTAL).increment(1);
    let peer = options.peer;
    debug!(%peer, "connected");
    let mut session = Session::new(app, ws, options);
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
    debug!(%peer, ?ending, "disconnected");
}

struct Session<'a, S> {
    app: &'a Context,
    ws: WebSocketStream<S>,
    core: Core,
    /// The subscriber's wake group, which is also the heartbeat bucket.
    signal: fanout::Signal,
    /// The heartbeat counts already acted on.
    seen: Beat,
    /// The code of the client's own close frame, if it closed.
    client_close: Option<u16>,
    /// tungstenite may hold frames of its own to send (it read since its last flush: a ping's
    /// answer, a close echo).
    ws_unflushed: bool,
    /// Held for the session's life: dropping it frees the client's slot.
    _admission: Admission,
}

impl<'a, S> Session<'a, S>
where
    S: Transport,
{
    fn new(app: &'a Context, ws: WebSocketStream<S>, options: SessionOptions) -> Self {
        let sub = app.fanout.subscriber();
        let signal = sub.signal();
        let core = Core::new(
            sub,
            app.gate.clone(),
            options.identity,
            options.limits,
            app.commands,
            options.relay_events,
        );
        Session {
            app,
            ws,
            core,
            seen: app.heartbeat.beat(signal.group()),
            signal,
            client_close: None,
            ws_unflushed: false,
            _admission: options.admission,
        }
    }

    async fn run_loop(&mut self) -> Close {
        if self.core.pending_auth() {
            tokio::select! {
                _ = self.app.shutdown.cancelled() => return Some(CloseReason::Restart),
                result = Box::pin(self.authenticate_first()) => if let Err(close) = result { return close },
            }
        }
        let signal = self.signal.clone();
        let mut read_tried = true;
        // The last read attempt came back pending: the next waits for the socket's readiness.
        let mut read_idle = false;
        loop {
            // Armed before the look, so a wake-up that comes during it is not missed.
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.step().await {
                Err(close) => return close,
                // More is ready than one batch: no wake-up will say so. The client's frames
                // that arrived meanwhile are read first, so a busy stream never starves them.
                Ok(true) => {
                    self.ws_unflushed = true;
                    while let Some(frame) = self.ws.next().now_or_never() {
                        if let Err(close) = self.on_frame(frame).await {
                            return close;
                        }
                    }
                    read_idle = true;
                    continue;
                }
                Ok(false) => {}
            }
            // A wake-up is looked at before the socket, and the socket is read only when it may
            // hold something (`Transport`): a parked session has just looked. A wake-up that
            // comes before any look at the socket (more data while the last batch was written)
            // puts the socket first next time, so a busy stream never starves the client's
            // frames (pongs, commands).
            let read_first = !read_tried;
            read_tried = false;
            let next = std::future::poll_fn(|cx| {
                if !read_first && woken.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                read_tried = true;
                // After a frame, tungstenite may hold the next one already read: it is asked
                // again before the socket's readiness counts.
                if !read_idle || self.ws.get_ref().poll_read_ready(cx).is_ready() {
                    self.ws_unflushed = true;
                    if let Poll::Ready(frame) = self.ws.poll_next_unpin(cx) {
                        read_idle = false;
                        return Poll::Ready(Some(frame));
                    }
                    read_idle = true;
                }
                woken.as_mut().poll(cx).map(|()| None)
            })
            .await;
            if let Some(frame) = next {
                if let Err(close) = self.on_frame(frame).await {
                    return close;
                }
            }
        }
    }

    /// Does what is due now: shutdown, the pong check, a ping, the deliveries that are ready,
    /// in one write. True if more deliveries may be ready than one batch took.
    async fn step(&mut self) -> Result<bool, Close> {
        let heartbeat = &self.app.heartbeat;
        if heartbeat.stopping() {
            return Err(Some(CloseReason::Restart));
        }
        let beat = heartbeat.beat(self.signal.group());
        if beat.checks != self.seen.checks {
            self.seen.checks = beat.checks;
            if self.core.pong_overdue() {
                return Err(Some(CloseReason::PongTimeout));
            }
        }
        if beat.pings != self.seen.pings {
            // The check that follows this ping is the one that counts.
            self.seen = beat;
            self.core.ping();
        }
        let taken = self.core.drain(MAX_BATCH)?;
        // A replay ends a batch early (`Core::drain`): what follows it is still to be read.
        let resumed = self.resume_if_asked().await;
        self.write_out().await?;
        Ok(taken == MAX_BATCH || resumed)
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), Close> {
        let message = match frame {
            None => return Err(None),
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(classify_read_error(&e)),
        };
        let incoming = match &message {
            Message::Text(text) => Incoming::Command(text.as_bytes()),
            // Some clients send their JSON commands as binary frames, as the exchange accepts.
            Message::Binary(data) => match std::str::from_utf8(data) {
                Ok(_) => Incoming::Command(data),
                Err(_) => Incoming::InvalidUtf8,
            },
            // tungstenite answers pings itself while we keep reading; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
            Message::Close(frame) => {
                // tungstenite queued the echo: send it, so the client's close completes cleanly.
                self.client_close = Some(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
                let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.flush()).await;
                return Err(None);
            }
        };
        self.core.on_incoming(incoming, Instant::now())?;
        self.resume_if_asked().await;
        self.write_out().await
    }

    /// Serves a `resume_from` the last command asked for. A REST fetch holds the session (at
    /// most `upstream.rest.max_total_seconds`); the live stream queues meanwhile.
    async fn resume_if_asked(&mut self) -> bool {
        let Some((from, channels)) = self.core.take_resume() else {
            return false;
        };
        let app = self.app;
        // Boxed: a REST fetch is a large future, and every session's task would be sized for it.
        let fetched = Box::pin(crate::resume::fetch(
            &app.history,
            app.rest.as_ref(),
            app.resume_overlap_seconds,
            &from,
            &channels,
        ))
        .await;
        self.core.finish_resume(from, fetched);
        true
    }

    /// A client with no handshake token must send `{"cmd":"auth"}` first, within the timeout.
    async fn authenticate_first(&mut self) -> Result<(), Close> {
        let deadline = self.app.auth_timeout;
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
            Some(Ok(_)) => return Err(Some(CloseReason::Unauthorized)),
        };
        self.core.on_first(&bytes)?;
        self.write_out().await
    }

    /// Writes what the core put out: tungstenite's own frames first (its answers to the
    /// client's pings, whole), then ours, in one write.
    async fn write_out(&mut self) -> Result<(), Close> {
        if self.core.out.is_empty() {
            return Ok(());
        }
        let bytes = self.core.out.take();
        let ws = &mut self.ws;
        let ws_unflushed = std::mem::take(&mut self.ws_unflushed);
        // One timeout for the whole write: a timer per socket operation costs every batch.
        io(self.app, async {
            if ws_unflushed {
                ws.flush().await.map_err(|_| ())?;
            }
            let socket = ws.get_mut();
            socket.write_all(&bytes).await.map_err(|_| ())?;
            socket.flush().await.map_err(|_| ())
        })
        .await?;
        self.flush_counters();
        Ok(())
    }

    /// Adds the frames and bytes written since the last call to the shared counters.
    fn flush_counters(&mut self) {
        let written = self.core.out.written();
        let mut total = 0;
        for ((frames, bytes), counters) in written.sent.iter().zip(&self.app.sent_counters) {
            if *frames > 0 {
                total += *frames;
                counters.frames.increment(*frames);
                counters.bytes.increment(*bytes);
            }
        }
        if total > 0 {
            self.app
                .traffic
                .downstream_messages
                .fetch_add(total, Ordering::Relaxed);
        }
        if let Some(at) = written.latency_sample {
            self.app.latency.record(at.elapsed().as_secs_f64());
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

/// A whole write (tungstenite's pending frames, then ours), bounded as one by the write timeout
/// and abandoned at shutdown. Most writes complete at once: the timer and the shutdown waiter
/// are set up only for one that has to wait.
async fn io<T, E>(
    app: &Context,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Close> {
    let mut op = std::pin::pin!(op);
    let first = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => {
            let timeout = tokio::time::timeout(app.write_timeout, op);
            tokio::select! {
                biased;
                result = timeout => match result {
                    Ok(result) => result,
                    Err(_) => return Err(Some(CloseReason::WriteTimeout)),
                },
                _ = app.shutdown.cancelled() => return Err(Some(CloseReason::Restart)),
            }
        }
    };
    // A failed write means the peer is gone or the socket is broken.
    result.map_err(|_| None)
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

#[cfg(test)]
mod tests;
