//! Who may connect and how much they may do: client tokens, Origin checks, connection caps and
//! rate limits. Everything here is decided before or right after the upgrade, in one place.
//!
//! - Tokens are stored as SHA-256 hashes and compared in constant time; a token's value is never
//!   kept or logged. A token carries a permission: `public` channels only, or `private` too.
//! - Anonymous clients exist only when the configuration says so, or implicitly on a loopback
//!   address with no tokens configured (a developer's own machine). On any other address with no
//!   tokens and no explicit setting the relay refuses to start.
//! - Browser `Origin`s must match the allow-list (`https://*.example.com` wildcards); requests with
//!   no `Origin` (bots) are allowed unless configured otherwise.
//! - Admission: a global and a per-IP cap on open connections and a token bucket on new ones;
//!   over any of them the upgrade gets HTTP 503 with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const DEFAULT_AUTH_TIMEOUT_SECONDS: u64 = 5;
const DEFAULT_COMMANDS_PER_SECOND: f64 = 20.0;
const DEFAULT_COMMAND_BURST: f64 = 50.0;
const DEFAULT_REFUSED_COMMANDS_BEFORE_CLOSE: u32 = 50;
const DEFAULT_MAX_CONNECTIONS: usize = 15_000;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
const DEFAULT_NEW_CONNECTIONS_PER_SECOND: f64 = 500.0;
const DEFAULT_NEW_CONNECTION_BURST: f64 = 2_000.0;
const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1_024;

/// What a client may subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Public channels only; a private one gets error 9.
    Public,
    /// The account's fills, orders and positions too.
    Private,
}

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
    pub auth_timeout_seconds: u64,
    /// Commands per second per connection (token bucket rate); excess gets error 27. Default: 20.
    pub commands_per_second: f64,
    /// Token bucket size. Default: 50.
    pub command_burst: f64,
    /// Rate-limited commands within 10 s after which the connection closes (1013 `rate limited`).
    /// Default: 50.
    pub refused_commands_before_close: u32,
    /// Open client connections at most; more get HTTP 503. Default: 15000.
    pub max_connections: usize,
    /// Open client connections per source IP at most. Default: 1000.
    pub max_connections_per_ip: usize,
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
    pub fn problems(&self, listen: SocketAddr) -> Vec<String> {
        let mut out = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if decode_hash(&t.sha256).is_none() {
                out.push(format!(
                    "security.tokens[{i}].sha256 = {:?}: must be 64 hex digits (relay --hash-token)",
                    t.sha256
                ));
            }
            if t.name.trim().is_empty() {
                out.push(format!("security.tokens[{i}].name: must not be empty"));
            }
        }
        if self.tokens.is_empty() && !listen.ip().is_loopback() {
            match self.allow_anonymous {
                None => out.push(format!(
                    "security: listen = \"{listen}\" is not a loopback address and no client tokens \
                     are configured; add [[security.tokens]] or set security.allow_anonymous = true \
                     explicitly (anyone who can reach the port could read the account's data)"
                )),
                Some(false) => out.push(
                    "security.allow_anonymous = false with no security.tokens: nobody could connect"
                        .to_owned(),
                ),
                Some(true) => {}
            }
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if OriginPattern::parse(o).is_none() {
                out.push(format!(
                    "security.allowed_origins[{i}] = {o:?}: must be scheme://host[:port], host may start with *."
                ));
            }
        }
        let mut positive = |key: &str, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                out.push(format!("security.{key} = {v}: must be > 0"));
            }
        };
        positive("commands_per_second", self.commands_per_second);
        positive("command_burst", self.command_burst);
        positive(
            "new_connections_per_second",
            self.new_connections_per_second,
        );
        positive("new_connection_burst", self.new_connection_burst);
        positive("auth_timeout_seconds", self.auth_timeout_seconds as f64);
        positive("max_connections", self.max_connections as f64);
        positive("max_connections_per_ip", self.max_connections_per_ip as f64);
        positive("max_pending_handshakes", self.max_pending_handshakes as f64);
        if let Some(tls) = &self.tls {
            for (key, path) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
                if !path.is_file() {
                    out.push(format!(
                        "security.tls.{key} = {:?}: no such file",
                        path.display()
                    ));
                }
            }
        }
        out
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_seconds)
    }
}

