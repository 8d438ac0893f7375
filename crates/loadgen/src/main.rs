//! `loadgen`: drive WebSocket clients against the relay (or any exchange-protocol server), serve
//! the baseline broadcaster, or run the benchmark suite. See the library docs for the pieces.
//!
//! ```text
//! loadgen run --url ws://127.0.0.1:8080/trade-api/ws/v2 --clients 500 --connect-rate 500 \
//!     --duration 20 --channels orderbook_delta,ticker,trade --markets all --relay-pid 1234
//! loadgen baseline --listen 127.0.0.1:8090 --upstream ws://127.0.0.1:9001/trade-api/ws/v2 \
//!     --channels orderbook_delta,ticker,trade --markets all
//! loadgen suite --repeat 3 --out-md results.md --out results.json
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use loadgen::load::{parse_source_addrs, raise_nofile};
use loadgen::{admin, baseline, report, Load, LoadConfig, Scenario, SuiteConfig, Target};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Load generator, baseline broadcaster and benchmark suite for the relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N clients against a URL and measure what they receive.
    Run(RunArgs),
    /// Serve the baseline broadcaster: one upstream, every frame to every client.
    Baseline(BaselineArgs),
    /// Run scenarios against the relay and the baseline; write markdown and JSON.
    Suite(SuiteArgs),
}

#[derive(Args)]
struct SubscribeArgs {
    /// The command each client sends after connecting, verbatim.
    #[arg(long, conflicts_with_all = ["channels", "markets"])]
    subscribe_json: Option<String>,
    /// Channels to subscribe, comma-separated.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Markets: `all`, a count (the first N), or tickers, comma-separated. A count or `all`
    /// lists the markets of --discover-url (default: the target URL).
    #[arg(long, default_value = "all")]
    markets: String,
    /// Where to list markets from (an exchange-protocol server that sends tickers).
    #[arg(long)]
    discover_url: Option<String>,
    /// Each client subscribes to one of the markets (client `i` to the `i mod count`-th), not
    /// to all of them: clients with different interests.
    #[arg(long, conflicts_with = "subscribe_json")]
    spread: bool,
}

impl SubscribeArgs {
    /// The subscribe commands (one for every client, or with `--spread` one per market) and
    /// the number of books each opens.
    async fn commands(&self, default_url: &str) -> Result<(Vec<String>, u32)> {
        if let Some(json) = &self.subscribe_json {
            serde_json::from_str::<serde_json::Value>(json)
                .context("--subscribe-json is not JSON")?;
            return Ok((vec![json.clone()], 1));
        }
        if self.channels.is_empty() {
            return Ok((Vec::new(), 1));
        }
        let listed =
            self.markets.contains(|c: char| c.is_ascii_alphabetic()) && self.markets != "all";
        let markets: Vec<String> = if listed {
            self.markets
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect()
        } else {
            let url = self.discover_url.as_deref().unwrap_or(default_url);
            let all = admin::discover_markets(url, Duration::from_secs(5)).await?;
            match self.markets.as_str() {
                "all" => all,
                n => {
                    let n: usize = n
                        .parse()
                        .context("--markets: expected all, a count or tickers")?;
                    all.into_iter().take(n).collect()
                }
            }
        };
        let books = self.channels.iter().any(|c| c == "orderbook_delta");
        if self.spread {
            let commands = (markets.iter())
                .map(|m| admin::subscribe_command(&self.channels, std::slice::from_ref(m)))
                .collect();
            return Ok((commands, 1));
        }
        let books = if books { markets.len() as u32 } else { 1 };
        Ok((
            vec![admin::subscribe_command(&self.channels, &markets)],
            books,
        ))
    }
}

