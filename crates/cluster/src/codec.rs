//! Upstream [`Event`]s as stream entries and back.
//!
//! An entry is a flat list of fields: `k` (kind), `at` (when the leader received it, Unix
//! microseconds), then per kind: data `c` channel, `t` type, `m` market, `q` exchange seq, `b`
//! body (always last, byte for byte as the exchange sent it); stale `m` (markets, one a line);
//! reset `m`; lost `c`; state `s`. The writer script adds `n` (the cluster-wide entry number) and
//! `e` (the writer's fencing epoch).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use protocol::{Channel, MessageType};
use redis::Value;
use upstream::{BookUpdate, Data, DisconnectReason, Event, State};

use crate::Error;

/// One event ready for the writer script.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// What the script does beside appending: `snap`, `stale`, `state` or nothing.
    pub op: &'static str,
    pub arg: Vec<u8>,
    /// Field names and values, the body last.
    pub fields: Vec<(&'static str, Vec<u8>)>,
}

/// One entry read back.
#[derive(Clone, Debug)]
pub struct Record {
    /// The stream id (`ms-n`).
    pub id: String,
    /// The cluster-wide entry number: consecutive entries differ by one.
    pub seq: u64,
    /// The fencing epoch of the leader that wrote it.
    pub epoch: u64,
    /// When the leader received it, Unix microseconds.
    pub at_us: u64,
    pub event: Event,
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The instant a Unix-microsecond stamp stands for on this host (now, if it is in the future).
pub fn instant_of(at_us: u64) -> Instant {
    let age = Duration::from_micros(unix_us().saturating_sub(at_us));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

pub fn encode(event: &Event, at_us: u64) -> Encoded {
    let at = ("at", at_us.to_string().into_bytes());
    let mut arg = Vec::new();
    let (op, fields) = match event {
        Event::Data(data) => {
            let mut fields = vec![
                ("k", b"d".to_vec()),
                at,
                ("c", data.channel.as_str().as_bytes().to_vec()),
                ("t", data.kind.as_str().as_bytes().to_vec()),
            ];
            if let Some(m) = &data.market {
                fields.push(("m", m.as_bytes().to_vec()));
            }
            if let Some(q) = data.seq {
                fields.push(("q", q.to_string().into_bytes()));
            }
            fields.push(("b", data.body.to_vec()));
            let op = match (&data.book, &data.market) {
                (Some(BookUpdate::Snapshot(_)), Some(m)) => {
                    arg = m.as_bytes().to_vec();
                    "snap"
                }
                _ => "",
            };
            (op, fields)
        }
        Event::BookStale { markets } => {
            arg = markets.join("\n").into_bytes();
            ("stale", vec![("k", b"s".to_vec()), at, ("m", arg.clone())])
        }
        Event::BookReset { market } => (
            "",
            vec![("k", b"r".to_vec()), at, ("m", market.as_bytes().to_vec())],
        ),
        Event::MessagesLost { channel } => (
            "",
            vec![
                ("k", b"l".to_vec()),
                at,
                ("c", channel.as_str().as_bytes().to_vec()),
            ],
        ),
        Event::State(state) => {
            arg = state_to_string(state).into_bytes();
            ("state", vec![("k", b"t".to_vec()), at, ("s", arg.clone())])
        }
    };
    Encoded { op, arg, fields }
}

/// Decodes one stream entry.
pub fn decode(id: String, map: &HashMap<String, Value>) -> Result<Record, Error> {
    let bad = |what: &str| Error::Decode(format!("entry {id}: {what}"));
    let bytes = |name: &str| -> Option<Vec<u8>> {
        match map.get(name)? {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            Value::Int(i) => Some(i.to_string().into_bytes()),
            _ => None,
        }
    };
    let text = |name: &str| bytes(name).and_then(|b| String::from_utf8(b).ok());
    let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
    let seq = number("n").ok_or_else(|| bad("no n"))?;
    let epoch = number("e").ok_or_else(|| bad("no e"))?;
    let at_us = number("at").ok_or_else(|| bad("no at"))?;
    let channel = || {
        text("c")
            .and_then(|c| Channel::parse(&c))
            .ok_or_else(|| bad("bad channel"))
    };
    let event = match text("k").as_deref() {
        Some("d") => {
            let kind = MessageType::parse(&text("t").ok_or_else(|| bad("no type"))?);
            let body = Bytes::from(bytes("b").ok_or_else(|| bad("no body"))?);
            let book = match kind {
                MessageType::OrderbookSnapshot => Some(BookUpdate::Snapshot(
                    serde_json::from_slice(&body).map_err(|e| bad(&format!("snapshot: {e}")))?,
                )),
                MessageType::OrderbookDelta => Some(BookUpdate::Delta(
                    serde_json::from_slice(&body).map_err(|e| bad(&format!("delta: {e}")))?,
                )),
                _ => None,
            };
            Event::Data(Data {
                channel: channel()?,
                kind,
                market: text("m"),
                seq: number("q"),
                body,
                book,
                received_at: instant_of(at_us),
            })
        }
        Some("s") => Event::BookStale {
            markets: text("m")
                .unwrap_or_default()
                .split('\n')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        },
        Some("r") => Event::BookReset {
            market: text("m").ok_or_else(|| bad("no market"))?,
        },
        Some("l") => Event::MessagesLost {
            channel: channel()?,
        },
        Some("t") => Event::State(
            state_from_str(&text("s").ok_or_else(|| bad("no state"))?)
                .ok_or_else(|| bad("bad state"))?,
        ),
        _ => return Err(bad("unknown kind")),
    };
    Ok(Record {
        id,
        seq,
        epoch,
        at_us,
        event,
    })
}

/// `subscribed`, `gave_up:3`, `disconnected:http_status:503`, `disconnected:server_close`.
pub fn state_to_string(state: &State) -> String {
    match state {
        State::Connecting => "connecting".into(),
        State::Connected => "connected".into(),
        State::Subscribed => "subscribed".into(),
        State::AuthFailed => "auth_failed".into(),
        State::GaveUp { failures } => format!("gave_up:{failures}"),
        State::Disconnected { reason } => match reason {
            DisconnectReason::HandshakeRejected { status } => {
                format!("disconnected:http_status:{status}")
            }
            DisconnectReason::ClosedByServer { code: Some(code) } => {
                format!("disconnected:server_close:{code}")
            }
            other => format!("disconnected:{}", other.label()),
        },
    }
}

pub fn state_from_str(s: &str) -> Option<State> {
    let mut parts = s.split(':');
    Some(match (parts.next()?, parts.next(), parts.next()) {
        ("connecting", None, _) => State::Connecting,
        ("connected", None, _) => State::Connected,
        ("subscribed", None, _) => State::Subscribed,
        ("auth_failed", None, _) => State::AuthFailed,
        ("gave_up", Some(n), None) => State::GaveUp {
            failures: n.parse().ok()?,
        },
        ("disconnected", Some(label), extra) => State::Disconnected {
            reason: match (label, extra) {
                ("connect_timeout", None) => DisconnectReason::ConnectTimeout,
                ("handshake_timeout", None) => DisconnectReason::HandshakeTimeout,
                ("connect_error", None) => DisconnectReason::ConnectFailed,
                ("http_status", Some(status)) => DisconnectReason::HandshakeRejected {
                    status: status.parse().ok()?,
                },
                ("auth", None) => DisconnectReason::AuthRejected,
                ("liveness", None) => DisconnectReason::LivenessTimeout,
                ("pong_timeout", None) => DisconnectReason::PongTimeout,
                ("server_close", code) => DisconnectReason::ClosedByServer {
                    code: match code {
                        Some(c) => Some(c.parse().ok()?),
                        None => None,
                    },
                },
                ("stream_error", None) => DisconnectReason::StreamError,
                ("shutdown", None) => DisconnectReason::Shutdown,
                _ => return None,
            },
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_the_round_trip() {
        let reasons = [
            DisconnectReason::ConnectTimeout,
            DisconnectReason::HandshakeTimeout,
            DisconnectReason::ConnectFailed,
            DisconnectReason::HandshakeRejected { status: 503 },
            DisconnectReason::AuthRejected,
            DisconnectReason::LivenessTimeout,
            DisconnectReason::PongTimeout,
            DisconnectReason::ClosedByServer { code: Some(1006) },
            DisconnectReason::ClosedByServer { code: None },
            DisconnectReason::StreamError,
            DisconnectReason::Shutdown,
        ];
        let mut states = vec![
            State::Connecting,
            State::Connected,
            State::Subscribed,
            State::AuthFailed,
            State::GaveUp { failures: 7 },
        ];
        states.extend(
            reasons
                .into_iter()
                .map(|reason| State::Disconnected { reason }),
        );
        for state in states {
            assert_eq!(
                state_from_str(&state_to_string(&state)),
                Some(state.clone()),
                "{state:?}"
            );
        }
        assert_eq!(state_from_str("disconnected:nonsense"), None);
        assert_eq!(state_from_str("gave_up:x"), None);
    }
}
