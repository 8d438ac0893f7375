//! The relay's configuration: one TOML file, environment overrides, flags, validated up front.
//!
//! Precedence: built-in defaults < `configs/relay.toml` (or `--config FILE`) < environment <
//! flags. Any key can be set from the environment as `RELAY__SECTION__KEY` (double underscores
//! between levels, the value read as TOML, else as a string): `RELAY__UPSTREAM__URL=wss://...`,
//! `RELAY__DOWNSTREAM__PING_INTERVAL_SECONDS=15`. Credentials have their usual names:
//! `KALSHI_API_KEY_ID`, `KALSHI_PRIVATE_KEY_PATH`, `KALSHI_PRIVATE_KEY_PEM`.
//!
//! Loading parses everything, then validates everything, and reports every problem at once, each
//! naming its dotted key: `downstream.pong_timeout_seconds = 0: must be > 0`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "configs/relay.toml";

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_PING_INTERVAL_SECONDS: u64 = 30;
const DEFAULT_PONG_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_WRITE_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
const DEFAULT_WRITE_BUFFER_BYTES: usize = 16 * 1024;
const DEFAULT_READ_BUFFER_BYTES: usize = 1024;
const DEFAULT_SHUTDOWN_DRAIN_SECONDS: u64 = 10;
const DEFAULT_MAX_MARKETS_PER_CONNECTION: usize = 1_000;

/// Everything the relay needs, composed from each crate's own config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where clients connect: WebSocket at `/trade-api/ws/v2` (alias `/ws`) plus `/healthz`,
    /// `/readyz`, `/metrics`, `/status`. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// If set, `/metrics`, `/status` and `/dashboard` move to this second listener. Default: unset.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Markets whose order books are always subscribed upstream, so the first client of one gets
    /// its snapshot at once and `/readyz` waits for them. Default: none.
    #[serde(default)]
    pub warm_markets: Vec<String>,
    /// Keep the account's private channels (fill, user_orders, market_positions) subscribed
    /// upstream at all times, so a client's subscription is live the moment it is answered.
    /// Default true.
    #[serde(default = "yes")]
    pub warm_private_channels: bool,
    #[serde(default)]
    pub downstream: DownstreamConfig,
    #[serde(default)]
    pub upstream: upstream::UpstreamConfig,
    #[serde(default)]
    pub fanout: fanout::FanoutConfig,
    #[serde(default)]
    pub security: crate::security::SecurityConfig,
    /// Cluster mode: several relays sharing one upstream session through Redis. Default: unset
    /// (one relay, no Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster::ClusterConfig>,
}

/// How the relay treats its clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamConfig {
    /// Seconds between server pings to each client. Default 30.
    pub ping_interval_seconds: u64,
    /// Seconds a client has to send anything after a ping before it is closed. Default 10.
    pub pong_timeout_seconds: u64,
    /// Seconds a write to a client may block before the client is closed. Default 10.
    pub write_timeout_seconds: u64,
    /// Largest inbound message; larger closes with 1009. Default 65536.
    pub max_message_bytes: usize,
    /// Outgoing frames are gathered up to this many bytes before a write. Default 16384.
    pub write_buffer_bytes: usize,
    /// Initial read buffer per connection (it grows for a larger message). Default 1024.
    pub read_buffer_bytes: usize,
    /// Seconds to wait for clients to take their close frames on shutdown. Default 10.
    pub shutdown_drain_seconds: u64,
    /// A second `subscribe` on a channel the client holds: `"merge"` (markets added, `ok`) or
    /// `"error"` (error 6, as older exchange servers). Default `"merge"`.
    pub duplicate_subscribe: DuplicateSubscribe,
    /// Markets one connection may hold over all its subscriptions; more gets error 26.
    /// Default 1000.
    pub max_markets_per_connection: usize,
    /// Kernel send buffer per client socket, in bytes. Unset: the kernel's autotuning (up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB here, per slow client). A cap bounds kernel memory
    /// per client and makes a stalled client show as lagged sooner. Default: unset.
    pub socket_send_buffer_bytes: Option<usize>,
    /// Write coalescing: market data is held for up to this many milliseconds from its first
    /// message, then published together, so every client writes the window's frames in one
    /// socket write (latency grows by up to the window). 0 turns it off. Default 0.
    pub coalesce_window_ms: u64,
    /// Resume: the account's most recent fills the relay keeps to replay to a client that
    /// reconnects with `resume_from`. Default 10000.
    pub resume_history_fills: usize,
    /// Resume: seconds of private history kept; an older position is recovered from the
    /// exchange's REST history. Default 3600.
    pub resume_history_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateSubscribe {
    Merge,
    Error,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            ping_interval_seconds: DEFAULT_PING_INTERVAL_SECONDS,
            pong_timeout_seconds: DEFAULT_PONG_TIMEOUT_SECONDS,
            write_timeout_seconds: DEFAULT_WRITE_TIMEOUT_SECONDS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            shutdown_drain_seconds: DEFAULT_SHUTDOWN_DRAIN_SECONDS,
            duplicate_subscribe: DuplicateSubscribe::Merge,
            max_markets_per_connection: DEFAULT_MAX_MARKETS_PER_CONNECTION,
            socket_send_buffer_bytes: None,
            coalesce_window_ms: 0,
            resume_history_fills: DEFAULT_RESUME_HISTORY_FILLS,
            resume_history_seconds: DEFAULT_RESUME_HISTORY_SECONDS,
        }
    }
}