#[derive(Args)]
struct RunArgs {
    /// WebSocket URL (ws://).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// New connections per second; 0 opens all at once.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds between the end of the ramp and the window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[command(flatten)]
    subscribe: SubscribeArgs,
    /// Share of clients that subscribe and never read.
    #[arg(long, default_value_t = 0.0)]
    stalled_share: f64,
    /// Share of clients that read at --slow-rate frames per second.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    #[arg(long, default_value_t = 10.0)]
    slow_rate: f64,
    /// Share of clients that reconnect after a random time in [--reconnect-min, --reconnect-max] s.
    #[arg(long, default_value_t = 0.0)]
    reconnect_share: f64,
    #[arg(long, default_value_t = 1.0)]
    reconnect_min: f64,
    #[arg(long, default_value_t = 5.0)]
    reconnect_max: f64,
    /// Source addresses: `127.0.0.1-127.0.0.20` or a comma list.
    #[arg(long)]
    source_addrs: Option<String>,
    /// Server process whose CPU time and memory to report.
    #[arg(long)]
    relay_pid: Option<u32>,
    #[arg(long, default_value_t = 16 * 1024)]
    read_buffer_bytes: usize,
    /// Write the measurement as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct BaselineArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The simulator's WebSocket URL.
    #[arg(long)]
    upstream: String,
    /// `batch`: each client feeds every queued frame and flushes when its queue is empty;
    /// `naive`: one write per frame per client.
    #[arg(long, value_enum, default_value = "batch")]
    mode: BaselineMode,
    #[command(flatten)]
    subscribe: SubscribeArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BaselineMode {
    Batch,
    Naive,
}

#[derive(Args)]
struct SuiteArgs {
    /// Presets or TOML files, comma-separated [default: all presets].
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// relay, relay-coalesce, baseline (batching), baseline-naive (a write per frame), direct,
    /// relay-ref (the relay binary of --ref-relay, e.g. an earlier commit's), relay-follower and
    /// relay-leader (two relays in cluster mode on a fresh redis-server, the clients on one node).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relay,relay-coalesce,baseline,baseline-naive"
    )]
    targets: Vec<String>,
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Multiplies client counts.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Multiplies durations.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Markdown results (for BENCHMARKS.md).
    #[arg(long)]
    out_md: Option<PathBuf>,
    /// JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where exchange-sim and relay are [default: this executable's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The relay binary of the relay-ref target.
    #[arg(long)]
    ref_relay: Option<PathBuf>,
    /// Children's logs [default: a fresh directory under the system temp dir].
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Extra relay argument (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    relay_arg: Vec<String>,
    /// Extra relay environment KEY=VALUE (repeatable).
    #[arg(long)]
    relay_env: Vec<String>,
    /// Environment KEY=VALUE that enables the relay's coalescing window (relay-coalesce target;
    /// skipped when not given).
    #[arg(long)]
    coalesce_env: Vec<String>,
    #[arg(long)]
    source_addrs: Option<String>,
    /// The redis-server binary for relay-follower and relay-leader.
    #[arg(long, env = "REDIS_SERVER", default_value = "redis-server")]
    redis_server: PathBuf,
    /// Use a running simulator `WS_URL,ADMIN_URL` instead of starting one per run.
    #[arg(long)]
    external_sim: Option<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,loadgen=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = dispatch(cli.command) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    });
    // Dropping the runtime drops any child process handles, which kills them.
    drop(runtime);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run(a) => run(a).await,
        Cmd::Baseline(a) => serve_baseline(a).await,
        Cmd::Suite(a) => suite(a).await,
    }
}