fn decode_hash(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest.trim()).ok()?;
    bytes.try_into().ok()
}

/// Hex SHA-256 of a token, as the config stores it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An allowed Origin: scheme, host (possibly `*.` + suffix) and optional port, compared exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    /// `Some(".example.com")` for `*.example.com`.
    wildcard_suffix: Option<String>,
    host: String,
    port: Option<String>,
}

impl OriginPattern {
    fn parse(pattern: &str) -> Option<OriginPattern> {
        let (scheme, rest) = pattern.trim().split_once("://")?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                (h, Some(p.to_owned()))
            }
            Some(_) => return None,
            None => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        let wildcard_suffix = match host.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                Some(suffix.to_owned())
            }
            Some(_) => return None,
            None if host.contains('*') || host.is_empty() => return None,
            None => None,
        };
        Some(OriginPattern {
            scheme: scheme.to_ascii_lowercase(),
            wildcard_suffix,
            host,
            port,
        })
    }

    fn matches(&self, origin: &OriginPattern) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match &self.wildcard_suffix {
            Some(suffix) => {
                origin.host.len() > suffix.len() && origin.host.ends_with(suffix.as_str())
            }
            None => self.host == origin.host,
        }
    }
}

/// A classic token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; false when empty.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whole seconds until a token is available.
    pub fn retry_after(&self) -> u64 {
        (((1.0 - self.tokens) / self.rate).ceil() as u64).max(1)
    }
}

/// Why an upgrade is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the Origin is not allowed.
    Origin,
    /// 401: a token was presented and is not valid.
    BadToken,
    /// 503 with `Retry-After` seconds: a cap or the new-connection rate.
    Busy {
        retry_after: u64,
        reason: &'static str,
    },
}

/// The decisions, with the state they need (the per-IP counts and the connection bucket).
pub struct Gate {
    tokens: Vec<(String, [u8; 32], Permission)>,
    /// `None`: a client must present a token.
    anonymous: Option<Permission>,
    origins: Vec<OriginPattern>,
    allow_missing_origin: bool,
    max_connections: usize,
    max_per_ip: usize,
    /// Admitted connections open now (counted here, at admission, so a storm of upgrades not yet
    /// running cannot slip past the cap); an [`Admission`] decrements it when dropped.
    open: AtomicUsize,
    /// Open connections per source address (IPv6 by /64); an [`Admission`] decrements its entry.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// New connections, all clients together.
    new_connections: Mutex<TokenBucket>,
}

/// Who a client is, once admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Token {
        name: String,
        permission: Permission,
    },
    Anonymous(Permission),
    /// Must authenticate with a first message within the auth timeout.
    Pending,
}

impl Identity {
    pub fn permission(&self) -> Option<Permission> {
        match self {
            Identity::Token { permission, .. } | Identity::Anonymous(permission) => {
                Some(*permission)
            }
            Identity::Pending => None,
        }
    }
}

impl Gate {
    pub fn new(config: &SecurityConfig, listen: SocketAddr) -> Gate {
        let tokens = config
            .tokens
            .iter()
            .filter_map(|t| Some((t.name.clone(), decode_hash(&t.sha256)?, t.permission)))
            .collect::<Vec<_>>();
        let anonymous = match config.allow_anonymous {
            Some(true) => Some(config.anonymous_permission.unwrap_or(Permission::Public)),
            Some(false) => None,
            None if tokens.is_empty() && listen.ip().is_loopback() => {
                Some(config.anonymous_permission.unwrap_or(Permission::Private))
            }
            None => None,
        };
        Gate {
            tokens,
            anonymous,
            origins: config
                .allowed_origins
                .iter()
                .filter_map(|o| OriginPattern::parse(o))
                .collect(),
            allow_missing_origin: config.allow_missing_origin,
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            new_connections: Mutex::new(TokenBucket::new(
                config.new_connections_per_second,
                config.new_connection_burst,
            )),
        }
    }

