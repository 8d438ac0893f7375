//! What the owner wants, keyed by stable [`SubId`]s; it outlives connections.

use std::collections::{BTreeMap, BTreeSet};

use protocol::Channel;

use super::Markets;
use crate::event::SubId;

#[derive(Debug)]
struct Want {
    channel: Channel,
    markets: Markets,
}

/// What the owner wants. Guarded by a mutex in [`crate::Upstream`]; every access is short.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    next_id: u64,
    subs: BTreeMap<SubId, Want>,
    /// Markets the owner asked fresh snapshots for; drained by the session when connected.
    pub snapshot_requests: BTreeSet<String>,
}

impl Desired {
    pub fn subscribe(&mut self, channel: Channel, markets: Option<Vec<String>>) -> SubId {
        self.next_id += 1;
        let id = SubId(self.next_id);
        let markets = markets.map(|m| m.into_iter().collect());
        self.subs.insert(id, Want { channel, markets });
        id
    }

    pub fn unsubscribe(&mut self, id: SubId) {
        self.subs.remove(&id);
    }

    /// Adds markets to a filtered subscription (a subscription to every market ignores it).
    pub fn add_markets(&mut self, id: SubId, markets: Vec<String>) {
        if let Some(Want {
            markets: Some(set), ..
        }) = self.subs.get_mut(&id)
        {
            set.extend(markets);
        }
    }

    pub fn remove_markets(&mut self, id: SubId, markets: Vec<String>) {
        if let Some(Want {
            markets: Some(set), ..
        }) = self.subs.get_mut(&id)
        {
            for m in &markets {
                set.remove(m);
            }
        }
    }

    /// The merged wish per channel. A channel whose subscriptions name no market is not wanted.
    pub fn wanted(&self) -> BTreeMap<Channel, Markets> {
        let mut out: BTreeMap<Channel, Markets> = BTreeMap::new();
        for want in self.subs.values() {
            match &want.markets {
                None => {
                    out.insert(want.channel, None);
                }
                Some(set) if set.is_empty() => {}
                Some(set) => {
                    if let Some(all) = out
                        .entry(want.channel)
                        .or_insert_with(|| Some(BTreeSet::new()))
                    {
                        all.extend(set.iter().cloned());
                    }
                }
            }
        }
        out
    }
}
