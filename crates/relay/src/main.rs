//! `relay`: one resilient Kalshi WebSocket session served to many downstream clients.
//!
//! The binary is thin: it parses flags, sets up logging, loads and validates the configuration
//! (exit code 64 when it is invalid), and runs [`relay::start`] (which binds the listeners) until
//! SIGTERM or SIGINT. `--demo` embeds the exchange simulator so the relay runs with no
//! credentials. Every process-wide effect is made here or in `relay::start`: the tracing
//! subscriber, the metrics recorder, the runtime, the signal handlers, the sockets.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use relay::config::{self, Overrides, Source};

/// Exit code for invalid configuration (EX_CONFIG would be 78; 64 is EX_USAGE, as the team chose).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a listener cannot be bound or the runtime fails.
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "One Kalshi WebSocket session, served to a whole fleet of clients"
)]
struct Cli {
    /// Configuration file [default: configs/relay.toml if it exists, else built-in defaults]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for clients, health and metrics (overrides `listen`) [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Exchange WebSocket URL (overrides `upstream.url`)
    #[arg(long, value_name = "URL")]
    upstream_url: Option<String>,
    /// Run against an embedded exchange simulator (20 markets, no credentials needed)
    #[arg(long)]
    demo: bool,
    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Read a client token on stdin, print its SHA-256 for `[[security.tokens]]`, and exit
    #[arg(long)]
    hash_token: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.hash_token {
        return hash_token();
    }
    init_tracing(cli.log_format);

    let env: BTreeMap<String, String> = std::env::vars().collect();
    let source = cli
        .config
        .clone()
        .map(Source::File)
        .unwrap_or(Source::DefaultIfPresent);
    let overrides = Overrides {
        listen: cli.listen,
        upstream_url: cli.upstream_url.clone(),
    };
    let config = match config::load(&source, &env, &overrides) {
        Ok(loaded) => {
            for line in &loaded.deprecated {
                tracing::warn!("{line}");
            }
            loaded.config
        }
        Err(e) => {
            eprint!("relay: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing::info!(config = %config::describe(&source), "configuration loaded");
    relay::install_metrics_recorder();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let run = async {
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(reload_on_sighup(reload_tx));
        relay::start(config, cli.demo, shutdown_signal(), reload_rx).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e:#}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `relay --hash-token`: the token comes on stdin so it never sits in a process list or history.
fn hash_token() -> ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
        eprintln!(
            "relay: --hash-token reads the token from stdin (echo -n TOKEN | relay --hash-token)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    println!(
        "{}",
        relay::security::hash_token(token.trim_end_matches(['\n', '\r']))
    );
    ExitCode::SUCCESS
}

/// Each SIGHUP asks for the TLS certificate to be re-read.
async fn reload_on_sighup(tx: tokio::sync::mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
