//! One synthetic binary market: its identity and a live order book that random-walks.
//!
//! Prices are whole cents (1..=99) and sizes whole contracts internally; the wire form is built
//! by [`crate::encode`]. The book holds bids on `yes` and `no`; it is never crossed: the best YES
//! bid stays below the best YES ask (`100 - best NO bid`), i.e. `best_yes + best_no <= 99`.

use std::collections::{BTreeMap, HashSet};

use protocol::{Count, Level, OrderbookSnapshot, Price, Side};
use rand::rngs::SmallRng;
use rand::Rng;

/// Most levels one side of a book keeps; the farthest level is pulled beyond this.
const MAX_LEVELS: usize = 20;
/// Fewest levels one side keeps before the walk prefers adding.
const MIN_LEVELS: usize = 3;

const SERIES: [&str; 12] = [
    "KXHIGHNY",
    "KXFED",
    "KXCPI",
    "KXBTC",
    "KXETH",
    "KXNBA",
    "KXRAIN",
    "KXGAS",
    "KXSPX",
    "KXNFL",
    "KXPAYROLLS",
    "KXSNOW",
];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// `n` distinct Kalshi-style tickers, `SERIES-YYMONDD-{T|B}STRIKE` (e.g. `KXFED-26MAR18-T4.25`),
/// deterministic from `rng`. Only `[A-Z0-9.-]`, so they never need JSON escaping.
pub(crate) fn tickers(n: usize, rng: &mut SmallRng) -> Vec<String> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let series = SERIES[rng.gen_range(0..SERIES.len())];
        let year = 26 + rng.gen_range(0..4);
        let month = MONTHS[rng.gen_range(0..12)];
        let day = rng.gen_range(1..=28);
        let kind = if rng.gen_bool(0.5) { 'T' } else { 'B' };
        let strike = rng.gen_range(1..2000u32);
        // Quarter steps print exactly: 479, 115.75, 168.5.
        let strike = f64::from(strike) / 4.0;
        let ticker = format!("{series}-{year}{month}{day:02}-{kind}{strike}");
        if seen.insert(ticker.clone()) {
            out.push(ticker);
        }
    }
    out
}

/// A random (version 4) UUID: market ids, trade ids, order ids, the account's user id.
pub(crate) fn uuid(rng: &mut SmallRng) -> String {
    let v: u128 = rng.gen();
    // Version 4 in the 13th hex digit, variant 10xx in the 17th, as the exchange's ids have.
    let v = (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// One change of one level: `level[side][price] += delta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LevelChange {
    pub side: Side,
    pub price: i64,
    pub delta: i64,
}

/// A taker consumed (part of) the best bid of `side`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Execution {
    /// The side whose resting bid was hit.
    pub maker_side: Side,
    /// The YES price of the trade, in cents.
    pub yes_price: i64,
    pub count: i64,
    pub change: LevelChange,
}

/// One market's truth.
#[derive(Clone, Debug)]
pub(crate) struct Market {
    pub ticker: String,
    pub market_id: String,
    yes: BTreeMap<i64, i64>,
    no: BTreeMap<i64, i64>,
    /// The fair YES value in cents the book drifts around.
    mid: f64,
    pub last_price: i64,
    /// Contracts in the last trade.
    pub last_trade_size: i64,
    pub volume: i64,
    /// What the volume cost, in cents (`dollar_volume` is this in whole dollars).
    pub volume_cents: i64,
    pub open_interest: i64,
}

impl Market {
    pub fn new(ticker: String, rng: &mut SmallRng) -> Market {
        let mid: f64 = rng.gen_range(10.0..90.0);
        let last_price = mid.round() as i64;
        let volume = rng.gen_range(0..50_000);
        let mut m = Market {
            market_id: uuid(rng),
            ticker,
            yes: BTreeMap::new(),
            no: BTreeMap::new(),
            mid,
            last_price,
            last_trade_size: rng.gen_range(1..100),
            volume,
            volume_cents: volume * last_price,
            open_interest: rng.gen_range(0..20_000),
        };
        for _ in 0..rng.gen_range(12..24) {
            let side = if rng.gen_bool(0.5) {
                Side::Yes
            } else {
                Side::No
            };
            if let Some(change) = m.add_level(side, rng) {
                m.apply(change);
            }
        }
        m
    }

