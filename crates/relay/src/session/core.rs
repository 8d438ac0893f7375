//! The session's decisions, without I/O: frames and deliveries in, frames to write and a close out.
//!
//! [`Core`] owns the client's subscription table and its fanout subscriber. The I/O loop hands
//! it what the client sent ([`Core::on_incoming`]), asks it to take what the stream has ready
//! ([`Core::drain`]) and to ping or check the pong ([`Core::ping`], [`Core::pong_overdue`]), and
//! writes what it put in [`Core::out`]. An `Err` is the end of the session: the close to send, or
//! `None` when the client is gone.

use std::sync::Arc;
use std::time::Instant;

use fanout::{Delivery, Item, Subscriber, Verdict};
use protocol::{Channel, Command, MessageType};
use tracing::debug;

use super::out::Out;
use crate::client::{ClientState, Limits};
use crate::close::CloseReason;
use crate::resume::{Position, Replay, Replayed, Source};
use crate::security::{Gate, Identity, Permission, TokenBucket};
use crate::status::{Health, UpstreamStatus};

/// How a session ends: a close frame to send, or nothing (the client is gone).
pub(crate) type Close = Option<CloseReason>;

/// What the client sent, as the core needs it.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A command (text, or binary that was checked to be UTF-8).
    Command(&'a [u8]),
    /// Ping, pong or another control frame: proof of life only.
    Control,
    /// A binary frame that is not UTF-8.
    InvalidUtf8,
}

/// Limits a core needs from the configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommandLimits {
    pub commands_per_second: f64,
    pub command_burst: f64,
    pub refused_before_close: u32,
}

pub(crate) struct Core {
    pub(super) state: ClientState,
    pub(super) sub: Subscriber<UpstreamStatus>,
    pub(super) gate: Arc<Gate>,
    pub(super) identity: Identity,
    /// `?relay_events=1`: also send `relay_status` and `relay_lagged` events.
    pub(super) relay_events: bool,
    /// Frames to write.
    pub out: Out,
    /// The last upstream status this session acted on (`None` before the first).
    pub(super) status: Option<Arc<UpstreamStatus>>,
    /// The client's place in the private stream, once it asked for positions (`relay_events`,
    /// or a `resume_from`): stamped on each private message as `relay_position`.
    pub(super) position: Option<Position>,
    /// After a resume: what the client holds, left out when it arrives live again.
    pub(super) replayed: Option<Replayed>,
    /// A `resume_from` accepted and not yet served (the I/O loop fetches the replay).
    pub(super) pending_resume: Option<(Position, Vec<Channel>)>,
    /// Commands held until the upstream is subscribed (a private subscription, and whatever
    /// the client sent after it), at most `MAX_DEFERRED`.
    pub(super) deferred: Vec<Command>,
    /// A server ping is outstanding and nothing has arrived since it was sent.
    awaiting_pong: bool,
    /// Commands per second (token bucket); excess commands get error 27.
    pub(super) commands: TokenBucket,
    /// Rate-limited commands in the current refusal window, and when it began.
    pub(super) refused: u32,
    pub(super) refused_since: Instant,
    pub(super) limits: CommandLimits,
}

impl Core {
    pub fn new(
        sub: Subscriber<UpstreamStatus>,
        gate: Arc<Gate>,
        identity: Identity,
        mut limits: Limits,
        command_limits: CommandLimits,
        relay_events: bool,
    ) -> Core {
        limits.private_allowed = identity.permission() == Some(Permission::Private);
        Core {
            state: ClientState::new(limits),
            sub,
            gate,
            identity,
            relay_events,
            out: Out::default(),
            status: None,
            position: relay_events.then(Position::now),
            replayed: None,
            pending_resume: None,
            deferred: Vec::new(),
            awaiting_pong: false,
            commands: TokenBucket::new(
                command_limits.commands_per_second,
                command_limits.command_burst,
            ),
            refused: 0,
            refused_since: Instant::now(),
            limits: command_limits,
        }
    }

