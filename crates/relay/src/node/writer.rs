//! The leader's two loops: upstream events into the stream, and the union of wanted topics into
//! upstream subscriptions.
//!
//! The writer keeps the books it writes, and once a second stores those that changed, valid
//! through the last entry written, so a late joiner never starts from a book older than that.
//! A book that stops being valid (stale, or a delta that does not fit) is dropped from the store
//! in the same script that writes the entry saying so.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cluster::codec::{encode, unix_us};
use cluster::{Control, Error, Position, Token};
use protocol::{Channel, OrderBook};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use upstream::{BookUpdate, Event, State, Upstream};

use super::{parse_topic, topic_key, Ctx};
use crate::feed::{self, ChannelSubs};

/// How a leader's term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Fenced off or not renewed: nothing more may be written.
    Lost,
    /// The relay is stopping: hand off.
    Shutdown,
}

/// Events per append script call, at most.
const BATCH: usize = 256;
/// Stored books are brought forward this often.
const REFRESH: Duration = Duration::from_secs(1);
/// A failed append is retried this often while the lease lasts.
const RETRY: Duration = Duration::from_millis(50);

pub async fn run(
    ctx: Arc<Ctx>,
    token: Token,
    mut events: mpsc::Receiver<Event>,
    upstream: Upstream,
    subscribed: Subscribed,
    stop: CancellationToken,
) -> Ending {
    let max = ctx.config.stream_max_entries;
    let (released_tx, mut released) = mpsc::unbounded_channel();
    let union = tokio::spawn(follow_union(
        ctx.clone(),
        upstream.clone(),
        subscribed,
        released_tx,
    ));
    let _union = AbortOnDrop(union);
    // The old session's books are gone with it.
    let old = match ctx.store.take_over(&token).await {
        Ok(markets) => markets,
        Err(e) => {
            warn!(error = %e, "takeover not written");
            return Ending::Lost;
        }
    };
    let mut batch = vec![Event::State(State::Connecting)];
    if !old.is_empty() {
        batch.push(Event::BookStale { markets: old });
    }
    // A successor without backfill cannot know what the private channels missed meanwhile.
    if token.epoch > 1 && !ctx.upstream.backfill {
        batch.extend(
            Channel::ALL
                .into_iter()
                .filter(|c| c.is_private())
                .map(|channel| Event::MessagesLost { channel }),
        );
    }
    let mut books: HashMap<String, OrderBook> = HashMap::new();
    let mut dirty: HashSet<String> = HashSet::new();
    let mut last: Option<Position> = None;
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.reset();
    loop {
        if !batch.is_empty() {
            match append(&ctx, &token, max, &batch, &stop).await {
                Ok(position) => last = Some(position),
                Err(Error::Fenced) => return Ending::Lost,
                Err(_) => return Ending::Lost,
            }
            let mut follow_up = Vec::new();
            for event in batch.drain(..) {
                track(&mut books, &mut dirty, &event, &upstream, &mut follow_up);
            }
            batch = follow_up;
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ending::Lost,
            Some(markets) = released.recv() => {
                batch.push(Event::BookStale { markets });
            }
            event = events.recv() => match event {
                Some(event) => {
                    batch.push(event);
                    while batch.len() < BATCH {
                        match events.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => break,
                        }
                    }
                }
                // The session closed (handoff): everything it said is written.
                None => return Ending::Shutdown,
            },
            _ = refresh.tick(), if !dirty.is_empty() => {
                let Some(at) = &last else { continue };
                let changed: Vec<(String, Vec<u8>)> = dirty
                    .drain()
                    .filter_map(|m| books.get(&m).map(|b| (m, b.to_snapshot())))
                    .filter_map(|(m, snap)| serde_json::to_vec(&snap).ok().map(|b| (m, b)))
                    .collect();
                match ctx.store.refresh(&token, at, &changed).await {
                    Ok(()) => {}
                    Err(Error::Fenced) => return Ending::Lost,
                    Err(e) => {
                        debug!(error = %e, "books not refreshed; next time");
                        dirty.extend(changed.into_iter().map(|(m, _)| m));
                    }
                }
            }
        }
    }
}

