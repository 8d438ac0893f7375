//! Throughput check, ignored by default (run in release):
//! `cargo test -p exchange-sim --release --test throughput -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use common::*;
use exchange_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load check; run in release"]
async fn fifty_thousand_messages_per_second_reach_a_client() {
    let rate = 50_000.0;
    let sim = start(SimConfig {
        markets: 100,
        rate,
        ..SimConfig::default()
    })
    .await;
    let mut client = connect(&sim).await;
    let m = serde_json::to_string(&sim.markets()).unwrap();
    client
        .send(&format!(
            r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta","ticker","trade","fill","user_orders","market_positions","market_lifecycle_v2"],"market_tickers":{m}}}}}"#
        ))
        .await;
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        client.text().await;
        n += 1;
    }
    let per_sec = n as f64 / t0.elapsed().as_secs_f64();
    let s = sim.stats();
    println!(
        "client received {per_sec:.0} msgs/s; generated {} in total",
        s.events_generated
    );
    assert!(per_sec > rate * 0.9, "{per_sec} msgs/s");
}
