//! [`Fault`]: the misbehaviours the simulator injects on request, for tests and demos.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a blackholed connection or a stalled handshake is held before it is dropped, unless
/// the fault says otherwise: long enough for any liveness rule, bounded so sockets are not leaked.
pub const DEFAULT_HOLD_SECONDS: u64 = 300;
/// Largest `burst` accepted in one request.
pub const MAX_BURST: u64 = 1_000_000;

/// One injected fault. Connection faults apply to the connections open at the time; handshake
/// faults to the next handshakes; engine faults at once. `POST /admin/fault/{kind}` takes the
/// snake_case `kind` in the path and the other fields as an optional JSON body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Close every connection's TCP socket with no close frame.
    Drop,
    /// Keep every connection's TCP socket open but send nothing and read nothing (so client
    /// pings go unanswered) for `seconds` (default 300), then drop it.
    Blackhole {
        #[serde(default)]
        seconds: Option<u64>,
    },
    /// Send a close frame with `code` (default 1000) and `reason` (default empty).
    Close {
        #[serde(default = "default_close_code")]
        code: u16,
        #[serde(default)]
        reason: String,
    },
    /// Drop the next sequenced data message on `sid` (every sequenced sid when absent), only
    /// one for `market` when given; its seq is consumed, so the client sees a gap.
    Gap {
        #[serde(default)]
        sid: Option<u64>,
        #[serde(default)]
        market: Option<String>,
    },
    /// Resend the last sequenced message of `sid` (every sequenced sid when absent) with the
    /// same seq; a sid that has sent nothing yet sends its next one twice.
    Duplicate {
        #[serde(default)]
        sid: Option<u64>,
    },
    /// Send an `error` with `code` (default 25) on `sid` (every sid when absent); a terminal
    /// code (10, 17, 25) also ends the sid.
    Error {
        #[serde(default = "default_error_code")]
        code: u32,
        #[serde(default)]
        sid: Option<u64>,
    },
    /// Answer the next `count` (default 1) handshakes with 401.
    RejectAuth {
        #[serde(default = "one")]
        count: u64,
    },
    /// Accept the next `count` (default 1) TCP connections and never answer their upgrade.
    StallHandshake {
        #[serde(default = "one")]
        count: u64,
    },
    /// Change the total message rate.
    Rate { msgs_per_sec: f64 },
    /// Generate `count` (default 1000) messages at once, on top of the rate.
    Burst {
        #[serde(default = "default_burst")]
        count: u64,
    },
    /// Answer the next `count` (default 1) REST requests with `status` (default 503, 500..=599).
    RestError {
        #[serde(default = "default_rest_status")]
        status: u16,
        #[serde(default = "one")]
        count: u64,
    },
    /// Answer the next `count` (default 1) REST requests with 429 `{"error":"too many
    /// requests"}`, with `Retry-After: retry_after_seconds` when given (the exchange sends none).
    RestRateLimit {
        #[serde(default)]
        retry_after_seconds: Option<u64>,
        #[serde(default = "one")]
        count: u64,
    },
    /// Hold the next `count` (default 1) REST requests for `delay_ms` (default 5000) first.
    RestSlow {
        #[serde(default = "default_rest_delay_ms")]
        delay_ms: u64,
        #[serde(default = "one")]
        count: u64,
    },
    /// The next `count` (default 1) REST pages hold half the items asked for (rounded up) with a
    /// cursor that goes on after them, even on the last page; with `cut_body`, the JSON body is
    /// cut in half instead.
    RestTruncate {
        #[serde(default)]
        cut_body: bool,
        #[serde(default = "one")]
        count: u64,
    },
}

fn default_close_code() -> u16 {
    1000
}
fn default_error_code() -> u32 {
    25
}
fn one() -> u64 {
    1
}
fn default_burst() -> u64 {
    1000
}
fn default_rest_status() -> u16 {
    503
}
fn default_rest_delay_ms() -> u64 {
    5000
}

/// Longest `rest_slow` delay and `Retry-After` accepted.
pub const MAX_REST_DELAY_MS: u64 = 600_000;

/// The fault kinds, as they appear in the admin path and in the stats.
pub const FAULT_KINDS: [&str; 14] = [
    "drop",
    "blackhole",
    "close",
    "gap",
    "duplicate",
    "error",
    "reject_auth",
    "stall_handshake",
    "rate",
    "burst",
    "rest_error",
    "rest_rate_limit",
    "rest_slow",
    "rest_truncate",
];