    fn side(&self, side: Side) -> &BTreeMap<i64, i64> {
        match side {
            Side::Yes => &self.yes,
            Side::No => &self.no,
        }
    }

    /// Highest bid of `side` as (cents, contracts).
    pub fn best(&self, side: Side) -> Option<(i64, i64)> {
        self.side(side).iter().next_back().map(|(p, q)| (*p, *q))
    }

    /// Applies one change to the truth; a level that reaches zero is removed.
    pub fn apply(&mut self, change: LevelChange) {
        let book = match change.side {
            Side::Yes => &mut self.yes,
            Side::No => &mut self.no,
        };
        let size = book.entry(change.price).or_insert(0);
        *size += change.delta;
        if *size <= 0 {
            book.remove(&change.price);
        }
    }

    /// The highest price a new bid on `side` may take without crossing the book.
    fn max_bid(&self, side: Side) -> i64 {
        let other = match side {
            Side::Yes => Side::No,
            Side::No => Side::Yes,
        };
        self.best(other).map_or(99, |(p, _)| 99 - p)
    }

    /// A new bid (or more size at an existing one) near the fair value, never crossing.
    fn add_level(&self, side: Side, rng: &mut SmallRng) -> Option<LevelChange> {
        let cap = self.max_bid(side);
        if cap < 1 {
            return None;
        }
        let fair = match side {
            Side::Yes => self.mid,
            Side::No => 100.0 - self.mid,
        };
        // Most orders rest close to the touch; a geometric tail reaches deeper.
        let mut depth = 1;
        while depth < 30 && rng.gen_bool(0.75) {
            depth += 1;
        }
        let price = (fair.floor() as i64 - depth).clamp(1, cap);
        let size = (10f64.powf(rng.gen_range(0.0..2.7))).round() as i64;
        Some(LevelChange {
            side,
            price,
            delta: size.max(1),
        })
    }

    /// One book change: a level added, resized or removed. Always returns a change.
    pub fn walk(&mut self, rng: &mut SmallRng) -> LevelChange {
        self.mid = (self.mid + rng.gen_range(-0.6..0.6)).clamp(3.0, 97.0);
        let side = if rng.gen_bool(0.5) {
            Side::Yes
        } else {
            Side::No
        };
        let levels = self.side(side).len();
        let roll: f64 = rng.gen();
        let change = if levels < MIN_LEVELS || (levels < MAX_LEVELS && roll < 0.5) {
            self.add_level(side, rng)
        } else if levels >= MAX_LEVELS || roll < 0.65 {
            // Pull the farthest level.
            self.side(side).iter().next().map(|(p, q)| LevelChange {
                side,
                price: *p,
                delta: -q,
            })
        } else {
            // Resize a random level, down (cancel part) or up.
            let idx = rng.gen_range(0..levels);
            self.side(side).iter().nth(idx).map(|(p, q)| {
                let delta = if rng.gen_bool(0.6) {
                    -rng.gen_range(1..=*q)
                } else {
                    rng.gen_range(1..=100)
                };
                LevelChange {
                    side,
                    price: *p,
                    delta,
                }
            })
        };
        let change = change
            .or_else(|| self.add_level(other(side), rng))
            .unwrap_or(LevelChange {
                side,
                price: 1,
                delta: 1,
            });
        self.apply(change);
        change
    }

