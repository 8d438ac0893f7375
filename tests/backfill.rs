//! No fill is lost: fills the exchange produced while the relay's upstream session was down reach
//! a private subscriber that stayed connected, exactly once and in exchange order, fetched over
//! REST by the relay (README, "Private channels after an outage"). The truth is the simulator's
//! `/admin/fills`. (Without backfill an outage closes private subscribers: tests/e2e.rs.)

mod common;

use std::time::Duration;

use common::*;
use exchange_sim::{Fault, Sim, SimConfig};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Every relay of this binary records into the one process-wide metrics registry: a test that
/// waits for a backfill counter to move runs alone, or another test's backfill could satisfy it.
static COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Markets and rate: a few fills a second from the live feed, many more from each burst.
fn sim_config() -> SimConfig {
    SimConfig {
        markets: 4,
        rate: 300.0,
        seed: 11,
        ..SimConfig::default()
    }
}

/// A relay that notices a dead exchange within about a second and retries quickly.
async fn quick_relay(
    sim: &Sim,
    tweak: impl FnOnce(&mut relay::config::RelayConfig),
) -> relay::RelayHandle {
    relay(sim, |c| {
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.2);
        c.upstream.backoff_cap_seconds = settings::Seconds::from_secs_f64(0.5);
        c.upstream.liveness_window_seconds = settings::Seconds::from_secs_f64(1.0);
        c.upstream.ping_interval_seconds = settings::Seconds::from_secs_f64(0.3);
        c.upstream.pong_timeout_seconds = settings::Seconds::from_secs_f64(0.5);
        c.upstream.handshake_timeout_seconds = settings::Seconds::from_secs_f64(1.0);
        c.upstream.rest.backoff_base_seconds = settings::Seconds::from_secs_f64(0.1);
        c.upstream.rest.backoff_cap_seconds = settings::Seconds::from_secs_f64(0.5);
        tweak(c);
    })
    .await
}

/// Backfills that failed, and the fills backfills recovered (process-wide, like `BACKFILLS_OK`).
const BACKFILLS_FAILED: &str = r#"relay_upstream_backfills_total{outcome="failed"}"#;
const RECOVERED: &str = "relay_upstream_backfill_fills_recovered_total";

/// A private subscriber: every fill's trade id as received, plus what else it saw.
struct Private {
    client: Client,
    fills: Vec<Value>,
}

impl Private {
    async fn connect(relay: &relay::RelayHandle, channels: &[&str]) -> Private {
        let mut client = Client::connect(&relay.ws_url()).await;
        client
            .send(json!({"id": 1, "cmd": "subscribe", "params": {"channels": channels}}))
            .await;
        client.replies_until(channels.len()).await;
        Private {
            client,
            fills: Vec::new(),
        }
    }