    /// Whether the client has yet to authenticate (no token at the handshake).
    pub fn pending_auth(&self) -> bool {
        self.identity == Identity::Pending
    }

    /// Something arrived from the client.
    pub fn on_incoming(&mut self, incoming: Incoming<'_>, now: Instant) -> Result<(), Close> {
        self.awaiting_pong = false;
        match incoming {
            Incoming::Command(frame) => self.on_command(frame, now),
            Incoming::Control => Ok(()),
            Incoming::InvalidUtf8 => Err(Some(CloseReason::InvalidUtf8)),
        }
    }

    /// A ping is due: written, and the pong awaited.
    pub fn ping(&mut self) {
        self.awaiting_pong = true;
        self.out.ping();
    }

    /// The bucket's pong check came: nothing arrived since the ping.
    pub fn pong_overdue(&self) -> bool {
        self.awaiting_pong
    }

    /// Takes up to `max` deliveries that are ready now; returns how many.
    pub fn drain(&mut self, max: usize) -> Result<usize, Close> {
        let mut taken = 0;
        while taken < max {
            let Some(delivery) = self.sub.try_recv() else {
                if self.sub.is_done() {
                    // The fanout's stream ended: the relay is stopping.
                    return Err(Some(CloseReason::Restart));
                }
                break;
            };
            self.on_delivery(delivery)?;
            taken += 1;
            if self.pending_resume.is_some() {
                // A deferred subscribe with `resume_from` was just applied: its replay goes out
                // before any later delivery.
                break;
            }
        }
        Ok(taken)
    }

    fn on_delivery(&mut self, delivery: Delivery<UpstreamStatus>) -> Result<(), Close> {
        match delivery {
            Delivery::Notice(status) => self.on_notice(status),
            Delivery::Data(item) | Delivery::Cached { item, .. } if item.channel().is_private() => {
                self.private_data(&item);
                Ok(())
            }
            Delivery::Data(item) | Delivery::Cached { item, .. } => {
                let Some(sub) = self.state.by_channel(item.channel()) else {
                    return Ok(()); // unsubscribed while the item was in flight
                };
                let (sid, seq, yes) = (sub.sid, sub.next_seq(), sub.use_yes_price);
                self.out.data(&item, sid, seq, yes);
                Ok(())
            }
            Delivery::Stale { .. } => Ok(()),
            Delivery::Lagged(report) => {
                if self.relay_events {
                    let msg = serde_json::json!({
                        "cause": format!("{:?}", report.cause).to_lowercase(),
                        "messages_lost": report.messages_lost,
                        "trades_lost": report.trades_lost,
                        "books_repaired": report.books_repaired.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
                        "books_stale": report.books_stale.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
                    });
                    self.event("relay_lagged", msg);
                }
                Ok(())
            }
            Delivery::Disconnect(verdict) => Err(Some(match verdict {
                Verdict::SlowConsumer { .. } => CloseReason::SlowConsumer,
                Verdict::PrivateChannelLag { .. } => CloseReason::PrivateLag,
            })),
        }
    }

    /// An upstream status from the stream: the first one, a change, or a loss notice (or,
    /// after a lag, the latest, which sums up those skipped).
    fn on_notice(&mut self, now: Arc<UpstreamStatus>) -> Result<(), Close> {
        // The first status is the one as of the session's start: nothing to compare it with.
        if let Some(before) = self.status.replace(now.clone()) {
            let lost_held_private = Channel::ALL.iter().any(|c| {
                c.is_private()
                    && now.lost[c.index()] > before.lost[c.index()]
                    && self.state.subscriptions().any(|s| s.channel == *c)
            });
            // An outage alone is no loss: the upstream backfills the private channels, or
            // announces what it could not recover as a loss.
            if lost_held_private {
                return Err(Some(CloseReason::PrivateLost));
            }
            if now.changes == before.changes {
                return Ok(());
            }
        }
        if now.health == Health::Subscribed && !self.deferred.is_empty() {
            self.release_deferred();
        }
        if self.relay_events {
            self.event("relay_status", now.to_json());
            Ok(())
        } else if matches!(now.health, Health::GaveUp { .. }) {
            // Those who did not ask for events are not left hanging on a dead feed.
            Err(Some(CloseReason::UpstreamUnavailable))
        } else {
            Ok(())
        }
    }

