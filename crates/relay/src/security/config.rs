//! The `[security]` section: settings, defaults and the problems `relay` refuses to start with.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use settings::{Problem, Seconds};

use super::origin::OriginPattern;
use super::tokens::{decode_hash, Permission};

const DEFAULT_AUTH_TIMEOUT_SECONDS: Seconds = Seconds::from_secs(5);
const DEFAULT_COMMANDS_PER_SECOND: f64 = 20.0;
const DEFAULT_COMMAND_BURST: f64 = 50.0;
const DEFAULT_REFUSED_COMMANDS_BEFORE_CLOSE: u32 = 50;
const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(15_000).unwrap();
const DEFAULT_MAX_CONNECTIONS_PER_IP: NonZeroUsize = NonZeroUsize::new(1_000).unwrap();
const DEFAULT_NEW_CONNECTIONS_PER_SECOND: f64 = 500.0;
const DEFAULT_NEW_CONNECTION_BURST: f64 = 2_000.0;
const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1_024;

/// One client token, as configured.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (appears in logs; the token never does).
    pub name: String,
    /// Hex SHA-256 of the token (`relay --hash-token` prints it).
    pub sha256: String,
    pub permission: Permission,
}

/// Optional TLS on the client listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Re-read on SIGHUP.
    pub cert_path: PathBuf,
    /// PEM private key. Re-read on SIGHUP.
    pub key_path: PathBuf,
}

/// The `[security]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Client tokens. Default: none.
    pub tokens: Vec<TokenConfig>,
    /// Whether clients without a token may connect. Default: unset, which means yes on a
    /// loopback address with no tokens, and refuses to start elsewhere with no tokens.
    pub allow_anonymous: Option<bool>,
    /// What anonymous clients may do. Default: `public`, except `private` in the implicit
    /// loopback case (your own machine).
    pub anonymous_permission: Option<Permission>,
    /// Browser Origins allowed (`*` matches one or more DNS labels: `https://*.example.com`).
    /// Default: none (every browser Origin gets 403).
    pub allowed_origins: Vec<String>,
    /// Whether requests without an Origin header (bots, servers) are allowed. Default: true.
    pub allow_missing_origin: bool,
    /// Seconds a client without a handshake token has to send `{"cmd":"auth"}`. Default: 5.
    pub auth_timeout_seconds: Seconds,
    /// Commands per second per connection (token bucket rate); excess gets error 27. Default: 20.
    pub commands_per_second: f64,
    /// Token bucket size. Default: 50.
    pub command_burst: f64,
    /// Rate-limited commands within 10 s after which the connection closes (1013 `rate limited`).
    /// Default: 50.
    pub refused_commands_before_close: u32,
    /// Open client connections at most; more get HTTP 503. Default: 15000.
    pub max_connections: NonZeroUsize,
    /// Open client connections per source IP at most. Default: 1000.
    pub max_connections_per_ip: NonZeroUsize,
    /// New connections per second (token bucket rate) over all clients. Default: 500.
    pub new_connections_per_second: f64,
    /// Token bucket size for new connections. Default: 2000.
    pub new_connection_burst: f64,
    /// Accepted sockets still in TLS or HTTP (not yet upgraded, or plain HTTP requests) at most;
    /// more are closed at once, so slow handshakes cannot exhaust file descriptors.
    /// Default: 1024.
    pub max_pending_handshakes: usize,
    /// TLS for the client listener. Default: none (plain `ws://`).
    pub tls: Option<TlsConfig>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            tokens: Vec::new(),
            allow_anonymous: None,
            anonymous_permission: None,
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
            auth_timeout_seconds: DEFAULT_AUTH_TIMEOUT_SECONDS,
            commands_per_second: DEFAULT_COMMANDS_PER_SECOND,
            command_burst: DEFAULT_COMMAND_BURST,
            refused_commands_before_close: DEFAULT_REFUSED_COMMANDS_BEFORE_CLOSE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            new_connections_per_second: DEFAULT_NEW_CONNECTIONS_PER_SECOND,
            new_connection_burst: DEFAULT_NEW_CONNECTION_BURST,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            tls: None,
        }
    }
}

impl SecurityConfig {
    /// Problems with this section, each naming its key. `listen` decides the anonymous rule.
    pub fn problems(&self, listen: SocketAddr) -> Vec<Problem> {
        let mut out = settings::Problems::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if decode_hash(&t.sha256).is_none() {
                out.add(
                    format!("security.tokens[{i}].sha256"),
                    format!("{:?}", t.sha256),
                    "must be 64 hex digits (relay --hash-token)",
                );
            }
            if t.name.trim().is_empty() {
                out.push(Problem::about(
                    format!("security.tokens[{i}].name"),
                    "must not be empty",
                ));
            }
        }
        if self.tokens.is_empty() && !listen.ip().is_loopback() {
            match self.allow_anonymous {
                None => out.push(Problem::about(
                    "security",
                    format!(
                        "listen = \"{listen}\" is not a loopback address and no client tokens \
                         are configured; add [[security.tokens]] or set security.allow_anonymous \
                         = true explicitly (anyone who can reach the port could read the \
                         account's data)"
                    ),
                )),
                Some(false) => out.add(
                    "security.allow_anonymous",
                    false,
                    "nobody could connect with no security.tokens",
                ),
                Some(true) => {}
            }
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if OriginPattern::parse(o).is_none() {
                out.add(
                    format!("security.allowed_origins[{i}]"),
                    format!("{o:?}"),
                    "must be scheme://host[:port], host may start with *.",
                );
            }
        }
        out.positive("security.commands_per_second", self.commands_per_second);
        out.positive("security.command_burst", self.command_burst);
        out.positive(
            "security.new_connections_per_second",
            self.new_connections_per_second,
        );
        out.positive("security.new_connection_burst", self.new_connection_burst);
        if self.max_pending_handshakes == 0 {
            out.add("security.max_pending_handshakes", 0, "must be > 0");
        }
        if let Some(problem) = self.tls.as_ref().and_then(crate::tls::problems) {
            out.push(problem);
        }
        out.0
    }

    pub fn auth_timeout(&self) -> Duration {
        self.auth_timeout_seconds.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let config = SecurityConfig {
            tokens: vec![TokenConfig {
                name: "x".into(),
                sha256: "abc".into(),
                permission: Permission::Public,
            }],
            allowed_origins: vec!["example.com".into()],
            commands_per_second: 0.0,
            ..SecurityConfig::default()
        };
        let problems = config.problems("127.0.0.1:1".parse().unwrap());
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let problems = problems.join("\n");
        assert!(problems.contains("security.tokens[0].sha256"), "{problems}");
        assert!(
            problems.contains("security.allowed_origins[0]"),
            "{problems}"
        );
        assert!(
            problems.contains("security.commands_per_second = 0"),
            "{problems}"
        );
    }
}
