//! The relay: one resilient upstream session to a Kalshi-style exchange, served to many
//! downstream WebSocket clients that speak the exchange's own protocol.
//!
//! What the crate offers:
//!
//! - [`spawn`] a relay on [`Listeners`] you bound, and get a [`RelayHandle`] (its URLs, TLS
//!   reload, graceful [`shutdown`](RelayHandle::shutdown)); [`start`] is the binary's whole run
//!   (demo simulator, binding, the ready line, until the shutdown future the caller passes).
//! - [`config`]: the one TOML file with environment overrides and flags, validated up front
//!   ([`RelayConfig`], [`config::load`]).
//! - [`security`]: client tokens, Origins, connection caps ([`security::Gate`]).
//! - [`session::run`]: one client served on a WebSocket you accepted yourself, against an [`App`]
//!   (the shared state) whose fanout you may publish into directly ([`UpstreamStatus`] notices
//!   included); the integration tests drive sessions this way.
//! - [`install_metrics_recorder`]: the process-wide Prometheus recorder behind `/metrics`.
//!
//! Data flows one way: exchange -> [`upstream`] (one session) -> `feed` -> [`fanout`] (one ring,
//! a state cache, lag repair) -> `session` (one task per client) -> clients. Commands flow back:
//! a client's `subscribe` becomes fanout topics, and the fanout registry's wanted topics become
//! upstream subscriptions (`feed::follow_registry`; in cluster mode, `node`).
//!
//! Layout: `config` (settings and their loading), `http` (listeners, health, readiness,
//! metrics, status, the upgrade and where its token comes from), `security` (the gate),
//! `session` (one client's socket loop around a sans-IO core) and `client` (its subscriptions
//! and replies), `resume` (private history for `resume_from`), `heartbeat` (the shared ping
//! ticker), `feed` (upstream events into the fanout, wanted topics into upstream
//! subscriptions), `node` (cluster mode: lease, Redis writer and reader), `app` (the shared
//! state), `status` (the upstream's health as clients see it), `close` (every close code),
//! `metrics` (names and the recorder), `throughput` (message rates), `dashboard` (the embedded
//! page), `tls`, `demo` (the embedded simulator), `breakage` (test-only faults).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = relay::RelayConfig::with_upstream("ws://127.0.0.1:9001/trade-api/ws/v2");
//! let listeners = relay::Listeners::bind("127.0.0.1:0".parse()?, None).await?;
//! let handle = relay::spawn(config, listeners).await?;
//! println!("clients connect to {}", handle.ws_url());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod app;
mod breakage;
mod client;
mod close;
pub mod config;
mod dashboard;
mod demo;
mod feed;
mod heartbeat;
mod http;
mod metrics;
mod node;
mod resume;
pub mod security;
pub mod session;
mod status;
mod throughput;
mod tls;

pub use app::App;
pub use client::Limits;
pub use config::RelayConfig;
pub use metrics::install_metrics_recorder;
pub use status::{Health, UpstreamStatus};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http::ListenerRole;

/// The relay's bound sockets.
pub struct Listeners {
    pub main: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds both addresses; an error names the setting and the address.
    pub async fn bind(listen: SocketAddr, admin: Option<SocketAddr>) -> anyhow::Result<Listeners> {
        let main = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen = \"{listen}\": cannot bind"))?;
        let admin = match admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin_listen = \"{addr}\": cannot bind"))?,
            ),
            None => None,
        };
        Ok(Listeners { main, admin })
    }
}

/// A running relay.
pub struct RelayHandle {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    app: Arc<App>,
    upstream_shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// In cluster mode, the lease task: it steps down (hands the lease off) when the app's
    /// shutdown is cancelled, and ends when done.
    cluster_lease: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// `ws://ADDR/trade-api/ws/v2`, or `wss://` when TLS is on.
    pub fn ws_url(&self) -> String {
        let scheme = if self.app.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.addr, protocol::sign::WS_PATH)
    }

    /// `http://ADDR` for `/healthz` and the rest, or `https://` when TLS is on.
    pub fn http_url(&self) -> String {
        let scheme = if self.app.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Re-reads the TLS certificate and key (SIGHUP). Connections are not dropped; on error the
    /// old pair stays in use.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        match &self.app.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// The shared state (status, readiness), for tests and embedding.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Graceful shutdown: `/readyz` turns 503 and new upgrades are refused (503, `Retry-After`)
    /// while probes keep being answered, every client gets 1012, the upstream unsubscribes and
    /// closes with 1000. The whole of it fits in
    /// `downstream.shutdown_drain_seconds`: clients get the time less what the upstream close
    /// needs, and whatever is still running after that is aborted.
    pub async fn shutdown(self) {
        let app = self.app;
        app.shutdown.cancel();
        app.tracker.close();
        let budget = app.config.downstream.shutdown_drain();
        let upstream_reserve = UPSTREAM_CLOSE_RESERVE.min(budget / 2);
        let clients_deadline = budget.saturating_sub(upstream_reserve);
        if tokio::time::timeout(clients_deadline, app.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                clients = app.sessions.clients.load(Ordering::Relaxed),
                "drain time over; closing the remaining connections"
            );
        }
        self.upstream_shutdown.cancel();
        if tokio::time::timeout(upstream_reserve, app.upstream.closed())
            .await
            .is_err()
        {
            warn!("upstream did not close in time");
        }
        if let Some(lease) = self.cluster_lease {
            if tokio::time::timeout(upstream_reserve, lease).await.is_err() {
                warn!("cluster lease not handed off in time");
            }
        }
        for task in self.tasks {
            task.abort();
        }
        info!("relay stopped");
    }
}