    /// A taker hits the best bid of one side (the side the fair value pulls away from).
    /// `None` when both sides are empty.
    pub fn execute(&mut self, rng: &mut SmallRng) -> Option<Execution> {
        let yes_bid = self.best(Side::Yes).map_or(0.0, |(p, _)| p as f64);
        let yes_ask = self.best(Side::No).map_or(100.0, |(p, _)| 100.0 - p as f64);
        let book_mid = (yes_bid + yes_ask) / 2.0;
        // Fair value above the book: takers buy YES, hitting NO bids.
        let p_buy_yes = 1.0 / (1.0 + (-(self.mid - book_mid) / 2.0).exp());
        let mut maker_side = if rng.gen_bool(p_buy_yes.clamp(0.05, 0.95)) {
            Side::No
        } else {
            Side::Yes
        };
        if self.side(maker_side).is_empty() {
            maker_side = other(maker_side);
        }
        let (price, size) = self.best(maker_side)?;
        let count = rng.gen_range(1..=size.min(200));
        let change = LevelChange {
            side: maker_side,
            price,
            delta: -count,
        };
        self.apply(change);
        let yes_price = match maker_side {
            Side::Yes => price,
            Side::No => 100 - price,
        };
        self.last_price = yes_price;
        self.last_trade_size = count;
        self.volume += count;
        self.volume_cents += count * yes_price;
        if rng.gen_bool(0.5) {
            self.open_interest += count;
        } else {
            self.open_interest = (self.open_interest - count).max(0);
        }
        Some(Execution {
            maker_side,
            yes_price,
            count,
            change,
        })
    }

    /// Levels of `side`, lowest price first, as (cents, contracts).
    pub fn levels(&self, side: Side) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.side(side).iter().map(|(p, q)| (*p, *q))
    }

    /// The truth in the wire form of `orderbook_snapshot` (empty sides left out).
    pub fn snapshot(&self) -> OrderbookSnapshot {
        let side = |side| {
            let levels: Vec<Level> = self
                .levels(side)
                .map(|(p, q)| Level(Price::from_cents(p), Count::from_whole(q)))
                .collect();
            (!levels.is_empty()).then_some(levels)
        };
        OrderbookSnapshot {
            market_ticker: self.ticker.clone(),
            market_id: Some(self.market_id.clone()),
            yes_dollars_fp: side(Side::Yes),
            no_dollars_fp: side(Side::No),
            yes: None,
            no: None,
            extra: Default::default(),
        }
    }
}

pub(crate) fn other(side: Side) -> Side {
    match side {
        Side::Yes => Side::No,
        Side::No => Side::Yes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn never_crossed(m: &Market) -> bool {
        match (m.best(Side::Yes), m.best(Side::No)) {
            (Some((y, _)), Some((n, _))) => y + n <= 99,
            _ => true,
        }
    }

    #[test]
    fn tickers_are_deterministic_distinct_and_safe() {
        let a = tickers(500, &mut SmallRng::seed_from_u64(7));
        let b = tickers(500, &mut SmallRng::seed_from_u64(7));
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 500);
        assert!(a.iter().all(|t| t
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'.')));
        assert_ne!(a, tickers(500, &mut SmallRng::seed_from_u64(8)));
    }

    #[test]
    fn ids_are_version_4_uuids() {
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..100 {
            let id = uuid(&mut rng);
            let b = id.as_bytes();
            assert_eq!(
                (id.len(), b[8], b[13], b[14]),
                (36, b'-', b'-', b'4'),
                "{id}"
            );
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id}");
        }
    }

    #[test]
    fn the_walk_keeps_the_book_valid() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut m = Market::new("KXFED-26MAR18-T4.25".into(), &mut rng);
        for i in 0..200_000 {
            if i % 7 == 0 {
                m.execute(&mut rng);
            } else {
                m.walk(&mut rng);
            }
            assert!(never_crossed(&m), "crossed after {i} steps: {m:?}");
            for side in [Side::Yes, Side::No] {
                assert!(m.levels(side).all(|(p, q)| (1..=99).contains(&p) && q > 0));
                assert!(m.side(side).len() <= MAX_LEVELS + 1);
            }
        }
        assert!(m.levels(Side::Yes).count() >= 1 && m.levels(Side::No).count() >= 1);
    }
}
