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
    /// Base URL of the REST API, `http://` or `https://`, up to `/trade-api/v2`. Default
    /// [`DEFAULT_REST_URL`].
    pub base_url: String,
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
            base_url: DEFAULT_REST_URL.to_owned(),
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
