//! `[cluster]`: where Redis is and how long a lease lasts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use settings::{Problems, Seconds};

pub const DEFAULT_LEASE_SECONDS: Seconds = Seconds::from_secs(5);
pub const DEFAULT_STREAM_MAX_ENTRIES: u64 = 100_000;

/// Cluster mode. Present: the relay runs as one node of a cluster sharing one upstream session
/// through Redis. Absent: a single relay, no Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`. Required.
    pub redis_url: String,
    /// This node's name in the lease, `/status` and the wanted sets. Default: host name and pid.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Seconds a leader's lease lasts without renewal (renewed every third of it); a dead
    /// leader is replaced within about this. Fractions allowed. Default 5.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: Seconds,
    /// Approximate bound on the event stream's length in Redis (`XADD MAXLEN ~`). A node that
    /// falls further behind reloads the stored books. Default 100000.
    #[serde(default = "default_stream_max_entries")]
    pub stream_max_entries: u64,
}

fn default_lease_seconds() -> Seconds {
    DEFAULT_LEASE_SECONDS
}

fn default_stream_max_entries() -> u64 {
    DEFAULT_STREAM_MAX_ENTRIES
}

impl ClusterConfig {
    /// A cluster config with every default, for tests and embedding.
    pub fn new(redis_url: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            redis_url: redis_url.into(),
            node_id: None,
            lease_seconds: DEFAULT_LEASE_SECONDS,
            stream_max_entries: DEFAULT_STREAM_MAX_ENTRIES,
        }
    }

    /// Every problem, each naming its key under `cluster.`.
    pub fn problems(&self) -> Problems {
        let mut out = Problems::new();
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            out.add(
                "cluster.redis_url",
                format!("{:?}", redact(&self.redis_url)),
                e.to_string(),
            );
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.contains(char::is_whitespace) {
                out.add(
                    "cluster.node_id",
                    format!("{id:?}"),
                    "must be non-empty, without spaces",
                );
            }
        }
        if !(0.3..=600.0).contains(&self.lease_seconds.as_secs_f64()) {
            out.add(
                "cluster.lease_seconds",
                self.lease_seconds.as_secs_f64(),
                "must be between 0.3 and 600",
            );
        }
        if self.stream_max_entries < 1_000 {
            out.add(
                "cluster.stream_max_entries",
                self.stream_max_entries,
                "must be at least 1000",
            );
        }
        out
    }

    pub fn lease(&self) -> Duration {
        self.lease_seconds.get()
    }

    /// The configured id, else `host-pid`.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "relay".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_keys() {
        let mut c = ClusterConfig::new("http://x");
        c.lease_seconds = Seconds::from_millis(100);
        c.stream_max_entries = 10;
        c.node_id = Some("a b".into());
        let p: Vec<String> = c.problems().iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p[0].starts_with("cluster.redis_url = \"http://x\""),
            "{p:?}"
        );
        assert!(p[1].starts_with("cluster.node_id"), "{p:?}");
        assert!(p[2].starts_with("cluster.lease_seconds = 0.1:"), "{p:?}");
        assert!(
            p[3].starts_with("cluster.stream_max_entries = 10:"),
            "{p:?}"
        );
        assert!(ClusterConfig::new("redis://127.0.0.1:6379/2")
            .problems()
            .is_empty());
    }

    #[test]
    fn a_password_never_shows() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
    }
}
