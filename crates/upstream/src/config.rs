//! [`UpstreamConfig`]: what the owner writes (serde, with defaults), and [`Settings`]: the same
//! after validation, with the key loaded and every duration typed.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::Signer;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// Production endpoint of the exchange.
pub const DEFAULT_URL: &str = "wss://external-api-ws.kalshi.com/trade-api/ws/v2";
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: f64 = 10.0;
pub const DEFAULT_BACKFILL_OVERLAP_SECONDS: f64 = 5.0;
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECONDS: f64 = 10.0;
pub const DEFAULT_BACKOFF_BASE_SECONDS: f64 = 1.0;
pub const DEFAULT_BACKOFF_FACTOR: f64 = 2.0;
pub const DEFAULT_BACKOFF_CAP_SECONDS: f64 = 30.0;
pub const DEFAULT_HEALTHY_RESET_SECONDS: f64 = 60.0;
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// Three server ping periods (the exchange pings every 10 s).
pub const DEFAULT_LIVENESS_WINDOW_SECONDS: f64 = 30.0;
pub const DEFAULT_PING_INTERVAL_SECONDS: f64 = 30.0;
pub const DEFAULT_PONG_TIMEOUT_SECONDS: f64 = 10.0;
pub const DEFAULT_SNAPSHOT_TIMEOUT_SECONDS: f64 = 10.0;
pub const DEFAULT_CLOSE_TIMEOUT_SECONDS: f64 = 2.0;
/// Room for a burst of a few thousand messages while the owner catches up.
pub const DEFAULT_EVENT_CHANNEL_CAPACITY: usize = 4096;

