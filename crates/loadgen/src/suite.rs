//! The suite: for each scenario and target, a fresh simulator and server as child processes,
//! the scenario's clients against them, and the headline figures of every run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::admin;
use crate::children::{self, ChildProc};
use crate::cluster::{Cluster, ClusterSpec};
use crate::load::Measurement;
use crate::procstat::{self, Machine};
use crate::scenario::{Pacing, Scenario};

/// A server the scenarios run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The `relay` binary with its default configuration.
    Relay,
    /// The `relay` binary with its write-coalescing window enabled (`--relay-coalesce-env`).
    RelayCoalesce,
    /// Another build of the relay (`--ref-relay`, e.g. an earlier commit), default
    /// configuration: before and after alternate within every round.
    RelayRef,
    /// `loadgen baseline`: feeds every queued frame, flushes when the queue is empty.
    Baseline,
    /// `loadgen baseline --mode naive`: one write per frame per client.
    BaselineNaive,
    /// The simulator itself, no server in between.
    Direct,
    /// Two relays in cluster mode on a fresh `redis-server`; the clients on the follower, which
    /// serves from the Redis stream only.
    RelayFollower,
    /// The same cluster, the clients on the leader (it holds the upstream and writes the
    /// stream, and serves its clients from the stream too).
    RelayLeader,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        Some(match s {
            "relay" => Target::Relay,
            "relay-coalesce" => Target::RelayCoalesce,
            "relay-ref" => Target::RelayRef,
            "baseline" => Target::Baseline,
            "baseline-naive" => Target::BaselineNaive,
            "direct" => Target::Direct,
            "relay-follower" => Target::RelayFollower,
            "relay-leader" => Target::RelayLeader,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Relay => "relay",
            Target::RelayCoalesce => "relay-coalesce",
            Target::RelayRef => "relay-ref",
            Target::Baseline => "baseline",
            Target::BaselineNaive => "baseline-naive",
            Target::Direct => "direct",
            Target::RelayFollower => "relay-follower",
            Target::RelayLeader => "relay-leader",
        }
    }

    /// Whether the target is a cluster (Redis and two nodes).
    pub fn is_cluster(self) -> bool {
        matches!(self, Target::RelayFollower | Target::RelayLeader)
    }
}

/// Everything the suite needs besides the scenarios' own settings.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub scenarios: Vec<Scenario>,
    pub targets: Vec<Target>,
    /// Runs per scenario and target; targets alternate within each round.
    pub repeat: usize,
    pub bin_dir: PathBuf,
    /// The `relay-ref` target's binary.
    pub ref_relay: Option<PathBuf>,
    /// Children's logs, and their working directory (so no stray config file is picked up).
    pub log_dir: PathBuf,
    pub relay_args: Vec<String>,
    pub relay_env: Vec<(String, String)>,
    /// Extra environment that turns on the relay's coalescing window (`relay-coalesce` target),
    /// for scenarios without a `coalesce_window_seconds` of their own.
    pub coalesce_env: Vec<(String, String)>,
    pub source_addrs: Vec<Ipv4Addr>,
    /// The `redis-server` binary of the cluster targets.
    pub redis_server: PathBuf,
    /// Use this simulator (`ws_url`, `admin_url`) instead of starting one per run.
    pub external_sim: Option<(String, String)>,
    /// The command line, for the report.
    pub command: String,
}

/// One scenario run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRun {
    pub target: Target,
    pub round: usize,
    /// Headline figures, unit in the name; the summary takes their medians over rounds.
    pub metrics: BTreeMap<String, f64>,
    /// The measurement windows, named (`main`, `readers_alone`, `step_1000`, ...).
    pub windows: BTreeMap<String, Measurement>,
    pub notes: Vec<String>,
}

/// One scenario over all targets and rounds.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub runs: Vec<TargetRun>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub date: String,
    pub machine: Machine,
    pub command: String,
    pub repeat: usize,
    pub scenarios: Vec<ScenarioResult>,
}