    pub(super) fn upstream_subscribed(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.health == Health::Subscribed)
    }

    pub(super) fn event(&mut self, kind: &str, msg: serde_json::Value) {
        let frame = serde_json::json!({ "type": kind, "msg": msg }).to_string();
        self.out.text(&frame);
    }

    pub(super) fn log_refused(&self, what: &str, error: &dyn std::fmt::Display) {
        debug!(%error, "{what} refused");
    }
}

impl Core {
    /// A fill, order or position from the stream: left out if a resume already replayed it;
    /// stamped with the client's position if it asked for positions.
    fn private_data(&mut self, item: &Item) {
        if let (Some(replayed), MessageType::Fill) = (&mut self.replayed, item.kind()) {
            match Position::of_fill(item.body()).map(|p| replayed.repeats(&p)) {
                Some(Some(true)) => return,
                Some(Some(false)) => {}
                _ => self.replayed = None,
            }
        }
        let Some(sub) = self.state.by_channel(item.channel()) else {
            return;
        };
        let (sid, seq, yes) = (sub.sid, sub.next_seq(), sub.use_yes_price);
        match self.advance(item.kind(), item.body()) {
            None => self.out.data(item, sid, seq, yes),
            Some(position) => {
                self.out
                    .stamped(item.kind(), sid, seq, item.body_for(yes), &position)
            }
        }
    }

    /// The position after a private message, if the client asked for positions.
    fn advance(&mut self, kind: &MessageType, body: &[u8]) -> Option<Position> {
        let position = self.position.as_mut()?;
        if *kind == MessageType::Fill {
            if let Some(next) = Position::of_fill(body) {
                *position = next;
            }
        }
        Some(position.clone())
    }

    /// The resume the client asked for, if any, for the I/O loop to fetch.
    pub fn take_resume(&mut self) -> Option<(Position, Vec<Channel>)> {
        self.pending_resume.take()
    }

    /// Writes what followed `from` (or why it cannot be told), then `relay_resume`; live
    /// fills already replayed are left out afterwards.
    pub fn finish_resume(&mut self, from: Position, fetched: Result<(Replay, Source), String>) {
        self.position = Some(from.clone());
        let msg = match fetched {
            Ok((replay, source)) => {
                self.replayed = Some(Replayed::new(&from, &replay));
                let mut counts = (0, 0, 0);
                let kept = replay
                    .fills
                    .into_iter()
                    .chain(replay.orders)
                    .chain(replay.positions);
                for k in kept {
                    let Some(sub) = self.state.by_channel(k.channel) else {
                        continue;
                    };
                    // A market-filtered subscription replays its own markets only.
                    let outside = match (&sub.markets, &k.market) {
                        (Some(markets), Some(m)) => !markets.contains(m),
                        _ => false,
                    };
                    if outside {
                        continue;
                    }
                    let (sid, seq) = (sub.sid, sub.next_seq());
                    match k.kind {
                        MessageType::Fill => counts.0 += 1,
                        MessageType::UserOrder => counts.1 += 1,
                        _ => counts.2 += 1,
                    }
                    let position = self
                        .advance(&k.kind, &k.body)
                        .unwrap_or_else(|| from.clone());
                    self.out.stamped(&k.kind, sid, seq, &k.body, &position);
                }
                serde_json::json!({
                    "recovered": true,
                    "source": source.as_str(),
                    "from": from.to_string(),
                    "fills": counts.0,
                    "orders": counts.1,
                    "positions": counts.2,
                    "position": self.position.as_ref().map(ToString::to_string),
                })
            }
            Err(reason) => {
                debug!(%from, %reason, "resume not recoverable");
                serde_json::json!({ "recovered": false, "from": from.to_string(), "reason": reason })
            }
        };
        self.event("relay_resume", msg);
    }
}
