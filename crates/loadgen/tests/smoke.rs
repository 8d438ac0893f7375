//! Smoke test of the tool, the baseline and the whole suite at tiny sizes against an in-process
//! simulator. It proves they work end to end; it asserts no performance figure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

async fn start_sim() -> exchange_sim::Sim {
    start_paced_sim(exchange_sim::Pacing::Tick, 200.0).await
}

async fn start_paced_sim(pacing: exchange_sim::Pacing, rate: f64) -> exchange_sim::Sim {
    let config = exchange_sim::SimConfig {
        markets: 4,
        rate,
        pacing,
        stamp: true,
        ..exchange_sim::SimConfig::default()
    };
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    exchange_sim::start(config, ws, admin).await.unwrap()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-smoke-{}-{name}", std::process::id()))
}

/// Runs `loadgen args` to completion (off the runtime's threads) and returns its JSON output.
async fn loadgen_json(args: Vec<String>, out: PathBuf) -> Value {
    let out2 = out.clone();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(LOADGEN)
            .args(&args)
            .arg("--out")
            .arg(&out2)
            .stdout(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "loadgen failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).unwrap()
}

fn run_args(url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--url",
        url,
        "--clients",
        "4",
        "--connect-rate",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(
        ["--duration", "1.5", "--warmup", "0.3"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Delivered frames, and a histogram whose percentiles are ordered.
fn assert_sane(m: &Value) {
    let total = &m["total"];
    assert!(total["frames"].as_u64().unwrap() > 0, "no frames: {m}");
    let lat = &total["latency_ms"];
    assert!(
        lat["count"].as_u64().unwrap() > 0,
        "no latency samples: {m}"
    );
    let p = |k: &str| lat[k].as_f64().unwrap();
    assert!(
        p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max")
    );
    assert!(p("p50") >= 0.0);
    // Every client connected at least once (reconnecting ones more).
    assert!(m["connections"]["connect_ms"]["count"].as_u64().unwrap() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_the_simulator_with_every_behaviour() {
    let sim = start_sim().await;
    let url = sim.ws_url();
    let m = loadgen_json(
        run_args(
            &url,
            &[
                "--channels",
                "orderbook_delta,ticker,trade",
                "--markets",
                "all",
                "--slow-share",
                "0.25",
                "--slow-rate",
                "20",
                "--stalled-share",
                "0.25",
                "--source-addrs",
                "127.0.0.1-127.0.0.2",
                "--relay-pid",
                &std::process::id().to_string(),
            ],
        ),
        tmp("direct.json"),
    )
    .await;
    assert_sane(&m);
    assert_eq!(m["clients"], 4);
    assert!(m["per_class"]["normal"]["frames"].as_u64().unwrap() > 0);
    assert!(m["per_class"]["slow"]["frames"].as_u64().unwrap() > 0);
    assert!(m["processes"][0]["peak_rss_kib"].as_u64().unwrap() > 0);
    sim.shutdown().await;
}

/// Kills the baseline child even if an assertion fails.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_the_baseline() {
    let sim = start_sim().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _baseline = Killed(
        Command::new(LOADGEN)
            .args([
                "baseline",
                "--listen",
                &addr.to_string(),
                "--upstream",
                &sim.ws_url(),
            ])
            .args(["--channels", "ticker,trade", "--markets", "all"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "baseline never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://{addr}/trade-api/ws/v2");
    let m = loadgen_json(
        run_args(
            &url,
            &[
                "--reconnect-share",
                "0.5",
                "--reconnect-min",
                "0.2",
                "--reconnect-max",
                "0.5",
            ],
        ),
        tmp("baseline.json"),
    )
    .await;
    assert_sane(&m);
    assert!(m["connections"]["reconnects"].as_u64().unwrap() > 0);
    // The simulator saw one upstream session, however many clients.
    assert_eq!(sim.stats().connections, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_at_tiny_size() {
    let sim = start_sim().await;
    let external = format!("{},http://{}", sim.ws_url(), sim.admin_addr());
    let md = tmp("suite.md");
    let args: Vec<String> = [
        "suite",
        "--external-sim",
        &external,
        "--targets",
        "baseline,direct",
        "--scale",
        "0.001",
        "--time-scale",
        "0.05",
        "--out-md",
        md.to_str().unwrap(),
        "--log-dir",
        tmp("logs").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = loadgen_json(args, tmp("suite.json")).await;
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 10);
    for s in scenarios {
        let name = s["scenario"]["name"].as_str().unwrap();
        assert!(
            s["errors"].as_array().unwrap().is_empty(),
            "{name}: {}",
            s["errors"]
        );
        assert_eq!(s["runs"].as_array().unwrap().len(), 2, "{name}");
    }
    let fanout = &scenarios[0]["runs"][0];
    assert_eq!(fanout["target"], "baseline");
    assert!(
        fanout["windows"]["main"]["total"]["frames"]
            .as_u64()
            .unwrap()
            > 0
    );
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("### `upstream-drop`") && text.contains("Machine:"));
    let _ = std::fs::remove_file(&md);
    let _ = std::fs::remove_dir_all(Path::new(&tmp("logs")));
    sim.shutdown().await;
}

/// `fanout-single` at small scale, on a simulator that sends one message at a time, against
/// both baselines: every client receives, every frame the simulator sent arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_single_runs_against_both_baselines() {
    let sim = start_paced_sim(exchange_sim::Pacing::Even, 500.0).await;
    let external = format!("{},http://{}", sim.ws_url(), sim.admin_addr());
    let args: Vec<String> = [
        "suite",
        "--scenarios",
        "fanout-single",
        "--external-sim",
        &external,
        "--targets",
        "baseline,baseline-naive",
        "--scale",
        "0.02",
        "--time-scale",
        "0.1",
        "--log-dir",
        tmp("single-logs").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = loadgen_json(args, tmp("single.json")).await;
    let s = &report["scenarios"][0];
    assert_eq!(s["scenario"]["name"], "fanout-single");
    assert!(
        s["errors"].as_array().unwrap().is_empty(),
        "{}",
        s["errors"]
    );
    let runs = s["runs"].as_array().unwrap();
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["baseline", "baseline-naive"]);
    for run in runs {
        let main = &run["windows"]["main"];
        assert_eq!(main["clients"], 4, "{}", run["target"]);
        let delivered = run["metrics"]["delivered_ratio"].as_f64().unwrap();
        assert!(delivered > 0.95, "{}: delivered {delivered}", run["target"]);
    }
    let _ = std::fs::remove_dir_all(Path::new(&tmp("single-logs")));
    sim.shutdown().await;
}
