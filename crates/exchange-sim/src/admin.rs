//! The admin HTTP API (HTTP/1.1, JSON), on its own listener. Routes are documented in the crate
//! README; scripts rely on them.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::fault::Fault;
use crate::sim::Shared;

/// Largest request body accepted (fault parameters are tiny).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Serves the admin API until `shutdown`; each HTTP connection is a task in `tasks`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = accept::next(&listener) => accepted,
        };
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tasks.spawn(
            async move {
                let token = shutdown.clone();
                let service = service_fn(move |req| {
                    let (shared, token) = (shared.clone(), token.clone());
                    async move { Ok::<_, Infallible>(route(&shared, req, &token).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            }
            .instrument(tracing::debug_span!("admin")),
        );
    }
}

fn reply(status: StatusCode, body: impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"null".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    shutdown: &CancellationToken,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path.starts_with(crate::rest::API_PREFIX) {
        return crate::rest::route(shared, req, shutdown).await;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["admin", "markets"]) => reply(StatusCode::OK, &shared.engine.tickers),
        (Method::GET, ["admin", "books", ticker]) => match shared.book(ticker) {
            Some(book) => reply(StatusCode::OK, book),
            None => error(StatusCode::NOT_FOUND, format!("unknown market {ticker}")),
        },
        (Method::GET, ["admin", "stats"]) => reply(StatusCode::OK, shared.stats()),
        (Method::GET, ["admin", "fills"]) => {
            let mut since_ms = None;
            let query = req.uri().query().unwrap_or("");
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                if key == "since_ms" {
                    match value.parse::<i64>() {
                        Ok(ms) => since_ms = Some(ms),
                        Err(_) => {
                            return error(StatusCode::BAD_REQUEST, "since_ms: not an integer")
                        }
                    }
                }
            }
            let body = shared.ledger.lock().admin_fills(since_ms);
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        (Method::POST, ["admin", "pause"]) => {
            shared.set_paused(true);
            reply(StatusCode::OK, json!({ "paused": true }))
        }
        (Method::POST, ["admin", "resume"]) => {
            shared.set_paused(false);
            reply(StatusCode::OK, json!({ "paused": false }))
        }
        (Method::POST, ["admin", "fault", kind]) => {
            let kind = (*kind).to_owned();
            let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("unreadable body: {e}")),
            };
            let fault = match Fault::from_request(&kind, &body) {
                Ok(f) => f,
                Err(e) if e.starts_with("unknown fault kind") => {
                    return error(StatusCode::NOT_FOUND, e)
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            // A burst generates up to a million messages: keep it off the async workers.
            let applied = fault.clone();
            let shared = shared.clone();
            match tokio::task::spawn_blocking(move || shared.fault(fault)).await {
                Ok(()) => reply(StatusCode::OK, json!({ "applied": applied })),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("fault failed: {e}"),
                ),
            }
        }
        (_, ["admin", "markets" | "stats" | "fills" | "pause" | "resume"])
        | (_, ["admin", "books" | "fault", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}
