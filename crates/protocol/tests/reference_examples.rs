//! Every JSON example of `docs/reference/kalshi-ws-v2.md` parses into the typed form and encodes
//! back to the same JSON value; unknown types and fields survive.

use protocol::{Envelope, Message, MessageType};
use serde_json::Value;

const SERVER_EXAMPLES: &[&str] = &[
    r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}"#,
    r#"{"id":3,"type":"unsubscribed","sid":2,"seq":7}"#,
    r#"{"id":4,"type":"ok","sid":1,"seq":222,"msg":{"market_tickers":["A-1","B-2","C-3"]}}"#,
    r#"{"id":7,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},{"channel":"ticker","sid":2}]}"#,
    r#"{"id":9,"type":"error","msg":{"code":16,"msg":"Market not found","market_ticker":"NOPE-1"}}"#,
    r#"{"type":"orderbook_snapshot","sid":2,"seq":1,"msg":{"market_ticker":"FED-23DEC-T3.00","market_id":"9b0f…","yes_dollars_fp":[["0.0800","300.00"],["0.2200","333.00"]],"no_dollars_fp":[["0.5400","20.00"]]}}"#,
    r#"{"type":"orderbook_delta","sid":2,"seq":2,"msg":{"market_ticker":"FED-23DEC-T3.00","market_id":"9b0f…","price_dollars":"0.9600","delta_fp":"-54.00","side":"yes","ts_ms":1669149841000}}"#,
    r#"{"type":"ticker","sid":11,"msg":{"market_ticker":"FED-23DEC-T3.00","price_dollars":"0.4800","yes_bid_dollars":"0.4500","yes_ask_dollars":"0.5300","volume_fp":"33896.00","open_interest_fp":"20422.00","yes_bid_size_fp":"300.00","yes_ask_size_fp":"150.00","ts_ms":1669149841000}}"#,
    r#"{"type":"trade","sid":12,"msg":{"trade_id":"d91b…","market_ticker":"HIGHNY-22DEC23-B53.5","yes_price_dollars":"0.3600","no_price_dollars":"0.6400","count_fp":"136.00","taker_outcome_side":"no","taker_book_side":"ask","ts_ms":1669149841000}}"#,
    r#"{"type":"fill","sid":13,"msg":{"trade_id":"d91b…","order_id":"ee58…","market_ticker":"HIGHNY-22DEC23-B53.5","is_taker":true,"outcome_side":"yes","book_side":"bid","yes_price_dollars":"0.7500","count_fp":"278.00","post_position_fp":"500.00","ts_ms":1671899397000}}"#,
];

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn every_reference_example_round_trips() {
    for example in SERVER_EXAMPLES {
        let env = Envelope::parse(example.as_bytes()).unwrap();
        assert!(
            !matches!(env.message_type(), MessageType::Other(_)),
            "{example}"
        );
        assert_eq!(
            json(&env.to_json()),
            json(example),
            "envelope round trip of {example}"
        );

        let typed = Message::decode(&env).unwrap();
        let body = typed.body_json();
        let original = json(example);
        match body {
            Some(body) => assert_eq!(json(&body), original["msg"], "typed body of {example}"),
            None => assert!(original.get("msg").is_none()),
        }
    }
}

#[test]
fn typed_fields_hold_exact_values() {
    let env = Envelope::parse(SERVER_EXAMPLES[6].as_bytes()).unwrap();
    let Message::OrderbookDelta(d) = Message::decode(&env).unwrap() else {
        panic!()
    };
    assert_eq!(d.level_price().unwrap().units(), 9600);
    assert_eq!(d.level_delta().unwrap().units(), -5400);
    assert_eq!((env.sid, env.seq), (Some(2), Some(2)));
    assert_eq!(env.market_ticker().as_deref(), Some("FED-23DEC-T3.00"));
    // `user_order` names its market `ticker`: it routes by that.
    let order = r#"{"type":"user_order","sid":22,"msg":{"order_id":"ee587a1c-8b87-4dcf-b721-9f6f790619fa","ticker":"FED-23DEC-T3.00","status":"resting"}}"#;
    let env = Envelope::parse(order.as_bytes()).unwrap();
    assert_eq!(env.market_ticker().as_deref(), Some("FED-23DEC-T3.00"));
}

#[test]
fn unknown_types_and_fields_are_kept() {
    let frame =
        r#"{"type":"brand_new","sid":5,"seq":3,"msg":{"a":[1,{"b":null}]},"sending_ts_ms":17}"#;
    let env = Envelope::parse(frame.as_bytes()).unwrap();
    assert_eq!(env.message_type(), MessageType::Other("brand_new".into()));
    assert_eq!(json(&env.to_json()), json(frame));

    let frame = r#"{"type":"ticker","sid":11,"msg":{"market_ticker":"X","price_dollars":"0.4800","new_field":{"deep":[1,2]}}}"#;
    let env = Envelope::parse(frame.as_bytes()).unwrap();
    let typed = Message::decode(&env).unwrap();
    assert_eq!(json(&typed.body_json().unwrap()), json(frame)["msg"]);
}

#[test]
fn non_messages_are_errors_not_panics() {
    for bad in [
        "",
        "null",
        "[]",
        "{}",
        r#"{"type":5}"#,
        "{\"type\":\"x\"",
        "\u{0}",
    ] {
        assert!(Envelope::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
}
