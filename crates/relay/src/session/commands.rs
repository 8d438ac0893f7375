//! A session's commands: rate limit, authentication, the wait for a live upstream, and the
//! subscription table's effects on the fanout subscriber.

use std::time::{Duration, Instant};

use fanout::Topic;
use protocol::{reply, Action, Command, ErrorCode};
use tracing::debug;

use super::core::{Close, Core};
use crate::client::Effect;
use crate::close::CloseReason;
use crate::metrics as m;
use crate::resume::Position;
use crate::security::{Identity, Permission};

/// Most commands held for a live upstream; more get error 27.
const MAX_DEFERRED: usize = 64;
/// The window over which rate-limited commands are counted toward the `rate limited` close.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

impl Core {
    pub(super) fn on_command(&mut self, frame: &[u8], now: Instant) -> Result<(), Close> {
        let parsed = Command::parse(frame);
        if !self.commands.try_take(now) {
            if now.duration_since(self.refused_since) > REFUSAL_WINDOW {
                self.refused = 0;
                self.refused_since = now;
            }
            self.refused += 1;
            metrics::counter!(m::COMMANDS_TOTAL, "command" => "any", "result" => "rate_limited")
                .increment(1);
            if self.refused >= self.limits.refused_before_close {
                return Err(Some(CloseReason::RateLimited));
            }
            let id = parsed.as_ref().map_or_else(|e| e.id, |c| c.id);
            self.out
                .text(&reply::error(id, ErrorCode::TooManyRequests, None));
            return Ok(());
        }
        let command = match parsed {
            Ok(Command {
                id,
                action: Action::Auth { token },
            }) => return self.authenticate(id, &token),
            Ok(command) => command,
            Err(e) => {
                metrics::counter!(m::COMMANDS_TOTAL, "command" => "invalid", "result" => "error")
                    .increment(1);
                self.out.text(&e.reply());
                return Ok(());
            }
        };
        // A subscription to the account's fills, orders or positions is answered only once the
        // upstream has them live, as the exchange would: acknowledging it earlier would promise
        // messages nobody is receiving. Later commands wait behind it, so replies keep their order.
        if !self.deferred.is_empty()
            || (needs_live_upstream(&command) && !self.upstream_subscribed())
        {
            if self.deferred.len() >= MAX_DEFERRED {
                self.out
                    .text(&reply::error(command.id, ErrorCode::TooManyRequests, None));
                return Ok(());
            }
            self.deferred.push(command);
            return Ok(());
        }
        self.apply_command(command);
        Ok(())
    }

    /// The first frame of a client with no handshake token: only `auth` is accepted.
    pub fn on_first(&mut self, frame: &[u8]) -> Result<(), Close> {
        match Command::parse(frame) {
            Ok(Command {
                id,
                action: Action::Auth { token },
            }) => self.authenticate(id, &token),
            _ => Err(Some(CloseReason::Unauthorized)),
        }
    }

    /// `{"cmd":"auth"}`: a valid token sets the client's permission; a bad one closes with 4001.
    fn authenticate(&mut self, id: u64, token: &str) -> Result<(), Close> {
        let Some(identity) = self.gate.check_token(token) else {
            metrics::counter!(m::COMMANDS_TOTAL, "command" => "auth", "result" => "error")
                .increment(1);
            return Err(Some(CloseReason::Unauthorized));
        };
        if let Identity::Token { name, .. } = &identity {
            debug!(token = %name, "authenticated");
        }
        self.state
            .set_private_allowed(identity.permission() == Some(Permission::Private));
        self.identity = identity;
        metrics::counter!(m::COMMANDS_TOTAL, "command" => "auth", "result" => "ok").increment(1);
        self.out.text(&reply::ok(
            id,
            Some(serde_json::json!({ "authenticated": true })),
        ));
        Ok(())
    }

    /// Answers the commands held while the upstream was not subscribed.
    pub(super) fn release_deferred(&mut self) {
        for command in std::mem::take(&mut self.deferred) {
            self.apply_command(command);
        }
    }

    /// Applies one validated command: replies and topic changes.
    fn apply_command(&mut self, command: Command) {
        let name = command_name(&command);
        let resume = match &command.action {
            Action::Subscribe(s) => match s.resume_from.as_deref().map(Position::parse) {
                None => None,
                Some(Some(from)) => Some((from, s.channels.clone())),
                Some(None) => {
                    metrics::counter!(m::COMMANDS_TOTAL, "command" => name, "result" => "error")
                        .increment(1);
                    self.out
                        .text(&reply::error(command.id, ErrorCode::InvalidParameter, None));
                    return;
                }
            },
            _ => None,
        };
        let effects = self.state.handle(command);
        let ok = !effects.iter().any(|e| matches!(e, Effect::Error(_)));
        let result = if ok { "ok" } else { "error" };
        metrics::counter!(m::COMMANDS_TOTAL, "command" => name, "result" => result).increment(1);
        for effect in effects {
            match effect {
                Effect::Reply(frame) | Effect::Error(frame) => self.out.text(&frame),
                Effect::Pong(id) => self.out.text(&reply::pong(id)),
                Effect::Add {
                    channel,
                    market,
                    initial,
                } => {
                    let topic = match &market {
                        Some(m) => Topic::market(channel, m),
                        None => Topic::channel(channel),
                    };
                    // Only a disconnected subscriber refuses; its verdict is next in the stream.
                    if let Err(e) = self.sub.add(topic, initial) {
                        self.log_refused("topic", &e);
                    }
                }
                Effect::Remove { channel, market } => {
                    let topic = match &market {
                        Some(m) => Topic::market(channel, m),
                        None => Topic::channel(channel),
                    };
                    self.sub.remove(&topic);
                }
                Effect::Snapshot { market } => {
                    if let Err(e) = self.sub.request_snapshot(&market) {
                        self.log_refused("snapshot request", &e);
                    }
                }
            }
        }
        if let (Some((from, channels)), true) = (resume, ok) {
            let private: Vec<_> = channels.into_iter().filter(|c| c.is_private()).collect();
            if !private.is_empty() {
                self.pending_resume = Some((from, private));
            }
        }
    }
}

/// Whether a command subscribes to a private channel (answered only with the upstream live).
fn needs_live_upstream(command: &Command) -> bool {
    matches!(&command.action, Action::Subscribe(s) if s.channels.iter().any(|c| c.is_private()))
}

fn command_name(command: &Command) -> &'static str {
    match command.action {
        Action::Subscribe(_) => "subscribe",
        Action::Unsubscribe { .. } => "unsubscribe",
        Action::UpdateSubscription(_) => "update_subscription",
        Action::ListSubscriptions => "list_subscriptions",
        Action::Ping => "ping",
        Action::Auth { .. } => "auth",
    }
}
