//! The exchange sees one session from the relays: every few milliseconds, count the
//! simulator's live (not blackholed) sessions that are not the reference's. Two at once are the
//! documented overlap only inside a window (`fleet::Windows`: a leader frozen past its lease,
//! until shortly after it runs again); any other span with two is a violation, reported with
//! how long it lasted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use exchange_sim::Sim;
use parking_lot::Mutex;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::fills::RefLog;
use crate::fleet::Windows;
use crate::tally::Tally;

/// What the watch saw.
#[derive(Default)]
pub struct Seen {
    /// The most live sessions at once.
    pub max: AtomicU64,
    /// Overlaps inside a window: how many, and the longest (ms).
    pub allowed: AtomicU64,
    pub allowed_max_ms: AtomicU64,
    /// Overlaps outside every window.
    pub outside: AtomicU64,
    pub outside_max_ms: AtomicU64,
}

/// A span with two or more sessions: when it began, whether any of it fell outside a window,
/// and the sessions (id, peer) seen in it.
type Span = (Instant, bool, HashSet<(u64, String)>);

pub async fn watch(
    sim: Arc<Sim>,
    reflog: Arc<Mutex<RefLog>>,
    windows: Windows,
    every: Duration,
    tally: Arc<Tally>,
    seen: Arc<Seen>,
    stop: CancellationToken,
) {
    let mut span: Option<Span> = None;
    while !stop.is_cancelled() {
        let stats = sim.stats();
        let ours: HashSet<String> = reflog.lock().local_addrs.clone();
        let live: Vec<_> = stats
            .per_connection
            .iter()
            .filter(|c| !c.blackholed && !ours.contains(&c.peer))
            .collect();
        seen.max.fetch_max(live.len() as u64, Ordering::SeqCst);
        tally.session_samples.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if live.len() > 1 {
            let allowed = windows
                .lock()
                .iter()
                .any(|(from, to)| *from <= now && to.is_none_or(|t| now <= t));
            let (_, outside, ids) = span.get_or_insert_with(|| (now, false, HashSet::new()));
            *outside |= !allowed;
            ids.extend(live.iter().map(|c| (c.id, c.peer.clone())));
        } else if let Some((from, outside, ids)) = span.take() {
            let ms = from.elapsed().as_millis() as u64;
            if outside {
                seen.outside.fetch_add(1, Ordering::SeqCst);
                seen.outside_max_ms.fetch_max(ms, Ordering::SeqCst);
                let mut ids: Vec<_> = ids.into_iter().collect();
                ids.sort();
                tally.violation(format!(
                    "the simulator held two or more live sessions from the relays for {ms} ms, not all of it while a leader was frozen: {ids:?}"
                ));
            } else {
                seen.allowed.fetch_add(1, Ordering::SeqCst);
                seen.allowed_max_ms.fetch_max(ms, Ordering::SeqCst);
                tally.log(&format!(
                    "two sessions for {ms} ms while a leader was frozen (the documented overlap)"
                ));
            }
        }
        sleep(every).await;
    }
}
