//! The message table of `kalshi-messages.md` (sections 1, 2, 4 and 6, newest spec S1), written
//! from the reference text, and a checker for one server frame against it.
//!
//! Every server message is checked for: the envelope keys its type may or must carry, every
//! required body field, no field the reference does not list, each field's JSON type and string
//! format (dollars with 4 decimals, counts with 2, costs and fees with 6, uuids, RFC3339), and
//! the magnitude of timestamps (Unix seconds vs milliseconds).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// The JSON shape and format of one field.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Any string.
    Str,
    /// A string from a closed set.
    OneOf(&'static [&'static str]),
    Uuid,
    /// A price in dollars, 0 to 1, four decimals: `"0.9600"`.
    Price,
    /// A signed dollar amount, four decimals: `"-10.0000"`.
    Dollars,
    /// An order cost or fee, six decimals: `"0.010000"`.
    Cost,
    /// A count, not negative, two decimals: `"300.00"`.
    Count,
    /// A signed count (`delta_fp`, `position_fp`).
    SignedCount,
    Int,
    Bool,
    /// Unix seconds of now (deprecated `ts`).
    TsSeconds,
    /// Unix milliseconds of now.
    TsMillis,
    /// Unix seconds of any date (lifecycle `*_ts`).
    UnixSeconds,
    /// Unix milliseconds of any date (`expiration_ts_ms`).
    UnixMillisAny,
    /// A JSON number (lifecycle strikes).
    Number,
    /// RFC3339 text (`time`, `*_time`, delta `ts`).
    Rfc3339,
    /// `[[price, count], ...]`.
    Levels,
    /// `["A-1", ...]`.
    StrList,
    /// A JSON object (lifecycle `additional_metadata`).
    Object,
    /// A JSON array of objects (lifecycle `price_ranges`).
    ObjectList,
    /// `kind` or JSON null.
    OrNull(&'static Kind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    Optional,
    Absent,
}
use Need::*;

mod table;
pub use table::TABLE;

/// One message type: which envelope keys it carries and its body's fields.
pub struct Schema {
    /// The type, or `ok(list)` for the reply to `list_subscriptions` (an `ok` with an array).
    pub key: &'static str,
    pub id: Need,
    pub sid: Need,
    pub seq: Need,
    pub msg: Need,
    /// The fields of `msg` (of each element, for `ok(list)`).
    pub body: &'static [(&'static str, Need, Kind)],
}

/// Seconds and milliseconds are told apart by magnitude: 2017..2103 in either unit.
const SECONDS: std::ops::RangeInclusive<i64> = 1_500_000_000..=4_200_000_000;
const MILLIS: std::ops::RangeInclusive<i64> = 1_500_000_000_000..=4_200_000_000_000;
/// A "now" timestamp must be this close to the checker's clock.
const NOW_SLACK_MS: i64 = 3_600_000;

/// The schema key of a frame: its type, or `ok(list)` for an `ok` whose `msg` is an array.
pub fn key_of(frame: &Value) -> String {
    let kind = frame["type"].as_str().unwrap_or("<no type>");
    if kind == "ok" && frame["msg"].is_array() {
        "ok(list)".to_owned()
    } else {
        kind.to_owned()
    }
}

pub fn schema(key: &str) -> Option<&'static Schema> {
    TABLE.iter().find(|s| s.key == key)
}

