//! Scenarios: the suite's named workloads, built in (from `scenarios/*.toml`) or read from a file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use settings::{Moved, Renamed, Seconds, SecondsOrZero};

/// The built-in scenarios, in suite order.
pub const PRESETS: [(&str, &str); 10] = [
    ("fanout", include_str!("../scenarios/fanout.toml")),
    ("fanout-hot", include_str!("../scenarios/fanout-hot.toml")),
    (
        "fanout-single",
        include_str!("../scenarios/fanout-single.toml"),
    ),
    (
        "fanout-single-hot",
        include_str!("../scenarios/fanout-single-hot.toml"),
    ),
    ("ramp", include_str!("../scenarios/ramp.toml")),
    ("idle", include_str!("../scenarios/idle.toml")),
    ("subscribed", include_str!("../scenarios/subscribed.toml")),
    (
        "slow-consumer",
        include_str!("../scenarios/slow-consumer.toml"),
    ),
    ("storm", include_str!("../scenarios/storm.toml")),
    (
        "upstream-drop",
        include_str!("../scenarios/upstream-drop.toml"),
    ),
];

/// What the suite does with a scenario's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Ramp, warm up, one measurement window.
    Steady,
    /// Steady with few, quiet clients: figures per connection.
    Idle,
    /// The simulator's rate raised per step until the latency limit.
    Ramp,
    /// A window with readers only, then one with stalled clients added.
    SlowConsumer,
    /// All clients at once; time until all receive, upstream sessions counted.
    Storm,
    /// Drop the simulator's connections; time until every client has fresh snapshots.
    UpstreamDrop,
}

/// How the simulator spaces its messages (its `--pacing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// Everything due every 5 ms, in one write: bursts.
    #[default]
    Tick,
    /// One message per write, evenly spaced.
    Even,
}

impl Pacing {
    pub fn name(self) -> &'static str {
        match self {
            Pacing::Tick => "tick",
            Pacing::Even => "even",
        }
    }
}

/// One scenario, as in `scenarios/*.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    /// Markets the simulator generates.
    pub sim_markets: usize,
    /// The simulator's total rate, messages per second (the first rate for a ramp).
    pub sim_rate: f64,
    /// How the simulator spaces them. Default `tick`.
    #[serde(default)]
    pub pacing: Pacing,
    pub clients: usize,
    /// Connections opened per second; 0 opens all at once.
    #[serde(default)]
    pub connect_rate: f64,
    pub channels: Vec<String>,
    /// Each client subscribes to the simulator's first `markets` markets.
    pub markets: usize,
    /// Seconds before the first window. Default 0.
    #[serde(default)]
    pub warmup_seconds: SecondsOrZero,
    /// The measurement window (per step or per phase where there are several), in seconds.
    pub duration_seconds: Seconds,
    /// Seconds to wait before a window after a change (ramp step, stalled clients added).
    /// Default 0.
    #[serde(default)]
    pub settle_seconds: SecondsOrZero,
    /// `slow_consumer`: stalled clients added for the second window.
    #[serde(default)]
    pub stalled: usize,
    /// `storm`, `upstream_drop`: give up waiting after this many seconds.
    #[serde(default = "default_deadline")]
    pub deadline_seconds: Seconds,
    /// `ramp`: the rates tried, in order.
    #[serde(default)]
    pub ramp_rates: Vec<f64>,
    /// `ramp`: a step fails above this p99 latency, in seconds. Default 0.1.
    #[serde(default = "default_p99_limit")]
    pub p99_limit_seconds: Seconds,
    /// `ramp`: a step fails when delivered / sent falls below this.
    #[serde(default = "default_min_delivered")]
    pub min_delivered: f64,
    /// Also run the relay with its write-coalescing window, if the suite knows how.
    #[serde(default)]
    pub coalesce_variant: bool,
    /// With `coalesce_variant`: the window, in seconds, instead of the suite's `--coalesce-env`.
    #[serde(default)]
    pub coalesce_window_seconds: Option<Seconds>,
    #[serde(default = "default_read_buffer")]
    pub read_buffer_bytes: usize,
}

fn default_deadline() -> Seconds {
    Seconds::from_secs(30)
}
fn default_p99_limit() -> Seconds {
    Seconds::from_millis(100)
}

/// Keys that got the `_seconds` convention; the old names still work, with a warning.
const RENAMED: &[Renamed] = &[
    Renamed {
        table: &[],
        old: "warmup_secs",
        new: "warmup_seconds",
        scale: 1.0,
    },
    Renamed {
        table: &[],
        old: "duration_secs",
        new: "duration_seconds",
        scale: 1.0,
    },
    Renamed {
        table: &[],
        old: "settle_secs",
        new: "settle_seconds",
        scale: 1.0,
    },
    Renamed {
        table: &[],
        old: "deadline_secs",
        new: "deadline_seconds",
        scale: 1.0,
    },
    Renamed {
        table: &[],
        old: "p99_limit_ms",
        new: "p99_limit_seconds",
        scale: 0.001,
    },
];
fn default_min_delivered() -> f64 {
    0.95
}
fn default_read_buffer() -> usize {
    16 * 1024
}

