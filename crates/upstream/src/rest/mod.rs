//! A client for the exchange's REST portfolio endpoints (reference §8): what a backfill needs
//! after the WebSocket missed something.
//!
//! Every request is signed like the WebSocket upgrade (same key, `protocol::sign`, path without
//! the query string), spends a token of a bucket at the account's read limit, and is retried on
//! 429, 5xx, timeouts, broken connections and undecodable bodies with full-jitter backoff
//! (`Retry-After` wins when the exchange sends one). Lists are followed to their last page. One
//! call (all its pages and retries) is bounded by `max_total_seconds`, after which it fails with
//! [`RestError::GaveUp`]. 401/403 and other 4xx are not retried.
//!
//! One HTTP/1.1 connection per request: backfills are rare and short, and a fresh connection
//! cannot inherit a half-dead one.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, ACCEPT, HOST, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use protocol::Signer;
use rand::rngs::StdRng;
use rand::SeedableRng;
use settings::{Problem, Problems};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

use crate::backoff::{parse_retry_after, Backoff};
use crate::config::UpstreamConfig;
use crate::ratelimit::TokenBucket;

mod config;
mod types;

pub use config::{
    rest_url_for, RestConfig, DEFAULT_MAX_TOTAL_SECONDS, DEFAULT_PAGE_LIMIT,
    DEFAULT_READS_PER_SECOND, DEFAULT_READ_BURST, DEFAULT_REQUEST_TIMEOUT_SECONDS,
    DEFAULT_REST_BACKOFF_BASE_SECONDS, DEFAULT_REST_BACKOFF_CAP_SECONDS, DEFAULT_REST_URL,
};
pub use types::{
    EventPosition, Fill, FillQuery, MarketPosition, Order, OrderQuery, PositionQuery, Positions,
};
use types::{FillsPage, OrdersPage, Page, PositionsPage};

/// Why a call failed. The first four are what one attempt can meet (retried, and found as
/// [`GaveUp::last`](RestError::GaveUp)); the others end the call.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("rate limited (429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the exchange answered {status}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("transport: {0}")]
    Transport(String),
    #[error("undecodable answer: {0}")]
    Decode(String),
    #[error("credentials refused ({status}): {body}")]
    Unauthorized { status: u16, body: String },
    #[error("request refused ({status}): {body}")]
    Rejected { status: u16, body: String },
    #[error("gave up after {elapsed:?} and {attempts} attempts")]
    GaveUp {
        elapsed: Duration,
        attempts: u32,
        #[source]
        last: Option<Box<RestError>>,
    },
}

impl RestError {
    /// A fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RestError::RateLimited { .. } => "rate_limited",
            RestError::Unavailable { .. } => "server_error",
            RestError::Timeout => "timeout",
            RestError::Transport(_) => "transport",
            RestError::Decode(_) => "decode",
            RestError::Unauthorized { .. } => "unauthorized",
            RestError::Rejected { .. } => "rejected",
            RestError::GaveUp { .. } => "gave_up",
        }
    }

    fn retryable(&self) -> bool {
        matches!(
            self,
            RestError::RateLimited { .. }
                | RestError::Unavailable { .. }
                | RestError::Timeout
                | RestError::Transport(_)
                | RestError::Decode(_)
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RestError::RateLimited { retry_after } | RestError::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// Largest answer read; a page of 1000 fills is about 500 KB.
const MAX_BODY_BYTES: usize = 16 << 20;

struct Inner {
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    host: String,
    port: u16,
    /// `Host` header value.
    authority: HeaderValue,
    /// Path of the API root, without a trailing slash (`/trade-api/v2`).
    base_path: String,
    signer: Option<Signer>,
    page_limit: String,
    request_timeout: Duration,
    max_total: Duration,
    backoff_base: Duration,
    backoff_cap: Duration,
    bucket: TokenBucket,
}

/// The REST client. Cheap to clone; clones share the rate limit.
#[derive(Clone)]
pub struct RestClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .finish_non_exhaustive()
    }
}