/// Runs every scenario against every target. A failed run is recorded and the suite goes on.
pub async fn run(config: &SuiteConfig) -> Result<SuiteReport> {
    std::fs::create_dir_all(&config.log_dir)
        .with_context(|| format!("creating {}", config.log_dir.display()))?;
    let mut scenarios = Vec::new();
    for scenario in &config.scenarios {
        let mut result = ScenarioResult {
            scenario: scenario.clone(),
            runs: Vec::new(),
            errors: Vec::new(),
        };
        let targets: Vec<Target> = config
            .targets
            .iter()
            .copied()
            .filter(|t| *t != Target::RelayCoalesce || !coalesce_env(config, scenario).is_empty())
            .collect();
        for round in 0..config.repeat {
            for target in &targets {
                eprintln!(
                    "== {} against {} (round {})",
                    scenario.name,
                    target.name(),
                    round + 1
                );
                match run_one(config, scenario, *target, round).await {
                    Ok(run) => {
                        eprintln!("   {}", brief(&run.metrics));
                        result.runs.push(run);
                    }
                    Err(e) => {
                        let msg = format!("{} round {}: {e:#}", target.name(), round + 1);
                        eprintln!("   FAILED: {msg}");
                        result.errors.push(msg);
                    }
                }
            }
        }
        scenarios.push(result);
    }
    Ok(SuiteReport {
        date: procstat::utc_now(),
        machine: Machine::describe(),
        command: config.command.clone(),
        repeat: config.repeat,
        scenarios,
    })
}

