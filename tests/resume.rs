//! Resume (README, "Resume after a reconnect"): a client that disconnects, misses fills and
//! subscribes again with `resume_from` gets exactly the fills it missed, in order, then live
//! ones; across a relay restart too (from the exchange's REST history); and `recovered: false`
//! when the position can no longer be served. The truth is the simulator's `/admin/fills`.

mod common;

use std::time::Duration;

use common::bot::*;
use common::*;
use exchange_sim::{Fault, Sim, SimConfig};
use serde_json::json;
use tokio::time::Instant;

fn sim_config() -> SimConfig {
    SimConfig {
        markets: 4,
        rate: 300.0,
        seed: 23,
        ..SimConfig::default()
    }
}

/// The resumed bot's replay came whole from `source`; after a few live fills, the two
/// connections hold every fill once. Returns how many fills the replay held.
async fn assert_resumed_exactly_once(
    sim: &Sim,
    first: &Bot,
    second: &mut Bot,
    source: &str,
) -> usize {
    let replayed = second.resumed(source).await;
    second.live_after(replayed).await;
    sim.pause();
    assert_exactly_once(sim, first, second).await;
    replayed
}

/// A bot drops its connection, fills happen, it comes back with its last position.
async fn miss_and_resume(sim: &Sim, url: &str) -> (Bot, Bot) {
    let mut first = Bot::connect(url, None).await;
    first.until("live fills", |b| b.fills.len() >= 3).await;
    let position = first.last_position();
    // Positions name the fill they follow.
    assert!(position.ends_with(&format!(":{}", ids(&first.fills).last().unwrap())));
    first.client.ws.close(None).await.unwrap();
    sim.fault(Fault::Burst { count: 3000 });
    let second = Bot::connect(url, Some(&position)).await;
    (first, second)
}

