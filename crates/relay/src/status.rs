//! The upstream's status as the relay reports it, and the one record of it: the feed sends each
//! new [`UpstreamStatus`] as a notice in the fanout stream, so a session gets status changes and
//! loss notices in order with the data, and `/status` and `/readyz` read the latest one
//! ([`fanout::Fanout::notice`]).

use protocol::Channel;
use upstream::State;

/// The upstream's health, in the relay's terms (the `upstream` field of `relay_status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Connecting,
    /// Connected; the wanted subscriptions are being re-established.
    Connected,
    /// Every wanted subscription is live.
    Subscribed,
    Disconnected {
        reason: String,
    },
    /// The upstream gave up after `failures` consecutive failures (it keeps probing).
    GaveUp {
        failures: u32,
    },
    AuthFailed,
}

impl Health {
    pub fn name(&self) -> &'static str {
        match self {
            Health::Connecting => "connecting",
            Health::Connected => "connected",
            Health::Subscribed => "subscribed",
            Health::Disconnected { .. } => "disconnected",
            Health::GaveUp { .. } => "gave_up",
            Health::AuthFailed => "auth_failed",
        }
    }

    /// Whether the upstream connection is open.
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Connected | Health::Subscribed)
    }

    /// Whether the upstream is down (an outage: [`UpstreamStatus::outages`] counts them).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Health::Disconnected { .. } | Health::AuthFailed | Health::GaveUp { .. }
        )
    }
}

impl From<&State> for Health {
    fn from(state: &State) -> Health {
        match state {
            State::Connecting => Health::Connecting,
            State::Connected => Health::Connected,
            State::Subscribed => Health::Subscribed,
            State::Disconnected { reason } => Health::Disconnected {
                reason: reason.to_string(),
            },
            State::GaveUp { failures } => Health::GaveUp {
                failures: *failures,
            },
            State::AuthFailed => Health::AuthFailed,
        }
    }
}

/// Everything a session must act on besides data, as of one point of the stream. Counts are
/// cumulative, so a session that sees only the latest status (it lagged past the others) still
/// knows that an outage happened or messages were lost since it last looked.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamStatus {
    pub health: Health,
    /// Unix milliseconds when `health` was entered.
    pub since_ms: u64,
    /// How many times the upstream went down (disconnected, refused or gave up) so far.
    pub outages: u64,
    /// Upstream connections established so far.
    pub connects: u64,
    /// The last disconnect or refusal: why, and when (Unix ms).
    pub last_loss: Option<(String, u64)>,
    /// Health changes so far.
    pub changes: u64,
    /// Per channel (at `Channel::index()`), how many times its messages were lost upstream (a
    /// subscription died at the exchange).
    pub lost: [u64; Channel::COUNT],
}

impl UpstreamStatus {
    /// Before the upstream's first event.
    pub fn starting(now_ms: u64) -> UpstreamStatus {
        UpstreamStatus {
            health: Health::Connecting,
            since_ms: now_ms,
            outages: 0,
            connects: 0,
            last_loss: None,
            changes: 0,
            lost: [0; Channel::COUNT],
        }
    }

    /// The status after the upstream entered `state` at `now_ms`.
    pub fn entered(&self, state: &State, now_ms: u64) -> UpstreamStatus {
        let health = Health::from(state);
        let last_loss = match &health {
            Health::Disconnected { reason } => Some((reason.clone(), now_ms)),
            Health::AuthFailed => Some(("upstream refused the credentials".into(), now_ms)),
            _ => self.last_loss.clone(),
        };
        UpstreamStatus {
            outages: self.outages + u64::from(health.is_outage()),
            connects: self.connects + u64::from(health == Health::Connected),
            last_loss,
            since_ms: now_ms,
            changes: self.changes + 1,
            lost: self.lost,
            health,
        }
    }

    /// The status after messages of `channel` were lost upstream.
    pub fn lost(&self, channel: Channel) -> UpstreamStatus {
        let mut next = self.clone();
        next.lost[channel.index()] += 1;
        next
    }

    /// The `msg` of a `relay_status` event.
    pub fn to_json(&self) -> serde_json::Value {
        let mut msg =
            serde_json::json!({ "upstream": self.health.name(), "since_ms": self.since_ms });
        match &self.health {
            Health::Disconnected { reason } => msg["reason"] = reason.as_str().into(),
            Health::GaveUp { failures } => msg["failures"] = (*failures).into(),
            _ => {}
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upstream::DisconnectReason;

    #[test]
    fn counts_accumulate_across_changes_and_losses() {
        let s = UpstreamStatus::starting(1);
        let s = s.entered(&State::Connected, 2);
        let s = s.lost(Channel::Fill);
        let s = s.entered(
            &State::Disconnected {
                reason: DisconnectReason::PongTimeout,
            },
            3,
        );
        let s = s.entered(&State::GaveUp { failures: 4 }, 4);
        assert_eq!((s.outages, s.connects, s.changes), (2, 1, 3));
        assert_eq!(s.lost[Channel::Fill.index()], 1);
        assert_eq!(s.last_loss.as_ref().map(|l| l.1), Some(3));
        assert_eq!(
            s.to_json(),
            serde_json::json!({"upstream": "gave_up", "since_ms": 4, "failures": 4})
        );
    }
}
