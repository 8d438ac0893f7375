//! Why the relay ends a client's connection: one place for each cause's close code, reason
//! string and metrics label.
//!
//! Published Kalshi client libraries reconnect only after 1000, 1001, 1006 and 1011-1014 and
//! treat every 4000-4999 code (and 1008) as permanent. So every cause after which a client should
//! come back uses one of the reconnecting codes, and the specific cause travels in the reason
//! string (and in the `relay_status` / `relay_lagged` events for clients that ask). Only causes a
//! reconnect cannot fix keep a permanent code.

/// A cause for the relay to close a client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The relay is shutting down (SIGTERM): reconnect, elsewhere if there is an elsewhere.
    Restart,
    /// The upstream session gave up.
    UpstreamUnavailable,
    /// The client lagged too often, or fell behind on the shared ring and could not be repaired.
    SlowConsumer,
    /// The client lagged while holding a private channel: its fills cannot be repaired.
    PrivateLag,
    /// The upstream connection was lost while the client held a private channel.
    PrivateLost,
    /// Sustained command flood.
    RateLimited,
    /// A write to the client stayed blocked past the write timeout.
    WriteTimeout,
    /// No frame arrived within the pong timeout after a server ping.
    PongTimeout,
    /// A bad token (handshake-less `auth`, or a bad `auth` command).
    Unauthorized,
    /// No `auth` command within the auth timeout.
    AuthTimeout,
    /// A message over `downstream.max_message_bytes`.
    TooBig,
    /// Invalid UTF-8 in a text frame, or in a binary frame holding a command.
    InvalidUtf8,
    /// A WebSocket protocol violation.
    ProtocolError,
}

impl CloseReason {
    /// Every cause, for the metrics' zero series and the README table's test.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Restart,
        CloseReason::UpstreamUnavailable,
        CloseReason::SlowConsumer,
        CloseReason::PrivateLag,
        CloseReason::PrivateLost,
        CloseReason::RateLimited,
        CloseReason::WriteTimeout,
        CloseReason::PongTimeout,
        CloseReason::Unauthorized,
        CloseReason::AuthTimeout,
        CloseReason::TooBig,
        CloseReason::InvalidUtf8,
        CloseReason::ProtocolError,
    ];

    /// The WebSocket close code the client sees.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::PongTimeout => 1001,
            CloseReason::Restart => 1012,
            CloseReason::UpstreamUnavailable
            | CloseReason::SlowConsumer
            | CloseReason::PrivateLag
            | CloseReason::PrivateLost
            | CloseReason::RateLimited
            | CloseReason::WriteTimeout => 1013,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::TooBig => 1009,
            CloseReason::Unauthorized | CloseReason::AuthTimeout => 4001,
        }
    }

    /// The close frame's reason string: it starts with the cause's label in words.
    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Restart => "service restart",
            CloseReason::UpstreamUnavailable => "upstream unavailable, reconnect later",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::PrivateLag => {
                "slow consumer: private channel messages lost, reconcile and reconnect"
            }
            CloseReason::PrivateLost => {
                "private messages lost: the upstream connection was lost, reconcile over REST and reconnect"
            }
            CloseReason::RateLimited => "rate limited: too many commands",
            CloseReason::WriteTimeout => "write timeout",
            CloseReason::PongTimeout => "pong timeout",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::AuthTimeout => "unauthorized: no auth within the timeout",
            CloseReason::TooBig => "message too big",
            CloseReason::InvalidUtf8 => "invalid UTF-8",
            CloseReason::ProtocolError => "protocol error",
        }
    }

    /// The `reason` label of `relay_downstream_disconnects_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Restart => "restart",
            CloseReason::UpstreamUnavailable => "upstream_unavailable",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PrivateLag => "private_lag",
            CloseReason::PrivateLost => "private_lost",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::TooBig => "too_big",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::ProtocolError => "protocol_error",
        }
    }

    /// Whether a client should reconnect (with backoff) after this close. Permanent causes
    /// need the client, its token or its messages changed first. The README's table says the
    /// same (checked below).
    #[cfg(test)]
    pub fn reconnect(self) -> bool {
        is_reconnect_code(self.code())
    }
}

/// The codes after which published client libraries reconnect by themselves.
#[cfg(test)]
fn is_reconnect_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1006 | 1011..=1014)
}

/// How a session ended, as counted in `relay_downstream_disconnects_total{code, reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The relay closed it.
    Relay(CloseReason),
    /// The client sent a close frame with this code (1005 when it had none).
    Client(u16),
    /// The connection dropped with no close frame (counted as 1006).
    Abrupt,
}

impl Ending {
    /// The `code` label.
    pub fn code_label(self) -> &'static str {
        let code = match self {
            Ending::Relay(reason) => reason.code(),
            Ending::Client(code) => code,
            Ending::Abrupt => 1006,
        };
        code_label(code)
    }

    /// The `reason` label: the relay's cause, `client` or `abrupt`.
    pub fn reason_label(self) -> &'static str {
        match self {
            Ending::Relay(reason) => reason.label(),
            Ending::Client(_) => "client",
            Ending::Abrupt => "abrupt",
        }
    }
}

/// Labels are a small fixed set: a client's arbitrary code counts as `other`.
fn code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        4001 => "4001",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only causes that a reconnect cannot fix may keep a permanent code.
    #[test]
    fn only_permanent_causes_use_permanent_codes() {
        for reason in CloseReason::ALL {
            let permanent = matches!(
                reason,
                CloseReason::Unauthorized
                    | CloseReason::AuthTimeout
                    | CloseReason::TooBig
                    | CloseReason::InvalidUtf8
                    | CloseReason::ProtocolError
            );
            assert_eq!(reason.reconnect(), !permanent, "{reason:?}");
            assert_ne!(code_label(reason.code()), "other", "{reason:?}");
        }
    }

    /// The README's close-code table names every code the relay sends, with every cause's
    /// reason string, and says which ones to reconnect after, as the code does.
    #[test]
    fn the_readme_close_code_table_matches() {
        let readme = include_str!("../../../README.md");
        let table: Vec<&str> = readme
            .split("## Close codes")
            .nth(1)
            .expect("README has a Close codes section")
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect();
        for reason in CloseReason::ALL {
            let text = reason.reason().split(':').next().unwrap();
            let row = table
                .iter()
                .find(|row| {
                    row.starts_with(&format!("| {} |", reason.code()))
                        && row.contains(&format!("`{text}"))
                })
                .unwrap_or_else(|| panic!("no README row for {} `{text}`", reason.code()));
            let says_reconnect = !row.contains("do not reconnect");
            assert_eq!(says_reconnect, reason.reconnect(), "{row}");
        }
    }
}
