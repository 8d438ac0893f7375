//! Resume (README, "Resume after a reconnect"): a client that disconnects, misses fills and
//! subscribes again with `resume_from` gets exactly the fills it missed, in order, then live
//! ones; across a relay restart too (from the exchange's REST history); and `recovered: false`
//! when the position can no longer be served. The truth is the simulator's `/admin/fills`.

mod common;

use std::time::Duration;

use common::*;
use exchange_sim::{Fault, Sim, SimConfig};
use serde_json::{json, Value};
use tokio::time::Instant;

fn sim_config() -> SimConfig {
    SimConfig {
        markets: 4,
        rate: 300.0,
        seed: 23,
        ..SimConfig::default()
    }
}

/// A private client with positions: its fills and `relay_resume` events, as received.
struct Bot {
    client: Client,
    fills: Vec<Value>,
    resumes: Vec<Value>,
}

impl Bot {
    /// Connects with `?relay_events=1` and subscribes to `fill` (resuming from `from`).
    async fn connect(url: &str, from: Option<&str>) -> Bot {
        let mut client = Client::connect(&format!("{url}?relay_events=1")).await;
        let mut params = json!({"channels": ["fill"]});
        if let Some(from) = from {
            params["resume_from"] = json!(from);
        }
        client
            .send(json!({"id": 1, "cmd": "subscribe", "params": params}))
            .await;
        client.replies_until(1).await;
        Bot {
            client,
            fills: Vec::new(),
            resumes: Vec::new(),
        }
    }

    async fn until(&mut self, what: &str, pred: impl Fn(&Bot) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !pred(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if let Some(frame) = self.client.step(Duration::from_millis(100)).await {
                match frame["type"].as_str() {
                    Some("fill") => self.fills.push(frame),
                    Some("relay_resume") => self.resumes.push(frame),
                    _ => {}
                }
            }
            assert_eq!(self.client.ended, None, "closed");
        }
    }

    /// Awaits `relay_resume`, which must report a complete replay from `source`; returns how
    /// many fills it replayed.
    async fn resumed(&mut self, source: &str) -> usize {
        self.until("relay_resume", |b| !b.resumes.is_empty()).await;
        let resume = &self.resumes[0]["msg"];
        assert_eq!(resume["recovered"], true, "{resume}");
        assert_eq!(resume["source"], source, "{resume}");
        resume["fills"].as_u64().unwrap() as usize
    }

    /// Awaits a few live fills after the `replayed` ones.
    async fn live_after(&mut self, replayed: usize) {
        self.until("live fills after the replay", |b| {
            b.fills.len() > replayed + 2
        })
        .await;
    }

    fn last_position(&self) -> String {
        self.fills.last().unwrap()["relay_position"]
            .as_str()
            .expect("fills carry relay_position")
            .to_owned()
    }
}

fn ids(fills: &[Value]) -> Vec<String> {
    fills
        .iter()
        .map(|f| f["msg"]["trade_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The fills of both connections together are the account's, from the first one received,
/// each once and in order.
async fn assert_exactly_once(sim: &Sim, first: &Bot, second: &mut Bot) {
    let truth = admin_trade_ids(sim).await;
    let start = truth
        .iter()
        .position(|t| *t == ids(&first.fills)[0])
        .expect("a fill of the account");
    let want = truth[start..].to_vec();
    let have = first.fills.len();
    second
        .until("every fill up to the pause", |b| {
            have + b.fills.len() >= want.len()
        })
        .await;
    let extra = second.client.step(Duration::from_millis(300)).await;
    assert!(
        extra.as_ref().is_none_or(|f| f["type"] != "fill"),
        "a fill too many: {extra:?}"
    );
    let mut got = ids(&first.fills);
    got.extend(ids(&second.fills));
    assert_eq!(got, want, "every fill, once, in exchange order");
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
    sim.fault(Fault::Drop);
    metric_above(
        relay2.addr,
        r#"relay_upstream_backfills_total{outcome="ok"}"#,
        0.0,
    )
    .await;
    sim.resume();
    second.live_after(replayed).await;
    sim.pause();
    assert_exactly_once(&sim, &first, &mut second).await;
    relay2.shutdown().await;
    sim.shutdown().await;
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
