//! The exchange's REST portfolio endpoints a backfill needs (reference §8): `GET
//! /trade-api/v2/portfolio/{fills,orders,positions}`, signed like the WebSocket upgrade, served on
//! the admin listener from the account's [`Ledger`](crate::ledger::Ledger), with the REST faults.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use protocol::sign::{HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::SimAuth;
use crate::sim::Shared;

/// Where the REST API lives; the rest of a path names the endpoint.
pub(crate) const API_PREFIX: &str = "/trade-api/v2";
/// Page size when `limit` is absent, and the largest accepted (reference §8.2).
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Most tickers in a `ticker` list (S7) and event tickers in an `event_ticker` list.
const MAX_TICKERS: usize = 100;
const MAX_EVENT_TICKERS: usize = 10;

/// Filters and paging of one list request, validated by [`parse_query`].
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub tickers: Option<Vec<String>>,
    pub event_tickers: Option<Vec<String>>,
    pub order_id: Option<String>,
    pub status: Option<String>,
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
    pub limit: usize,
    pub cursor: Option<String>,
    /// Only positions with a nonzero position / any volume (`count_filter`).
    pub nonzero_position: bool,
    pub traded: bool,
    /// `subaccount` other than 0 or `settlement_status=settled`: nothing matches.
    pub nothing: bool,
    /// The `truncate` fault: answer about half a page, with a cursor that goes on after it.
    pub truncate: bool,
}

/// REST faults still to apply, each to the next `count` REST requests. Set by the admin API,
/// taken by each REST request; the lock is held for a few field updates only.
#[derive(Debug, Default)]
pub(crate) struct RestFaults {
    pub slow: (u64, Duration),
    pub rate_limit: (u64, Option<u64>),
    pub error: (u64, u16),
    pub truncate: (u64, bool),
}

fn take<T: Copy>(slot: &mut (u64, T)) -> Option<T> {
    if slot.0 == 0 {
        return None;
    }
    slot.0 -= 1;
    Some(slot.1)
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The exchange's error body (reference §8.1): `{code, message, details, service}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
    let body =
        json!({"code": code, "message": message.into(), "details": "", "service": "exchange-sim"});
    reply(status, body.to_string())
}

enum Endpoint {
    Fills,
    Orders,
    Positions,
}

/// Answers one request whose path starts with [`API_PREFIX`].
pub(crate) async fn route(
    shared: &Shared,
    req: Request<Incoming>,
    shutdown: &CancellationToken,
) -> Reply {
    shared
        .counters
        .rest_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = req.uri().path();
    let endpoint = match path.strip_prefix(API_PREFIX) {
        Some("/portfolio/fills") => Endpoint::Fills,
        Some("/portfolio/orders") => Endpoint::Orders,
        Some("/portfolio/positions") => Endpoint::Positions,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path}"),
            )
        }
    };
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET",
        );
    }
    let (slow, rate_limit, fail, truncate) = {
        let mut f = shared.rest_faults.lock();
        (
            take(&mut f.slow),
            take(&mut f.rate_limit),
            take(&mut f.error),
            take(&mut f.truncate),
        )
    };
    if let Some(delay) = slow {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    if let Some(retry_after) = rate_limit {
        // The exchange's 429 body (reference §7); it sends no Retry-After, the fault may.
        let mut resp = reply(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":"too many requests"}"#,
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, secs.into());
        }
        return resp;
    }
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(status, "internal_error", "injected fault (rest_error)");
    }
    if let SimAuth::Verifier(verifier) = &shared.config.auth {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let verdict = verifier.verify(
            header(HEADER_KEY),
            header(HEADER_TIMESTAMP),
            header(HEADER_SIGNATURE),
            path,
            protocol::sign::now_ms(),
        );
        if let Err(e) = verdict {
            return error(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
        }
    }
    let mut query = match parse_query(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(problem) => return error(StatusCode::BAD_REQUEST, "bad_request", problem),
    };
    query.truncate = truncate.is_some();
    let answer = {
        let ledger = shared.ledger.lock();
        match endpoint {
            Endpoint::Fills => ledger.fills(&query),
            Endpoint::Orders => ledger.orders(&query),
            Endpoint::Positions => ledger.positions(&query),
        }
    };
    match answer {
        Ok(body) if truncate == Some(true) => {
            // Cut the body: a well-formed HTTP answer whose JSON ends halfway.
            let half = body.len() / 2;
            reply(StatusCode::OK, Bytes::from(body).slice(..half))
        }
        Ok(body) => reply(StatusCode::OK, body),
        Err(problem) => error(StatusCode::BAD_REQUEST, "bad_request", problem),
    }
}