pub const DEFAULT_RESUME_HISTORY_FILLS: usize = 10_000;
pub const DEFAULT_RESUME_HISTORY_SECONDS: u64 = 3_600;

impl DownstreamConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_seconds)
    }
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_seconds)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_seconds)
    }
    pub fn coalesce_window(&self) -> Option<Duration> {
        (self.coalesce_window_ms > 0).then(|| Duration::from_millis(self.coalesce_window_ms))
    }
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_seconds)
    }

    /// What a client may do, before any token narrows it.
    pub fn limits(&self) -> crate::client::Limits {
        crate::client::Limits {
            duplicate_subscribe: self.duplicate_subscribe,
            private_allowed: true,
            max_subscriptions: protocol::Channel::ALL.len(),
            max_markets: self.max_markets_per_connection,
        }
    }
}

impl RelayConfig {
    /// Every default, with the upstream at `upstream_url` (tests and embedding).
    pub fn with_upstream(upstream_url: &str) -> RelayConfig {
        RelayConfig {
            listen: default_listen(),
            admin_listen: None,
            warm_markets: Vec::new(),
            warm_private_channels: true,
            downstream: DownstreamConfig::default(),
            upstream: upstream::UpstreamConfig {
                url: upstream_url.to_owned(),
                ..Default::default()
            },
            fanout: fanout::FanoutConfig::default(),
            security: crate::security::SecurityConfig::default(),
            cluster: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("the default address parses")
}

/// Every problem found, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub upstream_url: Option<String>,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file that must exist.
    File(PathBuf),
    /// The default file if it exists, else built-in defaults.
    DefaultIfPresent,
}

/// Loads and validates. `env` is the process environment (a parameter, so tests pass their own).
///
/// Every problem is reported, not just the first: a key that does not parse is reported and
/// dropped (its default stands in), and parsing goes on; then everything is validated. Each
/// problem names its key and where the value came from (the file, a variable or a flag).
pub fn load(
    source: &Source,
    env: &BTreeMap<String, String>,
    overrides: &Overrides,
) -> Result<RelayConfig, ConfigErrors> {
    let one = |e: String| ConfigErrors(vec![e]);
    let (text, file) = match source {
        Source::File(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| one(format!("--config {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        Source::DefaultIfPresent => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
            Ok(text) => (text, DEFAULT_CONFIG_PATH.to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (String::new(), "built-in defaults".to_owned())
            }
            Err(e) => return Err(one(format!("{DEFAULT_CONFIG_PATH}: {e}"))),
        },
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
        one(format!("{file} line {line}: {}", e.message().trim()))
    })?;
    let mut origins = Origins {
        file,
        file_table: table.clone(),
        set: Vec::new(),
    };
    let mut errors = apply_env(&mut table, env, &mut origins);
    if let Some(listen) = overrides.listen {
        table.insert("listen".into(), toml::Value::String(listen.to_string()));
        origins.set.push((vec!["listen".into()], "--listen".into()));
    }
    if let Some(url) = &overrides.upstream_url {
        set_path(
            &mut table,
            &["upstream", "url"],
            toml::Value::String(url.clone()),
        );
        origins.set.push((
            vec!["upstream".into(), "url".into()],
            "--upstream-url".into(),
        ));
    }
    let config = loop {
        match serde_path_to_error::deserialize::<_, RelayConfig>(toml::Value::Table(table.clone()))
        {
            Ok(config) => break config,
            Err(e) => {
                let key = e.path().to_string();
                let origin = origins.of(&key, false);
                errors.push(format!("{key}: {}{origin}", e.inner().message().trim()));
                // Bounded: each round removes one key, and a file has only so many.
                if errors.len() >= MAX_PROBLEMS || !remove_key(&mut table, &segments(&key)) {
                    return Err(ConfigErrors(errors));
                }
            }
        }
    };
    if let Err(ConfigErrors(problems)) = config.validate() {
        errors.extend(problems.into_iter().map(|p| {
            let key = p.split([' ', ':']).next().unwrap_or_default();
            let origin = origins.of(key, true);
            format!("{p}{origin}")
        }));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// More problems than this and the rest would only be noise.
const MAX_PROBLEMS: usize = 100;

/// Where each value came from, for messages.
struct Origins {
    /// The file's name (or "built-in defaults").
    file: String,
    /// The file as read, before the environment and flags.
    file_table: toml::Table,
    /// Keys set by a variable or a flag, in the order applied (a later one wins).
    set: Vec<(Vec<String>, String)>,
}

impl Origins {
    /// ` (from VAR)`, ` (in FILE)`, or nothing for a default. A key counts as set by a
    /// variable if the variable set it or a table holding it. With `leaf_only` (a validation
    /// message, which may be about a whole section), a key naming a table gets nothing.
    fn of(&self, key: &str, leaf_only: bool) -> String {
        let path = segments(key);
        let keys: Vec<&str> = path
            .iter()
            .map(|s| match s {
                Segment::Key(k) => k.as_str(),
                Segment::Index(_) => "",
            })
            .collect();
        // Set by a variable: the key lies under what it set, or (an unknown key it created)
        // what it set lies under the key.
        let under = |set: &Vec<String>| {
            (keys.len() >= set.len() || !leaf_only) && set.iter().zip(&keys).all(|(a, b)| a == b)
        };
        if let Some((_, by)) = self.set.iter().rev().find(|(set, _)| under(set)) {
            return format!(" (from {by})");
        }
        let mut value = None;
        let mut table = Some(&self.file_table);
        let mut array: Option<&Vec<toml::Value>> = None;
        for segment in &path {
            value = match segment {
                Segment::Key(k) => table.and_then(|t| t.get(k)),
                Segment::Index(i) => array.and_then(|a| a.get(*i)),
            };
            table = value.and_then(toml::Value::as_table);
            array = value.and_then(toml::Value::as_array);
        }
        match value {
            Some(v) if !(leaf_only && v.is_table()) => format!(" (in {})", self.file),
            _ => String::new(),
        }
    }
}

/// One step of a key path: `security.tokens[0].sha256` is key, key, index, key.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(key: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            out.push(Segment::Key(name.to_owned()));
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(i) => out.push(Segment::Index(i)),
                Err(_) => out.push(Segment::Key(index.to_owned())),
            }
        }
    }
    out
}

