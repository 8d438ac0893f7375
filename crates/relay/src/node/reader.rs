//! The Redis event stream into this node's feed, as if it came from an upstream session.
//!
//! Start (and whenever the node loses its place): load the stored books and the upstream state
//! atomically, publish them, then read the stream from the position the books stand at, skipping
//! what they already contain. A gap in the entry numbers (the node fell behind the trimmed tail,
//! or Redis restarted empty) means a reload, and a loss notice on the private channels, which
//! nothing can replay. While Redis is unreachable the node tells its clients the feed is down
//! (`stream_error`), marks its books stale, and retries with backoff until Redis returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cluster::{Loaded, Position, Record};
use protocol::{Channel, MessageType};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use upstream::{BookUpdate, Data, DisconnectReason, Event, State};

use super::{Ctx, STREAM_LAG_ENTRIES, STREAM_LAG_SECONDS};

/// Entries per read.
const BATCH: usize = 512;

/// Where the reader stands.
struct Place {
    /// The last entry applied (or skipped as already contained).
    mark: Mark,
    /// Book entries of each market up to this number are in its loaded book.
    books_at: HashMap<String, u64>,
    /// Other entries up to this number were before this node's time.
    skip_upto: u64,
}

/// An entry of the stream, in the generation of the data it was read from.
#[derive(Debug)]
struct Mark {
    at: Position,
    generation: String,
}

/// What the reader does next.
enum Next {
    /// Load the stored books; where this node stood before, if anywhere.
    Load(Option<Mark>),
    Follow(Place),
}

pub async fn run(ctx: Arc<Ctx>, events: mpsc::Sender<Event>) {
    let shutdown = ctx.shutdown.clone();
    let mut next = Next::Load(None);
    // Markets whose books this node has had from the stream: stale on an outage.
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut failures: u32 = 0;
    loop {
        let step = async {
            match next {
                Next::Load(last) => load(&ctx, last, &mut known, &events).await,
                Next::Follow(place) => follow(&ctx, place, &mut known, &events).await,
            }
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = step => outcome,
        };
        match outcome {
            Ok(Some(place)) => {
                if failures > 0 {
                    info!("redis is back; the node follows the stream again");
                }
                failures = 0;
                ctx.status.redis_ok();
                next = Next::Follow(place);
            }
            // The feed is gone: the relay is stopping.
            Ok(None) => return,
            Err((e, last)) => {
                if failures == 0 {
                    warn!(error = %e, "redis unavailable; clients are told the feed is down");
                    ctx.status.redis_failed(&e);
                    let down = [
                        Event::State(State::Disconnected {
                            reason: DisconnectReason::StreamError,
                        }),
                        Event::BookStale {
                            markets: known.iter().cloned().collect(),
                        },
                    ];
                    for event in down {
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                } else {
                    debug!(error = %e, failures, "redis still unavailable");
                }
                failures += 1;
                // Back with a reload: the books went stale meanwhile.
                next = Next::Load(last);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = tokio::time::sleep(super::backoff(failures)) => {}
                }
            }
        }
    }
}

type StepResult = Result<Option<Place>, (cluster::Error, Option<Mark>)>;

