//! Which topics have subscribers, and the stream of wanted/unwanted changes the relay turns into
//! upstream subscribe / add_markets / remove_markets calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::item::Topic;
use crate::metrics::Metrics;

/// A change in what the upstream subscription must cover.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TopicChange {
    /// A topic gained its first subscriber (or was re-wanted after its linger expired).
    Wanted(Topic),
    /// A topic has had no subscriber for the whole linger delay.
    Unwanted(Topic),
}

pub(crate) struct RegistryShared {
    linger: Duration,
    /// Subscriber counts and the watcher's bookkeeping. Short critical sections, no `.await` held.
    state: Mutex<RegistryState>,
    /// Wakes the (single) [`RegistryEvents`] watcher after a change. `notify_one` keeps a permit
    /// when the watcher is not parked, so a change between its check and its wait is not lost.
    notify: Notify,
}

#[derive(Default)]
struct RegistryState {
    counts: HashMap<Topic, usize>,
    /// Topics whose count fell to zero, with the instant their linger ends.
    lingering: HashMap<Topic, Instant>,
    /// Topics whose count rose from zero since the watcher last looked.
    rising: HashSet<Topic>,
    /// What the watcher has announced as wanted (and not yet as unwanted).
    announced: HashSet<Topic>,
}

impl RegistryShared {
    pub(crate) fn new(linger: Duration) -> RegistryShared {
        RegistryShared {
            linger,
            state: Mutex::default(),
            notify: Notify::new(),
        }
    }

    pub(crate) fn add(&self, topic: &Topic, metrics: &Metrics) {
        let mut s = self.state.lock();
        let count = s.counts.entry(topic.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            metrics.topics.increment(1.0);
            s.lingering.remove(topic);
            if !s.announced.contains(topic) {
                s.rising.insert(topic.clone());
                drop(s);
                self.notify.notify_one();
            }
        }
    }

    pub(crate) fn remove(&self, topic: &Topic, metrics: &Metrics) {
        let mut s = self.state.lock();
        let Some(count) = s.counts.get_mut(topic) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            s.counts.remove(topic);
            metrics.topics.decrement(1.0);
            s.rising.remove(topic);
            if s.announced.contains(topic) {
                s.lingering
                    .insert(topic.clone(), Instant::now() + self.linger);
                drop(s);
                self.notify.notify_one();
            }
        }
    }

    pub(crate) fn topics(&self) -> Vec<(Topic, usize)> {
        let s = self.state.lock();
        let mut v: Vec<_> = s.counts.iter().map(|(t, c)| (t.clone(), *c)).collect();
        v.sort();
        v
    }
}

/// The stream of [`TopicChange`]s. There is one per fanout (returned by [`crate::new`]); the relay
/// drives it from one task (in a `select!` with its shutdown).
pub struct RegistryEvents {
    shared: Arc<RegistryShared>,
}

impl RegistryEvents {
    pub(crate) fn new(shared: Arc<RegistryShared>) -> RegistryEvents {
        RegistryEvents { shared }
    }

    /// Waits for the next changes and returns them all (sorted, never empty): topics that gained a
    /// first subscriber, and topics whose linger delay ended without a subscriber coming back.
    /// A topic dropped and re-wanted within the linger produces nothing. Uses tokio time, so
    /// paused-clock tests can drive the linger. Cancel-safe.
    pub async fn next(&mut self) -> Vec<TopicChange> {
        loop {
            let deadline = {
                let mut s = self.shared.state.lock();
                let now = Instant::now();
                let mut changes = Vec::new();
                let rising: Vec<Topic> = s.rising.drain().collect();
                for topic in rising {
                    if s.announced.insert(topic.clone()) {
                        changes.push(TopicChange::Wanted(topic));
                    }
                }
                let expired: Vec<Topic> = s
                    .lingering
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(t, _)| t.clone())
                    .collect();
                for topic in expired {
                    s.lingering.remove(&topic);
                    if s.announced.remove(&topic) {
                        changes.push(TopicChange::Unwanted(topic));
                    }
                }
                if !changes.is_empty() {
                    changes.sort();
                    return changes;
                }
                s.lingering.values().min().copied()
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = self.shared.notify.notified() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => self.shared.notify.notified().await,
            }
        }
    }
}
