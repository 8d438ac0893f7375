use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<RelayConfig, Problems> {
    load_noting(text, env).map(|loaded| loaded.config)
}

/// The configuration and its deprecation notes.
fn load_noting(text: &str, env: &[(&str, &str)]) -> Result<Loaded, Problems> {
    let dir = std::env::temp_dir().join(format!("relay-config-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let result = load(&Source::File(path), &env, &Overrides::default());
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn shipped_file() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/relay.toml");
    std::fs::read_to_string(path).unwrap()
}

/// The configuration with every default, as JSON (unset options are `null`, so present).
fn defaults() -> RelayConfig {
    RelayConfig::with_upstream(upstream::DEFAULT_URL)
}

#[test]
fn the_shipped_file_is_valid_and_says_the_defaults() {
    let config = load_text(&shipped_file(), &[]).unwrap();
    assert_eq!(
        serde_json::to_value(&config).unwrap(),
        serde_json::to_value(defaults()).unwrap(),
        "configs/relay.toml sets a value other than the default"
    );
}

/// The file with its example keys uncommented: `# key = value` and `# [table]` lines become
/// live (prose comments never start with a key and `=`).
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line;
            };
            let key_line = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
            let table_line = rest.starts_with('[') && rest.ends_with(']');
            if key_line || table_line {
                rest
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Dotted paths of every leaf; an array of tables contributes `key[].field`.
fn leaf_keys(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(v, &path, out);
            }
        }
        serde_json::Value::Array(items) if items.first().is_some_and(|v| v.is_object()) => {
            leaf_keys(&items[0], &format!("{prefix}[]"), out);
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_shipped_file_shows_every_key_of_every_section() {
    let text = uncommented(&shipped_file());
    // Every key in the file is one the structs know (deny_unknown_fields), of the right type.
    let table: toml::Table = toml::from_str(&text).unwrap();
    let parsed: RelayConfig = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
        .unwrap_or_else(|e| panic!("configs/relay.toml (examples uncommented): {e}"));
    let mut in_file = BTreeSet::new();
    leaf_keys(&serde_json::to_value(&table).unwrap(), "", &mut in_file);

    // Every key the structs have is in the file. Unset options serialize as null (present);
    // the token list and the TLS table are filled from the file's own examples so that their
    // fields count too.
    let mut all = defaults();
    all.security.tokens = parsed.security.tokens.clone();
    all.security.tls = parsed.security.tls.clone();
    all.cluster = parsed.cluster.clone();
    assert!(!all.security.tokens.is_empty() && all.security.tls.is_some() && all.cluster.is_some());
    let mut in_structs = BTreeSet::new();
    leaf_keys(&serde_json::to_value(&all).unwrap(), "", &mut in_structs);

    let missing: Vec<_> = in_structs.difference(&in_file).collect();
    assert!(
        missing.is_empty(),
        "keys missing from configs/relay.toml: {missing:?}"
    );
    assert_eq!(in_file, in_structs);
}

#[test]
fn an_unknown_key_is_named_with_its_section() {
    let err = load_text("[downstream]\nping_interval_secs = 5\n", &[]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.0[0]
            .to_string()
            .starts_with("downstream.ping_interval_secs: unknown field"),
        "{err}"
    );
    let err = load_text("[upstream]\nurll = \"ws://x\"\n", &[]).unwrap_err();
    assert!(
        err.0[0]
            .to_string()
            .starts_with("upstream.urll: unknown field"),
        "{err}"
    );
}

#[test]
fn a_bad_value_is_named() {
    let err = load_text("[downstream]\nping_interval_seconds = \"soon\"\n", &[]).unwrap_err();
    assert!(
        err.0[0]
            .to_string()
            .starts_with("downstream.ping_interval_seconds: invalid type"),
        "{err}"
    );
    let err = load_text("listen = \"nowhere\"\n", &[]).unwrap_err();
    assert!(err.0[0].to_string().starts_with("listen: "), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[downstream]\nping_interval_seconds = 0\nwrite_timeout_seconds = 0\n\
                [upstream]\nurl = \"http://x\"\n[fanout]\nqueue_messages = 0\n";
    let err = load_text(text, &[]).unwrap_err();
    let all = err.to_string();
    for key in [
        "downstream.ping_interval_seconds = 0",
        "downstream.write_timeout_seconds = 0",
        "upstream.url",
        "fanout.queue_messages = 0",
    ] {
        assert!(all.contains(key), "{key} missing from:\n{all}");
    }
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_both() {
    let config = load_text(
        "listen = \"127.0.0.1:1000\"\n",
        &[
            ("RELAY__LISTEN", "127.0.0.1:2000"),
            ("RELAY__DOWNSTREAM__PING_INTERVAL_SECONDS", "15"),
            ("RELAY__WARM_MARKETS", r#"["A-1","B-2"]"#),
            ("KALSHI_API_KEY_ID", "key-1"),
            ("KALSHI_PRIVATE_KEY_PEM", "not a key"),
        ],
    );
    // The PEM is checked when the upstream validates: a bad key is one clear error.
    let err = config.unwrap_err();
    assert!(
        err.to_string().contains("upstream.private_key_pem"),
        "{err}"
    );

    let env: BTreeMap<String, String> = [
        ("RELAY__LISTEN", "127.0.0.1:2000"),
        ("RELAY__DOWNSTREAM__PING_INTERVAL_SECONDS", "15"),
        ("RELAY__WARM_MARKETS", r#"["A-1","B-2"]"#),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let flags = Overrides {
        listen: Some("127.0.0.1:3000".parse().unwrap()),
        upstream_url: Some("ws://127.0.0.1:9/trade-api/ws/v2".into()),
    };
    let config = load(&Source::DefaultIfPresent, &env, &flags)
        .unwrap()
        .config;
    assert_eq!(config.listen.port(), 3000);
    assert_eq!(
        config.downstream.ping_interval_seconds,
        Seconds::from_secs(15)
    );
    assert_eq!(
        config.warm_markets,
        vec!["A-1".to_owned(), "B-2".to_owned()]
    );
    assert_eq!(config.upstream.url, "ws://127.0.0.1:9/trade-api/ws/v2");
}

#[test]
fn every_parse_problem_is_reported_with_where_it_came_from() {
    // Two misspelled variables, an unknown key and a type error in the file, a bad value from
    // a variable: all five at once.
    let text = "[downstream]\nping_interval_secs = 5\nwrite_timeout_seconds = \"soon\"\n";
    let err = load_text(
        text,
        &[
            ("RELAY__DOWNSTREM__PING_INTERVAL_SECONDS", "5"),
            ("RELAY__UPSTREAM__URLL", "ws://x"),
            ("RELAY__FANOUT__QUEUE_MESSAGES", "lots"),
        ],
    )
    .unwrap_err();
    let lines: Vec<String> = err.iter().map(ToString::to_string).collect();
    let has = |start: &str, end: &str| {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(start) && l.ends_with(end)),
            "no line `{start}...{end}` in:\n{err}"
        );
    };
    has(
        "downstrem: unknown field",
        "(from RELAY__DOWNSTREM__PING_INTERVAL_SECONDS)",
    );
    has(
        "upstream.urll: unknown field",
        "(from RELAY__UPSTREAM__URLL)",
    );
    has(
        "fanout.queue_messages: invalid type",
        "(from RELAY__FANOUT__QUEUE_MESSAGES)",
    );
    has("downstream.ping_interval_secs: unknown field", ".toml)");
    has("downstream.write_timeout_seconds: invalid type", ".toml)");
    assert_eq!(lines.len(), 5, "{err}");
}

#[test]
fn a_bad_field_of_a_token_is_one_problem() {
    let text = "[[security.tokens]]\nname = \"a\"\nsha256 = \"00\"\npermission = \"admin\"\n";
    let err = load_text(text, &[]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(
        err.0[0]
            .to_string()
            .starts_with("security.tokens[0].permission: unknown variant `admin`"),
        "{err}"
    );
}

#[test]
fn validation_problems_name_where_the_value_came_from() {
    let err = load_text(
        "[downstream]\nwrite_timeout_seconds = 0\n[[security.tokens]]\nname = \"a\"\nsha256 = \"00\"\npermission = \"public\"\n",
        &[("RELAY__DOWNSTREAM__PONG_TIMEOUT_SECONDS", "0")],
    )
    .unwrap_err();
    let all = err.to_string();
    for want in [
        "downstream.pong_timeout_seconds = 0: must be > 0 (from RELAY__DOWNSTREAM__PONG_TIMEOUT_SECONDS)",
        "downstream.write_timeout_seconds = 0: must be > 0 (in ",
        "security.tokens[0].sha256 = \"00\": must be 64 hex digits (relay --hash-token) (in ",
    ] {
        assert!(all.contains(want), "{want} missing from:\n{all}");
    }
    // A flag names itself.
    let flags = Overrides {
        listen: None,
        upstream_url: Some("http://x".into()),
    };
    let err = load(&Source::DefaultIfPresent, &BTreeMap::new(), &flags).unwrap_err();
    assert!(
        err.iter().any(|p| {
            let l = p.to_string();
            l.starts_with("upstream.url") && l.ends_with("(from --upstream-url)")
        }),
        "{err}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let err = load_text("listen = \"127.0.0.1:1\"\n[downstream\n", &[]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.0[0].to_string().contains("relay.toml line 2: "),
        "{err}"
    );
}

#[test]
fn durations_may_be_fractional_seconds() {
    let config = load_text(
        "[downstream]\nping_interval_seconds = 2.5\npong_timeout_seconds = 0.75\n\
         coalesce_window_seconds = 0.005\n[upstream]\nbackoff_base_seconds = 0.25\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        config.downstream.ping_interval(),
        Duration::from_millis(2500)
    );
    assert_eq!(config.downstream.pong_timeout(), Duration::from_millis(750));
    assert_eq!(
        config.downstream.coalesce_window(),
        Some(Duration::from_millis(5))
    );
    let err = load_text("[security]\nauth_timeout_seconds = -1\n", &[]).unwrap_err();
    assert!(
        err.0[0]
            .to_string()
            .starts_with("security.auth_timeout_seconds = -1: must be > 0 (in "),
        "{err}"
    );
    let err = load_text("[downstream]\ncoalesce_window_seconds = 2\n", &[]).unwrap_err();
    assert!(
        err.0[0]
            .to_string()
            .starts_with("downstream.coalesce_window_seconds = 2: must be at most 1"),
        "{err}"
    );
}

#[test]
fn an_old_key_name_still_works_and_names_the_new_one() {
    // The new name: no note.
    let loaded = load_noting("[downstream]\ncoalesce_window_seconds = 0.02\n", &[]).unwrap();
    assert_eq!(
        loaded.config.downstream.coalesce_window(),
        Some(Duration::from_millis(20))
    );
    assert!(loaded.deprecated.is_empty(), "{:?}", loaded.deprecated);

    // The old name, in milliseconds, from the file or a variable: the same window, one note each.
    let loaded = load_noting("[downstream]\ncoalesce_window_ms = 20\n", &[]).unwrap();
    assert_eq!(
        loaded.config.downstream.coalesce_window(),
        Some(Duration::from_millis(20))
    );
    assert_eq!(loaded.deprecated.len(), 1);
    assert!(
        loaded.deprecated[0].starts_with(
            "downstream.coalesce_window_ms is deprecated: use downstream.coalesce_window_seconds (in "
        ),
        "{:?}",
        loaded.deprecated
    );
    let loaded = load_noting("", &[("RELAY__DOWNSTREAM__COALESCE_WINDOW_MS", "5")]).unwrap();
    assert_eq!(
        loaded.config.downstream.coalesce_window(),
        Some(Duration::from_millis(5))
    );
    assert_eq!(
        loaded.deprecated,
        [
            "downstream.coalesce_window_ms is deprecated: use downstream.coalesce_window_seconds \
          (from RELAY__DOWNSTREAM__COALESCE_WINDOW_MS)"
        ]
    );

    // A bad value under the old name is named by the old name; both names at once is refused.
    let err = load_text("[downstream]\ncoalesce_window_ms = 2000\n", &[]).unwrap_err();
    assert_eq!(
        err.0[0].to_string(),
        "downstream.coalesce_window_seconds = 2: must be at most 1 \
         (from downstream.coalesce_window_ms)"
    );
    let err = load_text(
        "[downstream]\ncoalesce_window_ms = 5\ncoalesce_window_seconds = 0.005\n",
        &[],
    )
    .unwrap_err();
    assert!(
        err.0[0].to_string().starts_with(
            "downstream.coalesce_window_ms: deprecated and replaced by \
             downstream.coalesce_window_seconds"
        ),
        "{err}"
    );
}

#[test]
fn a_string_key_set_from_the_environment_stays_a_string() {
    let (pem, _public) = protocol::sign::generate_key_pair(2048);
    let config = load_text(
        "",
        &[
            ("RELAY__UPSTREAM__KEY_ID", "12345"),
            ("RELAY__UPSTREAM__PRIVATE_KEY_PEM", &pem),
            ("RELAY__WARM_MARKETS", r#"["A-1"]"#),
        ],
    )
    .unwrap();
    assert_eq!(config.upstream.key_id.as_deref(), Some("12345"));
    assert_eq!(config.warm_markets, ["A-1"]);
    // A number where a number belongs is still checked as one, and named by its variable.
    let err = load_text("", &[("RELAY__DOWNSTREAM__WRITE_TIMEOUT_SECONDS", "true")]).unwrap_err();
    assert_eq!(
        err.0[0].to_string(),
        "downstream.write_timeout_seconds: invalid type: boolean `true`, expected a number of \
         seconds (from RELAY__DOWNSTREAM__WRITE_TIMEOUT_SECONDS)"
    );
    let err = load_text("", &[("RELAY__SECURITY__MAX_CONNECTIONS", "0")]).unwrap_err();
    assert_eq!(
        err.0[0].to_string(),
        "security.max_connections = 0: must be > 0 (from RELAY__SECURITY__MAX_CONNECTIONS)"
    );
    let err = load_text("", &[("RELAY__UPSTREAM____URL", "x")]).unwrap_err();
    assert_eq!(
        err.0[0].to_string(),
        "RELAY__UPSTREAM____URL: empty key segment"
    );
}
