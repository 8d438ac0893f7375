//! A private client for the fill tests: it subscribes to `fill` with positions
//! (`?relay_events=1`), optionally resuming, and compares what it received with the
//! simulator's truth.

use std::time::Duration;

use exchange_sim::Sim;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{admin_trade_ids, Client, DEADLINE};

/// A private client with positions: its fills and `relay_resume` events, as received.
pub struct Bot {
    pub client: Client,
    pub fills: Vec<Value>,
    pub resumes: Vec<Value>,
}

impl Bot {
    /// Connects with `?relay_events=1` and subscribes to `fill` (resuming from `from`).
    pub async fn connect(url: &str, from: Option<&str>) -> Bot {
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

    pub async fn until(&mut self, what: &str, pred: impl Fn(&Bot) -> bool) {
        assert!(self.read_until(pred).await, "timed out waiting for {what}");
    }

    /// Reads until `pred` holds (true) or the deadline passes (false).
    async fn read_until(&mut self, pred: impl Fn(&Bot) -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while !pred(self) {
            if Instant::now() >= deadline {
                return false;
            }
            if let Some(frame) = self.client.step(Duration::from_millis(100)).await {
                match frame["type"].as_str() {
                    Some("fill") => self.fills.push(frame),
                    Some("relay_resume") => self.resumes.push(frame),
                    _ => {}
                }
            }
            assert_eq!(self.client.ended, None, "closed");
        }
        true
    }

    /// Awaits `relay_resume`, which must report a complete replay from `source`; returns how
    /// many fills it replayed.
    pub async fn resumed(&mut self, source: &str) -> usize {
        self.until("relay_resume", |b| !b.resumes.is_empty()).await;
        let resume = &self.resumes[0]["msg"];
        assert_eq!(resume["recovered"], true, "{resume}");
        assert_eq!(resume["source"], source, "{resume}");
        resume["fills"].as_u64().unwrap() as usize
    }

    /// Awaits a few live fills after the `replayed` ones.
    pub async fn live_after(&mut self, replayed: usize) {
        self.until("live fills after the replay", |b| {
            b.fills.len() > replayed + 2
        })
        .await;
    }

    pub fn last_position(&self) -> String {
        self.fills.last().unwrap()["relay_position"]
            .as_str()
            .expect("fills carry relay_position")
            .to_owned()
    }
}

pub fn ids(fills: &[Value]) -> Vec<String> {
    fills
        .iter()
        .map(|f| f["msg"]["trade_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The fills of both connections together are the account's, from the first one received,
/// each once and in order.
pub async fn assert_exactly_once(sim: &Sim, first: &Bot, second: &mut Bot) {
    let truth = admin_trade_ids(sim).await;
    let start = truth
        .iter()
        .position(|t| *t == ids(&first.fills)[0])
        .expect("a fill of the account");
    let want = truth[start..].to_vec();
    let have = first.fills.len();
    // Short of the truth at the deadline: the comparison below shows what is missing.
    second
        .read_until(|b| have + b.fills.len() >= want.len())
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
