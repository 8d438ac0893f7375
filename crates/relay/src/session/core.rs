//! The session's decisions, without I/O: frames and deliveries in, frames to write and a close out.
//!
//! [`Core`] owns the client's subscription table and its fanout subscriber. The I/O loop hands
//! it what the client sent ([`Core::on_incoming`]), asks it to take what the stream has ready
//! ([`Core::drain`]) and to ping or check the pong ([`Core::ping`], [`Core::pong_overdue`]), and
//! writes what it put in [`Core::out`]. An `Err` is the end of the session: the close to send, or
//! `None` when the client is gone.

use std::sync::Arc;
use std::time::Instant;

use fanout::{Delivery, Subscriber, Verdict};
use protocol::{Channel, Command};
use tracing::debug;

use super::out::Out;
use crate::client::{ClientState, Limits};
use crate::close::CloseReason;
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
    /// The client holds a private channel and the upstream was up since it subscribed: if the
    /// upstream connection is lost, fills may be missed and the client must be told (a
    /// `private messages lost` close).
    pub(super) private_exposed: bool,
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
            private_exposed: false,
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
        }
        Ok(taken)
    }

    fn on_delivery(&mut self, delivery: Delivery<UpstreamStatus>) -> Result<(), Close> {
        match delivery {
            Delivery::Notice(status) => self.on_notice(status),
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
            let outage = now.outages != before.outages || now.health.is_outage();
            if private_messages_lost(self.private_exposed, outage, lost_held_private) {
                return Err(Some(CloseReason::PrivateLost));
            }
            if now.changes == before.changes {
                return Ok(());
            }
        }
        if now.health.is_up() {
            self.private_exposed |= self.holds_private();
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

    pub(super) fn upstream_up(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.health.is_up())
    }

    pub(super) fn holds_private(&self) -> bool {
        self.state.subscriptions().any(|s| s.channel.is_private())
    }

    pub(super) fn event(&mut self, kind: &str, msg: serde_json::Value) {
        let frame = serde_json::json!({ "type": kind, "msg": msg }).to_string();
        self.out.text(&frame);
    }

    pub(super) fn log_refused(&self, what: &str, error: &dyn std::fmt::Display) {
        debug!(%error, "{what} refused");
    }
}

/// Whether an upstream status closes a client holding private channels (`private messages
/// lost`): their messages carry no seq and the exchange does not replay them. `exposed`: it held
/// one while the upstream was up; `outage`: the upstream went down since the last status;
/// `lost_held_private`: messages of a private channel it holds were lost upstream.
pub(crate) fn private_messages_lost(exposed: bool, outage: bool, lost_held_private: bool) -> bool {
    lost_held_private || (exposed && outage)
}