/// The part of the shutdown budget kept for the upstream's unsubscribe and close handshake.
const UPSTREAM_CLOSE_RESERVE: std::time::Duration = std::time::Duration::from_secs(3);

/// Starts the relay on listeners the caller bound and returns at once. It binds nothing and
/// waits for no signal; its one process-wide effect is the metrics recorder, installed on the
/// first call ([`install_metrics_recorder`]).
pub async fn spawn(config: RelayConfig, listeners: Listeners) -> anyhow::Result<RelayHandle> {
    let tls = config
        .security
        .tls
        .as_ref()
        .map(tls::Tls::load)
        .transpose()?;
    // The one process-wide effect of the library (idempotent: tests start many relays).
    let metrics = metrics::install_metrics_recorder();
    let upstream_shutdown = CancellationToken::new();
    let cluster = config.cluster.clone();
    // In cluster mode the events come from Redis, fed by `node`.
    let (upstream, events, cluster_events) = match &cluster {
        None => {
            let mut upstream_config = config.upstream.clone();
            if breakage::is(breakage::Breakage::NoBackfill) {
                upstream_config.backfill = false;
            }
            let (upstream, events) = upstream::spawn(upstream_config, upstream_shutdown.clone())
                .map_err(|e| anyhow::anyhow!("invalid upstream configuration: {e}"))?;
            (upstream, events, None)
        }
        Some(_) => {
            let (upstream, tx, events) = node::prepare(&config.upstream)?;
            (upstream, events, Some(tx))
        }
    };
    let (mut publisher, fanout, registry) = fanout::new(config.fanout.clone());
    // Every session starts from a status, even before the upstream's first event.
    publisher.notice(status::UpstreamStatus::starting(app::now_ms()));
    let warm = config.warm_markets.clone();
    let warm_private = config.warm_private_channels;
    let app = Arc::new(App::new(
        config,
        fanout,
        upstream.clone(),
        metrics.clone(),
        tls,
    ));

    let addr = listeners.main.local_addr()?;
    // Tokens or allow_anonymous: either way the port is reachable from elsewhere.
    if app.config.admin_listen.is_none() && !addr.ip().is_loopback() {
        warn!(
            "/metrics and /status are served without authentication on the client port; \
             set admin_listen to keep them on a private address"
        );
    }
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let _ = app.ports.set(app::Ports {
        main: addr.port(),
        admin: admin_addr.map(|a| a.port()),
    });
    // Books released upstream, from the registry follower to the publisher (unbounded: one
    // message per market that loses its last subscriber, after the linger).
    let (released_tx, released_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = vec![tokio::spawn(feed::publish(
        app.clone(),
        events,
        released_rx,
        publisher,
    ))];
    let mut cluster_lease = None;
    match (cluster, cluster_events) {
        (Some(cluster), Some(events)) => {
            let node = node::start(cluster, &app, events, registry, released_tx)?;
            tasks.extend(node.tasks);
            cluster_lease = Some(node.lease);
        }
        _ => tasks.push(tokio::spawn(feed::follow_registry(
            upstream,
            registry,
            warm,
            warm_private,
            released_tx,
        ))),
    }
    tasks.extend([
        tokio::spawn({
            let fanout = app.fanout.clone();
            app.heartbeat
                .clone()
                .run(app.shutdown.clone(), move |group| fanout.wake(group))
        }),
        tokio::spawn(metrics::upkeep(metrics, app.shutdown.clone())),
        tokio::spawn(throughput::sample(
            app.traffic.clone(),
            app.shutdown.clone(),
        )),
        tokio::spawn(http::serve(app.clone(), listeners.main, ListenerRole::Main)),
    ]);
    if let Some(admin) = listeners.admin {
        tasks.push(tokio::spawn(http::serve(
            app.clone(),
            admin,
            ListenerRole::Admin,
        )));
    }
    Ok(RelayHandle {
        addr,
        admin_addr,
        app,
        upstream_shutdown,
        tasks,
        cluster_lease,
    })
}

/// The binary's whole run: the demo simulator if asked, bind both listeners, print the ready
/// line on stdout, serve, reload TLS on each message of `reload` (SIGHUP), and stop on
/// `signal`. The caller owns the signal handlers.
pub async fn start(
    mut config: RelayConfig,
    demo: bool,
    signal: impl Future<Output = ()>,
    mut reload: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let sim = if demo {
        Some(demo::start(&mut config).await?)
    } else {
        None
    };
    let listeners = Listeners::bind(config.listen, config.admin_listen).await?;
    let handle = spawn(config, listeners).await?;
    // One line: scripts read it, and some stop reading stdout after it.
    println!(
        "relay ready ws={} http={} dashboard={}/dashboard",
        handle.ws_url(),
        handle.http_url(),
        // The admin listener is plain HTTP; the main one speaks TLS when configured.
        handle
            .admin_addr
            .map_or_else(|| handle.http_url(), |a| format!("http://{a}"))
    );
    if let Some(sim) = &sim {
        demo::print_hint(&handle.ws_url(), sim);
    }
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            Some(()) = reload.recv() => match handle.reload_tls() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(e) => warn!(error = %format!("{e:#}"), "TLS reload failed; keeping the old certificate"),
            },
        }
    }
    handle.shutdown().await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    Ok(())
}
