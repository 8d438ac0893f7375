//! Loading: the file, then the environment and flags over it, renamed keys moved, parsed with
//! every problem collected and named with where its value came from, then validated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use settings::{Problem, Problems, Renamed};

use super::{RelayConfig, DEFAULT_CONFIG_PATH};

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

/// Keys that got a new name. The old name keeps working, its value converted, and the binary
/// logs a warning naming the new key.
const RENAMED: &[Renamed] = &[Renamed {
    table: &["downstream"],
    old: "coalesce_window_ms",
    new: "coalesce_window_seconds",
    scale: 0.001,
}];

/// A configuration that loaded, with the notes the binary logs at start.
#[derive(Debug)]
pub struct Loaded {
    pub config: RelayConfig,
    /// One line for each old key name used: `downstream.coalesce_window_ms is deprecated: use
    /// downstream.coalesce_window_seconds (in configs/relay.toml)`.
    pub deprecated: Vec<String>,
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
) -> Result<Loaded, Problems> {
    let (text, file) = match source {
        Source::File(path) => (
            std::fs::read_to_string(path).map_err(|e| {
                Problems::from(Problem::about(
                    format!("--config {}", path.display()),
                    e.to_string(),
                ))
            })?,
            path.display().to_string(),
        ),
        Source::DefaultIfPresent => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
            Ok(text) => (text, DEFAULT_CONFIG_PATH.to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (String::new(), "built-in defaults".to_owned())
            }
            Err(e) => {
                return Err(Problem::about(DEFAULT_CONFIG_PATH, e.to_string()).into());
            }
        },
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
        Problems::from(Problem::about(
            format!("{file} line {line}"),
            e.message().trim(),
        ))
    })?;
    let mut origins = Origins {
        file,
        file_table: table.clone(),
        set: Vec::new(),
    };
    let (mut problems, mut env_literals) = apply_env(&mut table, env, &mut origins);
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
    let (moved, rename_problems) = settings::rename_keys(&mut table, RENAMED);
    problems.extend(rename_problems.into_iter().map(|p| origins.tag(p, false)));
    let deprecated = moved
        .into_iter()
        .map(|moved| {
            let line = match origins.of(&moved.old, true) {
                Some(origin) => format!("{moved} ({origin})"),
                None => moved.to_string(),
            };
            // Later problems with the new key say which key the value came from.
            let path = moved.new.split('.').map(str::to_owned).collect();
            origins.set.push((path, moved.old));
            line
        })
        .collect();
    let config = loop {
        match serde_path_to_error::deserialize::<_, RelayConfig>(toml::Value::Table(table.clone()))
        {
            Ok(config) => break config,
            Err(e) => {
                let key = e.path().to_string();
                // A variable's value reads as TOML first (`15`, `true`, `["A"]`); where the key
                // wants a string (`RELAY__UPSTREAM__KEY_ID=12345`), it is the string as written.
                let message = e.inner().message();
                let wants_string = message.starts_with("invalid type")
                    && message
                        .split_once("expected")
                        .is_some_and(|(_, want)| want.contains("string"));
                if let Some((path, raw)) = wants_string.then(|| env_literals.remove(&key)).flatten()
                {
                    let path: Vec<&str> = path.iter().map(String::as_str).collect();
                    set_path(&mut table, &path, toml::Value::String(raw));
                    continue;
                }
                let problem = Problem::from_serde(&key, message);
                problems.push(origins.tag(problem, false));
                // Bounded: each round removes one key, and a file has only so many.
                if problems.len() >= MAX_PROBLEMS || !remove_key(&mut table, &segments(&key)) {
                    return Err(Problems(problems));
                }
            }
        }
    };
    if let Err(invalid) = config.validate() {
        problems.extend(invalid.into_iter().map(|p| origins.tag(p, true)));
    }
    Problems(problems).into_result(Loaded { config, deprecated })
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
    /// `problem` saying where its value came from: `from VAR` (or a flag), `in FILE`, or
    /// nothing for a default. A key counts as set by a variable if the variable set it or a
    /// table holding it. With `leaf_only` (a validation problem, which may be about a whole
    /// section), a key naming a table gets nothing.
    fn tag(&self, problem: Problem, leaf_only: bool) -> Problem {
        match self.of(&problem.key, leaf_only) {
            Some(origin) => problem.with_origin(origin),
            None => problem,
        }
    }

    fn of(&self, key: &str, leaf_only: bool) -> Option<String> {
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
            return Some(format!("from {by}"));
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
            Some(v) if !(leaf_only && v.is_table()) => Some(format!("in {}", self.file)),
            _ => None,
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

/// A variable's value that read as a TOML number, boolean or array: its key path and the text
/// as written, by dotted key, in case the key wants a string.
type EnvLiterals = BTreeMap<String, (Vec<String>, String)>;

/// Applies the credential and `RELAY__` variables, noting what each set; returns the problems
/// and the values that were not read as strings.
fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
    origins: &mut Origins,
) -> (Vec<Problem>, EnvLiterals) {
    let mut problems = Vec::new();
    let mut literals = EnvLiterals::new();
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
            problems.push(Problem::about(var.as_str(), "empty key segment"));
            continue;
        }
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let value = parse_env_value(raw);
        if !value.is_str() {
            literals.insert(path.join("."), (path.clone(), raw.clone()));
        }
        set_path(table, &refs, value);
        origins.set.push((path, var.clone()));
    }
    (problems, literals)
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
