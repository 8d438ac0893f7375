//! `exchange-sim`: a Kalshi-style exchange WebSocket simulator with fault injection.
//!
//! This binary is the thin edge: it parses and validates flags, loads public keys, binds both
//! listeners, prints one ready line (`exchange-sim ready ws=... admin=...`) and runs the
//! `exchange_sim` library until Ctrl-C or SIGTERM. Errors are one line on stderr; exit code 64
//! for a bad configuration, 1 when a listener cannot be bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use exchange_sim::{DuplicatePolicy, Pacing, SimAuth, SimConfig};
use protocol::Verifier;
use settings::Seconds;
use tokio::net::TcpListener;

/// Exit code for a bad configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a listener cannot be bound.
const EXIT_BIND: u8 = 1;

/// A Kalshi-style exchange WebSocket simulator (path /trade-api/ws/v2) with an admin HTTP API
/// for true books, stats, pause/resume and fault injection. See crates/exchange-sim/README.md.
#[derive(Debug, Parser)]
#[command(name = "exchange-sim", version)]
struct Args {
    /// WebSocket listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Admin HTTP listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9002")]
    admin_listen: SocketAddr,
    /// Number of synthetic markets (1..=50000).
    #[arg(long, value_name = "N", default_value_t = exchange_sim::config::DEFAULT_MARKETS)]
    markets: usize,
    /// Total message rate over all markets and channels, in messages per second (0 = silent).
    #[arg(long, value_name = "MSGS_PER_SEC", default_value_t = exchange_sim::config::DEFAULT_RATE)]
    rate: f64,
    /// Seed for tickers, initial books and the event stream.
    #[arg(long, value_name = "N", default_value_t = exchange_sim::config::DEFAULT_SEED)]
    seed: u64,
    /// How messages are spaced: `tick` sends what is due every 5 ms in one write, `even` one
    /// message at a time, 1/rate apart.
    #[arg(long, value_enum, value_name = "MODE", default_value = "tick")]
    pacing: PacingArg,
    /// PEM public key (SPKI or PKCS#1) a signed handshake may verify against; repeatable.
    /// One of --public-key or --no-auth is required.
    #[arg(long = "public-key", value_name = "PEM_FILE")]
    public_keys: Vec<PathBuf>,
    /// Accept every handshake unsigned and treat every connection as the simulated account.
    #[arg(long, conflicts_with = "public_keys")]
    no_auth: bool,
    /// How far a signed timestamp may be from now, either way, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = exchange_sim::config::DEFAULT_AUTH_WINDOW_MS)]
    auth_window_ms: u64,
    /// With --public-key: accept handshakes without any KALSHI-ACCESS-* header as anonymous
    /// (public channels only; private channels get error 9) instead of answering 401.
    #[arg(long)]
    allow_anonymous: bool,
    /// Seconds between `heartbeat` Ping frames (> 0; fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    ping_interval: f64,
    /// Add "sim_ts_ns" (wall-clock send time in ns since the Unix epoch) inside every data
    /// message's msg, for latency measurement.
    #[arg(long)]
    stamp: bool,
    /// Answer 403 to handshakes that carry an Origin header, as production did.
    #[arg(long)]
    reject_origin: bool,
    /// What a second subscribe on a channel the connection already holds does.
    #[arg(long, value_enum, value_name = "POLICY", default_value = "merge")]
    duplicate_subscribe: DuplicateArg,
    /// Most markets one subscription may hold (more gives error 26). Default: no limit.
    #[arg(long, value_name = "N")]
    max_markets_per_subscription: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PacingArg {
    /// Every 5 ms, everything due in one batch.
    Tick,
    /// One message at a time, evenly spaced.
    Even,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DuplicateArg {
    /// Error 6 "Already subscribed" (older servers; retired in the newest spec).
    Error,
    /// Merge the markets into the existing sid and answer ok (newer servers).
    Merge,
}

/// Builds the library config, naming every problem found.
fn config(args: &Args) -> Result<SimConfig, String> {
    let mut problems = Vec::new();
    let auth = if args.no_auth {
        SimAuth::None
    } else {
        let mut verifier = Verifier::new(args.auth_window_ms);
        for path in &args.public_keys {
            match std::fs::read_to_string(path) {
                Ok(pem) => {
                    if let Err(e) = verifier.add_public_pem(&pem) {
                        problems.push(format!("--public-key {}: {e}", path.display()));
                    }
                }
                Err(e) => {
                    problems.push(format!("--public-key {}: cannot read: {e}", path.display()))
                }
            }
        }
        SimAuth::Verifier(verifier)
    };
    let ping_interval = match Seconds::new(args.ping_interval) {
        Ok(s) => s.get(),
        Err(must) => {
            problems.push(format!(
                "--ping-interval {}: must be {must}",
                args.ping_interval
            ));
            exchange_sim::config::DEFAULT_PING_INTERVAL
        }
    };
    let config = SimConfig {
        markets: args.markets,
        rate: args.rate,
        seed: args.seed,
        pacing: match args.pacing {
            PacingArg::Tick => Pacing::Tick,
            PacingArg::Even => Pacing::Even,
        },
        auth,
        auth_window_ms: args.auth_window_ms,
        allow_anonymous: args.allow_anonymous,
        ping_interval,
        stamp: args.stamp,
        duplicate_subscribe: match args.duplicate_subscribe {
            DuplicateArg::Error => DuplicatePolicy::Error6,
            DuplicateArg::Merge => DuplicatePolicy::Merge,
        },
        max_markets_per_subscription: args.max_markets_per_subscription,
        reject_origin: args.reject_origin,
    };
    problems.extend(config.problems().into_iter().map(|p| {
        let value = p.value.unwrap_or_default();
        format!("--{} {value}: {}", p.key.replace('_', "-"), p.reason)
    }));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.join("; "))
    }
}

async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{flag} {addr}: cannot listen: {e}"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.public_keys.is_empty() && !args.no_auth {
        // Checked here rather than by clap, so the message says what each choice means.
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give --public-key PEM_FILE (check handshake signatures) or --no-auth (accept \
                 unsigned handshakes: no signature checks, every connection is the account)",
            )
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("exchange-sim: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let listeners = async {
        Ok::<_, String>((
            bind("--listen", args.listen).await?,
            bind("--admin-listen", args.admin_listen).await?,
        ))
    };
    let (ws, admin) = match listeners.await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("exchange-sim: {e}");
            return ExitCode::from(EXIT_BIND);
        }
    };
    let sim = match exchange_sim::start(config, ws, admin).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("exchange-sim: cannot start: {e}");
            return ExitCode::from(EXIT_BIND);
        }
    };
    println!(
        "exchange-sim ready ws={} admin=http://{}",
        sim.ws_url(),
        sim.admin_addr()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    ExitCode::SUCCESS
}
