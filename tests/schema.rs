//! Every message type the simulator sends, and every one the relay sends, checked against the
//! reference's field table (`common::schema`, written from `kalshi-messages.md`); and both send
//! the same fields for every type.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::schema::{self, check, field_set, key_of};
use common::{relay, sim, DEADLINE};
use exchange_sim::SimConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Every type a session below must see: the replies to its commands and every data type.
const EXPECTED: [&str; 13] = [
    "subscribed",
    "ok",
    "ok(list)",
    "unsubscribed",
    "error",
    "orderbook_snapshot",
    "orderbook_delta",
    "ticker",
    "trade",
    "fill",
    "user_order",
    "market_position",
    "market_lifecycle_v2",
];

/// What one session saw: per schema key, the union of the fields of its frames.
type Seen = BTreeMap<String, BTreeSet<String>>;

fn now_ms() -> i64 {
    protocol::sign::now_ms() as i64
}

/// Connects to `url`, subscribes to every public and private channel (books with
/// `use_yes_price` as given), sends each command whose reply the table knows (update actions,
/// list, a refused one, unsubscribe), and checks every frame until every type of [`EXPECTED`]
/// arrived. Also checks that each fill agrees with the public trade it came from.
async fn session(url: &str, markets: &[String], use_yes_price: bool) -> Seen {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let send = |v: Value| WsMessage::text(v.to_string());
    let commands = [
        json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"],
            "market_tickers": [&markets[0], &markets[1]], "use_yes_price": use_yes_price}}),
        json!({"id": 2, "cmd": "subscribe", "params": {"channels": ["ticker", "trade",
            "user_orders", "market_positions", "market_lifecycle_v2"], "send_initial_snapshot": true}}),
        json!({"id": 3, "cmd": "update_subscription", "params": {"sid": 1,
            "market_tickers": [&markets[2]], "action": "add_markets"}}),
        json!({"id": 4, "cmd": "update_subscription", "params": {"sid": 1,
            "market_tickers": [&markets[0]], "action": "get_snapshot"}}),
        json!({"id": 5, "cmd": "update_subscription", "params": {"sid": 1,
            "market_tickers": [&markets[2]], "action": "delete_markets"}}),
        json!({"id": 6, "cmd": "list_subscriptions"}),
        json!({"id": 7, "cmd": "update_subscription", "params": {"sid": 1,
            "market_tickers": [&markets[3]], "action": "get_snapshot"}}),
        json!({"id": 8, "cmd": "unsubscribe", "params": {"sids": [99]}}),
        // Fills with `skip_ticker_ack` (sid 7): an `ok` without its market list.
        json!({"id": 11, "cmd": "subscribe", "params": {"channels": ["fill"],
            "market_tickers": [&markets[0], &markets[1], &markets[2], &markets[3]],
            "skip_ticker_ack": true}}),
        json!({"id": 12, "cmd": "update_subscription", "params": {"sid": 7,
            "market_tickers": [&markets[0]], "action": "add_markets"}}),
    ];
    for c in commands {
        ws.send(send(c)).await.unwrap();
    }
    let mut seen = Seen::new();
    let mut problems = Vec::new();
    let mut trades: BTreeMap<String, Value> = BTreeMap::new();
    let mut fills: Vec<Value> = Vec::new();
    // Phase 2, once every data type is in: a fresh get_snapshot of books that have moved since
    // they were first sent (the relay answers it from its cache, rebuilt from its book), then
    // the end of two subscriptions for `unsubscribed`.
    let mut late_snapshots: Option<usize> = None;
    let mut unsubscribed_sent = false;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let missing: Vec<&str> = EXPECTED
            .iter()
            .filter(|k| !seen.contains_key(**k))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        if missing == ["unsubscribed"] {
            match late_snapshots {
                None => {
                    ws.send(send(
                        json!({"id": 9, "cmd": "update_subscription", "params": {
                        "sid": 1, "market_tickers": [&markets[0], &markets[1]],
                        "action": "get_snapshot"}}),
                    ))
                    .await
                    .unwrap();
                    late_snapshots = Some(0);
                }
                Some(3) if !unsubscribed_sent => {
                    ws.send(send(
                        json!({"id": 10, "cmd": "unsubscribe", "params": {"sids": [1, 2]}}),
                    ))
                    .await
                    .unwrap();
                    unsubscribed_sent = true;
                }
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url}: never saw {missing:?} (problems so far: {problems:?})"
        );
        let frame = match timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(WsMessage::Text(text)))) => text,
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(other) => panic!("{url}: the connection ended: {other:?}"),
        };
        let v: Value = serde_json::from_str(&frame).expect("frames are JSON");
        if let Err(p) = check(&v, Some(now_ms())) {
            problems.push(format!("{frame}\n    {}", p.join("\n    ")));
        }
        match v["type"].as_str() {
            Some("trade") => {
                trades.insert(
                    v["msg"]["trade_id"].as_str().unwrap_or("").into(),
                    v["msg"].clone(),
                );
            }
            // Through the relay, fills (kept live upstream) can flow before its new upstream
            // trade subscription does: only fills after the first trade have theirs before them.
            Some("fill") if !trades.is_empty() => fills.push(v["msg"].clone()),
            _ => {}
        }
        match (v["type"].as_str(), v["id"].as_u64(), &mut late_snapshots) {
            (Some("ok"), Some(9), Some(n)) if *n == 0 => *n = 1,
            (Some("orderbook_snapshot"), _, Some(n)) if *n >= 1 && *n < 3 => *n += 1,
            _ => {}
        }
        seen.entry(key_of(&v)).or_default().extend(field_set(&v));
    }
    assert!(
        problems.is_empty(),
        "{url}: frames off the reference:\n{}",
        problems.join("\n")
    );
    // Each fill's public trade came before it (once trades flow). The account was
    // the maker: it bought the side the taker sold, at the trade's price.
    for f in &fills {
        let t = trades
            .get(f["trade_id"].as_str().unwrap_or(""))
            .unwrap_or_else(|| panic!("{url}: fill {f} has no public trade before it"));
        assert_eq!(
            (
                &f["market_ticker"],
                &f["yes_price_dollars"],
                f["is_taker"].as_bool()
            ),
            (&t["market_ticker"], &t["yes_price_dollars"], Some(false)),
            "fill {f} of trade {t}"
        );
        assert_ne!(
            f["outcome_side"], t["taker_outcome_side"],
            "fill {f} of trade {t}"
        );
        let count = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok()).unwrap();
        assert!(
            count(&f["count_fp"]) <= count(&t["count_fp"]),
            "fill {f} of trade {t}"
        );
    }
    let _ = ws.close(None).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_and_relay_send_every_field_of_the_reference() {
    // Fast enough that lifecycle events (one step in a thousand) and fills come within seconds.
    let sim = sim(SimConfig {
        markets: 4,
        rate: 3_000.0,
        seed: 12,
        ..SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |_| {}).await;
    let markets = sim.markets();

    // Books on the exchange's scale, then with `use_yes_price` (re-encoded by both).
    for yes_price in [false, true] {
        let direct = session(&sim.ws_url(), &markets, yes_price).await;
        let relayed = session(&relay.ws_url(), &markets, yes_price).await;
        for key in EXPECTED {
            assert_eq!(
                direct.get(key),
                relayed.get(key),
                "{key}: the simulator's fields (left) and the relay's (right) differ"
            );
        }
        assert_eq!(
            direct.keys().collect::<Vec<_>>(),
            relayed.keys().collect::<Vec<_>>()
        );
    }
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The S1 examples of `kalshi-messages.md` section 6 (as printed there) pass the table; each
/// one with a required field removed, or a field's type or format changed, fails it.
#[test]
fn the_table_takes_the_reference_examples_and_refuses_broken_fields() {
    let examples = [
        r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}"#,
        r#"{"id":123,"sid":456,"seq":222,"type":"ok","msg":{"market_tickers":["MARKET-1","MARKET-2","MARKET-3"]}}"#,
        r#"{"id":3,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},{"channel":"ticker","sid":2}]}"#,
        r#"{"id":102,"sid":2,"seq":7,"type":"unsubscribed"}"#,
        r#"{"id":126,"type":"error","msg":{"code":9,"msg":"Authentication required"}}"#,
        r#"{"type":"ticker","sid":11,"msg":{"market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1","market_ticker":"FED-23DEC-T3.00","price_dollars":"0.4800","yes_bid_dollars":"0.4500","yes_ask_dollars":"0.5300","volume_fp":"33896.00","open_interest_fp":"20422.00","dollar_volume":16948,"dollar_open_interest":10211,"yes_bid_size_fp":"300.00","yes_ask_size_fp":"150.00","last_trade_size_fp":"25.00","ts":1669149841,"ts_ms":1669149841000,"time":"2022-11-22T20:44:01Z"}}"#,
        r#"{"type":"trade","sid":11,"seq":2,"msg":{"trade_id":"d91bc706-ee49-470d-82d8-11418bda6fed","market_ticker":"HIGHNY-22DEC23-B53.5","yes_price_dollars":"0.3600","no_price_dollars":"0.6400","count_fp":"136.00","taker_side":"no","taker_outcome_side":"no","taker_book_side":"ask","is_block_trade":false,"ts":1669149841,"ts_ms":1669149841000}}"#,
        r#"{"type":"fill","sid":13,"msg":{"trade_id":"d91bc706-ee49-470d-82d8-11418bda6fed","order_id":"ee587a1c-8b87-4dcf-b721-9f6f790619fa","client_order_id":"my-order-1","market_ticker":"HIGHNY-22DEC23-B53.5","exchange_index":2,"is_taker":true,"side":"yes","yes_price_dollars":"0.7500","count_fp":"278.00","fee_cost":"0.010000","action":"buy","ts":1671899397,"ts_ms":1671899397000,"post_position_fp":"500.00","purchased_side":"yes","outcome_side":"yes","book_side":"bid","subaccount":3}}"#,
        r#"{"type":"market_position","sid":14,"msg":{"user_id":"user123","market_ticker":"FED-23DEC-T3.00","position_fp":"100.00","position_cost_dollars":"50.0000","realized_pnl_dollars":"10.0000","fees_paid_dollars":"1.0000","position_fee_cost_dollars":"0.5000","volume_fp":"15.00"}}"#,
        r#"{"type":"market_lifecycle_v2","sid":13,"seq":4,"msg":{"market_ticker":"INXD-23SEP14-B4487","event_type":"price_level_structure_updated","price_level_structure":"deci_cent","price_ranges":[{"start":"0.0000","end":"1.0000","step":"0.0010"}]}}"#,
    ];
    for example in examples {
        let v: Value = serde_json::from_str(example).unwrap();
        assert_eq!(check(&v, None), Ok(()), "{example}");
    }
    let ticker: Value = serde_json::from_str(examples[5]).unwrap();
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut v = ticker.clone();
        edit(&mut v);
        check(&v, None).expect_err(&format!("{v} must be refused"))
    };
    let missing = broken(&|v| {
        v["msg"].as_object_mut().unwrap().remove("market_id");
    });
    assert_eq!(missing, vec!["msg.market_id missing"]);
    for (field, bad) in [
        ("price_dollars", json!("0.48")),     // 2 decimals
        ("price_dollars", json!(0.48)),       // a number
        ("volume_fp", json!("33896")),        // no decimals
        ("market_id", json!("9b0f6b43")),     // not a uuid
        ("dollar_volume", json!("16948")),    // a string
        ("ts", json!(1669149841000_i64)),     // milliseconds where seconds belong
        ("ts_ms", json!(1669149841)),         // seconds where milliseconds belong
        ("time", json!("22 Nov 2022 20:44")), // not RFC3339
    ] {
        let problems = broken(&|v| v["msg"][field] = bad.clone());
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("msg.{field} "))),
            "{field} = {bad}: {problems:?}"
        );
    }
    let extra = broken(&|v| v["msg"]["made_up"] = json!(1));
    assert_eq!(extra, vec!["msg.made_up is not in the reference"]);
    let seq = broken(&|v| v["seq"] = json!(3));
    assert_eq!(seq, vec!["envelope seq must be absent"]);
    let unsubscribed = json!({"id": 102, "sid": 2, "seq": 0, "type": "unsubscribed"});
    assert_eq!(
        check(&unsubscribed, None),
        Err(vec!["envelope seq = 0: not an int >= 1".to_owned()])
    );
    // Every type the sessions expect has a row.
    assert!(EXPECTED.iter().all(|k| schema::schema(k).is_some()));
}
