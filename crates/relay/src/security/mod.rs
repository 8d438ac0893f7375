//! Who may connect and how much they may do: client tokens, Origin checks, connection caps and
//! rate limits. Everything here is decided before or right after the upgrade, through one
//! [`Gate`]; where a handshake carries its token is the HTTP side's business
//! (`http::presented_token`).
//!
//! - Tokens are stored as SHA-256 hashes and compared in constant time; a token's value is never
//!   kept or logged. A token carries a permission: `public` channels only, or `private` too.
//! - Anonymous clients exist only when the configuration says so, or implicitly on a loopback
//!   address with no tokens configured (a developer's own machine). On any other address with no
//!   tokens and no explicit setting the relay refuses to start.
//! - Browser `Origin`s must match the allow-list (`https://*.example.com` wildcards); requests with
//!   no `Origin` (bots) are allowed unless configured otherwise.
//! - Admission: a global and a per-IP cap on open connections and a token bucket on new ones;
//!   over any of them the upgrade gets HTTP 503 with `Retry-After`.
//!
//! Layout: `config` (the `[security]` section and its validation), `tokens` (hashing, lookup,
//! permissions), `origin` (allow-list patterns), `bucket` (the token bucket behind every rate),
//! `admission` (the [`Gate`] and the per-connection [`Admission`] guard).

mod admission;
mod bucket;
mod config;
mod origin;
mod tokens;

pub use admission::{Admission, Gate, Refusal};
pub use bucket::TokenBucket;
pub use config::{SecurityConfig, TlsConfig, TokenConfig};
pub use tokens::{hash_token, Identity, Permission};
