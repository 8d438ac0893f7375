//! Cluster mode on Redis: several relays, one exchange session.
//!
//! One node at a time holds the **lease** and with it the upstream session; every node serves
//! its clients from the same **event stream**. What lives in Redis, and why:
//!
//! - **The lease** ([`Store::acquire`], [`Store::renew`], [`Store::release`]): a key holding
//!   `"epoch node"`, set only if absent, with an expiry; each acquisition takes a new **fencing
//!   epoch** (`INCR`). Renewal is compare-and-extend, release compare-and-delete.
//! - **The stream** ([`Store::append`], [`Store::read`]): every upstream event, in exchange
//!   order, each entry numbered (`n`, consecutive: a reader sees any gap) and tagged with its
//!   writer's epoch. The append script refuses a writer that no longer holds the lease
//!   ([`Error::Fenced`]): a leader that was paused past its lease cannot write.
//! - **Stored books** ([`Store::refresh`], [`Store::load`]): per market the latest snapshot with
//!   the stream position it stands at, so a node that starts (or loses its place) loads them and
//!   reads the stream from there, never a delta before its snapshot.
//! - **Wanted topics** ([`Store::publish_wanted`], [`Store::union`]): each node's topics in a set
//!   that expires unless refreshed; the leader subscribes the union of live nodes' sets. The
//!   control stream ([`Store::send_control`]) wakes it at once on a change.
//!
//! Layout: [`config`] (`[cluster]`), [`codec`] (events as stream entries), [`testing`] (a real
//! `redis-server` for tests), `store` (every Redis operation; the Lua scripts are in
//! `src/scripts/`), `conn` (a connection replaced when a reply times out, so a silent link is
//! left for a fresh one).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cluster::Error> {
//! use std::time::Duration;
//! let store = cluster::Store::open("redis://127.0.0.1:6379", Duration::from_secs(1))?;
//! if let cluster::Acquire::Taken(token) = store.acquire("node-a", Duration::from_secs(5)).await? {
//!     let state = upstream::Event::State(upstream::State::Connecting);
//!     store.append(&token, 100_000, &[cluster::codec::encode(&state, cluster::codec::unix_us())]).await?;
//!     store.release(&token).await?;
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
mod conn;
mod store;
pub mod testing;

pub use codec::Record;
pub use config::ClusterConfig;
pub use store::{Acquire, Control, Loaded, Position, Store, StoredBook, Token};

/// What a cluster operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis is unreachable, timed out, or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The lease is no longer held with this token: nothing was written.
    #[error("fenced: the lease is held by another epoch")]
    Fenced,
    /// An entry or stored value that does not decode.
    #[error("undecodable: {0}")]
    Decode(String),
}
