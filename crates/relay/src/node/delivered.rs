//! The fills this node has taken from the stream, by trade id: a fill is delivered to the node's
//! clients once, however often leaders publish it (a successor's backfill that reaches back over
//! fills the stream already carried, or carried before Redis restarted empty). A new leader also
//! leaves them out of its own backfill.
//!
//! Kept across reloads and loss notices (unlike the resume history, which a loss resets): a
//! fill delivered before a loss is still delivered.

use std::collections::{HashSet, VecDeque};

/// Trade ids remembered; a backfill window holds far fewer fills.
pub const CAPACITY: usize = 16_384;

#[derive(Default)]
pub struct Delivered {
    /// Oldest first, for eviction.
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Delivered {
    /// Notes `trade_id`; false if it was already delivered.
    pub fn first_time(&mut self, trade_id: &str) -> bool {
        if self.ids.contains(trade_id) {
            return false;
        }
        if self.order.len() == CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(trade_id.to_owned());
        self.ids.insert(trade_id.to_owned());
        true
    }

    /// Every trade id remembered, oldest first.
    pub fn trade_ids(&self) -> Vec<String> {
        self.order.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_delivered_once_until_it_is_evicted() {
        let mut d = Delivered::default();
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        for i in 0..CAPACITY {
            assert!(d.first_time(&i.to_string()));
        }
        assert_eq!(d.trade_ids().len(), CAPACITY);
        assert!(d.first_time("a"), "evicted, the oldest is new again");
    }
}
