//! Load generator and benchmark suite for the relay, with the baseline broadcaster it is
//! compared against.
//!
//! - [`load`]: a population of WebSocket clients ([`Load`]) ramped at a connect rate over
//!   loopback source addresses, with behaviours ([`Class`]: normal, slow, stalled,
//!   reconnecting), measured in windows ([`Measurement`]): frames and bytes per second,
//!   end-to-end latency from the simulator's `sim_ts_ns` stamp, connect times, closes, and the
//!   server's CPU and memory from `/proc`.
//! - [`client`]: one client task; [`stats`]: sharded per-frame counters and histograms.
//! - [`baseline`]: the cheapest broadcaster: one upstream, every frame written as-is to every
//!   client, batched per wake-up (`baseline`) or one write per frame (`baseline-naive`).
//! - [`cluster`]: a `redis-server` and two relay nodes in cluster mode, for the `relay-follower`
//!   and `relay-leader` targets.
//! - [`scenario`]: the suite's workloads (`scenarios/*.toml`); [`suite`] and [`drive`] run them
//!   against the relay and the baseline as child processes; [`report`] renders tables and
//!   markdown.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use loadgen::{Load, LoadConfig};
//! let mut load = Load::start(LoadConfig {
//!     url: "ws://127.0.0.1:8080/trade-api/ws/v2".into(),
//!     clients: 100,
//!     subscribe: vec![r#"{"id":1,"cmd":"subscribe","params":{"channels":["ticker"]}}"#.into()],
//!     ..LoadConfig::default()
//! })
//! .await?;
//! load.ramped(std::time::Duration::from_secs(10)).await;
//! let window = load.begin_window(&[]);
//! tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! println!("{}", loadgen::report::measurement_table(&load.end_window(window)));
//! load.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod baseline;
pub mod children;
pub mod client;
pub mod cluster;
pub mod drive;
pub mod load;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod suite;

pub use load::{Load, LoadConfig, Measurement};
pub use scenario::Scenario;
pub use stats::{Class, Percentiles};
pub use suite::{SuiteConfig, SuiteReport, Target};
