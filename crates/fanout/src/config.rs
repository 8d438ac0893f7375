//! The fanout's configuration: one struct, serde defaults from named constants, validated once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use settings::{Problems, Seconds, SecondsOrZero};

/// Default for [`FanoutConfig::queue_messages`].
pub const DEFAULT_QUEUE_MESSAGES: usize = 4096;
/// Default for [`FanoutConfig::queue_bytes`]: 1 MiB.
pub const DEFAULT_QUEUE_BYTES: u64 = 1024 * 1024;
/// Default for [`FanoutConfig::slow_consumer_lags`].
pub const DEFAULT_SLOW_CONSUMER_LAGS: u32 = 3;
/// Default for [`FanoutConfig::slow_consumer_window_seconds`].
pub const DEFAULT_SLOW_CONSUMER_WINDOW_SECONDS: Seconds = Seconds::from_secs(60);
/// Default for [`FanoutConfig::linger_seconds`].
pub const DEFAULT_LINGER_SECONDS: SecondsOrZero = SecondsOrZero::from_secs(60);

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
    pub slow_consumer_window_seconds: Seconds,
    /// How long a topic nobody subscribes to any more stays wanted upstream (so a reconnecting
    /// client does not churn the upstream subscription), in seconds. 0 drops it at once. Default 60.
    pub linger_seconds: SecondsOrZero,
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
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::new();
        if self.queue_messages == 0 || self.queue_messages > MAX_QUEUE_MESSAGES {
            problems.add(
                "fanout.queue_messages",
                self.queue_messages,
                "must be between 1 and 16777216",
            );
        }
        if self.queue_bytes == 0 {
            problems.add("fanout.queue_bytes", 0, "must be > 0");
        }
        problems.into_result(())
    }

    pub(crate) fn slow_consumer_window(&self) -> Duration {
        self.slow_consumer_window_seconds.get()
    }

    pub(crate) fn linger(&self) -> Duration {
        self.linger_seconds.get()
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
            ..FanoutConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err.0[0]
            .to_string()
            .starts_with("fanout.queue_messages = 0: must be"));
        assert!(serde_json::from_str::<FanoutConfig>(r#"{"queue_mesages":1}"#).is_err());
        // A zero window is refused while parsing; a zero linger means "at once".
        let zero = r#"{"slow_consumer_window_seconds":0}"#;
        assert!(serde_json::from_str::<FanoutConfig>(zero).is_err());
        let c: FanoutConfig = serde_json::from_str(r#"{"linger_seconds":0}"#).unwrap();
        assert_eq!(c.linger(), Duration::ZERO);
    }
}