/// Appends, retrying a failure while the lease may still be ours (the leader's watchdog stops
/// this task when it is not).
async fn append(
    ctx: &Ctx,
    token: &Token,
    max: u64,
    batch: &[Event],
    stop: &CancellationToken,
) -> Result<Position, Error> {
    let at = unix_us();
    let encoded: Vec<_> = batch.iter().map(|e| encode(e, at)).collect();
    loop {
        match ctx.store.append(token, max, &encoded).await {
            Err(Error::Redis(e)) if !stop.is_cancelled() => {
                debug!(error = %e, "append failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
            other => return other,
        }
    }
}

/// Keeps the writer's books as the stream has them. A delta that does not fit drops the book
/// (announced stale, which also drops it from the store) and asks the exchange for a fresh one.
fn track(
    books: &mut HashMap<String, OrderBook>,
    dirty: &mut HashSet<String>,
    event: &Event,
    upstream: &Upstream,
    follow_up: &mut Vec<Event>,
) {
    match event {
        Event::Data(data) => {
            let Some(m) = data.market.as_deref() else {
                return;
            };
            match &data.book {
                Some(BookUpdate::Snapshot(snap)) => {
                    let mut book = OrderBook::new(m);
                    if book.apply_snapshot(snap).is_ok() {
                        books.insert(m.to_owned(), book);
                    }
                    // Stored by the append script itself, at this entry.
                    dirty.remove(m);
                }
                Some(BookUpdate::Delta(delta)) => {
                    if let Some(book) = books.get_mut(m) {
                        if book.apply_delta(delta).is_ok() {
                            dirty.insert(m.to_owned());
                        } else {
                            books.remove(m);
                            dirty.remove(m);
                            follow_up.push(Event::BookStale {
                                markets: vec![m.to_owned()],
                            });
                            upstream.request_snapshot(vec![m.to_owned()]);
                        }
                    }
                }
                None => {}
            }
        }
        Event::BookStale { markets } => {
            for m in markets {
                books.remove(m);
                dirty.remove(m);
            }
        }
        _ => {}
    }
}

/// The upstream subscriptions a leader holds for the union of every live node's wanted topics.
#[derive(Default)]
pub struct Subscribed {
    channels: HashMap<Channel, ChannelSubs>,
    applied: BTreeSet<String>,
}

impl Subscribed {
    /// Brings the upstream subscriptions to `union`; returns the books no longer subscribed.
    pub fn apply(&mut self, upstream: &Upstream, union: BTreeSet<String>) -> Vec<String> {
        let mut gone = Vec::new();
        for key in self.applied.difference(&union) {
            let Some(topic) = parse_topic(key) else {
                continue;
            };
            if let (Channel::OrderbookDelta, Some(m)) = (topic.channel, &topic.market) {
                gone.push(m.to_string());
            }
            feed::apply(
                upstream,
                &mut self.channels,
                fanout::TopicChange::Unwanted(topic),
            );
        }
        for key in union.difference(&self.applied) {
            if let Some(topic) = parse_topic(key) {
                feed::apply(
                    upstream,
                    &mut self.channels,
                    fanout::TopicChange::Wanted(topic),
                );
            }
        }
        self.applied = union
            .into_iter()
            .filter(|k| parse_topic(k).is_some_and(|t| topic_key(&t) == *k))
            .collect();
        gone
    }
}

/// Keeps the upstream subscriptions equal to the union of every live node's wanted topics, and
/// passes snapshot requests on. Books no longer subscribed go to `released` (announced stale).
async fn follow_union(
    ctx: Arc<Ctx>,
    upstream: Upstream,
    mut subscribed: Subscribed,
    released: mpsc::UnboundedSender<Vec<String>>,
) {
    let mut after = loop {
        match ctx.store.control_head().await {
            Ok(head) => break head,
            Err(_) => tokio::time::sleep(super::backoff(1)).await,
        }
    };
    loop {
        if let Ok(union) = ctx.store.union().await {
            let gone = subscribed.apply(&upstream, union);
            if !gone.is_empty() {
                let _ = released.send(gone);
            }
        }
        match ctx.store.read_control(&after).await {
            Ok((controls, next)) => {
                after = next;
                for control in controls {
                    if let Control::Snapshot(markets) = control {
                        upstream.request_snapshot(markets);
                    }
                }
            }
            Err(_) => tokio::time::sleep(super::backoff(1)).await,
        }
    }
}

/// Aborts the task when the writer ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
