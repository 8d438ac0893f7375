//! Sequence tracking per subscription id: in order, duplicate, or gap.

use std::collections::{BTreeSet, HashMap};

/// What one message's `seq` says about the stream of its sid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next one (or the first seen on this sid): apply it.
    InOrder,
    /// Already seen (`seq <= last`): drop it.
    Duplicate,
    /// Messages were lost between `expected` and `got`. The message itself must be dropped and
    /// `stale_markets` (every market of the sid: the lost message could have been for any of them)
    /// re-synced from a snapshot. The tracker continues from `got`.
    Gap {
        sid: u64,
        expected: u64,
        got: u64,
        stale_markets: Vec<String>,
    },
}

#[derive(Debug, Default)]
struct SidState {
    last: Option<u64>,
    markets: BTreeSet<String>,
}

/// Last seen `seq` and the markets of every sid of one connection. Reset on reconnect.
#[derive(Debug, Default)]
pub struct SeqTracker {
    sids: HashMap<u64, SidState>,
}

impl SeqTracker {
    pub fn new() -> SeqTracker {
        SeqTracker::default()
    }

    /// Checks `seq` on `sid` and advances the sid past it unless it was a duplicate.
    pub fn observe(&mut self, sid: u64, seq: u64) -> SeqCheck {
        let state = self.sids.entry(sid).or_default();
        match state.last {
            Some(last) if seq <= last => SeqCheck::Duplicate,
            Some(last) if seq != last + 1 => {
                state.last = Some(seq);
                SeqCheck::Gap {
                    sid,
                    expected: last + 1,
                    got: seq,
                    stale_markets: state.markets.iter().cloned().collect(),
                }
            }
            _ => {
                state.last = Some(seq);
                SeqCheck::InOrder
            }
        }
    }

    /// The last seq seen on `sid`.
    pub fn last(&self, sid: u64) -> Option<u64> {
        self.sids.get(&sid).and_then(|s| s.last)
    }

    /// Records that `sid` carries `markets` (in addition to those it had).
    pub fn add_markets<I: IntoIterator<Item = String>>(&mut self, sid: u64, markets: I) {
        self.sids.entry(sid).or_default().markets.extend(markets);
    }

    pub fn remove_markets<'a, I: IntoIterator<Item = &'a String>>(&mut self, sid: u64, markets: I) {
        if let Some(state) = self.sids.get_mut(&sid) {
            for m in markets {
                state.markets.remove(m);
            }
        }
    }

    /// The markets recorded for `sid`.
    pub fn markets(&self, sid: u64) -> impl Iterator<Item = &String> {
        self.sids
            .get(&sid)
            .into_iter()
            .flat_map(|s| s.markets.iter())
    }

    /// Forgets one sid (unsubscribed or dead).
    pub fn remove(&mut self, sid: u64) {
        self.sids.remove(&sid);
    }

    /// Forgets everything (after a reconnect every sid is new).
    pub fn clear(&mut self) {
        self.sids.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicate_and_gap() {
        let mut t = SeqTracker::new();
        t.add_markets(2, ["B".to_owned(), "A".to_owned()]);
        assert_eq!(t.observe(2, 1), SeqCheck::InOrder);
        assert_eq!(t.observe(2, 2), SeqCheck::InOrder);
        assert_eq!(t.observe(2, 2), SeqCheck::Duplicate);
        assert_eq!(t.observe(2, 1), SeqCheck::Duplicate);
        assert_eq!(
            t.observe(2, 5),
            SeqCheck::Gap {
                sid: 2,
                expected: 3,
                got: 5,
                stale_markets: vec!["A".into(), "B".into()]
            }
        );
        assert_eq!(
            t.observe(2, 6),
            SeqCheck::InOrder,
            "the tracker continues after a gap"
        );
        assert_eq!(
            t.observe(7, 40),
            SeqCheck::InOrder,
            "other sids are independent"
        );
        t.clear();
        assert_eq!(t.last(2), None);
    }
}