/// Loads the stored books and state and publishes them; `last` is where this node stood before
/// (to tell whether it missed anything).
async fn load(
    ctx: &Ctx,
    last: Option<Mark>,
    known: &mut BTreeSet<String>,
    events: &mpsc::Sender<Event>,
) -> StepResult {
    let probe = last.as_ref().map(|mark| mark.at.id.as_str());
    let loaded: Loaded = match ctx.store.load(probe).await {
        Ok(l) => l,
        Err(e) => return Err((e, last)),
    };
    let contiguous = last.as_ref().is_none_or(|mark| contiguous(mark, &loaded));
    let last = last.map(|mark| mark.at);
    let mut out = Vec::new();
    if let Some(state) = loaded.state.clone() {
        out.push(Event::State(state));
    }
    let gone: Vec<String> = known
        .iter()
        .filter(|m| !loaded.books.contains_key(*m))
        .cloned()
        .collect();
    if !gone.is_empty() {
        out.push(Event::BookStale { markets: gone });
    }
    let mut books_at = HashMap::new();
    for (market, book) in &loaded.books {
        let snapshot = match serde_json::from_slice(&book.body) {
            Ok(s) => s,
            Err(e) => {
                warn!(%market, error = %e, "stored book does not decode; left stale");
                continue;
            }
        };
        books_at.insert(market.clone(), loaded.book_at(market).unwrap_or(0));
        known.insert(market.clone());
        out.push(Event::Data(Data {
            channel: Channel::OrderbookDelta,
            kind: MessageType::OrderbookSnapshot,
            market: Some(market.clone()),
            seq: None,
            body: Bytes::from(book.body.clone()),
            book: Some(BookUpdate::Snapshot(snapshot)),
            received_at: Instant::now(),
        }));
    }
    let skip_upto = match &last {
        Some(p) if contiguous => p.seq,
        Some(_) => {
            warn!("the node missed stream entries (trimmed, or redis restarted): private messages may be lost");
            for channel in Channel::ALL.into_iter().filter(|c| c.is_private()) {
                out.push(Event::MessagesLost { channel });
            }
            loaded.head.seq
        }
        None => loaded.head.seq,
    };
    for event in out {
        if events.send(event).await.is_err() {
            return Ok(None);
        }
    }
    // Where the books can be brought forward from; but a node that kept its place reads on from
    // there, even when the books have moved past it meanwhile: the entries in between that are
    // not in the books (fills, notices) would otherwise never be delivered.
    let start = match &last {
        Some(p) if contiguous && p.seq < loaded.start().seq => p.clone(),
        _ => loaded.start(),
    };
    debug!(
        books = books_at.len(),
        from = start.seq,
        head = loaded.head.seq,
        "loaded the stored books"
    );
    Ok(Some(Place {
        mark: Mark {
            at: start,
            generation: loaded.generation,
        },
        books_at,
        skip_upto,
    }))
}

/// Whether a node that stood at `mark` can still read everything that followed it.
fn contiguous(mark: &Mark, loaded: &Loaded) -> bool {
    // Redis started empty since (once or more): what followed the mark went with the old data,
    // even when the new stream looks like a continuation.
    if mark.generation != loaded.generation {
        return false;
    }
    if mark.at.seq == 0 {
        // The start of a stream has no entry to find: the stream must be empty or still begin
        // with entry 1 (nothing trimmed before the node read any).
        loaded.first_seq <= 1
    } else {
        loaded.probe_seq == Some(mark.at.seq)
    }
}

/// Reads one batch and applies it; a gap means a reload.
async fn follow(
    ctx: &Ctx,
    mut place: Place,
    known: &mut BTreeSet<String>,
    events: &mpsc::Sender<Event>,
) -> StepResult {
    let records = match ctx.store.read(&place.mark.at.id, BATCH).await {
        Ok(r) => r,
        Err(e) => return Err((e, Some(place.mark))),
    };
    let mut lag = None;
    for record in records {
        if record.seq != place.mark.at.seq + 1 {
            warn!(
                expected = place.mark.at.seq + 1,
                got = record.seq,
                "gap in the stream; reloading"
            );
            return load(ctx, Some(place.mark), known, events).await;
        }
        place.mark.at = Position {
            seq: record.seq,
            id: record.id.clone(),
        };
        lag = Some(record.at_us);
        if let Some(event) = admit(&mut place, record, known) {
            if !first_delivery(ctx, &event) {
                debug!(seq = place.mark.at.seq, "a fill published again; dropped");
                continue;
            }
            if let Event::State(State::Disconnected {
                reason: DisconnectReason::Shutdown,
            }) = &event
            {
                // The leader is stepping down: be ready to take over at once.
                ctx.handoff.notify_one();
            }
            if events.send(event).await.is_err() {
                return Ok(None);
            }
        }
    }
    ctx.status
        .applied
        .store(place.mark.at.seq, Ordering::Relaxed);
    if let Some(at_us) = lag {
        let age = cluster::codec::unix_us().saturating_sub(at_us);
        metrics::gauge!(STREAM_LAG_SECONDS).set(age as f64 / 1e6);
    }
    Ok(Some(place))
}

