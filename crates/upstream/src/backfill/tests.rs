//! The stage's decisions, driven without a session or REST: what reaches the owner.

use super::convert::tests::{fill, live, position};
use super::*;

fn stage(output: mpsc::Sender<Event>) -> Stage {
    Stage {
        output,
        shared: Arc::new(Shared::default()),
        recovery: Recovery {
            rest: None,
            overlap: Duration::from_secs(1),
            continuing: None,
        },
        up: true,
        last_data_s: now_s(),
        outage_from: None,
        held: Vec::new(),
        memo: Memo::default(),
        task: None,
        dead: HashSet::new(),
        from_start: false,
    }
}

fn trade_ids(events: &mut mpsc::Receiver<Event>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::Data(d) = event {
            let msg: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            ids.push(msg["trade_id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

/// A fill made while REST was read is in REST's answer and on the socket; when its live copy
/// reaches the stage after the backfill delivered it, the owner still gets it once.
#[tokio::test]
async fn a_fill_the_backfill_delivered_is_not_delivered_again_when_it_comes_live_after() {
    let (tx, mut events) = mpsc::channel(16);
    let mut stage = stage(tx);
    stage.on_event(Event::Data(live("a", "A", 1))).await.ok();
    stage.outage_from = Some(now_s() - 5);
    let task = Task {
        handle: tokio::spawn(async { Err(RestError::Transport("not used".into())) }),
        started: Instant::now(),
        channels: vec![Channel::Fill],
    };
    let fetched = Fetched {
        fills: vec![fill("a", "A", "bid", 1), fill("b", "A", "bid", 2)],
        orders: Vec::new(),
        positions: vec![position("A", 3)],
    };
    assert!(stage.finish(task, Ok(fetched)).await.is_ok());
    stage.on_event(Event::Data(live("b", "A", 3))).await.ok();
    stage.on_event(Event::Data(live("c", "A", 4))).await.ok();
    assert_eq!(trade_ids(&mut events), ["a", "b", "c"]);
}
