//! `relay --demo`: an exchange simulator in the same process, so the relay runs with no
//! credentials and no network.

use anyhow::Context;
use exchange_sim::{Sim, SimConfig};
use tokio::net::TcpListener;

use crate::config::RelayConfig;

/// Markets in the demo exchange.
pub const DEMO_MARKETS: usize = 20;
/// Messages per second over all demo markets: lively but readable.
pub const DEMO_RATE: f64 = 100.0;

/// Starts the simulator on loopback and points `config` at it (unsigned; every demo book warm).
pub async fn start(config: &mut RelayConfig) -> anyhow::Result<Sim> {
    let ws = TcpListener::bind("127.0.0.1:0")
        .await
        .context("demo simulator: cannot bind")?;
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .context("demo simulator: cannot bind")?;
    let sim_config = SimConfig {
        markets: DEMO_MARKETS,
        rate: DEMO_RATE,
        seed: 2026,
        ..SimConfig::default()
    };
    let sim = exchange_sim::start(sim_config, ws, admin)
        .await
        .context("demo simulator: cannot start")?;
    config.upstream.url = sim.ws_url();
    config.upstream.key_id = None;
    config.upstream.private_key_path = None;
    config.upstream.private_key_pem = None;
    // The simulator serves its REST API (for backfills) on its admin listener.
    config.upstream.rest.base_url = Some(sim.rest_url());
    if config.warm_markets.is_empty() {
        config.warm_markets = sim.markets();
    }
    Ok(sim)
}

/// The two lines a new user needs: what is running, and how to talk to it.
pub fn print_hint(ws_url: &str, sim: &Sim) {
    let market = sim.markets().into_iter().next().unwrap_or_default();
    println!(
        "demo: embedded exchange simulator at {}, {DEMO_MARKETS} markets, fault injection at http://{}/admin/stats",
        sim.ws_url(),
        sim.admin_addr()
    );
    println!(
        r#"try: websocat {ws_url}   then send   {{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta","ticker"],"market_ticker":"{market}"}}}}"#
    );
}
