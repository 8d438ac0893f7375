//! The one shape of a configuration problem.

use std::fmt;

/// One bad setting: `key = value: reason (origin)`, e.g.
/// `downstream.pong_timeout_seconds = 0: must be > 0 (from RELAY__DOWNSTREAM__PONG_TIMEOUT_SECONDS)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`security.tokens[0].sha256`), or what the problem is about when it is no
    /// single key (a file, a flag, a section).
    pub key: String,
    /// The bad value as written: strings quoted, secrets `<redacted>`. `None` when there is no
    /// single value (a missing or unknown key) or the reason shows it.
    pub value: Option<String>,
    /// What is wrong, or what the value must be: `must be > 0`.
    pub reason: String,
    /// Where the value came from (`from RELAY__UPSTREAM__URL`, `in configs/relay.toml`), when the
    /// loader knows.
    pub origin: Option<String>,
}

impl Problem {
    /// A bad value.
    pub fn new(
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Problem {
            key: key.into(),
            value: Some(value.to_string()),
            reason: reason.into(),
            origin: None,
        }
    }

    /// A problem with no single value to show.
    pub fn about(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            value: None,
            reason: reason.into(),
            origin: None,
        }
    }

    /// A serde error at `key`. serde's `invalid value: integer `0`, expected > 0` (from
    /// [`Seconds`](crate::Seconds) and the `NonZero*` types) becomes `key = 0: must be > 0`;
    /// any other message is kept as it is.
    pub fn from_serde(key: impl Into<String>, message: &str) -> Self {
        let message = message.trim();
        let parsed = message
            .strip_prefix("invalid value: ")
            .and_then(|rest| rest.split_once(", expected "))
            .and_then(|(shown, expected)| Some((shown.split('`').nth(1)?, expected)));
        match parsed {
            Some((value, expected)) => {
                let must = if expected.starts_with("a nonzero") {
                    "> 0"
                } else {
                    expected
                };
                Problem::new(key, value, format!("must be {must}"))
            }
            None => Problem::about(key, message),
        }
    }

    /// The same problem, saying where the value came from.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        if let Some(value) = &self.value {
            write!(f, " = {value}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        Ok(())
    }
}

/// Every problem a configuration has, reported together. Displayed as `invalid configuration:`
/// and one indented line each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Problems(Vec::new())
    }

    pub fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    /// Adds a bad value: `key = value: reason`.
    pub fn add(
        &mut self,
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.0.push(Problem::new(key, value, reason));
    }

    /// Adds `key = value: must be > 0` unless `value` is a finite number above zero.
    pub fn positive(&mut self, key: impl Into<String>, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.add(key, value, "must be > 0");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    /// `Ok(value)` when there is no problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Problems> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl Extend<Problem> for Problems {
    fn extend<I: IntoIterator<Item = Problem>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Self {
        Problems(vec![problem])
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_key_value_reason_and_origin() {
        let p = Problem::new("fanout.queue_bytes", 0, "must be > 0").with_origin("in relay.toml");
        assert_eq!(
            p.to_string(),
            "fanout.queue_bytes = 0: must be > 0 (in relay.toml)"
        );
        let p = Problem::about("downstream.ping_interval_secs", "unknown field");
        assert_eq!(
            p.to_string(),
            "downstream.ping_interval_secs: unknown field"
        );
    }

    #[test]
    fn serde_range_errors_read_like_validation_problems() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct C {
            n: std::num::NonZeroU32,
            s: crate::Seconds,
        }
        let message = |json| serde_json::from_str::<C>(json).unwrap_err().to_string();
        let p = Problem::from_serde("n", &message(r#"{"n":0,"s":1}"#));
        assert_eq!(p.value.as_deref(), Some("0"));
        assert!(p.to_string().starts_with("n = 0: must be > 0"), "{p}");
        let p = Problem::from_serde("s", &message(r#"{"n":1,"s":-2}"#));
        assert!(p.to_string().starts_with("s = -2: must be > 0"), "{p}");
        let p = Problem::from_serde("s", &message(r#"{"n":1,"s":"x"}"#));
        assert_eq!(p.value, None);
        assert!(p.reason.starts_with("invalid type: string \"x\""), "{p}");
    }

    #[test]
    fn every_problem_is_listed() {
        let mut all = Problems::new();
        all.positive("a", 1.0);
        assert!(all.clone().into_result(()).is_ok());
        all.positive("b", 0.0);
        all.positive("c", f64::NAN);
        assert_eq!(
            all.to_string(),
            "invalid configuration:\n  b = 0: must be > 0\n  c = NaN: must be > 0\n"
        );
    }
}
