//! The benchmark suite's targets that start this build's relay, at tiny size, in front of an
//! in-process simulator: the cluster (a real `redis-server` and two nodes; frames reach the
//! suite's clients through the follower, and a client of the follower holds the simulator's
//! books), and `relay-ref` beside `relay`. No performance figure is asserted.

mod common;

use std::path::{Path, PathBuf};

use common::{subscribe, Client};
use exchange_sim::{Sim, SimConfig};
use loadgen::cluster::{Cluster, ClusterSpec};
use loadgen::{Scenario, SuiteConfig, Target};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("loadgen-cluster-{name}-{}", std::process::id()))
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_relay"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn redis_server() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .unwrap_or_else(|| "/usr/bin/redis-server".into())
        .into()
}

/// 4 markets at 200 msg/s, stamped for latency.
async fn stamped_sim() -> Sim {
    common::sim(SimConfig {
        markets: 4,
        rate: 200.0,
        stamp: true,
        ..SimConfig::default()
    })
    .await
}

/// One round of `fanout` at 5 clients and a 3 s window, against `sim`, for `targets`.
fn suite_config(sim: &Sim, targets: Vec<Target>, logs: &Path) -> SuiteConfig {
    SuiteConfig {
        scenarios: vec![Scenario::load("fanout").unwrap().scaled(0.01, 0.2)],
        targets,
        repeat: 1,
        bin_dir: bin_dir(),
        ref_relay: None,
        log_dir: logs.to_path_buf(),
        relay_args: Vec::new(),
        relay_env: Vec::new(),
        coalesce_env: Vec::new(),
        source_addrs: Vec::new(),
        redis_server: redis_server(),
        external_sim: Some((sim.ws_url(), format!("http://{}", sim.admin_addr()))),
        command: "tests/loadgen_cluster.rs".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_target_delivers_the_feed_with_the_simulators_books() {
    let sim = stamped_sim().await;
    let logs = scratch("logs");

    // The suite's `relay-follower` target.
    let config = suite_config(&sim, vec![Target::RelayFollower], &logs);
    let report = loadgen::suite::run(&config).await.unwrap();
    let s = &report.scenarios[0];
    assert!(
        s.errors.is_empty(),
        "{:?} (logs in {})",
        s.errors,
        logs.display()
    );
    let run = &s.runs[0];
    let main = &run.windows["main"];
    let names: Vec<&str> = main.processes.iter().map(|p| p.name.as_str()).collect();
    // Node `b` is the follower: the clients' frames and the CPU per frame are its.
    assert_eq!(
        names[..3],
        ["relay-b", "relay-a", "redis-server"],
        "{names:?}"
    );
    assert!(main.total.frames > 0, "no frame through the follower");
    let delivered = run.metrics["delivered_ratio"];
    assert!(delivered > 0.95, "delivered {delivered}: {:?}", run.metrics);
    for key in [
        "redis_cpu_cores",
        "other_node_cpu_cores",
        "redis_cpu_per_upstream_msg_us",
    ] {
        assert!(
            run.metrics.contains_key(key),
            "{key} missing: {:?}",
            run.metrics
        );
    }

    // The same cluster again, a client of the follower rebuilding every book from its snapshots
    // and a few seconds of deltas.
    let spec = ClusterSpec {
        bin_dir: config.bin_dir.clone(),
        redis_server: config.redis_server.clone(),
        relay_args: Vec::new(),
        relay_env: Vec::new(),
        log_dir: logs.clone(),
        tag: "books".into(),
    };
    let cluster = Cluster::start(&spec, &sim.ws_url()).await.unwrap();
    let markets = sim.markets();
    let mut client = Client::connect(&cluster.follower.url()).await;
    client
        .send(subscribe(1, &["orderbook_delta"], &markets))
        .await;
    client
        .until("every book's snapshot", |c| c.books.len() == markets.len())
        .await;
    client
        .until("live deltas", |c| {
            c.counts.get("orderbook_delta").copied().unwrap_or(0) >= 200
        })
        .await;
    sim.pause();
    client.converge(&sim, &markets).await;
    cluster.stop().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&logs);
}

/// `relay-ref` runs the binary `--ref-relay` names, in the same round as `relay`: both deliver
/// the feed and the table compares them. Without the binary, the run fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_target_runs_the_relay_binary_it_is_given() {
    let sim = stamped_sim().await;
    let logs = scratch("ref-logs");
    let mut config = suite_config(&sim, vec![Target::Relay, Target::RelayRef], &logs);
    config.ref_relay = Some(Path::new(env!("CARGO_BIN_EXE_relay")).to_path_buf());
    let report = loadgen::suite::run(&config).await.unwrap();
    let s = &report.scenarios[0];
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let targets: Vec<&str> = s.runs.iter().map(|r| r.target.name()).collect();
    assert_eq!(targets, ["relay", "relay-ref"]);
    for run in &s.runs {
        let delivered = run.metrics["delivered_ratio"];
        assert!(
            delivered > 0.95,
            "{}: delivered {delivered}",
            run.target.name()
        );
        assert_eq!(run.windows["main"].processes[0].name, run.target.name());
    }
    let table = loadgen::report::scenario_markdown(s);
    assert!(table.contains("relay / relay-ref"), "{table}");

    let missing = logs.join("no-such-relay");
    config.targets = vec![Target::RelayRef];
    config.ref_relay = Some(missing);
    let report = loadgen::suite::run(&config).await.unwrap();
    let errors = &report.scenarios[0].errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("relay-ref round 1"), "{errors:?}");
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&logs);
}