    /// Whether a client may connect without a token (the dashboard asks for one otherwise).
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.is_some()
    }

    /// Whether a request with this `Origin` header (if any) may upgrade.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => self.allow_missing_origin,
            Some(o) => OriginPattern::parse(o)
                .filter(|o| o.wildcard_suffix.is_none())
                .is_some_and(|o| self.origins.iter().any(|p| p.matches(&o))),
        }
    }

    /// The identity behind a token, compared in constant time against every configured hash.
    pub fn check_token(&self, token: &str) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash, permission) in &self.tokens {
            if bool::from(digest.ct_eq(hash)) {
                found = Some(Identity::Token {
                    name: name.clone(),
                    permission: *permission,
                });
            }
        }
        found
    }

    /// The identity for an upgrade: from a presented token (401 if bad), else anonymous if
    /// allowed, else pending first-message authentication.
    pub fn identify(&self, presented: Option<&str>) -> Result<Identity, Refusal> {
        match presented {
            Some(token) => self.check_token(token).ok_or(Refusal::BadToken),
            None => Ok(self
                .anonymous
                .map_or(Identity::Pending, Identity::Anonymous)),
        }
    }

    /// Admits one more connection from `ip`, or says why not. The admission must be held for
    /// the connection's life. The per-address cap is checked before the shared new-connection
    /// bucket is spent, so one address at its cap cannot drain the bucket for everyone.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let key = address_key(ip);
        let mut per_ip = self.per_ip.lock();
        if self.open.load(Ordering::Relaxed) >= self.max_connections {
            return Err(Refusal::Busy {
                retry_after: 5,
                reason: "connection limit",
            });
        }
        if per_ip.get(&key).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refusal::Busy {
                retry_after: 5,
                reason: "per-IP connection limit",
            });
        }
        {
            let mut bucket = self.new_connections.lock();
            if !bucket.try_take(Instant::now()) {
                return Err(Refusal::Busy {
                    retry_after: bucket.retry_after(),
                    reason: "new connection rate",
                });
            }
        }
        *per_ip.entry(key).or_insert(0) += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Admission {
            gate: self.clone(),
            ip: key,
        })
    }

    /// Admitted connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The key an address is capped under: IPv4 as is, IPv6 by its /64 (one host's usual share).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
    }
}

/// One admitted connection; releases its per-IP slot when dropped.
pub struct Admission {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.gate.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The token a handshake presents: `Authorization: Bearer`, then `?token=`, then the
/// `relay_token` cookie.
pub fn presented_token(
    authorization: Option<&str>,
    query: Option<&str>,
    cookie: Option<&str>,
) -> Option<String> {
    if let Some(token) = authorization.and_then(|a| {
        let (scheme, token) = a.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    }) {
        return Some(token);
    }
    if let Some(token) = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    }) {
        return Some(token);
    }
    cookie.and_then(|c| {
        c.split(';')
            .find_map(|kv| kv.trim().strip_prefix("relay_token=").map(|v| v.to_owned()))
    })
}