fn brief(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What turns on the relay's window for `scenario` (`relay-coalesce`); empty: no such run.
fn coalesce_env(config: &SuiteConfig, scenario: &Scenario) -> Vec<(String, String)> {
    if !scenario.coalesce_variant {
        return Vec::new();
    }
    match scenario.coalesce_window_seconds {
        Some(w) => vec![(
            "RELAY__DOWNSTREAM__COALESCE_WINDOW_SECONDS".to_owned(),
            w.as_secs_f64().to_string(),
        )],
        None => config.coalesce_env.clone(),
    }
}

/// The server under test: none (`direct`), one process, or a cluster.
enum Server {
    None,
    One(Box<ChildProc>),
    /// The clients on the leader, or on the follower.
    Cluster {
        cluster: Box<Cluster>,
        on_leader: bool,
    },
}

impl Server {
    /// `(name, pid)` of the server's processes, the one the clients use first (its CPU is the
    /// one per frame).
    fn watch(&self) -> Vec<(String, u32)> {
        let p = |c: &ChildProc| (c.name.clone(), c.pid);
        match self {
            Server::None => Vec::new(),
            Server::One(c) => vec![p(c)],
            Server::Cluster { cluster, on_leader } => vec![
                p(&cluster.node(*on_leader).proc),
                p(&cluster.node(!*on_leader).proc),
                p(&cluster.redis),
            ],
        }
    }

    async fn stop(self) {
        match self {
            Server::None => {}
            Server::One(c) => c.stop().await,
            Server::Cluster { cluster, .. } => cluster.stop().await,
        }
    }
}

/// The processes of one run; every child is killed on drop, and by [`Rig::stop`].
struct Rig {
    sim: Option<ChildProc>,
    server: Server,
    admin_url: String,
    /// Where the clients connect.
    url: String,
    /// `(name, pid)`: the server first (its CPU is the one per frame), then the rest of a
    /// cluster, the simulator and this process.
    watch: Vec<(String, u32)>,
}

impl Rig {
    async fn stop(self) {
        self.server.stop().await;
        if let Some(s) = self.sim {
            s.stop().await;
        }
    }
}

/// A fresh simulator for one run (or the external one, set to the scenario's rate).
async fn start_sim(
    config: &SuiteConfig,
    scenario: &Scenario,
    log: PathBuf,
) -> Result<(Option<ChildProc>, String, String)> {
    if let Some((ws, admin)) = &config.external_sim {
        if scenario.pacing != Pacing::Tick {
            tracing::warn!(scenario = %scenario.name, "an external simulator keeps its own pacing");
        }
        let body = format!(r#"{{"msgs_per_sec":{}}}"#, scenario.sim_rate);
        admin::sim_fault(admin, "rate", Some(&body)).await?;
        return Ok((None, ws.clone(), admin.clone()));
    }
    let bin = children::sibling(&config.bin_dir, "exchange-sim")?;
    let (ws, adm) = (children::free_addr()?, children::free_addr()?);
    let args = strings(&[
        "--listen",
        &ws.to_string(),
        "--admin-listen",
        &adm.to_string(),
        "--markets",
        &scenario.sim_markets.to_string(),
        "--rate",
        &scenario.sim_rate.to_string(),
        "--seed",
        "1",
        "--pacing",
        scenario.pacing.name(),
        "--no-auth",
        "--stamp",
    ]);
    let mut child = ChildProc::spawn("exchange-sim", &bin, &args, &[], &config.log_dir, &log)?;
    child.wait_ready(adm, Some("/admin/stats")).await?;
    Ok((
        Some(child),
        format!("ws://{ws}/trade-api/ws/v2"),
        format!("http://{adm}"),
    ))
}

/// The server under test, connected to the simulator at `ws_url`.
async fn start_server(
    config: &SuiteConfig,
    scenario: &Scenario,
    target: Target,
    ws_url: &str,
    subscribe: &str,
    log: PathBuf,
) -> Result<(Server, String)> {
    let listen = children::free_addr()?;
    let url = format!("ws://{listen}/trade-api/ws/v2");
    match target {
        Target::Direct => Ok((Server::None, ws_url.to_owned())),
        Target::RelayFollower | Target::RelayLeader => {
            let spec = ClusterSpec {
                bin_dir: config.bin_dir.clone(),
                redis_server: config.redis_server.clone(),
                relay_args: config.relay_args.clone(),
                relay_env: config.relay_env.clone(),
                log_dir: config.log_dir.clone(),
                tag: log
                    .file_stem()
                    .map_or_else(|| target.name().into(), |s| s.to_string_lossy().into()),
            };
            let cluster = Box::new(Cluster::start(&spec, ws_url).await?);
            let on_leader = target == Target::RelayLeader;
            let url = cluster.node(on_leader).url();
            Ok((Server::Cluster { cluster, on_leader }, url))
        }
        Target::Relay | Target::RelayCoalesce | Target::RelayRef => {
            let bin = if target == Target::RelayRef {
                config
                    .ref_relay
                    .clone()
                    .context("the relay-ref target needs --ref-relay")?
            } else {
                children::sibling(&config.bin_dir, "relay")?
            };
            let mut args = strings(&["--listen", &listen.to_string(), "--upstream-url", ws_url]);
            args.extend(config.relay_args.iter().cloned());
            // The relay holds the account's private channels upstream by default; no client
            // here asks for them, and the baseline does not carry them. Off, the relay's upstream
            // carries exactly the baseline's traffic, and delivered/sent compares like with like.
            let mut env = vec![(
                "RELAY__WARM_PRIVATE_CHANNELS".to_owned(),
                "false".to_owned(),
            )];
            env.extend(config.relay_env.iter().cloned());
            if target == Target::RelayCoalesce {
                env.extend(coalesce_env(config, scenario));
            }
            let mut child =
                ChildProc::spawn(target.name(), &bin, &args, &env, &config.log_dir, &log)?;
            child.wait_ready(listen, Some("/healthz")).await?;
            Ok((Server::One(Box::new(child)), url))
        }
        Target::Baseline | Target::BaselineNaive => {
            let bin = std::env::current_exe()?;
            let mode = if target == Target::Baseline {
                "batch"
            } else {
                "naive"
            };
            let args = strings(&[
                "baseline",
                "--listen",
                &listen.to_string(),
                "--upstream",
                ws_url,
                "--subscribe-json",
                subscribe,
                "--mode",
                mode,
            ]);
            let mut child =
                ChildProc::spawn(target.name(), &bin, &args, &[], &config.log_dir, &log)?;
            child.wait_ready(listen, None).await?;
            Ok((Server::One(Box::new(child)), url))
        }
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

async fn run_one(
    config: &SuiteConfig,
    scenario: &Scenario,
    target: Target,
    round: usize,
) -> Result<TargetRun> {
    let tag = format!("{}-{}-{}", scenario.name, target.name(), round + 1);
    let log = |what: &str| config.log_dir.join(format!("{tag}-{what}.log"));
    let (sim, ws_url, admin_url) = start_sim(config, scenario, log("sim")).await?;
    // From here on, `sim` (and later `server`) are killed on drop whatever happens.
    let markets = admin::discover_markets(&ws_url, Duration::from_secs(5)).await?;
    let chosen: Vec<String> = markets.into_iter().take(scenario.markets).collect();
    let subscribe = admin::subscribe_command(&scenario.channels, &chosen);
    let (server, url) = start_server(
        config,
        scenario,
        target,
        &ws_url,
        &subscribe,
        log(target.name()),
    )
    .await?;
    let mut watch = server.watch();
    if let Some(s) = &sim {
        watch.push(("exchange-sim".to_owned(), s.pid));
    }
    watch.push(("loadgen".to_owned(), std::process::id()));
    let rig = Rig {
        sim,
        server,
        admin_url,
        url,
        watch,
    };
    let result = crate::drive::drive(
        config,
        scenario,
        target,
        &rig.url,
        &rig.admin_url,
        &rig.watch,
        &subscribe,
    )
    .await;
    rig.stop().await;
    let (metrics, windows, notes) = result?;
    Ok(TargetRun {
        target,
        round,
        metrics,
        windows,
        notes,
    })
}