/// Removes the innermost key of `path` from `table`. A problem inside an array item takes the
/// whole array with it (removing a field of a token would only add "missing field" noise).
/// False when there was nothing to remove.
fn remove_key(table: &mut toml::Table, path: &[Segment]) -> bool {
    let first_index = path.iter().position(|s| matches!(s, Segment::Index(_)));
    let path = &path[..first_index.unwrap_or(path.len())];
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Segment::Key(_))) else {
        return false;
    };
    let mut value: &mut toml::Value = match &path[0] {
        Segment::Key(k) if last_key > 0 => match table.get_mut(k) {
            Some(v) => v,
            None => return false,
        },
        Segment::Key(k) => return table.remove(k).is_some(),
        Segment::Index(_) => return false,
    };
    for segment in &path[1..last_key] {
        value = match (segment, value) {
            (Segment::Key(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (&path[last_key], value) {
        (Segment::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        _ => false,
    }
}

/// The credential variables and the upstream keys they set.
const CREDENTIAL_VARS: [(&str, &str); 3] = [
    ("KALSHI_API_KEY_ID", "key_id"),
    ("KALSHI_PRIVATE_KEY_PATH", "private_key_path"),
    ("KALSHI_PRIVATE_KEY_PEM", "private_key_pem"),
];

/// Applies the credential and `RELAY__` variables, noting what each set; returns the problems.
fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
    origins: &mut Origins,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (var, key) in CREDENTIAL_VARS {
        if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
            set_path(
                table,
                &["upstream", key],
                toml::Value::String(value.clone()),
            );
            origins
                .set
                .push((vec!["upstream".into(), key.into()], var.into()));
        }
    }
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("RELAY__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            errors.push(format!("{var}: empty key segment"));
            continue;
        }
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        set_path(table, &refs, parse_env_value(raw));
        origins.set.push((path, var.clone()));
    }
    errors
}

/// A value as TOML (`15`, `true`, `["A","B"]`), else as a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path.split_last().expect("paths are not empty");
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.to_string(), value);
}

