//! The Kalshi WebSocket API v2 wire protocol, as the relay, the simulator and the tests speak it.
//!
//! - [`fixed`]: exact fixed-point [`Price`] (1/10000 dollar) and [`Count`] (1/100 contract).
//! - [`channel`]: the subscription [`Channel`]s, with a dense index for per-channel arrays.
//! - [`message`]: the server-message [`Envelope`] (body kept raw for forwarding) and typed bodies.
//! - [`command`]: client commands parsed with the reference's error codes, and reply builders.
//! - [`book`]: one market's [`OrderBook`] from a snapshot and deltas.
//! - [`seq`]: per-sid [`SeqTracker`] (in order, duplicate, gap).
//! - [`sign`]: the `KALSHI-ACCESS-*` handshake headers ([`Signer`]) and their [`Verifier`].
//!
//! ```
//! use protocol::{Envelope, Message, OrderBook};
//!
//! let frame = br#"{"type":"orderbook_snapshot","sid":2,"seq":1,"msg":{"market_ticker":"M","yes_dollars_fp":[["0.0800","300.00"]]}}"#;
//! let env = Envelope::parse(frame).unwrap();
//! let Message::OrderbookSnapshot(snap) = Message::decode(&env).unwrap() else { unreachable!() };
//! let mut book = OrderBook::new("M");
//! book.apply_snapshot(&snap).unwrap();
//! assert_eq!(book.best_bid(protocol::Side::Yes).unwrap().0.to_string(), "0.0800");
//! ```
#![forbid(unsafe_code)]

pub mod book;
pub mod channel;
pub mod command;
pub mod fixed;
pub mod message;
pub mod seq;
pub mod sign;

pub use book::{BookError, OrderBook};
pub use command::{
    reply, Action, Command, CommandError, ErrorCode, Subscribe, UpdateAction, UpdateSubscription,
};
pub use fixed::{Cost, Count, Fixed, ParseFixedError, Price};
pub use message::{
    Channel, Envelope, ErrorBody, Fill, Level, Lifecycle, MarketPosition, Message, MessageType,
    OrderbookDelta, OrderbookSnapshot, Side, Subscribed, Ticker, Trade, UserOrder,
};
pub use seq::{SeqCheck, SeqTracker};
pub use sign::{AuthHeaders, KeyError, Signer, Verifier, VerifyError};