/// The upstream session's configuration (the `upstream` section of the relay's config).
///
/// Secrets are values, not environment variable names: the binary reads its environment and
/// fills `key_id` and `private_key_pem` (or `private_key_path`) in.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Exchange WebSocket URL, `ws://` or `wss://`. Default: the production endpoint
    /// ([`DEFAULT_URL`]).
    pub url: String,
    /// API key id sent as `KALSHI-ACCESS-KEY`. Default: none (connect unsigned). Requires a
    /// private key.
    pub key_id: Option<String>,
    /// Path of the PEM private key (PKCS#1 or PKCS#8). Default: none. Exclusive with
    /// `private_key_pem`.
    pub private_key_path: Option<PathBuf>,
    /// The PEM private key itself. Default: none. Exclusive with `private_key_path`.
    pub private_key_pem: Option<String>,
    /// Extra CA certificates (PEM) trusted besides the webpki roots, for test exchanges.
    /// Default: none.
    pub extra_ca_file: Option<PathBuf>,
    /// Seconds allowed for the TCP connect. Default: 10.
    pub connect_timeout_seconds: f64,
    /// Seconds allowed for TLS and the WebSocket upgrade after TCP connected. Default: 10.
    pub handshake_timeout_seconds: f64,
    /// Upper bound of the first reconnect delay, in seconds (full jitter below it). Default: 1.
    pub backoff_base_seconds: f64,
    /// Growth of the delay bound per consecutive failure. Default: 2.
    pub backoff_factor: f64,
    /// Largest reconnect delay bound, in seconds; also the probe period after giving up.
    /// Default: 30.
    pub backoff_cap_seconds: f64,
    /// Seconds a connection must stay up to reset the backoff and the failure count. Default: 60.
    pub healthy_reset_seconds: f64,
    /// Consecutive failures before the session reports `GaveUp` (it keeps probing at the cap).
    /// Default: 10.
    pub max_consecutive_failures: u32,
    /// Seconds without any frame (pings included) after which the connection is dead.
    /// Default: 30.
    pub liveness_window_seconds: f64,
    /// Seconds between our own WebSocket pings. Default: 30.
    pub ping_interval_seconds: f64,
    /// Seconds to wait for the pong of our ping. Default: 10.
    pub pong_timeout_seconds: f64,
    /// Seconds a gap repair (`get_snapshot`) may take before the channel is resubscribed.
    /// Default: 10.
    pub snapshot_timeout_seconds: f64,
    /// Seconds to wait for the exchange's close echo on shutdown. Default: 2.
    pub close_timeout_seconds: f64,
    /// Capacity of the event channel to the owner, in events; when full the session waits (and
    /// measures the wait). Default: 4096.
    pub event_channel_capacity: usize,
    /// `use_yes_price` sent on orderbook subscriptions (always sent explicitly). Default: false.
    pub orderbook_use_yes_price: bool,
    /// After an outage, fetch the fills, orders and positions the private channels missed over
    /// REST and deliver them before any later live message. Off: a private-channel loss is only
    /// announced ([`crate::Event::MessagesLost`]). Default: true.
    pub backfill: bool,
    /// How far before the last message received the backfill looks, in seconds: covers the
    /// time it took to notice the loss and clock skew with the exchange. Default: 5.
    pub backfill_overlap_seconds: f64,
    /// The REST client the backfill uses (`upstream.rest.*`).
    pub rest: crate::rest::RestConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: DEFAULT_URL.to_owned(),
            key_id: None,
            private_key_path: None,
            private_key_pem: None,
            extra_ca_file: None,
            connect_timeout_seconds: DEFAULT_CONNECT_TIMEOUT_SECONDS,
            handshake_timeout_seconds: DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
            backoff_base_seconds: DEFAULT_BACKOFF_BASE_SECONDS,
            backoff_factor: DEFAULT_BACKOFF_FACTOR,
            backoff_cap_seconds: DEFAULT_BACKOFF_CAP_SECONDS,
            healthy_reset_seconds: DEFAULT_HEALTHY_RESET_SECONDS,
            max_consecutive_failures: DEFAULT_MAX_CONSECUTIVE_FAILURES,
            liveness_window_seconds: DEFAULT_LIVENESS_WINDOW_SECONDS,
            ping_interval_seconds: DEFAULT_PING_INTERVAL_SECONDS,
            pong_timeout_seconds: DEFAULT_PONG_TIMEOUT_SECONDS,
            snapshot_timeout_seconds: DEFAULT_SNAPSHOT_TIMEOUT_SECONDS,
            close_timeout_seconds: DEFAULT_CLOSE_TIMEOUT_SECONDS,
            event_channel_capacity: DEFAULT_EVENT_CHANNEL_CAPACITY,
            orderbook_use_yes_price: false,
            backfill: true,
            backfill_overlap_seconds: DEFAULT_BACKFILL_OVERLAP_SECONDS,
            rest: crate::rest::RestConfig::default(),
        }
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &self.url)
            .field("key_id", &self.key_id)
            .field("private_key_path", &self.private_key_path)
            .field(
                "private_key_pem",
                &self.private_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("extra_ca_file", &self.extra_ca_file)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .field("handshake_timeout_seconds", &self.handshake_timeout_seconds)
            .field("backoff_base_seconds", &self.backoff_base_seconds)
            .field("backoff_factor", &self.backoff_factor)
            .field("backoff_cap_seconds", &self.backoff_cap_seconds)
            .field("healthy_reset_seconds", &self.healthy_reset_seconds)
            .field("max_consecutive_failures", &self.max_consecutive_failures)
            .field("liveness_window_seconds", &self.liveness_window_seconds)
            .field("ping_interval_seconds", &self.ping_interval_seconds)
            .field("pong_timeout_seconds", &self.pong_timeout_seconds)
            .field("snapshot_timeout_seconds", &self.snapshot_timeout_seconds)
            .field("close_timeout_seconds", &self.close_timeout_seconds)
            .field("event_channel_capacity", &self.event_channel_capacity)
            .field("orderbook_use_yes_price", &self.orderbook_use_yes_price)
            .field("backfill", &self.backfill)
            .field("backfill_overlap_seconds", &self.backfill_overlap_seconds)
            .field("rest", &self.rest)
            .finish()
    }
}

/// One bad setting: the dotted key, the value as given, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub value: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream.{} = {}: {}",
            self.key, self.value, self.message
        )
    }
}