impl RelayConfig {
    /// Every problem at once, each naming its dotted key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let d = &self.downstream;
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                errors.push(format!("downstream.{key} = 0: must be > 0"));
            }
        };
        positive("ping_interval_seconds", d.ping_interval_seconds);
        positive("pong_timeout_seconds", d.pong_timeout_seconds);
        positive("write_timeout_seconds", d.write_timeout_seconds);
        positive("resume_history_seconds", d.resume_history_seconds);
        positive("resume_history_fills", d.resume_history_fills as u64);
        if d.pong_timeout_seconds >= d.ping_interval_seconds && d.ping_interval_seconds > 0 {
            errors.push(format!(
                "downstream.pong_timeout_seconds = {}: must be below downstream.ping_interval_seconds ({})",
                d.pong_timeout_seconds, d.ping_interval_seconds
            ));
        }
        if d.max_message_bytes < 256 {
            errors.push(format!(
                "downstream.max_message_bytes = {}: must be at least 256",
                d.max_message_bytes
            ));
        }
        if d.coalesce_window_ms > 1_000 {
            errors.push(format!(
                "downstream.coalesce_window_ms = {}: must be at most 1000",
                d.coalesce_window_ms
            ));
        }
        if d.read_buffer_bytes < 256 {
            errors.push(format!(
                "downstream.read_buffer_bytes = {}: must be at least 256",
                d.read_buffer_bytes
            ));
        }
        for (i, m) in self.warm_markets.iter().enumerate() {
            if m.trim().is_empty() {
                errors.push(format!("warm_markets[{i}] = {m:?}: must not be empty"));
            }
        }
        if self.admin_listen.is_some_and(|a| a == self.listen) {
            errors.push(format!(
                "admin_listen = \"{}\": must differ from listen",
                self.admin_listen.expect("checked")
            ));
        }
        errors.extend(self.security.problems(self.listen));
        if self.upstream.orderbook_use_yes_price {
            errors.push(
                "upstream.orderbook_use_yes_price = true: must be false (the relay keeps books in \
                 the exchange's form and converts per client that asks)"
                    .to_owned(),
            );
        }
        if let Err(e) = self.upstream.validate() {
            errors.extend(e.problems.iter().map(|p| p.to_string()));
        }
        if let Some(cluster) = &self.cluster {
            errors.extend(cluster.problems());
        }
        if let Err(e) = self.fanout.validate() {
            errors.extend(
                e.problems
                    .iter()
                    .map(|p| format!("{} = {}: {}", p.key, p.value, p.reason)),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The path a `Source::File` names, for messages.
pub fn describe(source: &Source) -> String {
    match source {
        Source::File(p) => p.display().to_string(),
        Source::DefaultIfPresent => {
            if Path::new(DEFAULT_CONFIG_PATH).exists() {
                DEFAULT_CONFIG_PATH.to_owned()
            } else {
                "built-in defaults".to_owned()
            }
        }
    }
}

#[cfg(test)]
mod tests;