/// A bot takes a few fills from a relay and leaves with its position; then that relay stops.
async fn fills_from_a_relay_that_then_stops(sim: &Sim) -> (Bot, String) {
    let relay = relay(sim, |_| {}).await;
    await_ready(relay.addr, 200).await;
    let mut first = Bot::connect(&relay.ws_url(), None).await;
    first.until("live fills", |b| b.fills.len() >= 3).await;
    let position = first.last_position();
    first.client.ws.close(None).await.unwrap();
    relay.shutdown().await;
    (first, position)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_resumes_gets_exactly_the_fills_it_missed() {
    let sim = sim(sim_config()).await;
    let relay = relay(&sim, |_| {}).await;
    await_ready(relay.addr, 200).await;
    let (first, mut second) = miss_and_resume(&sim, &relay.ws_url()).await;
    let replayed = assert_resumed_exactly_once(&sim, &first, &mut second, "relay").await;
    assert!(replayed > 0, "the burst's fills are replayed");
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_across_a_relay_restart_comes_from_the_exchange() {
    let sim = sim(sim_config()).await;
    let (first, position) = fills_from_a_relay_that_then_stops(&sim).await;
    // Fills while no relay runs at all.
    sim.fault(Fault::Burst { count: 3000 });
    let relay2 = relay(&sim, |_| {}).await;
    await_ready(relay2.addr, 200).await;
    // The REST history answers a second late: fills made meanwhile arrive both live and in
    // the answer, and must still reach the bot once.
    sim.fault(Fault::RestSlow {
        delay_ms: 1000,
        count: 1,
    });
    let mut second = Bot::connect(&relay2.ws_url(), Some(&position)).await;
    assert_resumed_exactly_once(&sim, &first, &mut second, "exchange").await;
    relay2.shutdown().await;
    sim.shutdown().await;
}

/// A relay that started after the bot's fills, replayed them from REST, and loses the
/// exchange before any live fill: its backfill looks back past its own start, over the very
/// fills it replayed. The bot still gets each fill once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_right_after_a_resume_from_the_exchange_repeats_no_fill() {
    let sim = sim(sim_config()).await;
    let (first, position) = fills_from_a_relay_that_then_stops(&sim).await;
    sim.fault(Fault::Burst { count: 3000 });
    // No live fill reaches the new relay before the outage.
    sim.pause();
    let relay2 = relay(&sim, |_| {}).await;
    await_ready(relay2.addr, 200).await;
    let mut second = Bot::connect(&relay2.ws_url(), Some(&position)).await;
    let replayed = second.resumed("exchange").await;
    assert!(replayed > 0, "the burst's fills are replayed");
    // The outage's backfill asks this test's simulator for REST, then ends well. No other test
    // of this binary takes the upstream down, so the process-wide count moves for it alone.
    let before = series(&http_get(relay2.addr, "/metrics").await.1, BACKFILLS_OK);
    let asked = sim.stats().rest_requests;
    sim.fault(Fault::Drop);
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().rest_requests == asked {
        assert!(
            Instant::now() < deadline,
            "the outage's backfill never asked REST"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metric_above(relay2.addr, BACKFILLS_OK, before).await;
    sim.resume();
    second.live_after(replayed).await;
    sim.pause();
    assert_exactly_once(&sim, &first, &mut second).await;
    relay2.shutdown().await;
    sim.shutdown().await;
}

/// With `warm_private_channels = false` nobody holds the account's fills while no client wants
/// them, so the relay's history has a gap it cannot see: a resume across it comes whole from
/// the exchange, never partial from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_across_a_time_nobody_held_the_fills_comes_from_the_exchange() {
    let sim = sim(sim_config()).await;
    let relay = relay(&sim, |c| c.warm_private_channels = false).await;
    await_ready(relay.addr, 200).await;
    let mut first = Bot::connect(&relay.ws_url(), None).await;
    first.until("live fills", |b| b.fills.len() >= 3).await;
    let position = first.last_position();
    first.client.ws.close(None).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while holds_fills(&sim) {
        assert!(
            Instant::now() < deadline,
            "the relay kept its fill subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.fault(Fault::Burst { count: 3000 });
    let mut second = Bot::connect(&relay.ws_url(), Some(&position)).await;
    assert_resumed_exactly_once(&sim, &first, &mut second, "exchange").await;
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Whether any connection to the simulator holds a `fill` subscription.
fn holds_fills(sim: &Sim) -> bool {
    (sim.stats().per_connection.iter())
        .any(|c| c.sids.iter().any(|s| s.channel == protocol::Channel::Fill))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_nobody_holds_any_more_is_not_recovered() {
    let sim = sim(sim_config()).await;
    let relay = relay(&sim, |_| {}).await;
    await_ready(relay.addr, 200).await;
    let mut bot = Bot::connect(&relay.ws_url(), Some("1000:a-fill-long-gone")).await;
    bot.until("relay_resume", |b| !b.resumes.is_empty()).await;
    let resume = bot.resumes[0]["msg"].clone();
    assert_eq!(resume["recovered"], false, "{resume}");
    assert!(
        resume["reason"]
            .as_str()
            .unwrap()
            .contains("no longer lists"),
        "{resume}"
    );
    // Nothing was replayed, and live fills still come.
    assert!(bot.fills.is_empty(), "{:?}", bot.fills);
    bot.until("live fills", |b| b.fills.len() >= 2).await;
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_position_is_refused_with_an_error_reply() {
    let sim = sim(sim_config()).await;
    let relay = relay(&sim, |_| {}).await;
    let mut c = Client::connect(&relay.ws_url()).await;
    for bad in [json!("yesterday"), json!(12)] {
        c.send(json!({"id": 7, "cmd": "subscribe", "params": {"channels": ["fill"], "resume_from": bad}}))
            .await;
        c.replies_until(1).await;
        let reply = c.replies.pop().unwrap();
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["msg"]["code"], 11, "{reply}");
        assert!(c.sids.is_empty(), "nothing subscribed");
    }
    relay.shutdown().await;
    sim.shutdown().await;
}
