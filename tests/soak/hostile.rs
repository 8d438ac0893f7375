//! Hostile clients: garbage, invalid UTF-8, oversized frames, command floods and raw TCP junk.
//! They must never take the relay down or disturb anyone else; what the relay answered is
//! tallied (`attack:outcome`), and only a relay that stops answering is a violation (the
//! well-behaved population and the process checks catch that).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::clients::Env;

#[derive(Clone, Copy, Debug)]
pub enum Attack {
    /// Binary frames of random bytes and text that is not JSON or not a command.
    Garbage,
    /// A text frame whose payload is not UTF-8.
    InvalidUtf8,
    /// A text frame far over the inbound size limit.
    Oversized,
    /// Commands as fast as the socket takes them.
    Flood,
    /// Random bytes on a raw TCP connection, no WebSocket at all.
    RawTcp,
}

impl Attack {
    fn label(self) -> &'static str {
        match self {
            Attack::Garbage => "garbage",
            Attack::InvalidUtf8 => "invalid-utf8",
            Attack::Oversized => "oversized",
            Attack::Flood => "flood",
            Attack::RawTcp => "raw-tcp",
        }
    }
}

pub fn spawn(attack: Attack, env: Env, seed: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(attack, env, seed))
}

async fn run(attack: Attack, mut env: Env, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !env.stop.is_cancelled() {
        let _ = env.quiet.wait_for(|q| !*q).await;
        let outcome = tokio::select! {
            _ = env.stop.cancelled() => return,
            o = timeout(Duration::from_secs(10), once(attack, &env, &mut rng)) => o.unwrap_or_else(|_| "no-answer-10s".into()),
        };
        env.tally.hostile(format!("{}:{outcome}", attack.label()));
        sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
    }
}

/// One attack on a fresh connection; returns what the relay did.
async fn once(attack: Attack, env: &Env, rng: &mut StdRng) -> String {
    let pick = env.front.pick(rng);
    let addr = pick
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    if let Attack::RawTcp = attack {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            return "refused".into();
        };
        let mut junk = vec![0u8; rng.gen_range(1..4096)];
        rng.fill_bytes(&mut junk);
        if s.write_all(&junk).await.is_err() {
            return "reset".into();
        }
        let mut buf = [0u8; 64];
        return match timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) => "closed".into(),
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let status = text.split(' ').nth(1).unwrap_or("?").to_owned();
                format!("http-{status}")
            }
            Ok(Err(_)) => "reset".into(),
            Err(_) => "held-3s".into(),
        };
    }
    let Ok(Ok((mut ws, _))) = timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(pick.url.as_str()),
    )
    .await
    else {
        return "connect-failed".into();
    };
    env.tally.with(|c| c.connections += 1);
    env.tally.live.fetch_add(1, Ordering::SeqCst);
    env.front.opened(pick.node);
    let sent = match attack {
        Attack::Garbage => {
            let mut ok = true;
            for _ in 0..rng.gen_range(1..10) {
                let mut junk = vec![0u8; rng.gen_range(1..2048)];
                rng.fill_bytes(&mut junk);
                let frame = if rng.gen_bool(0.5) {
                    WsMessage::binary(junk)
                } else {
                    let text: String = junk.iter().map(|b| (b % 94 + 32) as char).collect();
                    WsMessage::text(text)
                };
                ok &= ws.send(frame).await.is_ok();
            }
            ok
        }
        Attack::InvalidUtf8 => {
            let payload = vec![b'{', 0xff, 0xfe, 0xc3, 0x28, b'}'];
            let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
            ws.send(WsMessage::Frame(frame)).await.is_ok()
        }
        Attack::Oversized => {
            let big = format!(
                r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["{}"]}}}}"#,
                "x".repeat(200 * 1024)
            );
            ws.send(WsMessage::text(big)).await.is_ok()
        }
        Attack::Flood => {
            let mut ok = true;
            for id in 1..=400u64 {
                let cmd = format!(r#"{{"id":{id},"cmd":"list_subscriptions"}}"#);
                if ws.feed(WsMessage::text(cmd)).await.is_err() {
                    ok = false;
                    break;
                }
            }
            ok && ws.flush().await.is_ok()
        }
        Attack::RawTcp => unreachable!(),
    };
    // Read what comes back for a while: replies, errors, a close.
    let mut errors = 0u64;
    let mut replies = 0u64;
    let deadline = Instant::now() + Duration::from_secs(2);
    let outcome = loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            ws.next(),
        )
        .await
        {
            Err(_) => {
                break format!(
                    "open(replies={},errors={})",
                    bucket(replies),
                    bucket(errors)
                )
            }
            Ok(None) | Ok(Some(Err(_))) => {
                break if sent {
                    "dropped".into()
                } else {
                    "dropped-while-sending".into()
                }
            }
            Ok(Some(Ok(WsMessage::Close(c)))) => {
                break format!(
                    "close-{}",
                    c.map(|c| u16::from(c.code).to_string())
                        .unwrap_or_else(|| "none".into())
                )
            }
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                if t.contains("\"error\"") {
                    errors += 1;
                } else {
                    replies += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    };
    drop(ws);
    env.tally.live.fetch_sub(1, Ordering::SeqCst);
    env.front.closed(pick.node);
    outcome
}

/// Counts bucketed so the tally stays readable: 0, 1-9, 10-99, 100+.
fn bucket(n: u64) -> &'static str {
    match n {
        0 => "0",
        1..=9 => "1-9",
        10..=99 => "10-99",
        _ => "100+",
    }
}