impl RestClient {
    /// A client signing with the upstream's key and trusting its CA roots. Reports every problem
    /// of `config` (and of the upstream's key settings) at once.
    pub fn new(upstream: &UpstreamConfig, config: &RestConfig) -> Result<RestClient, Problems> {
        let mut problems = Problems::new();
        let base_url = config
            .base_url
            .clone()
            .or_else(|| config::rest_url_for(&upstream.url))
            .unwrap_or_default();
        let uri = base_url.parse::<Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if uri.is_none() {
            problems.add(
                "upstream.rest.base_url",
                format!("{base_url:?}"),
                "must be an http:// or https:// URL with a host",
            );
        }
        if config.backoff_cap_seconds < config.backoff_base_seconds {
            problems.add(
                "upstream.rest.backoff_cap_seconds",
                config.backoff_cap_seconds,
                "must be >= rest.backoff_base_seconds",
            );
        }
        problems.positive("upstream.rest.reads_per_second", config.reads_per_second);
        if !(1..=1000).contains(&config.page_limit) {
            problems.add(
                "upstream.rest.page_limit",
                config.page_limit,
                "must be 1..=1000",
            );
        }
        let settings = match upstream.resolve() {
            Ok(s) => Some(s),
            Err(e) => {
                problems.extend(e);
                None
            }
        };
        let (Some(uri), Some(settings), true) = (uri, settings, problems.is_empty()) else {
            return Err(problems);
        };
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
        let bad_url = |reason: String| {
            Problems::from(Problem::new(
                "upstream.rest.base_url",
                format!("{base_url:?}"),
                reason,
            ))
        };
        let tls = if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| bad_url(format!("bad host name: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(settings.tls.clone()), name))
        } else {
            None
        };
        Ok(RestClient {
            inner: Arc::new(Inner {
                tls,
                authority: HeaderValue::from_str(authority).map_err(|e| bad_url(e.to_string()))?,
                host,
                port,
                base_path: uri.path().trim_end_matches('/').to_owned(),
                signer: settings.signer,
                page_limit: config.page_limit.to_string(),
                request_timeout: config.request_timeout_seconds.get(),
                max_total: config.max_total_seconds.get(),
                backoff_base: config.backoff_base_seconds.get(),
                backoff_cap: config.backoff_cap_seconds.get(),
                bucket: TokenBucket::new(config.reads_per_second, config.read_burst.get()),
            }),
        })
    }

    /// Every fill matching `query`, oldest first (the exchange lists newest first), each trade
    /// id once.
    pub async fn fills(&self, query: &FillQuery) -> Result<Vec<Fill>, RestError> {
        let params = [
            ("ticker", query.ticker.clone()),
            ("order_id", query.order_id.clone()),
            ("min_ts", query.min_ts.map(|t| t.to_string())),
            ("max_ts", query.max_ts.map(|t| t.to_string())),
        ];
        let pages: Vec<FillsPage> = self.pages("/portfolio/fills", &params).await?;
        let mut seen = HashSet::new();
        let mut fills = Vec::new();
        for raw in pages
            .into_iter()
            .rev()
            .flat_map(|p| p.fills.into_iter().rev())
        {
            let fill = Fill::try_from(raw).map_err(|e| RestError::Decode(e.to_owned()))?;
            if seen.insert(fill.trade_id.clone()) {
                fills.push(fill);
            }
        }
        // Stable: keeps the exchange's order within a second.
        fills.sort_by_key(|f| f.ts.unwrap_or(i64::MIN));
        Ok(fills)
    }

    /// Every fill from `min_ts` to `max_ts` (Unix seconds, inclusive), oldest first.
    pub async fn fills_since(
        &self,
        min_ts: Option<i64>,
        max_ts: Option<i64>,
    ) -> Result<Vec<Fill>, RestError> {
        self.fills(&FillQuery {
            min_ts,
            max_ts,
            ..FillQuery::default()
        })
        .await
    }

    /// The latest state of every order matching `query`, newest first, as the exchange lists them.
    pub async fn orders(&self, query: &OrderQuery) -> Result<Vec<Order>, RestError> {
        let params = [
            ("ticker", query.ticker.clone()),
            ("event_ticker", query.event_ticker.clone()),
            ("status", query.status.clone()),
            ("min_ts", query.min_ts.map(|t| t.to_string())),
            ("max_ts", query.max_ts.map(|t| t.to_string())),
        ];
        let pages: Vec<OrdersPage> = self.pages("/portfolio/orders", &params).await?;
        Ok(pages.into_iter().flat_map(|p| p.orders).collect())
    }

    /// Every market and event position matching `query`.
    pub async fn positions(&self, query: &PositionQuery) -> Result<Positions, RestError> {
        let params = [
            ("ticker", query.ticker.clone()),
            ("event_ticker", query.event_ticker.clone()),
            ("count_filter", query.count_filter.clone()),
        ];
        let pages: Vec<PositionsPage> = self.pages("/portfolio/positions", &params).await?;
        let mut out = Positions::default();
        for p in pages {
            out.market_positions.extend(p.market_positions);
            out.event_positions.extend(p.event_positions);
        }
        Ok(out)
    }

    /// Follows the cursor from the first page to the last, within the call's time bound.
    async fn pages<P: Page>(
        &self,
        endpoint: &str,
        params: &[(&str, Option<String>)],
    ) -> Result<Vec<P>, RestError> {
        let inner = &self.inner;
        let mut call = Call {
            started: Instant::now(),
            attempts: 0,
            backoff: Backoff::new(
                inner.backoff_base,
                2.0,
                inner.backoff_cap,
                StdRng::from_entropy(),
            ),
        };
        let path = format!("{}{endpoint}", inner.base_path);
        let mut cursor: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            // Built in a block: the serializer is not `Send` and must not live across the await.
            let query = {
                let mut query = form_urlencoded::Serializer::new(String::new());
                for (key, value) in params {
                    if let Some(v) = value {
                        query.append_pair(key, v);
                    }
                }
                query.append_pair("limit", &inner.page_limit);
                if let Some(c) = &cursor {
                    query.append_pair("cursor", c);
                }
                query.finish()
            };
            let page: P = self.get(&path, &query, &mut call).await?;
            call.backoff.reset();
            let next = page.cursor().filter(|c| !c.is_empty()).map(str::to_owned);
            pages.push(page);
            match next {
                // A cursor that does not move would loop until the bound: refuse it now.
                Some(c) if cursor.as_deref() == Some(c.as_str()) => {
                    return Err(RestError::Decode(format!("the cursor {c:?} repeats")));
                }
                Some(c) => cursor = Some(c),
                None => return Ok(pages),
            }
        }
    }

