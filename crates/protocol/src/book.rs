//! The order book of one market: bids on `yes` and on `no`, built from a snapshot and deltas.

use std::collections::BTreeMap;

use crate::fixed::{Count, Price};
use crate::message::{Level, OrderbookDelta, OrderbookSnapshot, Side};

/// Why a snapshot or delta could not be applied. The book is unchanged when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("message for market {got} applied to the book of {want}")]
    WrongMarket { want: String, got: String },
    #[error("delta for {0} before any snapshot")]
    NotSynced(String),
    #[error("delta for {0} carries no price or no size change")]
    Incomplete(String),
    #[error("delta for {market} would leave {side:?} {price} at {size}")]
    NegativeLevel {
        market: String,
        side: Side,
        price: Price,
        size: Count,
    },
}

/// One market's book. Levels with size zero do not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderBook {
    market: String,
    /// The exchange's `market_id` (a uuid), learned from the first snapshot or delta that
    /// carries it, so a snapshot rebuilt from the book carries it too.
    market_id: Option<String>,
    yes: BTreeMap<Price, Count>,
    no: BTreeMap<Price, Count>,
    synced: bool,
}

impl OrderBook {
    /// An empty book, not yet synced: deltas are refused until a snapshot arrives.
    pub fn new(market: impl Into<String>) -> OrderBook {
        OrderBook {
            market: market.into(),
            market_id: None,
            yes: BTreeMap::new(),
            no: BTreeMap::new(),
            synced: false,
        }
    }

    pub fn market(&self) -> &str {
        &self.market
    }

    /// The exchange's id of the market, once a message has told it.
    pub fn market_id(&self) -> Option<&str> {
        self.market_id.as_deref()
    }

    /// Whether a snapshot has been applied since creation or the last [`OrderBook::desync`].
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Forget the levels and refuse deltas until the next snapshot (after a gap or reconnect).
    pub fn desync(&mut self) {
        self.yes.clear();
        self.no.clear();
        self.synced = false;
    }

    fn check_market(&self, got: &str) -> Result<(), BookError> {
        if got == self.market {
            Ok(())
        } else {
            Err(BookError::WrongMarket {
                want: self.market.clone(),
                got: got.to_owned(),
            })
        }
    }

    /// Replaces the whole book. Zero-size levels in the snapshot are ignored.
    pub fn apply_snapshot(&mut self, snap: &OrderbookSnapshot) -> Result<(), BookError> {
        self.check_market(&snap.market_ticker)?;
        let collect = |levels: Vec<Level>| {
            levels
                .into_iter()
                .filter(|l| l.1.units() > 0)
                .map(|Level(p, c)| (p, c))
                .collect()
        };
        self.yes = collect(snap.levels(Side::Yes));
        self.no = collect(snap.levels(Side::No));
        if snap.market_id.is_some() {
            self.market_id.clone_from(&snap.market_id);
        }
        self.synced = true;
        Ok(())
    }

    /// `level[side][price] += delta`, removing the level when it reaches zero.
    pub fn apply_delta(&mut self, delta: &OrderbookDelta) -> Result<(), BookError> {
        self.check_market(&delta.market_ticker)?;
        if !self.synced {
            return Err(BookError::NotSynced(self.market.clone()));
        }
        let (Some(price), Some(change)) = (delta.level_price(), delta.level_delta()) else {
            return Err(BookError::Incomplete(self.market.clone()));
        };
        let side = match delta.side {
            Side::Yes => &mut self.yes,
            Side::No => &mut self.no,
        };
        let old = side.get(&price).copied().unwrap_or(Count::ZERO);
        let new = Count::from_units(old.units() + change.units());
        if new.is_negative() {
            return Err(BookError::NegativeLevel {
                market: self.market.clone(),
                side: delta.side,
                price,
                size: new,
            });
        }
        if new.is_zero() {
            side.remove(&price);
        } else {
            side.insert(price, new);
        }
        if self.market_id.is_none() {
            self.market_id.clone_from(&delta.market_id);
        }
        Ok(())
    }

