//! [`RestConfig`]: the REST client's settings, with defaults from named constants.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use settings::Seconds;

/// The production REST base (reference §8.1).
pub const DEFAULT_REST_URL: &str = "https://external-api.kalshi.com/trade-api/v2";
/// Half the Basic tier's 20 reads a second (S8): the rest is left to the account's other users.
pub const DEFAULT_READS_PER_SECOND: f64 = 10.0;
pub const DEFAULT_READ_BURST: NonZeroU32 = NonZeroU32::new(10).unwrap();
/// Items per page: the largest every documented version accepts.
pub const DEFAULT_PAGE_LIMIT: u32 = 200;
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
pub const DEFAULT_MAX_TOTAL_SECONDS: Seconds = Seconds::from_secs(60);
/// Half a second.
pub const DEFAULT_REST_BACKOFF_BASE_SECONDS: Seconds = Seconds::from_millis(500);
pub const DEFAULT_REST_BACKOFF_CAP_SECONDS: Seconds = Seconds::from_secs(10);

/// The REST client's configuration. Its keys are reported as `upstream.rest.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {
    /// Base URL of the REST API, `http://` or `https://`, up to `/trade-api/v2`. Default: the
    /// REST API beside `upstream.url` ([`rest_url_for`]; [`DEFAULT_REST_URL`] for the default
    /// WebSocket URL).
    pub base_url: Option<String>,
    /// Requests a second, on average. Default 10.
    pub reads_per_second: f64,
    /// Requests that may go at once after a quiet period. Default 10.
    pub read_burst: NonZeroU32,
    /// `limit` of each page, 1..=1000. Default 200.
    pub page_limit: u32,
    /// Longest wait for one answer, in seconds. Default 10.
    pub request_timeout_seconds: Seconds,
    /// Longest one call may take, every page and retry included, in seconds. Default 60.
    pub max_total_seconds: Seconds,
    /// First retry delay bound (full jitter, doubling), in seconds. Default 0.5.
    pub backoff_base_seconds: Seconds,
    /// Largest retry delay bound, in seconds. Default 10.
    pub backoff_cap_seconds: Seconds,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            base_url: None,
            reads_per_second: DEFAULT_READS_PER_SECOND,
            read_burst: DEFAULT_READ_BURST,
            page_limit: DEFAULT_PAGE_LIMIT,
            request_timeout_seconds: DEFAULT_REQUEST_TIMEOUT_SECONDS,
            max_total_seconds: DEFAULT_MAX_TOTAL_SECONDS,
            backoff_base_seconds: DEFAULT_REST_BACKOFF_BASE_SECONDS,
            backoff_cap_seconds: DEFAULT_REST_BACKOFF_CAP_SECONDS,
        }
    }
}

/// The REST base of the exchange whose WebSocket is at `ws_url`: same host (the production and
/// demo WebSocket hosts `external-api-ws.*` serve REST at `external-api.*`), `https` for `wss`,
/// `/trade-api/v2` for `/trade-api/ws/v2`. `None` when `ws_url` is not a `ws://` or `wss://` URL.
pub fn rest_url_for(ws_url: &str) -> Option<String> {
    let (scheme, rest) = ws_url.split_once("://")?;
    let scheme = match scheme {
        "wss" => "https",
        "ws" => "http",
        _ => return None,
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = authority.strip_prefix("external-api-ws.").map_or_else(
        || authority.to_owned(),
        |tail| format!("external-api.{tail}"),
    );
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path
        .strip_suffix("/ws/v2")
        .map_or_else(|| "trade-api/v2".to_owned(), |head| format!("{head}/v2"));
    Some(format!("{scheme}://{authority}/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_api_is_found_beside_the_websocket() {
        for (ws, rest) in [
            (crate::DEFAULT_URL, DEFAULT_REST_URL),
            (
                "wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2",
                "https://external-api.demo.kalshi.co/trade-api/v2",
            ),
            (
                "wss://api.elections.kalshi.com/trade-api/ws/v2",
                "https://api.elections.kalshi.com/trade-api/v2",
            ),
            (
                "ws://127.0.0.1:9000/trade-api/ws/v2",
                "http://127.0.0.1:9000/trade-api/v2",
            ),
        ] {
            assert_eq!(rest_url_for(ws).as_deref(), Some(rest), "{ws}");
        }
        assert_eq!(rest_url_for("http://example.com/"), None);
    }
}