    /// One page, retried until it comes or the call's bound passes.
    async fn get<P: Page>(&self, path: &str, query: &str, call: &mut Call) -> Result<P, RestError> {
        let inner = &self.inner;
        let deadline = call.started + inner.max_total;
        let mut last: Option<RestError> = None;
        loop {
            let gave_up = |call: &Call, last: Option<RestError>| RestError::GaveUp {
                elapsed: call.started.elapsed(),
                attempts: call.attempts,
                last: last.map(Box::new),
            };
            if tokio::time::timeout_at(deadline, inner.bucket.acquire())
                .await
                .is_err()
            {
                return Err(gave_up(call, last));
            }
            call.attempts += 1;
            let limit = inner
                .request_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let sent = Instant::now();
            let result = match tokio::time::timeout(limit, self.attempt(path, query)).await {
                Err(_) => Err(RestError::Timeout),
                Ok(r) => r,
            };
            let result = result.and_then(|body| {
                serde_json::from_slice::<P>(&body).map_err(|e| RestError::Decode(e.to_string()))
            });
            let outcome = result.as_ref().map_or_else(RestError::label, |_| "ok");
            crate::metrics::rest_request(outcome, sent.elapsed());
            let err = match result {
                Ok(page) => return Ok(page),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => e,
            };
            let delay = err
                .retry_after()
                .unwrap_or_else(|| call.backoff.next_delay());
            tracing::debug!(error = %err, ?delay, attempts = call.attempts, path, "REST request failed; retrying");
            if Instant::now() + delay >= deadline {
                return Err(gave_up(call, Some(err)));
            }
            last = Some(err);
            tokio::time::sleep(delay).await;
        }
    }

