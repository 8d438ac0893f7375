//! The README, checked against the built binaries: its metrics table against a fresh scrape,
//! the shutdown it describes against a draining relay, the ready and log lines a new user sees,
//! its Python examples run against the demo (virtualenvs under the target directory, one per
//! version in `tests/python/websockets-versions.txt`), and every relative link of every
//! Markdown file of the repository.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;

use common::{http_get, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    std::fs::read_to_string(path).unwrap()
}

/// The relay binary with `args`, none of the caller's `RELAY__`/`KALSHI_` variables, and
/// `env`; returns the child, its ready line, and its stderr as read until it exits. Both
/// pipes are drained all along, so the relay never blocks on (or fails writing to) either.
async fn start_relay(
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, String, tokio::task::JoinHandle<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (var, _) in std::env::vars() {
        if var.starts_with("RELAY__") || var.starts_with("KALSHI_") {
            command.env_remove(var);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("the relay binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs).await;
        logs
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    match tokio::time::timeout(DEADLINE, stdout.next_line()).await {
        Ok(Ok(Some(line))) => {
            tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
            (child, line, logs)
        }
        other => {
            let _ = child.start_kill();
            let err = logs.await.unwrap_or_default();
            panic!("relay {args:?} did not start ({other:?}):\n{err}");
        }
    }
}

/// The `http=` address of a plain-HTTP ready line.
fn http_addr(ready: &str) -> SocketAddr {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http=http://"))
        .unwrap_or_else(|| panic!("no http= in the ready line: {ready}"))
        .parse()
        .unwrap()
}

/// (name, type) of every row of the README's metrics table.
fn readme_metrics() -> BTreeMap<String, String> {
    let readme = readme();
    let table = readme
        .split("### Metrics")
        .nth(1)
        .expect("a Metrics section in the README");
    let mut out = BTreeMap::new();
    for row in table.lines().take_while(|l| !l.starts_with('#')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with("`relay_") {
            continue;
        }
        // A row may name several metrics, their types in the same order.
        let names = cells[1].split(',').map(|n| n.trim().trim_matches('`'));
        let types: Vec<&str> = cells[2].split(',').map(str::trim).collect();
        for (i, name) in names.enumerate() {
            let kind = types.get(i).or(types.first()).unwrap();
            out.insert(name.to_owned(), (*kind).to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_readme_is_on_a_fresh_scrape_with_its_type() {
    let documented = readme_metrics();
    assert!(documented.len() >= 30, "{documented:?}");
    // An exchange that accepts TCP and never answers: nothing happens that would create a
    // series, so whatever the scrape shows was there from the start.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("ws://{}/trade-api/ws/v2", silent.local_addr().unwrap());
    let (_child, ready, _) = start_relay(
        &["--listen", "127.0.0.1:0", "--upstream-url", &upstream],
        &[],
    )
    .await;
    let (status, scrape) = http_get(http_addr(&ready), "/metrics").await;
    assert_eq!(status, 200);
    let types: BTreeMap<&str, &str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut wrong = Vec::new();
    for (name, kind) in &documented {
        match types.get(name.as_str()) {
            Some(found) if found == kind => {}
            found => wrong.push(format!("{name}: README says {kind}, scrape has {found:?}")),
        }
    }
    for name in types.keys().filter(|n| n.starts_with("relay_")) {
        if !documented.contains_key(*name) {
            wrong.push(format!("{name}: in the scrape, not in the README's table"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Histograms are real ones: quantiles need their buckets.
    for (name, _) in documented.iter().filter(|(_, k)| *k == "histogram") {
        assert!(
            scrape.contains(&format!("{name}_bucket{{")),
            "{name} has no _bucket series"
        );
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_probes_are_answered_and_upgrades_refused_with_retry_after() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    let sim = common::sim(exchange_sim::SimConfig {
        markets: 2,
        ..exchange_sim::SimConfig::default()
    })
    .await;
    let relay = common::relay(&sim, |_| {}).await;
    common::await_ready(relay.addr, 200).await;
    let (addr, url) = (relay.addr, relay.ws_url());
    // A client that reads nothing: the drain waits (boundedly) for its close echo, which keeps
    // the relay draining while the probes below run.
    let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let stopping = tokio::spawn(relay.shutdown());

    // A refused connection fails here: probes must be answered throughout.
    common::await_ready(addr, 503).await;
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    match tokio_tungstenite::connect_async(&url).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 503);
            let retry = response.headers().get("retry-after");
            assert_eq!(retry.and_then(|v| v.to_str().ok()), Some("5"));
        }
        other => panic!("an upgrade while draining: {other:?}"),
    }

    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the drain ends")
        .unwrap();
    let close = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(frame)) = silent.next().await {
            if let Message::Close(frame) = frame {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(close, Some(1012));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_ready_line_says_https_and_logs_into_a_pipe_carry_no_colour() {
    let dir = std::env::temp_dir().join(format!("relay-readme-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("ws://{}/trade-api/ws/v2", silent.local_addr().unwrap());
    let (mut child, ready, logs) = start_relay(
        &["--listen", "127.0.0.1:0", "--upstream-url", &upstream],
        &[
            ("RELAY__SECURITY__TLS__CERT_PATH", cert.to_str().unwrap()),
            ("RELAY__SECURITY__TLS__KEY_PATH", key.to_str().unwrap()),
        ],
    )
    .await;
    let words: Vec<&str> = ready.split_whitespace().collect();
    assert!(words[2].starts_with("ws=wss://127.0.0.1:"), "{ready}");
    assert!(words[3].starts_with("http=https://127.0.0.1:"), "{ready}");
    assert!(
        words[4].starts_with("dashboard=https://127.0.0.1:"),
        "{ready}"
    );

    // stderr is a pipe here, as it is under systemd or docker: plain text, no ANSI escapes.
    child.start_kill().unwrap();
    let logs = tokio::time::timeout(DEADLINE, logs).await.unwrap().unwrap();
    assert!(logs.contains("configuration loaded"), "{logs}");
    assert!(
        !logs.contains('\x1b'),
        "ANSI escapes in piped logs:\n{logs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every Markdown file of the repository (build output, dependencies and hidden directories
/// aside).
fn markdown_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// GitHub's anchors for a file's headings.
fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for heading in prose_lines(text).filter_map(|l| l.strip_prefix('#')) {
        let title = heading.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let repeats = out.iter().filter(|a| **a == slug).count();
        out.push(slug.clone());
        if repeats > 0 {
            out.push(format!("{slug}-{repeats}"));
        }
    }
    out
}

/// Lines outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |l| {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// Link targets on a line: `[text](target)` and `[label]: target` outside code spans, and
/// code spans that are relative paths (`../x/y.md`), which a reader follows by hand.
fn link_targets(line: &str) -> Vec<String> {
    let mut out: Vec<String> = line
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("../") || span.starts_with("./"))
        .filter(|span| !span.contains(char::is_whitespace))
        .map(str::to_owned)
        .collect();
    let outside_code: String = line
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 0 { part } else { "" })
        .collect::<Vec<_>>()
        .join("``");
    let mut rest = outside_code.as_str();
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        out.push(
            tail[..end]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned(),
        );
        rest = &tail[end..];
    }
    if let Some(def) = outside_code.trim_start().strip_prefix('[') {
        if let Some((_, target)) = def.split_once("]: ") {
            out.push(target.split_whitespace().next().unwrap_or("").to_owned());
        }
    }
    out
}

#[test]
fn every_relative_link_in_every_markdown_file_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() >= 5, "{files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for target in prose_lines(&text).flat_map(link_targets) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                root.join(from_root)
            } else {
                file.parent().unwrap().join(path)
            };
            // Inside the repository, so a fresh clone has it.
            let inside = resolved.canonicalize().is_ok_and(|p| p.starts_with(&root));
            if !inside {
                broken.push(format!("{shown}: {target}: no such file in the repository"));
                continue;
            }
            if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&resolved).unwrap();
                if !anchors(&target_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{shown}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The README's ```python blocks.
fn python_blocks(readme: &str) -> Vec<String> {
    readme
        .split("```python\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_owned())
        .collect()
}

/// A Python with `websockets==version`: a virtualenv under the target directory, made on
/// first use (`.ci/run` makes them up front).
fn python_with_websockets(version: &str) -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("readme-venv")
        .join(format!("websockets-{version}"));
    let python = venv.join("bin/python");
    // Written once websockets is installed: a half-made venv is made again.
    let installed = venv.join("installed");
    if installed.exists() {
        return python;
    }
    let run = |program: &std::path::Path, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e} (python3 with venv is needed)", program.display()));
        assert!(status.success(), "{} {args:?}: {status}", program.display());
    };
    let _ = std::fs::remove_dir_all(&venv);
    run("python3".as_ref(), &["-m", "venv", venv.to_str().unwrap()]);
    let pin = format!("websockets=={version}");
    run(
        &venv.join("bin/pip"),
        &["install", "-q", "--disable-pip-version-check", &pin],
    );
    std::fs::write(installed, &pin).unwrap();
    python
}

/// Runs `code` until a line of its output satisfies `done` (then stops it); Err with its
/// output if it ends first or takes past the deadline.
async fn run_python(
    python: &std::path::Path,
    code: &str,
    done: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let mut child = Command::new(python)
        .args(["-c", code])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if done(&line) {
                return true;
            }
            seen.push(line);
        }
        false
    })
    .await;
    let _ = child.start_kill();
    if found == Ok(true) {
        return Ok(());
    }
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
    Err(format!("stdout:\n{}\nstderr:\n{err}", seen.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_snippets_run_against_the_demo() {
    const README_URL: &str = "ws://127.0.0.1:8080/trade-api/ws/v2";
    let blocks = python_blocks(&readme());
    assert!(blocks.len() >= 2, "{blocks:?}");
    let ws_url = |ready: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ws="))
            .unwrap()
            .to_owned()
    };
    let demo = ["--demo", "--listen", "127.0.0.1:0"];
    let (_open, ready, _) = start_relay(&demo, &[]).await;
    let open_url = ws_url(&ready);
    // A demo that wants the README's token: a client that presents none and sends a command
    // other than `auth` is closed with 4001 and never sees the `ok`.
    let tokens = format!(
        r#"[{{name = "readme", sha256 = "{}", permission = "public"}}]"#,
        relay::security::hash_token("TOKEN")
    );
    let (_locked, ready, _) = start_relay(&demo, &[("RELAY__SECURITY__TOKENS", &tokens)]).await;
    let locked_url = ws_url(&ready);

    let versions = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/websockets-versions.txt"
    ))
    .unwrap();
    let versions: Vec<&str> = versions
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!versions.is_empty());
    for version in versions {
        let python = python_with_websockets(version);
        for block in &blocks {
            assert!(
                block.contains(README_URL),
                "a snippet not at the demo's address:\n{block}"
            );
            let result = if block.contains("Bearer TOKEN") {
                let code = block.replace(README_URL, &locked_url);
                run_python(&python, &code, |l| {
                    l.contains(r#""id":1"#) && l.contains(r#""type":"ok""#)
                })
                .await
            } else if block.contains("resume_from") {
                // It drops its first connection after a fill and resumes from it.
                let code = block.replace(README_URL, &open_url);
                run_python(&python, &code, |l| {
                    l.contains(r#""type":"relay_resume""#) && l.contains(r#""recovered":true"#)
                })
                .await
            } else if block.contains(r#""cmd": "subscribe""#) {
                // Books of the market it names arrive: the demo serves it.
                let market = block
                    .split(r#""market_tickers": [""#)
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .expect("the snippet names a market")
                    .to_owned();
                let code = block.replace(README_URL, &open_url);
                run_python(&python, &code, |l| {
                    l.contains(r#""type":"orderbook_snapshot""#) && l.contains(&market)
                })
                .await
            } else {
                panic!("a README snippet this test does not know how to check:\n{block}");
            };
            if let Err(output) = result {
                panic!("with websockets {version}, the README snippet\n{block}\nfailed:\n{output}");
            }
        }
    }
}
