//! Subscriptions as desired state.
//!
//! [`Desired`] is what the owner wants, keyed by stable [`SubId`](crate::SubId)s; it outlives
//! connections. [`Actual`] is what one connection holds at the exchange: sids, the markets each
//! carries, the commands in flight. [`Actual::reconcile`] turns the difference into as few
//! commands as it can: one sid per channel (owner subscriptions of a channel are merged), markets
//! moved with `update_subscription`, and more sids only when the exchange answers error 26
//! (market limit). What an error reply means is one table ([`policy`]).

mod actual;
mod desired;
mod policy;

use std::collections::BTreeSet;

pub(crate) use actual::{Actual, Outcome};
pub(crate) use desired::Desired;

/// Markets wanted on one channel: `None` means every market (channels that allow no filter).
pub(crate) type Markets = Option<BTreeSet<String>>;

/// A subscription id given by the exchange, valid on one connection only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Sid(pub u64);

impl std::fmt::Display for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
