//! The subscription channels ([`Channel`]): names, properties, and a dense index for arrays
//! kept per channel.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::MessageType;

/// A subscription channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    OrderbookDelta,
    Ticker,
    Trade,
    Fill,
    UserOrders,
    MarketPositions,
    MarketLifecycleV2,
}

impl Channel {
    /// How many channels there are: the length of per-channel arrays.
    pub const COUNT: usize = 7;

    /// Every channel, in declaration order: `Channel::ALL[c.index()] == c`.
    pub const ALL: [Channel; Channel::COUNT] = [
        Channel::OrderbookDelta,
        Channel::Ticker,
        Channel::Trade,
        Channel::Fill,
        Channel::UserOrders,
        Channel::MarketPositions,
        Channel::MarketLifecycleV2,
    ];

    /// Position in [`Channel::ALL`], for arrays indexed by channel.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::OrderbookDelta => "orderbook_delta",
            Channel::Ticker => "ticker",
            Channel::Trade => "trade",
            Channel::Fill => "fill",
            Channel::UserOrders => "user_orders",
            Channel::MarketPositions => "market_positions",
            Channel::MarketLifecycleV2 => "market_lifecycle_v2",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The account's own data: needs an authenticated connection.
    pub fn is_private(self) -> bool {
        matches!(
            self,
            Channel::Fill | Channel::UserOrders | Channel::MarketPositions
        )
    }

    /// Whether a subscription must name markets (`orderbook_delta` does).
    pub fn requires_market(self) -> bool {
        matches!(self, Channel::OrderbookDelta)
    }

    /// Whether messages on this channel carry `seq` (`trade` does in the newest spec).
    pub fn is_sequenced(self) -> bool {
        matches!(
            self,
            Channel::OrderbookDelta | Channel::Trade | Channel::MarketLifecycleV2
        )
    }

    /// The channel a data message type belongs to.
    pub fn of_message(kind: &MessageType) -> Option<Channel> {
        Some(match kind {
            MessageType::OrderbookSnapshot | MessageType::OrderbookDelta => Channel::OrderbookDelta,
            MessageType::Ticker => Channel::Ticker,
            MessageType::Trade => Channel::Trade,
            MessageType::Fill => Channel::Fill,
            MessageType::UserOrder => Channel::UserOrders,
            MessageType::MarketPosition => Channel::MarketPositions,
            MessageType::MarketLifecycleV2
            | MessageType::EventLifecycle
            | MessageType::EventFeeUpdate => Channel::MarketLifecycleV2,
            _ => return None,
        })
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_index_is_the_position_in_all() {
        assert_eq!(Channel::ALL.len(), Channel::COUNT);
        for (i, c) in Channel::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i, "{c}");
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
    }
}