/// The configuration was refused; every problem found is listed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream configuration:\n  {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// The validated configuration the session runs with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub url: String,
    pub signer: Option<Signer>,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_factor: f64,
    pub backoff_cap: Duration,
    pub healthy_reset: Duration,
    pub max_consecutive_failures: u32,
    pub liveness_window: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub snapshot_timeout: Duration,
    pub close_timeout: Duration,
    pub event_channel_capacity: usize,
    pub use_yes_price: bool,
}

impl UpstreamConfig {
    /// Checks every setting (reading the key and CA files) and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolve().map(drop)
    }

    pub(crate) fn resolve(&self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |key: &'static str, value: String, message: &str| {
            problems.push(Problem {
                key,
                value,
                message: message.to_owned(),
            })
        };

        let url_ok = match self.url.split_once("://") {
            Some(("ws" | "wss", rest)) => {
                let host = rest.split(['/', '?']).next().unwrap_or("");
                !host.is_empty()
                    && self
                        .url
                        .parse::<tokio_tungstenite::tungstenite::http::Uri>()
                        .is_ok()
            }
            _ => false,
        };
        if !url_ok {
            bad(
                "url",
                format!("{:?}", self.url),
                "must be a ws:// or wss:// URL with a host",
            );
        }

        let mut seconds = |key: &'static str, v: f64| -> Duration {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Duration::from_secs_f64(v)
            } else {
                bad(key, v.to_string(), "must be a number of seconds > 0");
                Duration::from_secs(1)
            }
        };
        let connect_timeout = seconds("connect_timeout_seconds", self.connect_timeout_seconds);
        let handshake_timeout =
            seconds("handshake_timeout_seconds", self.handshake_timeout_seconds);
        let backoff_base = seconds("backoff_base_seconds", self.backoff_base_seconds);
        let backoff_cap = seconds("backoff_cap_seconds", self.backoff_cap_seconds);
        let healthy_reset = seconds("healthy_reset_seconds", self.healthy_reset_seconds);
        let liveness_window = seconds("liveness_window_seconds", self.liveness_window_seconds);
        let ping_interval = seconds("ping_interval_seconds", self.ping_interval_seconds);
        let pong_timeout = seconds("pong_timeout_seconds", self.pong_timeout_seconds);
        let snapshot_timeout = seconds("snapshot_timeout_seconds", self.snapshot_timeout_seconds);
        seconds("backfill_overlap_seconds", self.backfill_overlap_seconds);
        let close_timeout = seconds("close_timeout_seconds", self.close_timeout_seconds);

        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            bad(
                "backoff_factor",
                self.backoff_factor.to_string(),
                "must be >= 1",
            );
        }
        if backoff_cap < backoff_base {
            bad(
                "backoff_cap_seconds",
                self.backoff_cap_seconds.to_string(),
                "must be >= backoff_base_seconds",
            );
        }
        if self.max_consecutive_failures == 0 {
            bad("max_consecutive_failures", "0".into(), "must be > 0");
        }
        if self.event_channel_capacity == 0 {
            bad("event_channel_capacity", "0".into(), "must be > 0");
        }

        let pem = match (&self.private_key_path, &self.private_key_pem) {
            (Some(_), Some(_)) => {
                bad(
                    "private_key_pem",
                    "<redacted>".into(),
                    "set either private_key_path or private_key_pem, not both",
                );
                None
            }
            (Some(path), None) => match std::fs::read_to_string(path) {
                Ok(pem) => Some(("private_key_path", format!("{path:?}"), pem)),
                Err(e) => {
                    bad(
                        "private_key_path",
                        format!("{path:?}"),
                        &format!("cannot read the key file: {e}"),
                    );
                    None
                }
            },
            (None, Some(pem)) => Some(("private_key_pem", "<redacted>".to_owned(), pem.clone())),
            (None, None) => None,
        };
        let signer = match (&self.key_id, pem) {
            (Some(id), _) if id.trim().is_empty() => {
                bad("key_id", "\"\"".into(), "must not be empty");
                None
            }
            (Some(id), Some((key, value, pem))) => match Signer::from_pem(id.clone(), &pem) {
                Ok(signer) => Some(signer),
                Err(e) => {
                    bad(key, value, &e.to_string());
                    None
                }
            },
            (Some(id), None)
                if self.private_key_path.is_none() && self.private_key_pem.is_none() =>
            {
                bad(
                    "key_id",
                    format!("{id:?}"),
                    "needs private_key_path or private_key_pem",
                );
                None
            }
            (None, Some((key, value, _))) => {
                bad(key, value, "a private key needs key_id");
                None
            }
            // The key source was already reported.
            (Some(_), None) | (None, None) => None,
        };

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.extra_ca_file {
            match std::fs::read(path) {
                Err(e) => bad(
                    "extra_ca_file",
                    format!("{path:?}"),
                    &format!("cannot read: {e}"),
                ),
                Ok(bytes) => {
                    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
                    match certs {
                        Ok(certs) if !certs.is_empty() => {
                            for cert in certs {
                                if let Err(e) = roots.add(cert) {
                                    bad(
                                        "extra_ca_file",
                                        format!("{path:?}"),
                                        &format!("bad certificate: {e}"),
                                    );
                                }
                            }
                        }
                        Ok(_) => bad(
                            "extra_ca_file",
                            format!("{path:?}"),
                            "no PEM certificate in the file",
                        ),
                        Err(e) => bad(
                            "extra_ca_file",
                            format!("{path:?}"),
                            &format!("not PEM: {e}"),
                        ),
                    }
                }
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError {
                problems: vec![Problem {
                    key: "extra_ca_file",
                    value: String::new(),
                    message: e.to_string(),
                }],
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Settings {
            url: self.url.clone(),
            signer,
            tls: Arc::new(tls),
            connect_timeout,
            handshake_timeout,
            backoff_base,
            backoff_factor: self.backoff_factor,
            backoff_cap,
            healthy_reset,
            max_consecutive_failures: self.max_consecutive_failures,
            liveness_window,
            ping_interval,
            pong_timeout,
            snapshot_timeout,
            close_timeout,
            event_channel_capacity: self.event_channel_capacity,
            use_yes_price: self.orderbook_use_yes_price,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        UpstreamConfig::default().validate().unwrap();
        let parsed: UpstreamConfig =
            serde_json::from_str(r#"{"url":"ws://127.0.0.1:1/x"}"#).unwrap();
        assert_eq!(parsed.backoff_cap_seconds, 30.0);
        assert_eq!(parsed.max_consecutive_failures, 10);
        let err = serde_json::from_str::<UpstreamConfig>(r#"{"urll":"ws://x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `urll`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_naming_its_key() {
        let config = UpstreamConfig {
            url: "http://x".into(),
            key_id: Some("k".into()),
            private_key_path: Some("/nonexistent/key.pem".into()),
            pong_timeout_seconds: 0.0,
            backoff_factor: 0.5,
            max_consecutive_failures: 0,
            ..UpstreamConfig::default()
        };
        let err = config.validate().unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "url",
                "pong_timeout_seconds",
                "backoff_factor",
                "max_consecutive_failures",
                "private_key_path"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains(r#"upstream.url = "http://x": must be a ws:// or wss:// URL"#),
            "{text}"
        );
        assert!(
            text.contains("upstream.pong_timeout_seconds = 0: must be"),
            "{text}"
        );
        assert!(
            text.contains(
                "upstream.private_key_path = \"/nonexistent/key.pem\": cannot read the key file"
            ),
            "{text}"
        );
    }

    #[test]
    fn key_settings_must_come_together() {
        let only_id = UpstreamConfig {
            key_id: Some("k".into()),
            ..UpstreamConfig::default()
        };
        assert_eq!(only_id.validate().unwrap_err().problems[0].key, "key_id");
        let bad_pem = UpstreamConfig {
            key_id: Some("k".into()),
            private_key_pem: Some("not a key".into()),
            ..UpstreamConfig::default()
        };
        let err = bad_pem.validate().unwrap_err();
        assert_eq!(err.problems[0].key, "private_key_pem");
        assert!(
            !err.to_string().contains("not a key"),
            "the PEM is never printed"
        );
        assert!(!format!("{bad_pem:?}").contains("not a key"));
    }
}