impl Fault {
    /// From the admin route: `kind` from the path, the other fields from the (possibly empty)
    /// JSON body.
    pub fn from_request(kind: &str, body: &[u8]) -> Result<Fault, String> {
        if !FAULT_KINDS.contains(&kind) {
            return Err(format!("unknown fault kind {kind:?}"));
        }
        let mut fields = if body.iter().all(u8::is_ascii_whitespace) {
            serde_json::Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => map,
                Ok(Value::Null) => serde_json::Map::new(),
                Ok(_) => return Err("fault body must be a JSON object".to_owned()),
                Err(e) => return Err(format!("fault body is not JSON: {e}")),
            }
        };
        fields.insert("kind".to_owned(), Value::String(kind.to_owned()));
        let fault: Fault = serde_json::from_value(Value::Object(fields))
            .map_err(|e| format!("bad {kind} fault: {e}"))?;
        fault.validate()?;
        Ok(fault)
    }

    /// The snake_case kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Blackhole { .. } => "blackhole",
            Fault::Close { .. } => "close",
            Fault::Gap { .. } => "gap",
            Fault::Duplicate { .. } => "duplicate",
            Fault::Error { .. } => "error",
            Fault::RejectAuth { .. } => "reject_auth",
            Fault::StallHandshake { .. } => "stall_handshake",
            Fault::Rate { .. } => "rate",
            Fault::Burst { .. } => "burst",
            Fault::RestError { .. } => "rest_error",
            Fault::RestRateLimit { .. } => "rest_rate_limit",
            Fault::RestSlow { .. } => "rest_slow",
            Fault::RestTruncate { .. } => "rest_truncate",
        }
    }

    /// Refuses parameters that cannot be applied (a close code a server may not send, a
    /// negative rate, an oversized burst).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Fault::Close { code, .. } => {
                let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                if !sendable {
                    return Err(format!("close code = {code}: not a code a server may send"));
                }
            }
            Fault::Rate { msgs_per_sec } => {
                let max = crate::config::MAX_RATE;
                if !(msgs_per_sec.is_finite() && (0.0..=max).contains(msgs_per_sec)) {
                    return Err(format!(
                        "msgs_per_sec = {msgs_per_sec}: must be in 0..={max}"
                    ));
                }
            }
            Fault::Burst { count } if *count > MAX_BURST => {
                return Err(format!("count = {count}: must be <= {MAX_BURST}"));
            }
            Fault::RestError { status, .. } if !(500..=599).contains(status) => {
                return Err(format!("status = {status}: must be 500..=599"));
            }
            Fault::RestSlow { delay_ms, .. } if *delay_ms > MAX_REST_DELAY_MS => {
                return Err(format!(
                    "delay_ms = {delay_ms}: must be <= {MAX_REST_DELAY_MS}"
                ));
            }
            Fault::RestRateLimit {
                retry_after_seconds: Some(s),
                ..
            } if *s > MAX_REST_DELAY_MS / 1000 => {
                return Err(format!(
                    "retry_after_seconds = {s}: must be <= {}",
                    MAX_REST_DELAY_MS / 1000
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_from_path_and_fields_from_body() {
        assert_eq!(Fault::from_request("drop", b""), Ok(Fault::Drop));
        assert_eq!(
            Fault::from_request("close", br#"{"code":4000,"reason":"bye"}"#),
            Ok(Fault::Close {
                code: 4000,
                reason: "bye".into()
            })
        );
        assert_eq!(
            Fault::from_request("error", b"{}"),
            Ok(Fault::Error {
                code: 25,
                sid: None
            })
        );
        assert_eq!(
            Fault::from_request("reject_auth", b""),
            Ok(Fault::RejectAuth { count: 1 })
        );
        assert!(Fault::from_request("nope", b"").is_err());
        assert!(
            Fault::from_request("rate", b"").is_err(),
            "msgs_per_sec is required"
        );
        assert!(Fault::from_request("rate", br#"{"msgs_per_sec":-1}"#).is_err());
        assert!(Fault::from_request("close", br#"{"code":1006}"#).is_err());
        assert!(Fault::from_request("gap", br#"{"bogus":1}"#).is_err());
        assert!(Fault::from_request("gap", b"[1]").is_err());
        assert_eq!(
            Fault::from_request("rest_rate_limit", br#"{"retry_after_seconds":2}"#),
            Ok(Fault::RestRateLimit {
                retry_after_seconds: Some(2),
                count: 1
            })
        );
        assert!(Fault::from_request("rest_error", br#"{"status":404}"#).is_err());
        for kind in FAULT_KINDS {
            if let Ok(f) = Fault::from_request(kind, b"") {
                assert_eq!(f.kind(), kind);
            }
        }
    }
}
