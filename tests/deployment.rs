//! The deployment files, kept honest without a container engine.
//!
//! No build machine runs Docker, so `docker compose up` is never exercised here. These tests run
//! the same topology natively and check every file of the stack against the real relay:
//! - the Grafana dashboard (`configs/grafana/dashboards/relay.json`): every `relay_*` metric its
//!   queries use appears in a live `/metrics` scrape of a relay fed by the simulator, with a
//!   subscribed client, a closed client and an upstream reconnect behind it (counters with
//!   labels only appear once something happened); `_bucket` names belong to real histograms;
//! - `docker-compose.yml` and `Dockerfile`: the relay binary starts with the relay service's
//!   exact `command` and `environment` (only the port and the simulator's address swapped for
//!   local ones), serves `/readyz` 200 behind the simulator, and exits 0 on SIGTERM within the
//!   service's `stop_grace_period`; the image's `CMD` flags exist; ports and paths agree across
//!   the compose file, the Dockerfile, `configs/prometheus.yml` and the Grafana provisioning.
//!
//! The compose file is read with string scans, not a YAML parser: `command` is a flow-style list
//! (valid JSON) on one line and `environment` one `KEY: "value"` per line. Its header says so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use exchange_sim::{Fault, SimConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for anything these tests wait for (start, readiness, a metric to appear).
const DEADLINE: Duration = Duration::from_secs(20);
/// Between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One HTTP/1.1 GET over a plain socket: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Polls `check` until it returns `Some`, or panics naming `what` at the deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {DEADLINE:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