/// The keys a frame carries: envelope keys, and `msg.<field>` for body fields (of every element
/// of a list reply).
pub fn field_set(frame: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(obj) = frame.as_object() {
        out.extend(obj.keys().cloned());
    }
    let bodies: Vec<&Value> = match &frame["msg"] {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for body in bodies {
        if let Some(obj) = body.as_object() {
            out.extend(obj.keys().map(|k| format!("msg.{k}")));
        }
    }
    out
}

/// Checks one server frame against [`TABLE`]. With `now_ms`, timestamps that mean "now" must be
/// within an hour of it. Returns every problem found.
pub fn check(frame: &Value, now_ms: Option<i64>) -> Result<(), Vec<String>> {
    let key = key_of(frame);
    let Some(schema) = schema(&key) else {
        return Err(vec![format!("type {key:?} is not in the reference table")]);
    };
    let Some(env) = frame.as_object() else {
        return Err(vec!["not a JSON object".into()]);
    };
    let mut problems = Vec::new();
    for k in env.keys() {
        if !["type", "id", "sid", "seq", "msg"].contains(&k.as_str()) {
            problems.push(format!("envelope key {k:?} is not in the reference"));
        }
    }
    // `id` is at least 0; a sid and a seq at least 1 (`subscriptionId`, `sequenceNumber`).
    for (name, need, min) in [
        ("id", schema.id, 0),
        ("sid", schema.sid, 1),
        ("seq", schema.seq, 1),
    ] {
        match (need, env.get(name)) {
            (Required, None) => problems.push(format!("envelope {name} missing")),
            (Absent, Some(_)) => problems.push(format!("envelope {name} must be absent")),
            (_, Some(v)) if v.as_u64().is_none_or(|n| n < min) => {
                problems.push(format!("envelope {name} = {v}: not an int >= {min}"))
            }
            _ => {}
        }
    }
    match (schema.msg, env.get("msg")) {
        (Absent, Some(_)) => problems.push("msg must be absent".into()),
        (Required, None) => problems.push("msg missing".into()),
        (_, None) => {}
        (_, Some(msg)) => match msg {
            Value::Array(items) if key == "ok(list)" => {
                for item in items {
                    check_body(item, schema.body, now_ms, &mut problems);
                }
            }
            Value::Object(_) if key != "ok(list)" => {
                check_body(msg, schema.body, now_ms, &mut problems)
            }
            _ => problems.push("msg has the wrong JSON type".into()),
        },
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_body(
    body: &Value,
    fields: &[(&str, Need, Kind)],
    now_ms: Option<i64>,
    problems: &mut Vec<String>,
) {
    let Some(obj) = body.as_object() else {
        return problems.push("body is not an object".into());
    };
    for k in obj.keys() {
        if !fields.iter().any(|(name, _, _)| name == k) {
            problems.push(format!("msg.{k} is not in the reference"));
        }
    }
    for (name, need, kind) in fields {
        match obj.get(*name) {
            None if *need == Required => problems.push(format!("msg.{name} missing")),
            None => {}
            Some(v) => {
                if let Err(e) = check_value(v, *kind, now_ms) {
                    problems.push(format!("msg.{name} = {v}: {e}"));
                }
            }
        }
    }
    consistent(obj, problems);
}

fn decimals(s: &str, places: usize, signed: bool) -> Result<f64, String> {
    let digits = s.strip_prefix('-').filter(|_| signed).unwrap_or(s);
    let ok = digits.split_once('.').is_some_and(|(whole, frac)| {
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && frac.len() == places
            && frac.bytes().all(|b| b.is_ascii_digit())
    });
    if !ok {
        let sign = if signed { "an optionally signed" } else { "a" };
        return Err(format!("not {sign} decimal string with {places} decimals"));
    }
    s.parse::<f64>().map_err(|e| e.to_string())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn rfc3339(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("not RFC3339: {e}"))
}

fn check_value(v: &Value, kind: Kind, now_ms: Option<i64>) -> Result<(), String> {
    let string = || v.as_str().ok_or_else(|| "not a string".to_owned());
    let int = || v.as_i64().ok_or_else(|| "not an integer".to_owned());
    let near_now = |ms: i64| match now_ms {
        Some(now) if (ms - now).abs() > NOW_SLACK_MS => Err(format!("{ms} ms is not now ({now})")),
        _ => Ok(()),
    };
    match kind {
        Kind::Str => string().map(drop),
        Kind::OneOf(set) => {
            let s = string()?;
            set.contains(&s)
                .then_some(())
                .ok_or_else(|| format!("not one of {set:?}"))
        }
        Kind::Uuid => is_uuid(string()?)
            .then_some(())
            .ok_or_else(|| "not a uuid".to_owned()),
        Kind::Price => {
            let p = decimals(string()?, 4, false)?;
            (0.0..=1.0)
                .contains(&p)
                .then_some(())
                .ok_or_else(|| "a price outside 0..1".to_owned())
        }
        Kind::Dollars => decimals(string()?, 4, true).map(drop),
        Kind::Cost => decimals(string()?, 6, false).map(drop),
        Kind::Count => decimals(string()?, 2, false).map(drop),
        Kind::SignedCount => decimals(string()?, 2, true).map(drop),
        Kind::Int => int().map(drop),
        Kind::Number => v
            .is_number()
            .then_some(())
            .ok_or_else(|| "not a number".to_owned()),
        Kind::Bool => v
            .is_boolean()
            .then_some(())
            .ok_or_else(|| "not a bool".to_owned()),
        Kind::TsSeconds => {
            let s = int()?;
            if !SECONDS.contains(&s) {
                return Err("not Unix seconds".into());
            }
            near_now(s * 1000)
        }
        Kind::TsMillis => {
            let ms = int()?;
            if !MILLIS.contains(&ms) {
                return Err("not Unix milliseconds".into());
            }
            near_now(ms)
        }
        Kind::UnixSeconds => SECONDS
            .contains(&int()?)
            .then_some(())
            .ok_or_else(|| "not Unix seconds".to_owned()),
        Kind::UnixMillisAny => MILLIS
            .contains(&int()?)
            .then_some(())
            .ok_or_else(|| "not Unix milliseconds".to_owned()),
        Kind::Rfc3339 => rfc3339(string()?).map(drop),
        Kind::Levels => {
            let levels = v.as_array().ok_or("not an array")?;
            for level in levels {
                match level.as_array().map(Vec::as_slice) {
                    Some([p, c]) => {
                        check_value(p, Kind::Price, now_ms)?;
                        check_value(c, Kind::Count, now_ms)?;
                    }
                    _ => return Err(format!("level {level} is not [price, count]")),
                }
            }
            Ok(())
        }
        Kind::StrList => v
            .as_array()
            .filter(|a| a.iter().all(Value::is_string))
            .map(drop)
            .ok_or_else(|| "not an array of strings".to_owned()),
        Kind::Object => v
            .is_object()
            .then_some(())
            .ok_or_else(|| "not an object".to_owned()),
        Kind::ObjectList => v
            .as_array()
            .filter(|a| a.iter().all(Value::is_object))
            .map(drop)
            .ok_or_else(|| "not an array of objects".to_owned()),
        Kind::OrNull(_) if v.is_null() => Ok(()),
        Kind::OrNull(inner) => check_value(v, *inner, now_ms),
    }
}

/// Fields of one body that must agree with each other: the deprecated twins, bid = YES, the
/// three forms of one instant, YES + NO = 1.
fn consistent(obj: &Map<String, Value>, problems: &mut Vec<String>) {
    let get = |k: &str| obj.get(k).and_then(Value::as_str);
    let mut same = |a: &str, b: &str| {
        if let (Some(x), Some(y)) = (obj.get(a), obj.get(b)) {
            if x != y {
                problems.push(format!("msg.{a} = {x} but msg.{b} = {y}"));
            }
        }
    };
    same("taker_side", "taker_outcome_side");
    same("side", "outcome_side");
    same("purchased_side", "outcome_side");
    for (outcome, book) in [
        ("taker_outcome_side", "taker_book_side"),
        ("outcome_side", "book_side"),
    ] {
        if let (Some(o), Some(b)) = (get(outcome), get(book)) {
            if (o == "yes") != (b == "bid") {
                problems.push(format!("msg.{book} = {b} does not match {outcome} = {o}"));
            }
        }
    }
    if let (Some(o), Some(is_yes)) = (get("outcome_side"), obj.get("is_yes")) {
        if is_yes.as_bool() != Some(o == "yes") {
            problems.push(format!("msg.is_yes = {is_yes} but outcome_side = {o}"));
        }
    }
    if let (Some(ts), Some(ms)) = (
        obj.get("ts").and_then(Value::as_i64),
        obj.get("ts_ms").and_then(Value::as_i64),
    ) {
        if ms.div_euclid(1000) != ts {
            problems.push(format!("msg.ts = {ts} s is not msg.ts_ms = {ms} ms"));
        }
    }
    // `time` on a ticker, `ts` as text on a delta: the same second as `ts_ms`.
    for text in ["time", "ts"] {
        if let (Some(t), Some(ms)) = (get(text), obj.get("ts_ms").and_then(Value::as_i64)) {
            if rfc3339(t).ok() != Some(ms.div_euclid(1000)) {
                problems.push(format!("msg.{text} = {t} is not msg.ts_ms = {ms}"));
            }
        }
    }
    if let (Some(yes), Some(no)) = (get("yes_price_dollars"), get("no_price_dollars")) {
        let cents = |s: &str| s.parse::<f64>().map(|d| (d * 10_000.0).round() as i64);
        if let (Ok(y), Ok(n)) = (cents(yes), cents(no)) {
            if y + n != 10_000 {
                problems.push(format!("yes {yes} + no {no} is not 1"));
            }
        }
    }
}