    /// Levels of one side from the lowest price up.
    pub fn levels(&self, side: Side) -> impl DoubleEndedIterator<Item = (Price, Count)> + '_ {
        let map = match side {
            Side::Yes => &self.yes,
            Side::No => &self.no,
        };
        map.iter().map(|(p, c)| (*p, *c))
    }

    /// Size at one price (zero when the level does not exist).
    pub fn size_at(&self, side: Side, price: Price) -> Count {
        let map = match side {
            Side::Yes => &self.yes,
            Side::No => &self.no,
        };
        map.get(&price).copied().unwrap_or(Count::ZERO)
    }

    /// The highest bid of one side.
    pub fn best_bid(&self, side: Side) -> Option<(Price, Count)> {
        self.levels(side).next_back()
    }

    /// The best YES ask: `1 - best NO bid`, with that bid's size.
    pub fn best_yes_ask(&self) -> Option<(Price, Count)> {
        self.best_bid(Side::No).map(|(p, c)| (p.complement(), c))
    }

    /// The best NO ask: `1 - best YES bid`.
    pub fn best_no_ask(&self) -> Option<(Price, Count)> {
        self.best_bid(Side::Yes).map(|(p, c)| (p.complement(), c))
    }

    /// The book in the wire form of `orderbook_snapshot`: every field the exchange's snapshot
    /// carries (`market_id` once known), empty sides left out as the exchange does.
    pub fn to_snapshot(&self) -> OrderbookSnapshot {
        let side = |side| {
            let levels: Vec<Level> = self.levels(side).map(|(p, c)| Level(p, c)).collect();
            (!levels.is_empty()).then_some(levels)
        };
        OrderbookSnapshot {
            market_ticker: self.market.clone(),
            market_id: self.market_id.clone(),
            yes_dollars_fp: side(Side::Yes),
            no_dollars_fp: side(Side::No),
            yes: None,
            no: None,
            extra: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(market: &str, side: Side, price: &str, change: &str) -> OrderbookDelta {
        serde_json::from_value(serde_json::json!({
            "market_ticker": market, "side": side, "price_dollars": price, "delta_fp": change
        }))
        .unwrap()
    }

    fn snapshot() -> OrderbookSnapshot {
        serde_json::from_str(
            r#"{"market_ticker":"M","yes_dollars_fp":[["0.0800","300.00"],["0.2200","333.00"]],"no_dollars_fp":[["0.5400","20.00"]]}"#,
        )
        .unwrap()
    }

    #[test]
    fn snapshot_then_deltas_matches_the_hand_computed_book() {
        let mut book = OrderBook::new("M");
        book.apply_snapshot(&snapshot()).unwrap();
        book.apply_delta(&delta("M", Side::Yes, "0.2200", "-33.00"))
            .unwrap();
        book.apply_delta(&delta("M", Side::Yes, "0.0800", "-300.00"))
            .unwrap();
        book.apply_delta(&delta("M", Side::No, "0.5500", "12.50"))
            .unwrap();
        book.apply_delta(&delta("M", Side::Yes, "0.3000", "1.00"))
            .unwrap();
        let want: OrderbookSnapshot = serde_json::from_str(
            r#"{"market_ticker":"M","yes_dollars_fp":[["0.2200","300.00"],["0.3000","1.00"]],"no_dollars_fp":[["0.5400","20.00"],["0.5500","12.50"]]}"#,
        )
        .unwrap();
        assert_eq!(book.to_snapshot(), want);
        assert_eq!(
            book.best_bid(Side::Yes),
            Some(("0.3000".parse().unwrap(), "1.00".parse().unwrap()))
        );
        assert_eq!(book.best_yes_ask().unwrap().0.to_string(), "0.4500");
        assert_eq!(book.best_no_ask().unwrap().0.to_string(), "0.7000");
    }

    #[test]
    fn refuses_deltas_it_cannot_apply() {
        let mut book = OrderBook::new("M");
        assert_eq!(
            book.apply_delta(&delta("M", Side::Yes, "0.1000", "1.00")),
            Err(BookError::NotSynced("M".into()))
        );
        book.apply_snapshot(&snapshot()).unwrap();
        let before = book.clone();
        assert!(matches!(
            book.apply_delta(&delta("OTHER", Side::Yes, "0.1000", "1.00")),
            Err(BookError::WrongMarket { .. })
        ));
        assert!(matches!(
            book.apply_delta(&delta("M", Side::No, "0.5400", "-21.00")),
            Err(BookError::NegativeLevel { .. })
        ));
        assert_eq!(book, before, "a refused delta changes nothing");
        book.desync();
        assert!(!book.is_synced());
        assert!(book
            .apply_delta(&delta("M", Side::Yes, "0.0800", "1.00"))
            .is_err());
    }

    #[test]
    fn a_rebuilt_snapshot_keeps_the_market_id() {
        let mut book = OrderBook::new("M");
        let mut snap = snapshot();
        snap.market_id = Some("9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1".into());
        book.apply_snapshot(&snap).unwrap();
        book.desync();
        book.apply_snapshot(&snapshot()).unwrap();
        assert_eq!(
            book.to_snapshot(),
            snap,
            "kept across a resync without the field"
        );

        let mut from_delta = OrderBook::new("M");
        from_delta.apply_snapshot(&snapshot()).unwrap();
        let mut d = delta("M", Side::Yes, "0.0800", "1.00");
        d.market_id = snap.market_id.clone();
        from_delta.apply_delta(&d).unwrap();
        assert_eq!(from_delta.market_id(), snap.market_id.as_deref());
    }

    #[test]
    fn legacy_integer_fields_apply() {
        let mut book = OrderBook::new("M");
        let snap: OrderbookSnapshot =
            serde_json::from_str(r#"{"market_ticker":"M","yes":[[8,300]],"no":[[54,20]]}"#)
                .unwrap();
        book.apply_snapshot(&snap).unwrap();
        let d: OrderbookDelta =
            serde_json::from_str(r#"{"market_ticker":"M","price":8,"delta":-100,"side":"yes"}"#)
                .unwrap();
        book.apply_delta(&d).unwrap();
        assert_eq!(
            book.size_at(Side::Yes, Price::from_cents(8)),
            Count::from_whole(200)
        );
    }
}
