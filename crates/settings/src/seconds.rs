//! Durations written as a number of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds at most: about 31 years, far past any sensible setting, and well inside what
/// [`Duration::from_secs_f64`] takes without panicking.
pub const MAX_SECONDS: f64 = 1e9;

/// A duration given as a number of seconds (`10`, `0.25`), finite and below [`MAX_SECONDS`].
/// `ZERO_ALLOWED` says whether `0` is a valid value (it then means "off", as each key documents);
/// use the aliases [`Seconds`] and [`SecondsOrZero`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSeconds<const ZERO_ALLOWED: bool>(Duration);

/// A duration of more than zero seconds: timeouts, intervals, windows.
pub type Seconds = DurationSeconds<false>;
/// A duration of zero or more seconds, where zero turns something off.
pub type SecondsOrZero = DurationSeconds<true>;

impl<const ZERO_ALLOWED: bool> DurationSeconds<ZERO_ALLOWED> {
    /// Whole seconds, for constants and tests. Panics on a zero where zero is not allowed.
    pub const fn from_secs(seconds: u64) -> Self {
        assert!(
            ZERO_ALLOWED || seconds > 0,
            "zero seconds where > 0 is required"
        );
        DurationSeconds(Duration::from_secs(seconds))
    }

    /// Whole milliseconds, for constants and tests. Panics on a zero where zero is not allowed.
    pub const fn from_millis(millis: u64) -> Self {
        assert!(
            ZERO_ALLOWED || millis > 0,
            "zero seconds where > 0 is required"
        );
        DurationSeconds(Duration::from_millis(millis))
    }

    /// Fractional seconds; `Err` holds what the value must be (`"> 0"`).
    pub fn new(seconds: f64) -> Result<Self, &'static str> {
        if !(seconds.is_finite() && seconds < MAX_SECONDS) {
            return Err("a finite number of seconds below 1000000000");
        }
        if seconds < 0.0 {
            return Err(if ZERO_ALLOWED { ">= 0" } else { "> 0" });
        }
        let duration = Duration::from_secs_f64(seconds);
        // Below a nanosecond rounds to zero, which is not "more than zero".
        if duration.is_zero() && !ZERO_ALLOWED {
            return Err("> 0");
        }
        Ok(DurationSeconds(duration))
    }

    /// Fractional seconds, for literals in code and tests. Panics on a value [`new`](Self::new)
    /// refuses, as [`Duration::from_secs_f64`] does.
    pub fn from_secs_f64(seconds: f64) -> Self {
        match Self::new(seconds) {
            Ok(s) => s,
            Err(must) => panic!("{seconds} seconds: must be {must}"),
        }
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl SecondsOrZero {
    /// The duration, or `None` for zero (off).
    pub fn nonzero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

/// Zero: off.
impl Default for SecondsOrZero {
    fn default() -> Self {
        DurationSeconds(Duration::ZERO)
    }
}

impl<const Z: bool> From<DurationSeconds<Z>> for Duration {
    fn from(s: DurationSeconds<Z>) -> Duration {
        s.0
    }
}

/// As written in a config file: `10`, `0.25`.
impl<const Z: bool> fmt::Display for DurationSeconds<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

impl<const Z: bool> fmt::Debug for DurationSeconds<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// Whole seconds as an integer, others as a float, so a config written back reads as the file.
impl<const Z: bool> Serialize for DurationSeconds<Z> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.subsec_nanos() == 0 {
            s.serialize_u64(self.0.as_secs())
        } else {
            s.serialize_f64(self.0.as_secs_f64())
        }
    }
}

impl<'de, const Z: bool> Deserialize<'de> for DurationSeconds<Z> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecondsVisitor::<Z>)
    }
}

struct SecondsVisitor<const Z: bool>;

impl<const Z: bool> SecondsVisitor<Z> {
    fn check<E: de::Error>(v: f64, shown: Unexpected<'_>) -> Result<DurationSeconds<Z>, E> {
        DurationSeconds::new(v).map_err(|must| E::invalid_value(shown, &must))
    }
}

impl<const Z: bool> de::Visitor<'_> for SecondsVisitor<Z> {
    type Value = DurationSeconds<Z>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::check(v as f64, Unexpected::Unsigned(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::check(v as f64, Unexpected::Signed(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Self::check(v, Unexpected::Float(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<const Z: bool>(json: &str) -> Result<DurationSeconds<Z>, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_and_fractional_numbers_are_read_as_durations() {
        assert_eq!(parse::<false>("10").unwrap().get(), Duration::from_secs(10));
        assert_eq!(
            parse::<false>("0.25").unwrap().get(),
            Duration::from_millis(250)
        );
        assert_eq!(parse::<true>("0").unwrap().nonzero(), None);
        assert_eq!(
            parse::<true>("0.005").unwrap().nonzero(),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn out_of_range_values_say_what_they_must_be() {
        let zero = parse::<false>("0").unwrap_err();
        assert!(zero.contains("expected > 0"), "{zero}");
        let negative = parse::<true>("-1").unwrap_err();
        assert!(negative.contains("expected >= 0"), "{negative}");
        let huge = parse::<false>("1e12").unwrap_err();
        assert!(huge.contains("below 1000000000"), "{huge}");
        let tiny = parse::<false>("1e-12").unwrap_err();
        assert!(tiny.contains("expected > 0"), "{tiny}");
        let text = parse::<false>("\"10s\"").unwrap_err();
        assert!(text.contains("expected a number of seconds"), "{text}");
        assert!(Seconds::new(f64::NAN).is_err() && Seconds::new(f64::INFINITY).is_err());
    }

    #[test]
    fn serialized_as_written() {
        let json = |s: Seconds| serde_json::to_string(&s).unwrap();
        assert_eq!(json(Seconds::from_secs(30)), "30");
        assert_eq!(json(Seconds::from_secs_f64(0.5)), "0.5");
        assert_eq!(Seconds::from_secs_f64(2.5).to_string(), "2.5");
    }

    #[test]
    #[should_panic(expected = "must be > 0")]
    fn a_zero_literal_where_zero_is_invalid_panics() {
        Seconds::from_secs_f64(0.0);
    }
}
