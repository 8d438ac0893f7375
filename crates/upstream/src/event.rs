//! What the session tells its owner: [`Event`]s in one ordered stream, and the current [`State`].

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use protocol::{Channel, MessageType, OrderbookDelta, OrderbookSnapshot};

/// The owner's stable id for one wanted subscription. It never changes across reconnects, while
/// the exchange's sids do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(pub u64);

impl fmt::Display for SubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// One item of the session's output stream, in the order things happened.
// `Data` dominates the stream; boxing it would add an allocation per message to save slots in
// the bounded channel for the rare small variants.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    /// The session's state changed (also visible through [`crate::Upstream::state`]).
    State(State),
    /// One data message, in exchange order.
    Data(Data),
    /// These markets' books are no longer valid (gap, dead sid, lost connection); deltas for them
    /// are withheld until a fresh snapshot arrives, announced by [`Event::BookReset`].
    BookStale { markets: Vec<String> },
    /// The next `Data` for `market` is the fresh snapshot that makes its stale book valid again.
    BookReset { market: String },
    /// Messages of `channel` may have been lost for good: its subscription died at the exchange
    /// (a terminal error; it is being re-established), or an outage's backfill could not recover
    /// them (REST failed past its bound, or `backfill = false`). Books are repaired (see
    /// `BookStale`), but other channels carry nothing to repair from: consumers of the account's
    /// fills, orders and positions must be told, since the exchange will not replay them.
    MessagesLost { channel: Channel },
}

/// The connection's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// A connection attempt is in progress (not reported again while `GaveUp`).
    Connecting,
    /// The WebSocket is open; the desired subscriptions are being (re)established.
    Connected,
    /// Every subscription wanted at connect time has been answered by the exchange.
    Subscribed,
    /// The connection ended or an attempt failed; a reconnect is scheduled (or, with
    /// [`DisconnectReason::Shutdown`], the session is over).
    Disconnected { reason: DisconnectReason },
    /// `failures` consecutive attempts failed: the exchange is unreachable. The session keeps
    /// probing at the capped delay and leaves this state only by connecting.
    GaveUp { failures: u32 },
    /// The exchange refused the credentials (HTTP 401 on the upgrade). Retried with backoff.
    AuthFailed,
}

impl State {
    /// The number exported as `relay_upstream_state`.
    pub fn code(&self) -> u8 {
        match self {
            State::Disconnected { .. } => 0,
            State::Connecting => 1,
            State::Connected => 2,
            State::Subscribed => 3,
            State::AuthFailed => 4,
            State::GaveUp { .. } => 5,
        }
    }

    /// Whether the connection is open.
    pub fn is_up(&self) -> bool {
        matches!(self, State::Connected | State::Subscribed)
    }
}

/// Why a connection ended or an attempt failed. A small fixed set: it labels a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// TCP connect did not finish within `connect_timeout_seconds`.
    ConnectTimeout,
    /// TLS or the upgrade did not finish within `handshake_timeout_seconds`.
    HandshakeTimeout,
    /// TCP, DNS, TLS or the upgrade failed (not an HTTP answer).
    ConnectFailed,
    /// The upgrade was answered with this HTTP status (401 is [`DisconnectReason::AuthRejected`]).
    HandshakeRejected { status: u16 },
    /// HTTP 401: bad key, signature or timestamp.
    AuthRejected,
    /// No frame at all within `liveness_window_seconds`.
    LivenessTimeout,
    /// Our ping was not answered within `pong_timeout_seconds`.
    PongTimeout,
    /// The exchange closed the WebSocket (close code, if it sent one) or the TCP stream ended.
    ClosedByServer { code: Option<u16> },
    /// Reading or writing failed mid-connection.
    StreamError,
    /// The owner asked the session to stop.
    Shutdown,
}

impl DisconnectReason {
    /// The `reason` label of `relay_upstream_disconnects_total`.
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectReason::ConnectTimeout => "connect_timeout",
            DisconnectReason::HandshakeTimeout => "handshake_timeout",
            DisconnectReason::ConnectFailed => "connect_error",
            DisconnectReason::HandshakeRejected { .. } => "http_status",
            DisconnectReason::AuthRejected => "auth",
            DisconnectReason::LivenessTimeout => "liveness",
            DisconnectReason::PongTimeout => "pong_timeout",
            DisconnectReason::ClosedByServer { .. } => "server_close",
            DisconnectReason::StreamError => "stream_error",
            DisconnectReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::HandshakeRejected { status } => {
                write!(f, "handshake answered {status}")
            }
            DisconnectReason::ClosedByServer { code: Some(code) } => {
                write!(f, "closed by server ({code})")
            }
            other => f.write_str(other.label()),
        }
    }
}

/// One data message from the exchange.
#[derive(Clone, Debug)]
pub struct Data {
    pub channel: Channel,
    pub kind: MessageType,
    /// `msg.market_ticker`, when the body has one.
    pub market: Option<String>,
    /// The exchange's sequence number, on sequenced channels.
    pub seq: Option<u64>,
    /// The raw `msg` JSON, byte for byte as received.
    pub body: Bytes,
    /// Order book messages, parsed once here so nobody parses them again.
    pub book: Option<BookUpdate>,
    pub received_at: Instant,
}

/// A parsed order book message.
#[derive(Clone, Debug, PartialEq)]
pub enum BookUpdate {
    Snapshot(OrderbookSnapshot),
    Delta(OrderbookDelta),
}
