//! Fixed-point decimals for prices and counts.
//!
//! The exchange sends prices as dollar strings with up to four decimals (`"0.0800"`) and counts
//! as strings with two decimals (`"300.00"`), order costs and fees with six (`"0.010000"`). Floats would lose exactness, so both are kept as an
//! integer number of the smallest unit: 1/10000 dollar for [`Price`], 1/100 contract for
//! [`Count`].

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A signed decimal with `DIGITS` fractional digits, stored as an integer of `10^-DIGITS` units.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fixed<const DIGITS: u32>(i64);

/// A price in dollars, in units of 1/10000 dollar (`"0.0800"` is 800).
pub type Price = Fixed<4>;
/// A contract count, in units of 1/100 contract (`"300.00"` is 30000). Deltas may be negative.
pub type Count = Fixed<2>;
/// An order cost or fee in dollars, in units of 1/1,000,000 dollar (`"0.010000"` is 10000).
pub type Cost = Fixed<6>;

/// Why a decimal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fixed-point number {input:?}: {reason}")]
pub struct ParseFixedError {
    input: String,
    reason: &'static str,
}

impl<const DIGITS: u32> Fixed<DIGITS> {
    /// How many units make one whole (one dollar, one contract).
    pub const SCALE: i64 = 10i64.pow(DIGITS);
    pub const ZERO: Self = Fixed(0);
    /// One dollar (for prices) or one contract (for counts).
    pub const ONE: Self = Fixed(Self::SCALE);

    /// From a raw number of units (`Price::from_units(800)` is `"0.0800"`).
    pub const fn from_units(units: i64) -> Self {
        Fixed(units)
    }

    /// The raw number of units.
    pub const fn units(self) -> i64 {
        self.0
    }

    /// From a whole number (legacy integer counts: `Count::from_whole(300)` is `"300.00"`).
    pub const fn from_whole(whole: i64) -> Self {
        Fixed(whole * Self::SCALE)
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Fixed)
    }
}

impl Price {
    /// From legacy integer cents (`Price::from_cents(8)` is `"0.0800"`).
    pub const fn from_cents(cents: i64) -> Self {
        Fixed(cents * 100)
    }

    /// The same contract seen from the other side: `1 - p` (a NO bid at 0.40 is a YES ask at 0.60).
    pub const fn complement(self) -> Self {
        Fixed(Self::SCALE - self.0)
    }
}

impl Cost {
    /// From whole cents (`Cost::from_cents(1)` is `"0.010000"`).
    pub const fn from_cents(cents: i64) -> Self {
        Fixed(cents * 10_000)
    }
}

impl<const DIGITS: u32> FromStr for Fixed<DIGITS> {
    type Err = ParseFixedError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseFixedError {
            input: input.to_owned(),
            reason,
        };
        let (negative, body) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            _ => (false, input),
        };
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, f),
            None => (body, ""),
        };
        if whole.is_empty() {
            return Err(err("no digits before the decimal point"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("not a decimal number"));
        }
        if body.contains('.') && frac.is_empty() {
            return Err(err("no digits after the decimal point"));
        }
        let significant = frac.trim_end_matches('0');
        if significant.len() > DIGITS as usize {
            return Err(err("more fractional digits than the type holds"));
        }
        let mut units: i64 = whole
            .parse::<i64>()
            .ok()
            .and_then(|w| w.checked_mul(Self::SCALE))
            .ok_or_else(|| err("out of range"))?;
        let mut frac_units: i64 = 0;
        for (i, digit) in significant.bytes().enumerate() {
            frac_units += i64::from(digit - b'0') * 10i64.pow(DIGITS - 1 - i as u32);
        }
        units = units
            .checked_add(frac_units)
            .ok_or_else(|| err("out of range"))?;
        Ok(Fixed(if negative { -units } else { units }))
    }
}

impl<const DIGITS: u32> fmt::Display for Fixed<DIGITS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = Self::SCALE as u64;
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = DIGITS as usize
        )
    }
}

impl<const DIGITS: u32> fmt::Debug for Fixed<DIGITS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<const DIGITS: u32> Serialize for Fixed<DIGITS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, const DIGITS: u32> Deserialize<'de> for Fixed<DIGITS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<const N: u32>;
        impl<const N: u32> de::Visitor<'_> for Visitor<N> {
            type Value = Fixed<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a decimal string with at most {N} fractional digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor::<DIGITS>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_reference_forms() {
        assert_eq!("0.0800".parse::<Price>().unwrap().units(), 800);
        assert_eq!("0.960".parse::<Price>().unwrap().units(), 9600);
        assert_eq!("1".parse::<Price>().unwrap(), Price::ONE);
        assert_eq!("300.00".parse::<Count>().unwrap().units(), 30000);
        assert_eq!("-54.00".parse::<Count>().unwrap().units(), -5400);
        assert_eq!(Price::from_cents(8).to_string(), "0.0800");
        assert_eq!(Count::from_whole(-54).to_string(), "-54.00");
        assert_eq!(Price::from_units(4500).complement().to_string(), "0.5500");
        assert_eq!(Cost::from_cents(1).to_string(), "0.010000");
        assert_eq!("0.010000".parse::<Cost>().unwrap(), Cost::from_cents(1));
    }

    #[test]
    fn refuses_what_it_cannot_hold_exactly() {
        for bad in [
            "",
            "-",
            ".5",
            "1.",
            "0.00001",
            "abc",
            "1e3",
            "0,5",
            "--1",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<Price>().is_err(), "{bad:?} must be refused");
        }
        assert!("0.001".parse::<Count>().is_err());
        assert_eq!(
            "0.10000".parse::<Price>().unwrap().units(),
            1000,
            "trailing zeros are exact"
        );
    }

    proptest! {
        #[test]
        fn price_print_parse_round_trip(units in -1_000_000_000_000i64..1_000_000_000_000) {
            let p = Price::from_units(units);
            prop_assert_eq!(p.to_string().parse::<Price>().unwrap(), p);
        }

        #[test]
        fn count_print_parse_round_trip(units in -1_000_000_000_000i64..1_000_000_000_000) {
            let c = Count::from_units(units);
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<Count>(&json).unwrap(), c);
        }

        #[test]
        fn canonical_strings_round_trip(whole in 0u32..100_000, frac in 0u32..10_000) {
            let s = format!("{whole}.{frac:04}");
            prop_assert_eq!(s.parse::<Price>().unwrap().to_string(), s);
        }
    }
}