/// Minimal `%XX` and `+` decoding for a query value.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (
            bytes[i],
            hex_pair.and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(config: SecurityConfig) -> Arc<Gate> {
        Arc::new(Gate::new(&config, "0.0.0.0:8080".parse().unwrap()))
    }

    fn with_tokens() -> SecurityConfig {
        SecurityConfig {
            tokens: vec![
                TokenConfig {
                    name: "bots".into(),
                    sha256: hash_token("s3cret"),
                    permission: Permission::Private,
                },
                TokenConfig {
                    name: "dash".into(),
                    sha256: hash_token("view-only"),
                    permission: Permission::Public,
                },
            ],
            allowed_origins: vec![
                "https://*.example.com".into(),
                "http://localhost:3000".into(),
            ],
            ..SecurityConfig::default()
        }
    }

    #[test]
    fn tokens_are_recognised_by_hash_with_their_permission() {
        let g = gate(with_tokens());
        assert_eq!(
            g.identify(Some("s3cret")),
            Ok(Identity::Token {
                name: "bots".into(),
                permission: Permission::Private
            })
        );
        assert_eq!(
            g.identify(Some("view-only")).unwrap().permission(),
            Some(Permission::Public)
        );
        assert_eq!(g.identify(Some("s3cret ")), Err(Refusal::BadToken));
        assert_eq!(g.identify(None), Ok(Identity::Pending));
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let g = gate(with_tokens());
        assert!(g.origin_allowed(None));
        assert!(g.origin_allowed(Some("https://app.example.com")));
        assert!(g.origin_allowed(Some("https://a.b.example.com")));
        assert!(g.origin_allowed(Some("http://localhost:3000")));
        for bad in [
            "https://example.com",
            "http://app.example.com",
            "https://app.example.com.evil.io",
            "https://evilexample.com",
            "http://localhost:3001",
            "null",
            "https://*.example.com",
        ] {
            assert!(!g.origin_allowed(Some(bad)), "{bad} must be refused");
        }
        let strict = gate(SecurityConfig {
            allow_missing_origin: false,
            ..with_tokens()
        });
        assert!(!strict.origin_allowed(None));
    }

    #[test]
    fn the_anonymous_rule_depends_on_the_address() {
        let no_tokens = SecurityConfig::default();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(no_tokens.problems(public)[0].contains("not a loopback address"));
        assert!(no_tokens.problems(loopback).is_empty());
        assert_eq!(
            Gate::new(&no_tokens, loopback).identify(None),
            Ok(Identity::Anonymous(Permission::Private))
        );
        let explicit = SecurityConfig {
            allow_anonymous: Some(true),
            ..SecurityConfig::default()
        };
        assert!(explicit.problems(public).is_empty());
        assert_eq!(
            Gate::new(&explicit, public).identify(None),
            Ok(Identity::Anonymous(Permission::Public))
        );
    }

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
        let problems = config.problems("127.0.0.1:1".parse().unwrap()).join("\n");
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

    #[test]
    fn tokens_are_found_in_all_three_handshake_places() {
        assert_eq!(
            presented_token(Some("Bearer abc"), None, None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(None, Some("relay_events=1&token=a%2Bb"), None).as_deref(),
            Some("a+b")
        );
        assert_eq!(
            presented_token(None, None, Some("theme=dark; relay_token=xyz")).as_deref(),
            Some("xyz")
        );
        assert_eq!(presented_token(Some("Basic abc"), None, None), None);
    }

    #[test]
    fn admission_caps_per_ip_globally_and_by_rate() {
        let g = gate(SecurityConfig {
            max_connections_per_ip: 2,
            max_connections: 3,
            new_connection_burst: 4.0,
            new_connections_per_second: 0.001,
            ..with_tokens()
        });
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let a = g.admit(ip).unwrap();
        let _b = g.admit(ip).unwrap();
        // At its cap, the address is refused without spending the shared bucket.
        for _ in 0..10 {
            assert!(matches!(
                g.admit(ip),
                Err(Refusal::Busy {
                    reason: "per-IP connection limit",
                    ..
                })
            ));
        }
        let _c = g.admit("127.0.0.3".parse().unwrap()).unwrap();
        assert_eq!(g.open(), 3);
        assert!(matches!(
            g.admit("127.0.0.4".parse().unwrap()),
            Err(Refusal::Busy {
                reason: "connection limit",
                ..
            })
        ));
        drop(a);
        assert_eq!(g.open(), 2);
        let _d = g.admit(ip).unwrap(); // the 4th token
        drop(_d);
        assert!(matches!(
            g.admit(ip),
            Err(Refusal::Busy {
                reason: "new connection rate",
                ..
            })
        ));
    }

    #[test]
    fn ipv6_addresses_share_a_cap_per_64() {
        let g = gate(SecurityConfig {
            max_connections_per_ip: 1,
            ..with_tokens()
        });
        let _a = g.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(g.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(g.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(10.0, 2.0);
        let t0 = Instant::now();
        assert!(b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
    }
}