/// The event to apply, or `None` for one the loaded state already contains.
fn admit(place: &mut Place, record: Record, known: &mut BTreeSet<String>) -> Option<Event> {
    let seq = record.seq;
    let book_at = |m: &str| place.books_at.get(m).copied().unwrap_or(0);
    match record.event {
        Event::Data(data) if data.book.is_some() => {
            let market = data.market.as_deref().unwrap_or_default();
            if seq <= book_at(market) {
                return None;
            }
            if matches!(data.book, Some(BookUpdate::Snapshot(_))) {
                known.insert(market.to_owned());
            }
            Some(Event::Data(data))
        }
        Event::BookStale { markets } => {
            let markets: Vec<String> = markets.into_iter().filter(|m| seq > book_at(m)).collect();
            (!markets.is_empty()).then_some(Event::BookStale { markets })
        }
        Event::BookReset { market } => {
            (seq > book_at(&market)).then_some(Event::BookReset { market })
        }
        other => (seq > place.skip_upto).then_some(other),
    }
}

/// False for a fill this node already took from the stream (a leader published it again).
fn first_delivery(ctx: &Ctx, event: &Event) -> bool {
    match event {
        Event::Data(data) if data.channel == Channel::Fill => {
            match crate::resume::Position::of_fill(&data.body).and_then(|p| p.trade_id) {
                Some(id) => ctx.delivered.lock().first_time(&id),
                None => true,
            }
        }
        _ => true,
    }
}

/// The stream's lag behind its head, in entries (the heartbeat calls it).
pub fn set_lag_entries(head: u64, applied: u64) {
    metrics::gauge!(STREAM_LAG_ENTRIES).set(head.saturating_sub(applied) as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a load answers: the data's generation, the stream's first entry number, and the
    /// number of the entry at the probed id.
    fn loaded(generation: &str, first_seq: u64, probe_seq: Option<u64>) -> Loaded {
        Loaded {
            head: Position::start(),
            valid: None,
            state: None,
            books: HashMap::new(),
            generation: generation.to_owned(),
            first_seq,
            probe_seq,
        }
    }

    fn mark(seq: u64, id: &str, generation: &str) -> Mark {
        Mark {
            at: Position {
                seq,
                id: id.to_owned(),
            },
            generation: generation.to_owned(),
        }
    }

    #[test]
    fn the_start_of_a_stream_is_contiguous_while_its_data_and_first_entry_remain() {
        let start = mark(0, "0-0", "g1");
        // Redis kept its data: the stream is still empty, or begins with entry 1.
        assert!(contiguous(&start, &loaded("g1", 0, None)));
        assert!(contiguous(&start, &loaded("g1", 1, None)));
        // Entries trimmed before this node read them.
        assert!(!contiguous(&start, &loaded("g1", 40, None)));
        // Redis started empty since: a new stream, whose first entries may be another's.
        assert!(!contiguous(&start, &loaded("g2", 0, None)));
        assert!(!contiguous(&start, &loaded("g2", 1, None)));
    }

    #[test]
    fn a_place_past_the_start_is_contiguous_while_its_entry_is_in_the_same_data() {
        let place = mark(7, "1700000000000-0", "g1");
        assert!(contiguous(&place, &loaded("g1", 1, Some(7))));
        // Trimmed past it, or another entry at that id.
        assert!(!contiguous(&place, &loaded("g1", 20, None)));
        assert!(!contiguous(&place, &loaded("g1", 1, Some(3))));
        assert!(!contiguous(&place, &loaded("g2", 1, Some(7))));
    }
}
