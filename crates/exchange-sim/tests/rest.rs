//! The REST portfolio endpoints (reference §8): they agree with what the WebSocket sent, they
//! need a signature, they page to the end, and every REST fault does what the README says.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use exchange_sim::{Fault, SimConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FILLS: &str = "/trade-api/v2/portfolio/fills";
const ORDERS: &str = "/trade-api/v2/portfolio/orders";
const POSITIONS: &str = "/trade-api/v2/portfolio/positions";

/// `GET target` with extra headers; returns (status, lower-cased head, body).
async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_lowercase(),
        body.to_owned(),
    )
}

async fn get_json(addr: SocketAddr, target: &str) -> Value {
    let (status, _, body) = get(addr, target, &[]).await;
    assert_eq!(status, 200, "{target}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Every item of a list, following the cursor with `limit` per page.
async fn all(addr: SocketAddr, path: &str, key: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(addr, &format!("{path}?limit={limit}&cursor={cursor}")).await;
        let list = page[key].as_array().unwrap();
        assert!(list.len() <= limit);
        items.extend(list.iter().cloned());
        match page["cursor"].as_str().unwrap() {
            "" => return items,
            c => cursor = c.to_owned(),
        }
    }
}

fn has_all(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
}

/// Every key both objects carry has the same value.
fn common_keys_agree(rest: &Value, ws: &Value) -> usize {
    let mut n = 0;
    for (k, v) in rest.as_object().unwrap() {
        if let Some(w) = ws.get(k) {
            assert_eq!(v, w, "{k}: REST {rest} vs WebSocket {ws}");
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn rest_answers_agree_with_the_websocket_messages() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let mut client = connect(&sim).await;
    client
        .send(r#"{"id":1,"cmd":"subscribe","params":{"channels":["fill","user_orders","market_positions"]}}"#)
        .await;
    for _ in 0..3 {
        assert_eq!(client.reply().await["type"], "subscribed");
    }
    sim.fault(Fault::Burst { count: 20_000 });
    let admin = get_json(sim.admin_addr(), "/admin/fills").await;
    let truth = admin["fills"].as_array().unwrap().clone();
    assert!(truth.len() > 50, "{} fills", truth.len());

    // Each account fill is one `fill`, one `user_order` and one `market_position`.
    let (mut fills, mut orders, mut positions) = (Vec::new(), HashMap::new(), HashMap::new());
    for _ in 0..3 * truth.len() {
        let (env, v) = client.text().await;
        let msg = v["msg"].clone();
        let key = |k: &str| msg[k].as_str().unwrap().to_owned();
        match env.kind.as_str() {
            "fill" => fills.push(msg),
            "user_order" => drop(orders.insert(key("order_id"), msg)),
            "market_position" => drop(positions.insert(key("market_ticker"), msg)),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        fills, truth,
        "/admin/fills is what the WebSocket sent, in order"
    );

    let mut rest_fills = all(sim.admin_addr(), FILLS, "fills", 9).await;
    rest_fills.reverse(); // newest first
    assert_eq!(rest_fills.len(), fills.len());
    for (r, w) in rest_fills.iter().zip(&fills) {
        has_all(
            r,
            &[
                "fill_id",
                "trade_id",
                "order_id",
                "ticker",
                "market_ticker",
                "exchange_index",
                "outcome_side",
                "book_side",
                "count_fp",
                "yes_price_dollars",
                "no_price_dollars",
                "fee_cost",
                "is_taker",
                "created_time",
                "ts",
            ],
        );
        assert_eq!(r["fill_id"], w["trade_id"]);
        assert_eq!(r["ticker"], w["market_ticker"]);
        assert!(common_keys_agree(r, w) >= 12);
        let yes: f64 = w["yes_price_dollars"].as_str().unwrap().parse().unwrap();
        let no: f64 = r["no_price_dollars"].as_str().unwrap().parse().unwrap();
        assert!((yes + no - 1.0).abs() < 1e-9);
    }

    let rest_orders = all(sim.admin_addr(), ORDERS, "orders", 50).await;
    assert_eq!(rest_orders.len(), orders.len());
    for r in &rest_orders {
        has_all(
            r,
            &[
                "order_id",
                "user_id",
                "client_order_id",
                "ticker",
                "type",
                "status",
                "outcome_side",
                "book_side",
                "yes_price_dollars",
                "no_price_dollars",
                "fill_count_fp",
                "remaining_count_fp",
                "initial_count_fp",
                "taker_fill_cost_dollars",
                "maker_fill_cost_dollars",
                "taker_fees_dollars",
                "maker_fees_dollars",
            ],
        );
        let w = &orders[r["order_id"].as_str().unwrap()];
        assert!(common_keys_agree(r, w) >= 18, "{r} {w}");
    }

    let page = get_json(sim.admin_addr(), &format!("{POSITIONS}?limit=1000")).await;
    let markets = page["market_positions"].as_array().unwrap();
    assert_eq!(markets.len(), positions.len());
    for r in markets {
        has_all(
            r,
            &[
                "ticker",
                "exchange_index",
                "total_traded_dollars",
                "market_exposure_dollars",
                "realized_pnl_dollars",
                "fees_paid_dollars",
                "position_fp",
                "last_updated_ts",
            ],
        );
        let w = &positions[r["ticker"].as_str().unwrap()];
        assert_eq!(
            common_keys_agree(r, w),
            3,
            "position_fp, realized_pnl, fees_paid"
        );
        assert_eq!(r["market_exposure_dollars"], w["position_cost_dollars"]);
    }
    for e in page["event_positions"].as_array().unwrap() {
        has_all(
            e,
            &[
                "event_ticker",
                "total_cost_dollars",
                "total_cost_shares_fp",
                "event_exposure_dollars",
                "realized_pnl_dollars",
                "fees_paid_dollars",
            ],
        );
    }

    // Filters: one ticker, one order, a time window.
    let ticker = fills[0]["market_ticker"].as_str().unwrap();
    let one = get_json(
        sim.admin_addr(),
        &format!("{FILLS}?ticker={ticker}&limit=1000"),
    )
    .await;
    let n = fills
        .iter()
        .filter(|f| f["market_ticker"] == ticker)
        .count();
    assert_eq!(one["fills"].as_array().unwrap().len(), n);
    let order = fills[0]["order_id"].as_str().unwrap();
    let one = get_json(sim.admin_addr(), &format!("{FILLS}?order_id={order}")).await;
    assert_eq!(one["fills"][0]["trade_id"], fills[0]["trade_id"]);
    let ts = fills[0]["ts"].as_i64().unwrap();
    let later = get_json(
        sim.admin_addr(),
        &format!("{FILLS}?min_ts={}&limit=1000", ts + 1),
    )
    .await;
    assert!(later["fills"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["ts"].as_i64().unwrap() > ts));
    let since = fills.last().unwrap()["ts_ms"].as_i64().unwrap();
    let tail = get_json(sim.admin_addr(), &format!("/admin/fills?since_ms={since}")).await;
    let n = fills
        .iter()
        .filter(|f| f["ts_ms"].as_i64().unwrap() >= since)
        .count();
    assert_eq!(tail["fills"].as_array().unwrap().len(), n);
}

#[tokio::test]
async fn rest_requests_must_be_signed_for_their_path() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..signed_config()
    })
    .await;
    let addr = sim.admin_addr();
    let (status, _, body) = get(addr, FILLS, &[]).await;
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "unauthorized");
    has_all(&body, &["code", "message", "details", "service"]);

    // Signed for another path (the WebSocket's): refused. For this path, without the query: ok.
    for (signed_path, want) in [(protocol::sign::WS_PATH, 401), (FILLS, 200)] {
        let auth = signer().sign_now(signed_path);
        let (status, _, body) = get(addr, &format!("{FILLS}?limit=5"), &auth.pairs()).await;
        assert_eq!(status, want, "signed {signed_path}: {body}");
    }
    let auth = signer().sign(protocol::sign::now_ms() - 60_000, POSITIONS);
    assert_eq!(
        get(addr, POSITIONS, &auth.pairs()).await.0,
        401,
        "a stale timestamp"
    );
}

#[tokio::test]
async fn each_rest_fault_applies_to_the_next_requests() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    sim.fault(Fault::Burst { count: 5_000 });
    let addr = sim.admin_addr();

    fault(&sim, "rest_error", r#"{"status":502,"count":2}"#).await;
    let statuses = [
        get(addr, ORDERS, &[]).await.0,
        get(addr, FILLS, &[]).await.0,
        get(addr, FILLS, &[]).await.0,
    ];
    assert_eq!(statuses, [502, 502, 200]);

    fault(&sim, "rest_rate_limit", r#"{"retry_after_seconds":4}"#).await;
    let (status, head, body) = get(addr, FILLS, &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (429, r#"{"error":"too many requests"}"#)
    );
    assert!(head.contains("\r\nretry-after: 4"), "{head}");
    fault(&sim, "rest_rate_limit", "").await;
    let (status, head, _) = get(addr, FILLS, &[]).await;
    assert_eq!(status, 429);
    assert!(
        !head.contains("retry-after"),
        "the exchange sends none: {head}"
    );

    fault(&sim, "rest_slow", r#"{"delay_ms":300}"#).await;
    let start = Instant::now();
    assert_eq!(get(addr, POSITIONS, &[]).await.0, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));

    let full = get_json(addr, &format!("{FILLS}?limit=10")).await;
    assert_eq!(full["fills"].as_array().unwrap().len(), 10);
    fault(&sim, "rest_truncate", "").await;
    let short = get_json(addr, &format!("{FILLS}?limit=10")).await;
    assert_eq!(short["fills"].as_array().unwrap().len(), 5);
    assert_eq!(short["fills"][4], full["fills"][4]);
    let rest = get_json(
        addr,
        &format!(
            "{FILLS}?limit=5&cursor={}",
            short["cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        rest["fills"][0], full["fills"][5],
        "the cursor goes on after the short page"
    );
    fault(&sim, "rest_truncate", r#"{"cut_body":true}"#).await;
    let (status, _, body) = get(addr, FILLS, &[]).await;
    assert_eq!(status, 200);
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "cut in half: {body}"
    );

    let s = stats(&sim).await;
    for kind in ["rest_error", "rest_slow"] {
        assert_eq!(s.faults.get(kind), Some(&1), "{kind}");
    }
    assert_eq!(s.faults.get("rest_rate_limit"), Some(&2));
    let (status, _) = http(addr, "POST", "/admin/fault/rest_error", r#"{"status":404}"#).await;
    assert_eq!(status, 400, "only 5xx");
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_error_body() {
    let sim = start(SimConfig {
        rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let addr = sim.admin_addr();
    for target in [
        format!("{FILLS}?limit=0"),
        format!("{FILLS}?limit=1001"),
        format!("{FILLS}?min_ts=soon"),
        format!("{FILLS}?cursor=nope"),
        format!("{ORDERS}?status=open"),
    ] {
        let (status, _, body) = get(addr, &target, &[]).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["code"],
            "bad_request"
        );
    }
    assert_eq!(
        get(addr, "/trade-api/v2/portfolio/balance", &[]).await.0,
        404
    );
    assert_eq!(http(addr, "POST", FILLS, "").await.0, 405);
    let bad_since = get(addr, "/admin/fills?since_ms=soon", &[]).await.0;
    assert_eq!(bad_since, 400);
    let empty = get_json(addr, FILLS).await;
    assert_eq!(empty, serde_json::json!({"fills": [], "cursor": ""}));
    let empty = get_json(addr, POSITIONS).await;
    assert_eq!(
        empty,
        serde_json::json!({"market_positions": [], "event_positions": [], "cursor": ""})
    );
}
