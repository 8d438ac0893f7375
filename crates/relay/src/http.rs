//! The HTTP side of a listener: health, readiness, metrics, status, the dashboard, and the
//! WebSocket upgrade.
//!
//! One hyper HTTP/1 connection per accepted socket. A request for the WebSocket path with the
//! upgrade headers is answered `101` here; the upgraded socket is then handed to
//! [`crate::session`] in a task of its own, tracked for shutdown. Everything else is a small JSON
//! or text response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::app::App;
use crate::breakage::{self, Breakage};
use crate::security::Refusal;
use crate::session::{self, ClientSocket, SessionOptions};

mod credentials;
mod params;

pub use credentials::presented_token;
use params::query_value;

/// The exchange's WebSocket path, and the short alias.
pub const WS_PATHS: [&str; 2] = [protocol::sign::WS_PATH, "/ws"];

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    /// WebSocket, health and readiness; `/metrics`, `/status` and `/dashboard` too unless an
    /// admin listener exists.
    Main,
    /// `/metrics`, `/status`, `/dashboard` and health only.
    Admin,
}

type Body = Full<Bytes>;

/// A client that connects and never finishes TLS must not hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A client must send its request head within this (slowloris).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a client refused during shutdown is asked to wait: about a restart.
const SHUTDOWN_RETRY_AFTER_SECONDS: u32 = 5;

/// Accepts until the task is aborted at the end of shutdown. Each connection is a tracked task;
/// once shutdown began (draining), connections are still accepted, so probes get `/healthz` 200
/// and `/readyz` 503 and upgrades a 503 with `Retry-After` instead of a refused connection,
/// but they are not tracked: the drain waits for clients, not for probes.
pub async fn serve(app: Arc<App>, listener: TcpListener, role: ListenerRole) {
    loop {
        let (stream, peer) = accept::next(&listener).await;
        let draining = app.shutdown.is_cancelled();
        let Ok(permit) = app.handshakes.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::HANDSHAKES_REJECTED_TOTAL, "reason" => "pending handshakes")
                .increment(1);
            continue; // dropped: closed at once
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = app.config.downstream.socket_send_buffer_bytes {
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes) {
                debug!(error = %e, "cannot set the socket send buffer");
            }
        }
        let app2 = app.clone();
        let connection = async move {
            let _permit = permit;
            match (&app2.tls, role) {
                (Some(tls), ListenerRole::Main) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
                    match handshake.await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(app2, tls_stream, peer, role, draining).await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                _ => serve_connection(app2, stream, peer, role, draining).await,
            }
        };
        if draining {
            tokio::spawn(connection);
        } else {
            app.tracker.spawn(connection);
        }
    }
}

/// Serves HTTP on one accepted socket (plain or TLS) until it closes or upgrades. A connection
/// accepted while draining answers one request and closes.
async fn serve_connection<S>(
    app: Arc<App>,
    stream: S,
    peer: SocketAddr,
    role: ListenerRole,
    draining: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_app = app.clone();
    let svc = service_fn(move |req| {
        let app = svc_app.clone();
        async move { Ok::<_, Infallible>(route(app, req, peer, role)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(!draining)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let shutdown = async {
        if draining {
            std::future::pending().await
        } else {
            app.shutdown.cancelled().await
        }
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        _ = shutdown => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn route(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    role: ListenerRole,
) -> Response<Body> {
    let path = req.uri().path();
    let serves_admin = role == ListenerRole::Admin || app.config.admin_listen.is_none();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if role == ListenerRole::Main => {
            let (ready, reason) = app.readiness();
            let body = serde_json::json!({ "ready": ready, "reason": reason }).to_string();
            json(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body,
            )
        }
        (&Method::GET, "/metrics") if serves_admin => {
            let mut resp = text(StatusCode::OK, app.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (&Method::GET, "/status") if serves_admin => json(StatusCode::OK, app.status_json()),
        (&Method::GET, "/status/markets") if serves_admin => {
            let markets = app.fanout.market_names();
            json(
                StatusCode::OK,
                serde_json::json!({ "markets": markets }).to_string(),
            )
        }
        (&Method::GET, p)
            if serves_admin && (p == "/dashboard" || p.starts_with("/dashboard/")) =>
        {
            crate::dashboard::respond(p)
        }
        (&Method::GET, p) if role == ListenerRole::Main && WS_PATHS.contains(&p) => {
            upgrade(app, req, peer)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A plain HTTP refusal of an upgrade, counted by reason. The connection is closed after it, so
/// a refused client cannot keep retrying (a token, say) on one kept-alive socket.
pub fn refuse(status: StatusCode, reason: &'static str) -> Response<Body> {
    metrics::counter!(crate::metrics::HANDSHAKES_REJECTED_TOTAL, "reason" => reason).increment(1);
    let mut resp = text(status, format!("{reason}\n"));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn upgrade(app: Arc<App>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if app.shutdown.is_cancelled() {
        let mut resp = refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(SHUTDOWN_RETRY_AFTER_SECONDS),
        );
        return resp;
    }
    if breakage::is(Breakage::RefuseUpgrades) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "refused");
    }
    if breakage::is(Breakage::Leak) {
        std::mem::forget(vec![1u8; 256 * 1024]);
    }
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    // Before anything else: a browser page from a foreign site must not ride a user's access.
    let origin = req.headers().get(header::ORIGIN);
    let origin_ok = match origin {
        None => app.gate.origin_allowed(None),
        // Present but not text: never on the list.
        // The relay's own dashboard is allowed without configuration.
        Some(value) => value.to_str().is_ok_and(|o| {
            app.gate.origin_allowed(Some(o))
                || crate::dashboard::is_own_origin(
                    o,
                    header(header::HOST),
                    app.ports.get().copied(),
                )
        }),
    };
    if !origin_ok {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let is_upgrade = header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket");
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "not a websocket upgrade");
    };
    if !is_upgrade || !version_ok {
        return refuse(StatusCode::BAD_REQUEST, "not a websocket upgrade");
    }
    let presented = presented_token(
        header(header::AUTHORIZATION),
        req.uri().query(),
        header(header::COOKIE),
    );
    let identity = match app.gate.identify(presented.as_deref()) {
        Ok(identity) => identity,
        Err(_) => return refuse(StatusCode::UNAUTHORIZED, "invalid token"),
    };
    let admission = match app.gate.admit(peer.ip()) {
        Ok(admission) => admission,
        Err(Refusal::Busy {
            retry_after,
            reason,
        }) => {
            let mut resp = refuse(StatusCode::SERVICE_UNAVAILABLE, reason);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return resp;
        }
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "refused"),
    };
    let options = SessionOptions {
        relay_events: matches!(
            query_value(req.uri().query(), "relay_events").as_deref(),
            Some("1" | "true")
        ),
        peer,
        limits: app.config.downstream.limits(),
        identity,
        admission,
    };
    let accept = derive_accept_key(key.as_bytes());
    let ws_config = app.ws_config();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_app = app.clone();
    app.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (socket, read_ahead) = ClientSocket::from_upgraded(upgraded);
                let ws = WebSocketStream::from_partially_read(
                    socket,
                    read_ahead,
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                // The session runs in a task of its own, sized for the session alone: this
                // one, with what it captured for the upgrade, is freed now (an idle client
                // pays for one task allocation, not for both states in one).
                let tracker = task_app.tracker.clone();
                tracker.spawn(session::run(task_app, ws, options));
            }
            Err(e) => debug!(%peer, error = %e, "upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    resp
}
