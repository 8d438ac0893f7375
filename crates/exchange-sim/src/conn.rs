//! The WebSocket side: accept loop, handshake checks (path, Origin, signed headers, handshake
//! faults) and one task per connection that reads commands, forwards the event stream, pings and
//! obeys faults.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use protocol::sign::{HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, WS_PATH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::SimAuth;
use crate::engine::Batch;
use crate::session::{Out, Rules, Session};
use crate::sim::{take_one, ConnHandle, Control, Shared};

/// Most connections (handshaking or open) at once; the accept loop waits for a slot beyond it.
const MAX_CONNECTIONS: usize = 10_000;
/// How long a client has to complete the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the client's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest command frame accepted (a subscribe naming thousands of markets fits).
const MAX_COMMAND_BYTES: usize = 1 << 20;
/// The payload of the server's Ping frames (reference §3).
const PING_PAYLOAD: &[u8] = b"heartbeat";

type Ws = WebSocketStream<TcpStream>;

/// Accepts TCP connections until `shutdown`, each served by its own task in `tasks`; those of
/// an `exempt` listener are out of every fault's reach.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    exempt: bool,
) {
    // Bounds the number of connection tasks; a permit is held by each task until it ends.
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = accept::next(&listener) => accepted,
        };
        let id = shared.next_conn_id();
        let span = tracing::info_span!("conn", id, %peer);
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tasks.spawn(
            async move {
                connection(stream, peer, id, exempt, shared, shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Decides a handshake: `Ok(authenticated)` or the refusal to send instead of the upgrade.
fn check(shared: &Shared, req: &Request, exempt: bool) -> Result<bool, (StatusCode, String)> {
    if req.uri().path() != WS_PATH {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no WebSocket endpoint at {}", req.uri().path()),
        ));
    }
    if shared.config.reject_origin && req.headers().contains_key("origin") {
        return Err((
            StatusCode::FORBIDDEN,
            "Origin header not allowed".to_owned(),
        ));
    }
    if !exempt && take_one(&shared.reject_auth) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "authentication rejected (reject_auth fault)".to_owned(),
        ));
    }
    let SimAuth::Verifier(verifier) = &shared.config.auth else {
        return Ok(true);
    };
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (key, ts, sig) = (
        header(HEADER_KEY),
        header(HEADER_TIMESTAMP),
        header(HEADER_SIGNATURE),
    );
    if shared.config.allow_anonymous && key.is_none() && ts.is_none() && sig.is_none() {
        return Ok(false);
    }
    verifier
        .verify(key, ts, sig, WS_PATH, protocol::sign::now_ms())
        .map(|()| true)
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    exempt: bool,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    if !exempt && take_one(&shared.stall) {
        shared
            .counters
            .handshakes_stalled
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!("stalling handshake (stall_handshake fault)");
        let hold = Duration::from_secs(crate::fault::DEFAULT_HOLD_SECONDS);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(hold) => {}
        }
        return drop(stream);
    }
    let _ = stream.set_nodelay(true);
    let mut verdict = None;
    // The signature is tungstenite's `Callback`; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| match check(&shared, req, exempt) {
        Ok(authenticated) => {
            verdict = Some(authenticated);
            Ok(resp)
        }
        Err((status, reason)) => {
            tracing::info!(%status, %reason, "handshake refused");
            let mut refusal = ErrorResponse::new(Some(reason));
            *refusal.status_mut() = status;
            Err(refusal)
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_COMMAND_BYTES))
        .max_frame_size(Some(MAX_COMMAND_BYTES));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(WsError::Http(_))) => {
            shared
                .counters
                .handshakes_rejected
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(Err(e)) => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            return tracing::debug!(error = %e, "handshake failed");
        }
        Err(_) => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            return tracing::debug!("handshake timed out");
        }
    };
    let authenticated = verdict.unwrap_or(false);
    shared
        .counters
        .handshakes_accepted
        .fetch_add(1, Ordering::Relaxed);
    // Subscribe before any command is read, so every event after any later snapshot is seen.
    let events = shared.engine.subscribe();
    let (control_tx, control) = mpsc::unbounded_channel();
    let rules = Rules {
        authenticated,
        duplicate: shared.config.duplicate_subscribe,
        max_markets: shared.config.max_markets_per_subscription,
    };
    let handle = Arc::new(ConnHandle {
        id,
        peer,
        authenticated,
        exempt,
        blackholed: Default::default(),
        session: Mutex::new(Session::new(rules)),
        control: control_tx,
    });
    shared.conns.lock().insert(id, handle.clone());
    tracing::debug!(authenticated, "connected");
    let end = serve(ws, &shared, &handle, events, control, &shutdown).await;
    shared.conns.lock().remove(&id);
    tracing::debug!(%end, "connection ended");
}