    /// One signed request on a fresh connection: the body of a 200, or the classified failure.
    async fn attempt(&self, path: &str, query: &str) -> Result<Bytes, RestError> {
        let inner = &self.inner;
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut req = Request::get(target)
            .header(HOST, inner.authority.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, "kalshi-relay")
            .body(Empty::<Bytes>::new())
            .map_err(|e| RestError::Transport(e.to_string()))?;
        if let Some(signer) = &inner.signer {
            for (name, value) in signer.sign_now(path).pairs() {
                let value = HeaderValue::from_str(value)
                    .map_err(|e| RestError::Transport(e.to_string()))?;
                req.headers_mut().insert(name, value);
            }
        }
        let tcp = TcpStream::connect((inner.host.as_str(), inner.port))
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (status, retry_after, body) = match &inner.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| RestError::Transport(e.to_string()))?;
                exchange(tls, req).await?
            }
            None => exchange(tcp, req).await?,
        };
        let text = || {
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        };
        match status {
            StatusCode::OK => Ok(body),
            StatusCode::TOO_MANY_REQUESTS => Err(RestError::RateLimited { retry_after }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RestError::Unauthorized {
                status: status.as_u16(),
                body: text(),
            }),
            s if s.is_server_error() => Err(RestError::Unavailable {
                status: s.as_u16(),
                retry_after,
            }),
            s => Err(RestError::Rejected {
                status: s.as_u16(),
                body: text(),
            }),
        }
    }
}

/// One call's retry state: its start (the bound counts from it), attempts and backoff.
struct Call {
    started: Instant,
    attempts: u32,
    backoff: Backoff,
}

/// Aborts the connection task when the attempt ends, however it ends (a timeout drops it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `req` over `io` and reads the whole answer: status, `Retry-After`, body.
async fn exchange<S>(
    io: S,
    req: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Option<Duration>, Bytes), RestError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = |e: hyper::Error| RestError::Transport(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(transport)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "REST connection ended");
        }
    }));
    let resp = sender.send_request(req).await.map_err(transport)?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| RestError::Transport(format!("reading the body: {e}")))?
        .to_bytes();
    Ok((status, retry_after, body))
}

#[cfg(test)]
mod tests {
    use settings::Seconds;

    use super::*;

    #[test]
    fn every_bad_setting_is_reported() {
        let config = RestConfig {
            base_url: Some("ftp://x".into()),
            reads_per_second: 0.0,
            page_limit: 0,
            backoff_base_seconds: Seconds::from_secs(5),
            backoff_cap_seconds: Seconds::from_secs(1),
            ..RestConfig::default()
        };
        let err = RestClient::new(&UpstreamConfig::default(), &config).unwrap_err();
        let keys: Vec<_> = err.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstream.rest.base_url",
                "upstream.rest.backoff_cap_seconds",
                "upstream.rest.reads_per_second",
                "upstream.rest.page_limit"
            ]
        );
        // Zero where it is invalid, or a negative duration, is refused while parsing.
        for bad in [r#"{"read_burst":0}"#, r#"{"request_timeout_seconds":-1}"#] {
            let err = serde_json::from_str::<RestConfig>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("expected"), "{bad}: {err}");
        }
        assert!(err
            .to_string()
            .contains("upstream.rest.page_limit = 0: must be 1..=1000"));
        assert!(RestClient::new(&UpstreamConfig::default(), &RestConfig::default()).is_ok());
    }
}
