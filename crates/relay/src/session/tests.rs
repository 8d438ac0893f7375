//! The session core's decisions, driven without sockets: a real fanout, a test-owned publisher,
//! commands in, frames and closes out.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fanout::{FanoutConfig, Publisher};
use protocol::{Channel, MessageType};
use serde_json::Value;
use upstream::{DisconnectReason, State};

use super::core::{CommandLimits, Core, Incoming};
use crate::close::CloseReason;
use crate::config::RelayConfig;
use crate::security::{Gate, Identity, Permission};
use crate::status::UpstreamStatus;

struct Harness {
    publisher: Publisher<UpstreamStatus>,
    fanout: fanout::Fanout<UpstreamStatus>,
    status: UpstreamStatus,
    _registry: fanout::RegistryEvents,
}

impl Harness {
    fn new(queue_messages: usize) -> Harness {
        let (mut publisher, fanout, registry) = fanout::new(FanoutConfig {
            queue_messages,
            ..FanoutConfig::default()
        });
        let status = UpstreamStatus::starting(0)
            .entered(&State::Connected, 1)
            .entered(&State::Subscribed, 2);
        publisher.notice(status.clone());
        Harness {
            publisher,
            fanout,
            status,
            _registry: registry,
        }
    }

    fn core(&self, relay_events: bool) -> Core {
        let config = RelayConfig::with_upstream("ws://127.0.0.1:9/");
        Core::new(
            self.fanout.subscriber(),
            Arc::new(Gate::new(&config.security, config.listen)),
            Identity::Anonymous(Permission::Private),
            config.downstream.limits(),
            CommandLimits {
                commands_per_second: 100.0,
                command_burst: 5.0,
                refused_before_close: 3,
            },
            relay_events,
        )
    }

    /// The upstream enters `state`.
    fn enter(&mut self, state: State) {
        self.status = self.status.entered(&state, 10);
        self.publisher.notice(self.status.clone());
    }

    fn drop_upstream(&mut self) {
        self.enter(State::Disconnected {
            reason: DisconnectReason::StreamError,
        });
    }

    fn trade(&mut self, n: u64) {
        self.publisher.message(
            Channel::Trade,
            Some("M"),
            MessageType::Trade,
            Bytes::from(format!(r#"{{"market_ticker":"M","trade_id":"{n}"}}"#)),
        );
    }
}

fn command(core: &mut Core, json: &str) {
    core.on_incoming(Incoming::Command(json.as_bytes()), Instant::now())
        .expect("a command does not close");
}

/// What the core wrote, as a client reads it: JSON frames, and `"ping"` for a ping.
fn written(core: &mut Core) -> Vec<Value> {
    super::out::tests::frames(&core.out.take())
        .into_iter()
        .map(|(opcode, payload)| match opcode {
            0x9 => Value::from("ping"),
            _ => serde_json::from_slice(&payload).unwrap(),
        })
        .collect()
}

/// A short label per frame: its type, with the upstream state or the trade id.
fn labels(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("relay_status") => format!("status {}", f["msg"]["upstream"].as_str().unwrap()),
            Some("trade") => format!("trade {}", f["msg"]["trade_id"].as_str().unwrap()),
            Some(other) => other.to_owned(),
            None => f.as_str().unwrap().to_owned(),
        })
        .collect()
}

fn subscribe(core: &mut Core, channel: &str) {
    command(
        core,
        &format!(r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["{channel}"]}}}}"#),
    );
}

#[test]
fn a_status_change_comes_between_the_data_before_it_and_the_data_after_it() {
    let mut h = Harness::new(1024);
    let mut core = h.core(true);
    subscribe(&mut core, "trade");
    h.trade(1);
    h.drop_upstream();
    h.trade(2);
    h.enter(State::Connecting);
    core.drain(usize::MAX).unwrap();
    assert_eq!(
        labels(&written(&mut core)),
        [
            "subscribed",
            "status subscribed",
            "trade 1",
            "status disconnected",
            "trade 2",
            "status connecting"
        ]
    );
}

#[test]
fn an_outage_alone_closes_nobody_the_upstream_backfills_or_announces_a_loss() {
    let mut h = Harness::new(1024);
    let mut private = h.core(false);
    private.drain(usize::MAX).unwrap();
    subscribe(&mut private, "fill");
    h.drop_upstream();
    h.enter(State::Connected);
    h.enter(State::Subscribed);
    assert!(private.drain(usize::MAX).is_ok());
    // What the backfill could not recover comes as a loss notice: that closes.
    h.status = h.status.lost(Channel::Fill);
    h.publisher.notice(h.status.clone());
    assert_eq!(
        private.drain(usize::MAX),
        Err(Some(CloseReason::PrivateLost))
    );
}

