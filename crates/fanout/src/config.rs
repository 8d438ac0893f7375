//! The fanout's configuration: one struct, serde defaults from named constants, validated once.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default for [`FanoutConfig::queue_messages`].
pub const DEFAULT_QUEUE_MESSAGES: usize = 4096;
/// Default for [`FanoutConfig::queue_bytes`]: 1 MiB.
pub const DEFAULT_QUEUE_BYTES: u64 = 1024 * 1024;
/// Default for [`FanoutConfig::slow_consumer_lags`].
pub const DEFAULT_SLOW_CONSUMER_LAGS: u32 = 3;
/// Default for [`FanoutConfig::slow_consumer_window_seconds`].
pub const DEFAULT_SLOW_CONSUMER_WINDOW_SECONDS: u64 = 60;
/// Default for [`FanoutConfig::linger_seconds`].
pub const DEFAULT_LINGER_SECONDS: u64 = 60;

/// How deep a subscriber may fall behind, when it is cut off, and how long an unwanted topic is kept
/// upstream. Composed into the relay's TOML config (`[fanout]`); every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    /// Most stream items a subscriber may have unread before it is lagged (oldest dropped, then
    /// repaired). Also the capacity of the shared broadcast ring (rounded up to a power of two).
    /// Default 4096.
    pub queue_messages: usize,
    /// Most bytes of message bodies a subscriber may have unread before it is lagged. Default
    /// 1048576 (1 MiB).
    pub queue_bytes: u64,
    /// A subscriber lagged more than this many times within `slow_consumer_window_seconds` is
    /// disconnected as a slow consumer. Default 3.
    pub slow_consumer_lags: u32,
    /// The window of the slow-consumer policy, in seconds. Default 60.
    pub slow_consumer_window_seconds: u64,
    /// How long a topic nobody subscribes to any more stays wanted upstream (so a reconnecting
    /// client does not churn the upstream subscription), in seconds. 0 drops it at once. Default 60.
    pub linger_seconds: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            queue_messages: DEFAULT_QUEUE_MESSAGES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            slow_consumer_lags: DEFAULT_SLOW_CONSUMER_LAGS,
            slow_consumer_window_seconds: DEFAULT_SLOW_CONSUMER_WINDOW_SECONDS,
            linger_seconds: DEFAULT_LINGER_SECONDS,
        }
    }
}

/// The largest ring tokio's broadcast channel accepts is `usize::MAX / 2`; far below that, a ring
/// this large would pin too much memory to be a sensible setting.
const MAX_QUEUE_MESSAGES: usize = 1 << 24;

impl FanoutConfig {
    /// Checks every field and reports every problem at once, each naming its key (under
    /// `fanout.`) and the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.queue_messages == 0 || self.queue_messages > MAX_QUEUE_MESSAGES {
            problems.push(Problem {
                key: "fanout.queue_messages",
                value: self.queue_messages.to_string(),
                reason: "must be between 1 and 16777216",
            });
        }
        if self.queue_bytes == 0 {
            problems.push(Problem {
                key: "fanout.queue_bytes",
                value: "0".into(),
                reason: "must be > 0",
            });
        }
        if self.slow_consumer_window_seconds == 0 {
            problems.push(Problem {
                key: "fanout.slow_consumer_window_seconds",
                value: "0".into(),
                reason: "must be > 0",
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    pub(crate) fn slow_consumer_window(&self) -> Duration {
        Duration::from_secs(self.slow_consumer_window_seconds)
    }

    pub(crate) fn linger(&self) -> Duration {
        Duration::from_secs(self.linger_seconds)
    }
}

/// One bad configuration value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `fanout.queue_bytes`.
    pub key: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Every problem [`FanoutConfig::validate`] found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} = {}: {}", p.key, p.value, p.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_constants_and_validate() {
        let c: FanoutConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, FanoutConfig::default());
        assert_eq!(c.queue_messages, 4096);
        assert_eq!(c.queue_bytes, 1 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let c = FanoutConfig {
            queue_messages: 0,
            queue_bytes: 0,
            slow_consumer_window_seconds: 0,
            ..FanoutConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.problems.len(), 3);
        assert!(err
            .to_string()
            .starts_with("fanout.queue_messages = 0: must be"));
        assert!(serde_json::from_str::<FanoutConfig>(r#"{"queue_mesages":1}"#).is_err());
    }
}