async fn wait_ready(addr: SocketAddr) {
    eventually("/readyz 200", || async move {
        match http_get(addr, "/readyz").await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

async fn start_sim(markets: usize) -> exchange_sim::Sim {
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SimConfig {
        markets,
        rate: 200.0,
        ..SimConfig::default()
    };
    exchange_sim::start(config, ws, admin).await.unwrap()
}

/// Every `relay_*` name in the dashboard's `expr` fields.
fn dashboard_metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn exprs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    exprs(dashboard, &mut found);
    let mut names = BTreeSet::new();
    for expr in found {
        let mut rest = expr;
        while let Some(at) = rest.find("relay_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// Sample names and `# TYPE` families of a Prometheus text scrape.
fn scrape_names(scrape: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_in_a_live_scrape() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("configs/grafana/dashboards/relay.json")).unwrap();
    let wanted = dashboard_metric_names(&dashboard);
    assert!(
        wanted.len() >= 8,
        "the dashboard queries too few metrics: {wanted:?}"
    );

    let sim = start_sim(4).await;
    let config = relay::config::RelayConfig::with_upstream(&sim.ws_url());
    let listeners = relay::Listeners::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let relay = relay::spawn(config, listeners).await.unwrap();
    wait_ready(relay.addr).await;

    // A subscribed client: downstream messages, fanout subscribers and the latency histogram.
    let (mut client, _) = tokio_tungstenite::connect_async(relay.ws_url())
        .await
        .unwrap();
    let subscribe = serde_json::json!({
        "id": 1,
        "cmd": "subscribe",
        "params": { "channels": ["orderbook_delta"], "market_tickers": sim.markets() },
    });
    client
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    // Keep reading in the background, as a live client does.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });

    // A client that leaves: the downstream disconnect counter (by close code).
    let (mut leaver, _) = tokio_tungstenite::connect_async(relay.ws_url())
        .await
        .unwrap();
    leaver.close(None).await.unwrap();
    while let Some(Ok(_)) = leaver.next().await {}

    // An upstream drop: the disconnect counter (by reason) and a second connect.
    eventually("data flowing to the subscribed client", || async {
        let (_, body) = http_get(relay.addr, "/metrics")
            .await
            .map_err(|e| e.to_string())?;
        let (samples, _) = scrape_names(&body);
        samples
            .contains("relay_downstream_messages_sent_total")
            .then_some(())
            .ok_or_else(|| "nothing sent to clients yet".to_owned())
    })
    .await;
    sim.fault(Fault::Drop);

    let types = eventually("every dashboard metric in /metrics", || async {
        let (status, body) = http_get(relay.addr, "/metrics")
            .await
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        let (samples, types) = scrape_names(&body);
        let missing: Vec<&String> = wanted.iter().filter(|n| !samples.contains(*n)).collect();
        if !missing.is_empty() {
            return Err(format!("missing {missing:?}"));
        }
        Ok(types)
    })
    .await;
    for name in &wanted {
        if let Some(base) = name.strip_suffix("_bucket") {
            assert_eq!(
                types.get(base).map(String::as_str),
                Some("histogram"),
                "{name}: the dashboard takes quantiles of {base}, which is not a histogram"
            );
        }
    }
    // The relay came back after the drop, as the dashboard's reconnect panel expects.
    wait_ready(relay.addr).await;

    reader.abort();
    relay.shutdown().await;
    sim.shutdown().await;
}

/// One service's block of `docker-compose.yml`: its lines up to the next service.
fn compose_service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = compose.lines().skip_while(|l| *l != header);
    assert!(
        lines.next().is_some(),
        "docker-compose.yml: no service {name}"
    );
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    ") || l.trim_start().starts_with('#'))
        .collect()
}

/// The service's `key: [...]` flow list.
fn compose_list(service: &[&str], key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    let line = service
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{key}:` line"));
    serde_json::from_str(line[prefix.len()..].trim())
        .unwrap_or_else(|e| panic!("`{line}`: keep it a one-line flow list ({e})"))
}

/// The service's `environment:` map (one `KEY: "value"` per line).
fn compose_environment(service: &[&str]) -> BTreeMap<String, String> {
    service
        .iter()
        .skip_while(|l| l.trim() != "environment:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            let (key, value) = l.trim().split_once(':').expect("KEY: value");
            (key.to_owned(), value.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// The value after `flag` in an argument list.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} has no value"))
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').expect("HOST:PORT").1
}

#[test]
fn compose_dockerfile_prometheus_and_grafana_agree() {
    let compose = read("docker-compose.yml");
    let dockerfile = read("Dockerfile");
    let relay = compose_service(&compose, "relay");
    let sim = compose_service(&compose, "exchange-sim");
    let relay_args = compose_list(&relay, "command");
    let sim_args = compose_list(&sim, "command");
    assert_eq!(compose_list(&sim, "entrypoint"), ["exchange-sim"]);

    // The relay reaches the simulator's WebSocket listener by service name, at the real path.
    let sim_port = port_of(flag(&sim_args, "--listen"));
    assert_eq!(
        flag(&relay_args, "--upstream-url"),
        format!("ws://exchange-sim:{sim_port}{}", protocol::sign::WS_PATH)
    );
    assert!(sim_args.iter().any(|a| a == "--no-auth"));

    // The config the relay is given is the one the image holds.
    let copied = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY configs/relay.toml "))
        .expect("Dockerfile copies configs/relay.toml")
        .trim();
    assert_eq!(flag(&relay_args, "--config"), copied);
    assert!(dockerfile.contains(&format!("\"--config\", \"{copied}\"")));

    // One port for the relay: the health checks, EXPOSE, the published port and the scrape.
    let relay_port = port_of(flag(&relay_args, "--listen"));
    let healthz = format!("http://127.0.0.1:{relay_port}/healthz");
    assert!(
        relay.iter().any(|l| l.contains(&healthz)),
        "compose health check"
    );
    assert!(dockerfile.contains(&healthz), "Dockerfile HEALTHCHECK");
    let expose = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    for port in [
        relay_port,
        sim_port,
        port_of(flag(&sim_args, "--admin-listen")),
    ] {
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "EXPOSE {port}"
        );
    }
    assert!(dockerfile
        .lines()
        .any(|l| l.starts_with("USER ") && !l.contains("root")));

    // One image name: the one compose builds is the one the Dockerfile and the README use.
    let image = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: kalshi-relay"))
        .map(|tag| format!("kalshi-relay{tag}"))
        .expect("compose names the relay image");
    for line in relay.iter().chain(&sim) {
        if let Some(name) = line.trim().strip_prefix("image: ") {
            assert_eq!(name, image, "both services run the one image");
        }
    }
    let readme = read("README.md");
    for (file, text) in [("Dockerfile", &dockerfile), ("README.md", &readme)] {
        // Headings name the project, not the image.
        let prose = text.lines().filter(|l| !l.starts_with("# kalshi-relay"));
        let words = prose
            .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || ":._-/".contains(c))));
        // The image, with or without a tag (not `kalshi-relay-client`, the JS package).
        let images = words.filter(|w| *w == "kalshi-relay" || w.starts_with("kalshi-relay:"));
        for word in images {
            assert_eq!(word, image, "{file} names the image {word}");
        }
    }
    assert!(dockerfile.contains(&format!("docker build -t {image} .")));

    let prometheus = read("configs/prometheus.yml");
    assert!(prometheus.contains("metrics_path: /metrics"));
    assert!(
        prometheus.contains(&format!("\"relay:{relay_port}\"")),
        "prometheus.yml scrapes relay:{relay_port}"
    );
    assert!(compose.contains("./configs/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));

    // Grafana: the provisioned datasource is the one every panel names, at the compose service,
    // and the dashboard provider reads the directory the compose file mounts the dashboard into.
    let datasource = read("configs/grafana/provisioning/datasources/prometheus.yml");
    assert!(datasource.contains("url: http://prometheus:9090"));
    assert!(datasource.contains("uid: prometheus"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("configs/grafana/dashboards/relay.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{}",
            panel["title"]
        );
    }
    let provider = read("configs/grafana/provisioning/dashboards/relay.yml");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("./configs/grafana/dashboards:/var/lib/grafana/dashboards:ro"));
    assert!(compose.contains("./configs/grafana/provisioning:/etc/grafana/provisioning:ro"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_binary_runs_with_the_compose_command_and_environment() {
    let relay_bin = env!("CARGO_BIN_EXE_relay");
    let compose = read("docker-compose.yml");
    let dockerfile = read("Dockerfile");
    let relay = compose_service(&compose, "relay");
    let mut args = compose_list(&relay, "command");
    let environment = compose_environment(&relay);

    // Every flag of the image's CMD and the compose command is one the binary knows.
    let help = std::process::Command::new(relay_bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let cmd_line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("Dockerfile CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd_line).expect("CMD in exec form");
    for arg in args.iter().chain(&cmd).filter(|a| a.starts_with("--")) {
        assert!(help.contains(arg.as_str()), "relay --help has no {arg}");
    }

    // Same command, on this machine: the image's config path is the repo's file, the listen
    // address keeps its host (the non-loopback rules apply) with a free port, and the simulator
    // is a local one.
    let sim = start_sim(4).await;
    let swap = |args: &mut Vec<String>, name: &str, value: String| {
        let at = args.iter().position(|a| a == name).unwrap() + 1;
        args[at] = value;
    };
    let listen_host = flag(&args, "--listen")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_owned();
    swap(&mut args, "--listen", format!("{listen_host}:0"));
    swap(&mut args, "--upstream-url", sim.ws_url());
    let config = repo_file("configs/relay.toml");
    swap(&mut args, "--config", config.display().to_string());

    let mut command = tokio::process::Command::new(relay_bin);
    command
        .args(&args)
        .envs(&environment)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Only the compose file's settings: none inherited from whoever runs the tests.
    for (var, _) in std::env::vars() {
        if var.starts_with("RELAY__") || var.starts_with("KALSHI_") {
            command.env_remove(var);
        }
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let ready = tokio::time::timeout(DEADLINE, stdout.next_line()).await;
    let line = match ready {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = child.start_kill();
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            panic!("relay {args:?} with {environment:?} did not start ({other:?}):\n{err}");
        }
    };
    // Read stderr as it comes, so the relay never blocks on a full pipe.
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs).await;
        logs
    });
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http=http://"))
        .unwrap_or_else(|| panic!("not a ready line: {line}"));
    let port: u16 = port_of(http).parse().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready(addr).await;
    let (status, _) = http_get(addr, "/healthz").await.unwrap();
    assert_eq!(status, 200);

    // `docker stop` sends SIGTERM and waits stop_grace_period before SIGKILL.
    let grace: u64 = relay
        .iter()
        .find_map(|l| l.trim().strip_prefix("stop_grace_period:"))
        .and_then(|v| v.trim().strip_suffix('s')?.parse().ok())
        .expect("relay stop_grace_period in seconds");
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(grace), child.wait())
        .await
        .expect("relay exits within stop_grace_period")
        .unwrap();
    assert!(status.success(), "relay exit status on SIGTERM: {status}");
    // Anonymous access on an exposed address: the operator is told /metrics is open too.
    let logs = logs.await.unwrap();
    assert!(
        logs.contains("/metrics and /status are served without authentication"),
        "no exposure warning with {environment:?}:\n{logs}"
    );
    sim.shutdown().await;
}
