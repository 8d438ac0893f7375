//! Configuration building blocks shared by every crate of the workspace, so that all of them read
//! and report their settings the same way.
//!
//! - [`Seconds`] and [`SecondsOrZero`]: every duration key is `<name>_seconds`, a number that may
//!   be fractional (`0.25`), read straight into a [`Duration`](std::time::Duration). A value that
//!   is not a finite number of seconds in range is refused while parsing, naming the key.
//!   Counts where zero is invalid use the standard `NonZero*` types.
//! - [`Problem`] and [`Problems`]: what validation reports, each naming the dotted key and the
//!   bad value, all at once: `upstream.url = "http://x": must be a ws:// or wss:// URL`.
//!   [`Problem::from_serde`] turns a parse error into the same shape.
//! - [`Renamed`] and [`rename_keys`]: a key that got a new name keeps working under the old one,
//!   its value converted, with a note that names the new key.
//!
//! ```
//! use std::time::Duration;
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct Config {
//!     ping_interval_seconds: settings::Seconds,
//! }
//!
//! let c: Config = serde_json::from_str(r#"{"ping_interval_seconds": 0.25}"#).unwrap();
//! assert_eq!(c.ping_interval_seconds.get(), Duration::from_millis(250));
//!
//! let err = serde_json::from_str::<Config>(r#"{"ping_interval_seconds": 0}"#).unwrap_err();
//! let problem = settings::Problem::from_serde("ping_interval_seconds", &err.to_string());
//! assert!(problem.to_string().starts_with("ping_interval_seconds = 0: must be > 0"));
//! ```
#![forbid(unsafe_code)]

mod problem;
mod renamed;
mod seconds;

pub use problem::{Problem, Problems};
pub use renamed::{rename_keys, Moved, Renamed};
pub use seconds::{DurationSeconds, Seconds, SecondsOrZero, MAX_SECONDS};