/// Why a connection ended (for the debug log).
enum End {
    ClientClosed,
    Shutdown,
    Fault(&'static str),
    /// The peer went away or broke the protocol; expected, not an error of the simulator.
    Peer(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed"),
            End::Shutdown => f.write_str("shutdown"),
            End::Fault(kind) => write!(f, "{kind} fault"),
            End::Peer(e) => write!(f, "peer error: {e}"),
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn write(ws: &mut Ws, out: &mut Out, shared: &Shared) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    let n = out.len() as u64;
    for frame in out.drain(..) {
        ws.feed(Message::Text(frame)).await.map_err(peer_error)?;
    }
    ws.flush().await.map_err(peer_error)?;
    shared
        .counters
        .messages_sent
        .fetch_add(n, Ordering::Relaxed);
    Ok(())
}

fn peer_error(e: WsError) -> End {
    End::Peer(e.to_string())
}

async fn serve(
    mut ws: Ws,
    shared: &Shared,
    handle: &ConnHandle,
    mut events: broadcast::Receiver<Batch>,
    mut control: mpsc::UnboundedReceiver<Control>,
    shutdown: &CancellationToken,
) -> End {
    let period = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let engine = &shared.engine;
    let stamp = || shared.config.stamp.then(now_ns);
    let mut out = Out::new();
    loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
                return End::Shutdown;
            }
            Some(ctl) = control.recv() => match ctl {
                Control::Drop => return End::Fault("drop"),
                Control::Blackhole(hold) => {
                    handle.blackholed.store(true, Ordering::Relaxed);
                    drop(events);
                    return blackhole(ws, hold, control, shutdown).await;
                }
                Control::Close { code, reason } => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    return close(ws, frame).await;
                }
                Control::Duplicate { sid } => {
                    handle.session.lock().duplicate(sid, &mut out);
                    Ok(())
                }
                Control::Error { code, sid } => {
                    handle.session.lock().inject_error(code, sid, &mut out);
                    Ok(())
                }
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    handle.session.lock().command(text.as_bytes(), engine, stamp(), &mut out);
                    Ok(())
                }
                Some(Ok(Message::Binary(bytes))) => {
                    handle.session.lock().command(&bytes, engine, stamp(), &mut out);
                    Ok(())
                }
                // tungstenite answers pings and close frames itself while we keep reading.
                Some(Ok(_)) => Ok(()),
                Some(Err(WsError::ConnectionClosed)) | None => Err(End::ClientClosed),
                Some(Err(e)) => Err(peer_error(e)),
            },
            batch = events.recv() => match batch {
                Ok(batch) => {
                    handle.session.lock().batch(&batch, engine, stamp(), &mut out);
                    Ok(())
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "connection fell behind the stream: error 25 on its sids");
                    handle.session.lock().lagged(&mut out);
                    Ok(())
                }
                Err(broadcast::error::RecvError::Closed) => Err(End::Shutdown),
            },
            _ = ping.tick() => {
                ws.send(Message::Ping(PING_PAYLOAD.into())).await.map_err(peer_error)
            }
        };
        if let Err(end) = step {
            return end;
        }
        // A slow client can block the write; shutdown must not wait for it.
        let written = tokio::select! {
            written = write(&mut ws, &mut out, shared) => written,
            _ = shutdown.cancelled() => Err(End::Shutdown),
        };
        if let Err(end) = written {
            return end;
        }
    }
}

/// Holds the socket without reading or writing for `hold`. A later `drop` or `close` fault
/// ends it at once (without any frame: the connection is a black hole).
async fn blackhole(
    ws: Ws,
    hold: Duration,
    mut control: mpsc::UnboundedReceiver<Control>,
    shutdown: &CancellationToken,
) -> End {
    let deadline = tokio::time::sleep(hold);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => break,
            ctl = control.recv() => match ctl {
                Some(Control::Drop | Control::Close { .. }) | None => break,
                Some(_) => continue,
            },
        }
    }
    drop(ws);
    End::Fault("blackhole")
}

/// Sends a close frame and waits briefly for the client's, then drops the socket.
async fn close(mut ws: Ws, frame: CloseFrame) -> End {
    let _ = ws.send(Message::Close(Some(frame))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { while ws.next().await.is_some() {} }).await;
    End::Fault("close")
}
