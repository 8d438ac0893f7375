//! [`UpstreamConfig`]: what the owner writes (serde, with defaults), and [`Settings`]: the same
//! after validation, with the key loaded and every duration typed.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::Signer;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use settings::{Problem, Problems, Seconds};

/// Production endpoint of the exchange.
pub const DEFAULT_URL: &str = "wss://external-api-ws.kalshi.com/trade-api/ws/v2";
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
pub const DEFAULT_BACKFILL_OVERLAP_SECONDS: Seconds = Seconds::from_secs(5);
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
pub const DEFAULT_BACKOFF_BASE_SECONDS: Seconds = Seconds::from_secs(1);
pub const DEFAULT_BACKOFF_FACTOR: f64 = 2.0;
pub const DEFAULT_BACKOFF_CAP_SECONDS: Seconds = Seconds::from_secs(30);
pub const DEFAULT_HEALTHY_RESET_SECONDS: Seconds = Seconds::from_secs(60);
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: NonZeroU32 = NonZeroU32::new(10).unwrap();
/// Three server ping periods (the exchange pings every 10 s).
pub const DEFAULT_LIVENESS_WINDOW_SECONDS: Seconds = Seconds::from_secs(30);
pub const DEFAULT_PING_INTERVAL_SECONDS: Seconds = Seconds::from_secs(30);
pub const DEFAULT_PONG_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
pub const DEFAULT_SNAPSHOT_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(10);
pub const DEFAULT_CLOSE_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(2);
/// Room for a burst of a few thousand messages while the owner catches up.
pub const DEFAULT_EVENT_CHANNEL_CAPACITY: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

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
    pub connect_timeout_seconds: Seconds,
    /// Seconds allowed for TLS and the WebSocket upgrade after TCP connected. Default: 10.
    pub handshake_timeout_seconds: Seconds,
    /// Upper bound of the first reconnect delay, in seconds (full jitter below it). Default: 1.
    pub backoff_base_seconds: Seconds,
    /// Growth of the delay bound per consecutive failure. Default: 2.
    pub backoff_factor: f64,
    /// Largest reconnect delay bound, in seconds; also the probe period after giving up.
    /// Default: 30.
    pub backoff_cap_seconds: Seconds,
    /// Seconds a connection must stay up to reset the backoff and the failure count. Default: 60.
    pub healthy_reset_seconds: Seconds,
    /// Consecutive failures before the session reports `GaveUp` (it keeps probing at the cap).
    /// Default: 10.
    pub max_consecutive_failures: NonZeroU32,
    /// Seconds without any frame (pings included) after which the connection is dead.
    /// Default: 30.
    pub liveness_window_seconds: Seconds,
    /// Seconds between our own WebSocket pings. Default: 30.
    pub ping_interval_seconds: Seconds,
    /// Seconds to wait for the pong of our ping. Default: 10.
    pub pong_timeout_seconds: Seconds,
    /// Seconds a gap repair (`get_snapshot`) may take before the channel is resubscribed.
    /// Default: 10.
    pub snapshot_timeout_seconds: Seconds,
    /// Seconds to wait for the exchange's close echo on shutdown. Default: 2.
    pub close_timeout_seconds: Seconds,
    /// Capacity of the event channel to the owner, in events; when full the session waits (and
    /// measures the wait). Default: 4096.
    pub event_channel_capacity: NonZeroUsize,
    /// `use_yes_price` sent on orderbook subscriptions (always sent explicitly). Default: false.
    pub orderbook_use_yes_price: bool,
    /// After an outage, fetch the fills, orders and positions the private channels missed over
    /// REST and deliver them before any later live message. Off: a private-channel loss is only
    /// announced ([`crate::Event::MessagesLost`]). Default: true.
    pub backfill: bool,
    /// How far before the last message received the backfill looks, in seconds: covers the
    /// time it took to notice the loss and clock skew with the exchange. Default: 5.
    pub backfill_overlap_seconds: Seconds,
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
    pub fn validate(&self) -> Result<(), Problems> {
        self.resolve().map(drop)
    }

    pub(crate) fn resolve(&self) -> Result<Settings, Problems> {
        let mut problems = Problems::new();
        let mut bad = |key: &str, value: String, message: &str| {
            problems.add(format!("upstream.{key}"), value, message)
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

        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            bad(
                "backoff_factor",
                self.backoff_factor.to_string(),
                "must be >= 1",
            );
        }
        if self.backoff_cap_seconds < self.backoff_base_seconds {
            bad(
                "backoff_cap_seconds",
                self.backoff_cap_seconds.to_string(),
                "must be >= backoff_base_seconds",
            );
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
            return Err(problems);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Problems::from(Problem::about("upstream.extra_ca_file", e.to_string())))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Settings {
            url: self.url.clone(),
            signer,
            tls: Arc::new(tls),
            connect_timeout: self.connect_timeout_seconds.get(),
            handshake_timeout: self.handshake_timeout_seconds.get(),
            backoff_base: self.backoff_base_seconds.get(),
            backoff_factor: self.backoff_factor,
            backoff_cap: self.backoff_cap_seconds.get(),
            healthy_reset: self.healthy_reset_seconds.get(),
            max_consecutive_failures: self.max_consecutive_failures.get(),
            liveness_window: self.liveness_window_seconds.get(),
            ping_interval: self.ping_interval_seconds.get(),
            pong_timeout: self.pong_timeout_seconds.get(),
            snapshot_timeout: self.snapshot_timeout_seconds.get(),
            close_timeout: self.close_timeout_seconds.get(),
            event_channel_capacity: self.event_channel_capacity.get(),
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
        assert_eq!(parsed.backoff_cap_seconds, Seconds::from_secs(30));
        assert_eq!(parsed.max_consecutive_failures.get(), 10);
        let err = serde_json::from_str::<UpstreamConfig>(r#"{"urll":"ws://x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `urll`"), "{err}");
    }

    #[test]
    fn durations_are_fractional_seconds_and_zero_is_refused_where_it_is_invalid() {
        let parsed: UpstreamConfig =
            serde_json::from_str(r#"{"backoff_base_seconds":0.25,"close_timeout_seconds":3}"#)
                .unwrap();
        let settings = parsed.resolve().unwrap();
        assert_eq!(settings.backoff_base, Duration::from_millis(250));
        assert_eq!(settings.close_timeout, Duration::from_secs(3));
        for zero in [
            r#"{"pong_timeout_seconds":0}"#,
            r#"{"max_consecutive_failures":0}"#,
            r#"{"event_channel_capacity":0}"#,
        ] {
            let err = serde_json::from_str::<UpstreamConfig>(zero).unwrap_err();
            let key = zero.split('"').nth(1).unwrap();
            let problem = Problem::from_serde(key, &err.to_string());
            assert!(
                problem
                    .to_string()
                    .starts_with(&format!("{key} = 0: must be > 0")),
                "{problem}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_naming_its_key() {
        let config = UpstreamConfig {
            url: "http://x".into(),
            key_id: Some("k".into()),
            private_key_path: Some("/nonexistent/key.pem".into()),
            backoff_base_seconds: Seconds::from_secs(5),
            backoff_cap_seconds: Seconds::from_secs(1),
            backoff_factor: 0.5,
            ..UpstreamConfig::default()
        };
        let err = config.validate().unwrap_err();
        let keys: Vec<_> = err.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstream.url",
                "upstream.backoff_factor",
                "upstream.backoff_cap_seconds",
                "upstream.private_key_path"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains(r#"upstream.url = "http://x": must be a ws:// or wss:// URL"#),
            "{text}"
        );
        assert!(
            text.contains("upstream.backoff_cap_seconds = 1: must be >= backoff_base_seconds"),
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
        assert_eq!(only_id.validate().unwrap_err().0[0].key, "upstream.key_id");
        let bad_pem = UpstreamConfig {
            key_id: Some("k".into()),
            private_key_pem: Some("not a key".into()),
            ..UpstreamConfig::default()
        };
        let err = bad_pem.validate().unwrap_err();
        assert_eq!(err.0[0].key, "upstream.private_key_pem");
        assert!(
            !err.to_string().contains("not a key"),
            "the PEM is never printed"
        );
        assert!(!format!("{bad_pem:?}").contains("not a key"));
    }
}