async fn run(a: RunArgs) -> Result<()> {
    let (subscribe, books) = a.subscribe.commands(&a.url).await?;
    let config = LoadConfig {
        url: a.url.clone(),
        clients: a.clients,
        connect_rate: a.connect_rate,
        expected_snapshots: books,
        subscribe,
        stalled_share: a.stalled_share,
        slow_share: a.slow_share,
        slow_rate: a.slow_rate,
        reconnect_share: a.reconnect_share,
        reconnect_secs: (a.reconnect_min, a.reconnect_max),
        source_addrs: a
            .source_addrs
            .as_deref()
            .map(parse_source_addrs)
            .transpose()?
            .unwrap_or_default(),
        read_buffer_bytes: a.read_buffer_bytes,
        seed: 1,
    };
    let mut watch = Vec::new();
    if let Some(pid) = a.relay_pid {
        watch.push(("relay".to_owned(), pid));
    }
    watch.push(("loadgen".to_owned(), std::process::id()));
    let mut load = Load::start(config).await?;
    let limit = if a.connect_rate > 0.0 {
        a.clients as f64 / a.connect_rate * 2.0 + 30.0
    } else {
        30.0
    };
    load.ramped(Duration::from_secs_f64(limit)).await;
    tokio::time::sleep(Duration::from_secs_f64(a.warmup.max(0.0))).await;
    let window = load.begin_window(&watch);
    tokio::time::sleep(Duration::from_secs_f64(a.duration.max(0.1))).await;
    let m = load.end_window(window);
    load.stop().await;
    print!("{}", report::measurement_table(&m));
    if let Some(path) = a.out {
        std::fs::write(&path, serde_json::to_string_pretty(&m)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn serve_baseline(a: BaselineArgs) -> Result<()> {
    if a.subscribe.spread {
        bail!("--spread is for clients: the baseline subscribes to everything its clients want");
    }
    let subscribe = a.subscribe.commands(&a.upstream).await?.0.pop();
    raise_nofile(u64::MAX / 2)?;
    let listener = baseline::bind(a.listen)?;
    println!(
        "loadgen baseline ready ws=ws://{}/ upstream={}",
        listener.local_addr()?,
        a.upstream
    );
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let mode = match a.mode {
        BaselineMode::Batch => baseline::Mode::Batch,
        BaselineMode::Naive => baseline::Mode::Naive,
    };
    baseline::serve(listener, a.upstream, subscribe, mode, shutdown).await
}

fn pairs(v: &[String], flag: &str) -> Result<Vec<(String, String)>> {
    v.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{flag} {kv:?}: expected KEY=VALUE"))
        })
        .collect()
}

async fn suite(a: SuiteArgs) -> Result<()> {
    let names: Vec<String> = if a.scenarios.is_empty() {
        loadgen::scenario::PRESETS
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    } else {
        a.scenarios.clone()
    };
    let scenarios = names
        .iter()
        .map(|n| Scenario::load(n).map(|s| s.scaled(a.scale, a.time_scale)))
        .collect::<Result<Vec<_>>>()?;
    let coalesce_env = pairs(&a.coalesce_env, "--coalesce-env")?;
    let mut targets = Vec::new();
    for t in &a.targets {
        let target = Target::parse(t).with_context(|| format!("unknown target {t:?}"))?;
        targets.push(target);
    }
    if targets.contains(&Target::RelayRef) && a.ref_relay.is_none() {
        bail!("the relay-ref target needs --ref-relay PATH");
    }
    let external_sim = match &a.external_sim {
        None => None,
        Some(s) => {
            let (ws, admin) = s
                .split_once(',')
                .context("--external-sim: expected WS_URL,ADMIN_URL")?;
            Some((ws.to_owned(), admin.to_owned()))
        }
    };
    let log_dir = match a.log_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("loadgen-suite-{}", std::process::id())),
    };
    let config = SuiteConfig {
        scenarios,
        targets,
        repeat: a.repeat.max(1),
        bin_dir: match a.bin_dir {
            Some(d) => d,
            None => loadgen::children::bin_dir()?,
        },
        ref_relay: a.ref_relay,
        log_dir: log_dir.clone(),
        relay_args: a.relay_arg,
        relay_env: pairs(&a.relay_env, "--relay-env")?,
        coalesce_env,
        source_addrs: a
            .source_addrs
            .as_deref()
            .map(parse_source_addrs)
            .transpose()?
            .unwrap_or_default(),
        redis_server: a.redis_server,
        external_sim,
        command: command_line(),
    };
    eprintln!("children's logs in {}", log_dir.display());
    let report = loadgen::suite::run(&config).await?;
    print!("{}", report::suite_table(&report));
    if let Some(path) = a.out_md {
        std::fs::write(&path, report::suite_markdown(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = a.out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// This process's command line, shell-quoted where needed, with the binary as `loadgen`.
fn command_line() -> String {
    let mut parts = vec!["loadgen".to_owned()];
    for arg in std::env::args().skip(1) {
        if arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:".contains(c))
        {
            parts.push(arg);
        } else {
            parts.push(format!("'{}'", arg.replace('\'', r"'\''")));
        }
    }
    parts.join(" ")
}
