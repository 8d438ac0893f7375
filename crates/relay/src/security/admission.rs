//! Admission: the [`Gate`] every upgrade passes (Origin, token, caps) and the [`Admission`]
//! guard that holds a connection's place in the per-IP and global counts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::bucket::TokenBucket;
use super::config::SecurityConfig;
use super::origin::Origins;
use super::tokens::{Identity, Permission, Tokens};

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
    tokens: Tokens,
    /// `None`: a client must present a token.
    anonymous: Option<Permission>,
    origins: Origins,
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

impl Gate {
    pub fn new(config: &SecurityConfig, listen: SocketAddr) -> Gate {
        let tokens = Tokens::new(&config.tokens);
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
            origins: Origins::new(&config.allowed_origins, config.allow_missing_origin),
            max_connections: config.max_connections.get(),
            max_per_ip: config.max_connections_per_ip.get(),
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
        self.origins.allows(origin)
    }

    /// The identity behind a token, compared in constant time against every configured hash.
    pub fn check_token(&self, token: &str) -> Option<Identity> {
        self.tokens.check(token)
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::security::{hash_token, TokenConfig};

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
    fn the_anonymous_rule_depends_on_the_address() {
        let no_tokens = SecurityConfig::default();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(no_tokens.problems(public)[0]
            .to_string()
            .contains("not a loopback address"));
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
    fn admission_caps_per_ip_globally_and_by_rate() {
        let g = gate(SecurityConfig {
            max_connections_per_ip: NonZeroUsize::new(2).unwrap(),
            max_connections: NonZeroUsize::new(3).unwrap(),
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
            max_connections_per_ip: NonZeroUsize::new(1).unwrap(),
            ..with_tokens()
        });
        let _a = g.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(g.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(g.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }
}