impl Scenario {
    /// Parses and validates; an old key name is logged as a warning naming the new one.
    pub fn parse(text: &str) -> Result<Scenario> {
        let (scenario, moved) = Scenario::parse_noting(text)?;
        for m in moved {
            tracing::warn!("scenario: {m}");
        }
        Ok(scenario)
    }

    /// Parses and validates, and says which old key names were used.
    pub fn parse_noting(text: &str) -> Result<(Scenario, Vec<Moved>)> {
        let mut table: toml::Table = toml::from_str(text)?;
        let (moved, problems) = settings::rename_keys(&mut table, RENAMED);
        if !problems.is_empty() {
            bail!("{}", settings::Problems(problems));
        }
        let s: Scenario = toml::Value::Table(table).try_into()?;
        s.validate()?;
        Ok((s, moved))
    }

    /// A preset by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario> {
        if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::parse(text).with_context(|| format!("preset {name_or_path}"));
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()));
        }
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        bail!("no scenario {name_or_path:?}: not a file, and presets are {names:?}")
    }

    fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.clients == 0 {
            problems.push("clients = 0: must be > 0".to_owned());
        }
        if self.markets == 0 || self.markets > self.sim_markets {
            problems.push(format!(
                "markets = {}: must be in 1..=sim_markets",
                self.markets
            ));
        }
        if self.channels.is_empty() {
            problems.push("channels: must not be empty".to_owned());
        }
        for c in &self.channels {
            if protocol::Channel::parse(c).is_none() {
                problems.push(format!("channels: unknown channel {c:?}"));
            }
        }
        if self.kind == Kind::Ramp && self.ramp_rates.is_empty() {
            problems.push("ramp_rates: a ramp needs at least one rate".to_owned());
        }
        if self.kind == Kind::SlowConsumer && self.stalled == 0 {
            problems.push("stalled = 0: a slow_consumer scenario needs stalled clients".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }

    /// Scales client counts by `clients` (at least 1 each) and all times by `time`.
    pub fn scaled(mut self, clients: f64, time: f64) -> Scenario {
        let scale = |n: usize| ((n as f64 * clients).round() as usize).max(1);
        self.clients = scale(self.clients);
        if self.stalled > 0 {
            self.stalled = scale(self.stalled);
        }
        if self.connect_rate > 0.0 {
            self.connect_rate = (self.connect_rate * clients).max(1.0);
        }
        let t = |s: f64| s * time;
        self.warmup_seconds = SecondsOrZero::from_secs_f64(t(self.warmup_seconds.as_secs_f64()));
        self.duration_seconds =
            Seconds::from_secs_f64(t(self.duration_seconds.as_secs_f64()).max(0.5));
        self.settle_seconds = SecondsOrZero::from_secs_f64(t(self.settle_seconds.as_secs_f64()));
        self.deadline_seconds =
            Seconds::from_secs_f64(t(self.deadline_seconds.as_secs_f64()).max(5.0));
        self
    }

    /// Snapshots a client receives for its books (one per market with `orderbook_delta`).
    pub fn books_per_client(&self) -> u32 {
        if self.channels.iter().any(|c| c == "orderbook_delta") {
            self.markets as u32
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for (name, _) in PRESETS {
            let s = Scenario::load(name).unwrap();
            assert_eq!(s.name, name);
        }
    }

    #[test]
    fn scaling_keeps_at_least_one() {
        let s = Scenario::load("slow-consumer").unwrap().scaled(0.001, 0.1);
        assert_eq!((s.clients, s.stalled), (1, 1));
        assert!(s.duration_seconds.as_secs_f64() >= 0.5);
    }

    #[test]
    fn old_key_names_still_work_and_name_the_new_ones() {
        let base = "name = \"x\"\nkind = \"ramp\"\ndescription = \"\"\nsim_markets = 2\n\
                    sim_rate = 10.0\nclients = 1\nchannels = [\"ticker\"]\nmarkets = 1\n\
                    ramp_rates = [10.0]\n";
        let (new, moved) = Scenario::parse_noting(&format!(
            "{base}duration_seconds = 4.0\nsettle_seconds = 2\np99_limit_seconds = 0.05\n"
        ))
        .unwrap();
        assert!(moved.is_empty());
        let (old, moved) = Scenario::parse_noting(&format!(
            "{base}duration_secs = 4.0\nsettle_secs = 2\np99_limit_ms = 50\n"
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            serde_json::to_value(&new).unwrap()
        );
        let moved: Vec<String> = moved.iter().map(ToString::to_string).collect();
        assert_eq!(
            moved,
            [
                "duration_secs is deprecated: use duration_seconds",
                "settle_secs is deprecated: use settle_seconds",
                "p99_limit_ms is deprecated: use p99_limit_seconds"
            ]
        );
        let zero = Scenario::parse_noting(&format!("{base}duration_seconds = 0\n"));
        assert!(zero.unwrap_err().to_string().contains("duration_seconds"));
    }
}