fn csv(key: &str, value: &str, max: usize) -> Result<Vec<String>, String> {
    let items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.len() > max {
        return Err(format!("{key}: at most {max} values"));
    }
    Ok(items)
}

fn int(key: &str, value: &str) -> Result<i64, String> {
    value
        .parse()
        .map_err(|_| format!("{key} = {value:?}: must be an integer"))
}

/// Validates the query parameters of any of the three lists; unknown ones are ignored.
fn parse_query(raw: &str) -> Result<Query, String> {
    let mut q = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let value = value.as_ref();
        match key.as_ref() {
            "ticker" => q.tickers = Some(csv("ticker", value, MAX_TICKERS)?),
            "event_ticker" => {
                q.event_tickers = Some(csv("event_ticker", value, MAX_EVENT_TICKERS)?)
            }
            "order_id" => q.order_id = Some(value.to_owned()),
            "min_ts" => q.min_ts = Some(int("min_ts", value)?),
            "max_ts" => q.max_ts = Some(int("max_ts", value)?),
            "cursor" => q.cursor = Some(value.to_owned()),
            "limit" => {
                q.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => return Err(format!("limit = {value:?}: must be 1..={MAX_LIMIT}")),
                }
            }
            "status" => match value {
                "resting" | "canceled" | "executed" => q.status = Some(value.to_owned()),
                _ => return Err(format!("status = {value:?}: resting, canceled or executed")),
            },
            "count_filter" => {
                for f in csv("count_filter", value, 2)? {
                    match f.as_str() {
                        "position" => q.nonzero_position = true,
                        "total_traded" => q.traded = true,
                        _ => return Err(format!("count_filter: unknown {f:?}")),
                    }
                }
            }
            // The account is subaccount 0 on exchange 0 and nothing settles.
            "subaccount" | "exchange_index" => match int(&key, value)? {
                0 => {}
                1..=63 => q.nothing = true,
                _ => return Err(format!("{key} = {value:?}: must be 0..=63")),
            },
            "settlement_status" => match value {
                "unsettled" | "all" => {}
                "settled" => q.nothing = true,
                _ => {
                    return Err(format!(
                        "settlement_status = {value:?}: unsettled, settled or all"
                    ))
                }
            },
            _ => {}
        }
    }
    if let (Some(min), Some(max)) = (q.min_ts, q.max_ts) {
        if min > max {
            return Err(format!("min_ts = {min} is after max_ts = {max}"));
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_validated() {
        let q = parse_query("ticker=A-1%2CB-2&min_ts=5&limit=7&cursor=12").unwrap();
        assert_eq!(q.tickers, Some(vec!["A-1".to_owned(), "B-2".to_owned()]));
        assert_eq!(
            (q.min_ts, q.limit, q.cursor.as_deref()),
            (Some(5), 7, Some("12"))
        );
        assert_eq!(parse_query("").unwrap().limit, DEFAULT_LIMIT);
        assert!(parse_query("subaccount=3").unwrap().nothing);
        for bad in [
            "limit=0",
            "limit=1001",
            "min_ts=x",
            "status=open",
            "min_ts=5&max_ts=4",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