    /// Reads until `pred` holds on the fills received, or panics at the deadline.
    async fn until(&mut self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !pred(&self.fills) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if let Some(frame) = self.client.step(Duration::from_millis(100)).await {
                if frame["type"] == "fill" {
                    self.fills.push(frame);
                }
            }
            assert_eq!(self.client.ended, None, "the private subscriber was closed");
        }
    }

    fn ids(&self) -> Vec<String> {
        self.fills
            .iter()
            .map(|f| f["msg"]["trade_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// After the simulator paused: the fills received are exactly the account's fills from the
    /// first one received to the last one the account got, in order, each once.
    async fn check_complete(&mut self, sim: &Sim) {
        let truth = admin_trade_ids(sim).await;
        let first = self.ids()[0].clone();
        let start = truth
            .iter()
            .position(|t| *t == first)
            .expect("the first fill received is one of the account's");
        let want = truth[start..].to_vec();
        self.until("every fill up to the pause", |f| f.len() >= want.len())
            .await;
        // Nothing more may come: anything after is a duplicate.
        let extra = self.client.step(Duration::from_millis(300)).await;
        assert!(
            extra.as_ref().is_none_or(|f| f["type"] != "fill"),
            "a fill beyond the account's: {extra:?}"
        );
        assert_eq!(self.ids(), want, "every fill, once, in exchange order");
        // Every field REST lacks and the relay derived is the exchange's own value.
        let all = admin_fills(sim).await;
        let by_id: std::collections::HashMap<&str, &Value> = all
            .iter()
            .map(|f| (f["trade_id"].as_str().unwrap(), f))
            .collect();
        for f in &self.fills {
            let got = &f["msg"];
            let want = by_id[got["trade_id"].as_str().unwrap()];
            for key in [
                "post_position_fp",
                "client_order_id",
                "count_fp",
                "ts",
                "market_ticker",
            ] {
                assert_eq!(got[key], want[key], "{key} of {got}");
            }
        }
        let sids: Vec<&Value> = self.fills.iter().map(|f| &f["sid"]).collect();
        assert!(sids.windows(2).all(|w| w[0] == w[1]), "one sid: {sids:?}");
    }
}

/// Fills made during an outage (`outage` starts it; a burst makes fills while it lasts) reach
/// the subscriber, which stays connected; the backfill recovered some of them.
async fn fills_survive(outage: impl Fn(&Sim)) {
    fills_survive_within(1, outage).await
}

/// [`fills_survive`], with up to `attempts` outages for one that the backfill recovers fills
/// from: for an outage so short that the burst may come only after it ended.
async fn fills_survive_within(attempts: usize, outage: impl Fn(&Sim)) {
    let _alone = COUNTERS.lock().await;
    let sim = sim(sim_config()).await;
    let relay = quick_relay(&sim, |_| {}).await;
    await_ready(relay.addr, 200).await;
    let mut private = Private::connect(&relay, &["fill"]).await;
    private.until("live fills", |f| f.len() >= 3).await;
    let first = http_get(relay.addr, "/metrics").await.1;

    for attempt in 1..=attempts {
        let before = http_get(relay.addr, "/metrics").await.1;
        outage(&sim);
        sim.fault(Fault::Burst { count: 3000 });
        let page = metric_above(relay.addr, BACKFILLS_OK, series(&before, BACKFILLS_OK)).await;
        if series(&page, RECOVERED) > series(&first, RECOVERED) {
            break;
        }
        assert!(
            attempt < attempts,
            "the outage's fills came back over REST in none of {attempts} outages: {page}"
        );
    }
    let n = private.fills.len();
    private
        .until("live fills again", |f| f.len() >= n + 3)
        .await;
    sim.pause();
    private.check_complete(&sim).await;
    relay.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_while_the_upstream_was_dropped_all_arrive_once_in_order() {
    fills_survive(|sim| {
        // The first reconnect hangs in its handshake: the outage lasts about a second.
        sim.fault(Fault::StallHandshake { count: 1 });
        sim.fault(Fault::Drop);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_while_the_upstream_was_blackholed_all_arrive_once_in_order() {
    fills_survive(|sim| {
        sim.fault(Fault::Blackhole { seconds: Some(2) });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_while_the_exchange_refused_connections_all_arrive_once_in_order() {
    fills_survive(|sim| {
        sim.fault(Fault::RejectAuth { count: 2 });
        sim.fault(Fault::Drop);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_while_the_exchange_restarted_all_arrive_once_in_order() {
    fills_survive(|sim| {
        sim.fault(Fault::StallHandshake { count: 1 });
        sim.fault(Fault::Close {
            code: 1012,
            reason: "service restart".into(),
        });
    })
    .await;
}

/// A terminal error kills the private sids at the exchange (the relay resubscribes them): the
/// fills of the gap are fetched once the subscription is live again, and nobody is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_while_a_private_sid_was_dead_all_arrive_once_in_order() {
    // The sid is dead only for the relay's round trip to resubscribe it. The test makes the
    // burst after sending the error; if the test's thread is held up between the two (a loaded
    // machine), the whole burst reaches the new sid live and nothing is left to recover, so
    // the outage is tried again.
    fills_survive_within(3, |sim| {
        sim.fault(Fault::Error {
            code: 25,
            sid: None,
        });
    })
    .await;
}

/// Fills keep coming while the relay reads REST (every answer a second late): the positions it
/// walks `post_position_fp` back from must count exactly the fills it listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_while_rest_is_read_do_not_skew_the_derived_positions() {
    fills_survive(|sim| {
        sim.fault(Fault::RestSlow {
            delay_ms: 1000,
            count: 3,
        });
        sim.fault(Fault::StallHandshake { count: 1 });
        sim.fault(Fault::Drop);
    })
    .await;
}

/// Slow answers, 429 with Retry-After, 5xx and truncated pages are retried within the bound:
/// the backfill still completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_faults_within_the_bound_still_backfill_exactly() {
    fills_survive(|sim| {
        sim.fault(Fault::RestSlow {
            delay_ms: 1500,
            count: 1,
        });
        sim.fault(Fault::RestRateLimit {
            retry_after_seconds: Some(1),
            count: 1,
        });
        sim.fault(Fault::RestError {
            status: 503,
            count: 2,
        });
        sim.fault(Fault::RestTruncate {
            cut_body: true,
            count: 1,
        });
        sim.fault(Fault::StallHandshake { count: 1 });
        sim.fault(Fault::Drop);
    })
    .await;
}

/// REST failing past `upstream.rest.max_total_seconds`: the loss is announced as before the
/// backfill existed (1013 `private messages lost`), and a public client is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_failing_past_its_bound_announces_the_loss() {
    let _alone = COUNTERS.lock().await;
    let sim = sim(sim_config()).await;
    let relay = quick_relay(&sim, |c| {
        c.upstream.rest.max_total_seconds = settings::Seconds::from_secs_f64(1.5)
    })
    .await;
    await_ready(relay.addr, 200).await;
    let mut private = Private::connect(&relay, &["fill"]).await;
    private.until("live fills", |f| f.len() >= 2).await;
    let mut public = Client::connect(&relay.ws_url()).await;
    public.send(subscribe(1, &["trade"], &sim.markets())).await;
    public.replies_until(1).await;

    sim.fault(Fault::RestError {
        status: 503,
        count: 1_000_000,
    });
    sim.fault(Fault::Drop);
    metric_above(relay.addr, BACKFILLS_FAILED, 0.0).await;
    private.client.told_of_a_private_loss().await;
    let before = public.counts.get("trade").copied().unwrap_or(0);
    public
        .until("more trades", |c| {
            c.counts.get("trade").copied().unwrap_or(0) > before + 3
        })
        .await;
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Orders and positions come back too: after the outage each changed order's latest state and
/// each touched market's position equal the simulator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_positions_after_an_outage_equal_the_exchange() {
    let _alone = COUNTERS.lock().await;
    let sim = sim(sim_config()).await;
    let relay = quick_relay(&sim, |_| {}).await;
    await_ready(relay.addr, 200).await;
    let mut c = Client::connect(&relay.ws_url()).await;
    c.send(json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill", "user_orders", "market_positions"]}}))
        .await;
    c.replies_until(3).await;
    let mut seen = Seen::default();
    let deadline = Instant::now() + DEADLINE;
    while seen.positions.is_empty() {
        assert!(Instant::now() < deadline, "no live position");
        let f = c.step(Duration::from_millis(100)).await;
        seen.read(f);
        assert_eq!(c.ended, None);
    }
    let before = http_get(relay.addr, "/metrics").await.1;
    sim.fault(Fault::StallHandshake { count: 1 });
    sim.fault(Fault::Drop);
    sim.fault(Fault::Burst { count: 3000 });
    metric_above(relay.addr, BACKFILLS_OK, series(&before, BACKFILLS_OK)).await;
    sim.pause();
    let (_, body) = http_get(
        sim.admin_addr(),
        "/trade-api/v2/portfolio/positions?limit=1000",
    )
    .await;
    let rest: Value = serde_json::from_str(&body).unwrap();
    let positions = rest["market_positions"].as_array().unwrap().clone();
    let (_, body) = http_get(
        sim.admin_addr(),
        "/trade-api/v2/portfolio/orders?limit=1000",
    )
    .await;
    let rest: Value = serde_json::from_str(&body).unwrap();
    let orders: std::collections::HashMap<String, Value> = rest["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["order_id"].as_str().unwrap().to_owned(), o.clone()))
        .collect();
    // Reads until the client's view equals the exchange's, or fails at the deadline with the
    // first difference.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let difference = seen.differs(&positions, &orders);
        let Some(difference) = difference else { break };
        assert!(Instant::now() < deadline, "{difference}");
        let f = c.step(Duration::from_millis(100)).await;
        seen.read(f);
        assert_eq!(c.ended, None);
    }
    assert!(
        seen.fill_orders.len() > 3,
        "orders: {}",
        seen.fill_orders.len()
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The latest order and position messages a client received, and the orders of its fills.
#[derive(Default)]
struct Seen {
    orders: std::collections::HashMap<String, Value>,
    positions: std::collections::HashMap<String, Value>,
    fill_orders: std::collections::HashSet<String>,
    /// Every frame's type and market, in arrival order (for failure messages).
    log: Vec<String>,
}

impl Seen {
    /// The first way the client's latest positions, and the orders of its fills, differ from
    /// the exchange's `positions` and `orders` (REST), if any.
    fn differs(
        &self,
        positions: &[Value],
        orders: &std::collections::HashMap<String, Value>,
    ) -> Option<String> {
        for p in positions {
            let ticker = p["ticker"].as_str().unwrap();
            let history: Vec<&String> = self.log.iter().filter(|l| l.contains(ticker)).collect();
            let Some(got) = self.positions.get(ticker) else {
                return Some(format!("no position for {ticker}"));
            };
            for (mine, theirs) in [
                ("position_fp", "position_fp"),
                ("realized_pnl_dollars", "realized_pnl_dollars"),
                ("fees_paid_dollars", "fees_paid_dollars"),
                ("position_cost_dollars", "market_exposure_dollars"),
            ] {
                if got[mine] != p[theirs] {
                    return Some(format!(
                        "{ticker} {mine}: {} != {}: {history:#?}",
                        got[mine], p[theirs]
                    ));
                }
            }
        }
        for id in &self.fill_orders {
            let Some(got) = self.orders.get(id) else {
                return Some(format!("order {id} never arrived"));
            };
            let o = &orders[id];
            for key in [
                "status",
                "fill_count_fp",
                "remaining_count_fp",
                "client_order_id",
            ] {
                if got[key] != o[key] {
                    return Some(format!("{key} of {o}: {}", got[key]));
                }
            }
        }
        None
    }

    fn read(&mut self, frame: Option<Value>) {
        let Some(f) = frame else { return };
        let text = |key: &str| f["msg"][key].as_str().unwrap_or_default().to_owned();
        self.log.push(format!("{} {}", f["type"], f["msg"]));
        match f["type"].as_str() {
            Some("fill") => {
                self.fill_orders.insert(text("order_id"));
            }
            Some("user_order") => {
                self.orders.insert(text("order_id"), f["msg"].clone());
            }
            Some("market_position") => {
                self.positions
                    .insert(text("market_ticker"), f["msg"].clone());
            }
            _ => {}
        }
    }
}