#[test]
fn a_private_subscription_waits_for_a_subscribed_upstream() {
    let mut h = Harness::new(1024);
    h.drop_upstream();
    let mut core = h.core(false);
    core.drain(usize::MAX).unwrap();
    subscribe(&mut core, "fill");
    command(&mut core, r#"{"id":2,"cmd":"ping"}"#);
    assert_eq!(written(&mut core), Vec::<Value>::new(), "held, in order");
    h.enter(State::Connected);
    h.enter(State::Subscribed);
    core.drain(usize::MAX).unwrap();
    assert_eq!(labels(&written(&mut core)), ["subscribed", "pong"]);
    h.status = h.status.lost(Channel::Fill);
    h.publisher.notice(h.status.clone());
    assert_eq!(core.drain(usize::MAX), Err(Some(CloseReason::PrivateLost)));
}

#[test]
fn a_loss_notice_closes_holders_of_that_private_channel_only() {
    let mut h = Harness::new(1024);
    let mut fills = h.core(false);
    let mut orders = h.core(false);
    fills.drain(usize::MAX).unwrap();
    orders.drain(usize::MAX).unwrap();
    subscribe(&mut fills, "fill");
    subscribe(&mut orders, "user_orders");
    h.status = h.status.lost(Channel::Fill);
    h.publisher.notice(h.status.clone());
    assert_eq!(fills.drain(usize::MAX), Err(Some(CloseReason::PrivateLost)));
    assert!(orders.drain(usize::MAX).is_ok());
}

#[test]
fn a_loss_skipped_in_a_lag_still_closes_a_private_holder() {
    let mut h = Harness::new(16);
    let mut core = h.core(true);
    core.drain(usize::MAX).unwrap();
    subscribe(&mut core, "fill");
    subscribe(&mut core, "trade");
    written(&mut core);
    h.status = h.status.lost(Channel::Fill);
    h.publisher.notice(h.status.clone());
    h.drop_upstream();
    h.enter(State::Connected);
    h.enter(State::Subscribed);
    (0..40).for_each(|n| h.trade(n));
    // The report of the lag, then the latest status, one loss later: the close.
    assert_eq!(core.drain(usize::MAX), Err(Some(CloseReason::PrivateLost)));
    assert_eq!(labels(&written(&mut core)), ["relay_lagged"]);
}

#[test]
fn a_lag_is_reported_to_event_clients_and_the_stream_goes_on() {
    let mut h = Harness::new(16);
    let mut events = h.core(true);
    let mut quiet = h.core(false);
    for core in [&mut events, &mut quiet] {
        subscribe(core, "trade");
        core.drain(usize::MAX).unwrap();
        written(core);
    }
    (0..40).for_each(|n| h.trade(n));
    h.drain_and_trade(&mut events, &mut quiet);
    let lagged = written(&mut events);
    assert_eq!(lagged[0]["type"], "relay_lagged");
    assert!(lagged[0]["msg"]["trades_lost"].as_u64().unwrap() > 0);
    assert_eq!(labels(&lagged[1..]), ["trade 40"]);
    assert_eq!(labels(&written(&mut quiet)), ["trade 40"]);
}

impl Harness {
    fn drain_and_trade(&mut self, a: &mut Core, b: &mut Core) {
        for core in [&mut *a, &mut *b] {
            core.drain(usize::MAX).unwrap();
        }
        self.trade(40);
        for core in [a, b] {
            core.drain(usize::MAX).unwrap();
        }
    }
}

#[test]
fn a_gave_up_upstream_closes_clients_that_did_not_ask_for_events() {
    let mut h = Harness::new(1024);
    let mut events = h.core(true);
    let mut quiet = h.core(false);
    h.enter(State::GaveUp { failures: 5 });
    events.drain(usize::MAX).unwrap();
    assert_eq!(
        labels(&written(&mut events)),
        ["status subscribed", "status gave_up"]
    );
    assert_eq!(
        quiet.drain(usize::MAX),
        Err(Some(CloseReason::UpstreamUnavailable))
    );
}

#[test]
fn a_ping_is_overdue_until_anything_arrives() {
    let h = Harness::new(1024);
    let mut core = h.core(false);
    assert!(!core.pong_overdue());
    core.ping();
    assert_eq!(labels(&written(&mut core)), ["ping"]);
    assert!(core.pong_overdue());
    core.on_incoming(Incoming::Control, Instant::now()).unwrap();
    assert!(!core.pong_overdue(), "a pong (or any frame) answers it");
    core.ping();
    command(&mut core, r#"{"id":3,"cmd":"ping"}"#);
    assert!(!core.pong_overdue(), "a command answers it too");
}

#[test]
fn a_command_flood_gets_error_27_then_a_close() {
    let h = Harness::new(1024);
    let mut core = h.core(false);
    let now = Instant::now();
    let ping = br#"{"id":1,"cmd":"ping"}"#;
    for _ in 0..5 {
        core.on_incoming(Incoming::Command(ping), now).unwrap();
    }
    core.on_incoming(Incoming::Command(ping), now).unwrap();
    core.on_incoming(Incoming::Command(ping), now).unwrap();
    let frames = written(&mut core);
    assert_eq!(frames.len(), 7);
    assert_eq!(frames[6]["msg"]["code"], 27);
    assert_eq!(
        core.on_incoming(Incoming::Command(ping), now),
        Err(Some(CloseReason::RateLimited))
    );
    assert_eq!(
        core.on_incoming(Incoming::InvalidUtf8, now),
        Err(Some(CloseReason::InvalidUtf8))
    );
}

#[test]
fn a_deferred_resume_is_served_before_any_later_delivery() {
    let mut h = Harness::new(1024);
    let mut core = h.core(true);
    core.drain(usize::MAX).unwrap();
    subscribe(&mut core, "trade");
    h.drop_upstream();
    core.drain(usize::MAX).unwrap();
    written(&mut core);
    // Deferred until the upstream is subscribed again.
    command(
        &mut core,
        r#"{"id":2,"cmd":"subscribe","params":{"channels":["fill"],"resume_from":"5:t0"}}"#,
    );
    h.enter(State::Connected);
    h.enter(State::Subscribed);
    h.trade(1);
    core.drain(usize::MAX).unwrap();
    assert!(core.take_resume().is_some(), "the resume is due");
    let before = labels(&written(&mut core));
    assert!(!before.contains(&"trade 1".to_owned()), "{before:?}");
    core.finish_resume(
        crate::resume::Position::parse("5:t0").unwrap(),
        Err("test".into()),
    );
    core.drain(usize::MAX).unwrap();
    assert_eq!(labels(&written(&mut core)), ["relay_resume", "trade 1"]);
}
