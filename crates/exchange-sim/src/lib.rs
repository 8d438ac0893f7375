//! A Kalshi-style exchange WebSocket simulator with fault injection, for demos, tests and
//! benchmarks of the relay without a real exchange account.
//!
//! It speaks the Kalshi trading WebSocket API v2 (`/trade-api/ws/v2`) as far as the reference
//! describes it: signed-header handshakes, subscribe / unsubscribe / update_subscription /
//! list_subscriptions with the reference's error codes, per-sid `seq`, `heartbeat` pings, and
//! the public (`orderbook_delta`, `ticker`, `trade`, `market_lifecycle_v2`) and private (`fill`,
//! `user_orders`, `market_positions`) channels of one simulated account. An admin HTTP API
//! shows the true books and stats and injects faults; on the same listener, the exchange's REST
//! portfolio endpoints (fills, orders, positions) answer from the same account state.
//!
//! Layout:
//! - [`config`]: [`SimConfig`]; `fault`: [`Fault`]; `stats`: [`Stats`].
//! - `market`: one market's random-walking book; `engine`: all books, the numbered event stream
//!   and its broadcast; `encode`: the JSON bodies, encoded once per event.
//! - `session`: one connection's subscriptions (commands, filtering, seq, per-sid faults);
//!   `conn`: accept loop, handshake checks and connection tasks; `admin`: the HTTP API;
//!   `ledger`: the account's fills, orders and positions; `rest`: the REST endpoints;
//!   `sim`: [`start`] and the [`Sim`] handle.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tokio::net::TcpListener;
//!
//! let ws = TcpListener::bind("127.0.0.1:0").await?;
//! let admin = TcpListener::bind("127.0.0.1:0").await?;
//! let sim = exchange_sim::start(exchange_sim::SimConfig::default(), ws, admin).await?;
//! println!("connect to {}", sim.ws_url());
//! let ticker = &sim.markets()[0];
//! sim.pause();
//! let truth = sim.book(ticker).expect("a known market");
//! sim.fault(exchange_sim::Fault::Gap { sid: None, market: Some(truth.market_ticker) });
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod conn;
mod encode;
mod engine;
mod fault;
mod ledger;
mod market;
mod rest;
mod session;
mod sim;
mod stats;

pub use config::{DuplicatePolicy, Pacing, SimAuth, SimConfig};
pub use fault::{Fault, FAULT_KINDS};
pub use sim::{start, Sim};
pub use stats::{ConnectionStats, SidStats, Stats};
