//! The two loops between the upstream session and the fanout.
//!
//! - [`publish`]: upstream events, in exchange order, into the fanout's publisher; state changes
//!   into the relay's status (readiness, `relay_status` events).
//! - [`follow_registry`]: the fanout registry's wanted/unwanted topics into upstream
//!   subscriptions, so the upstream subscription set equals what clients need plus the warm
//!   markets. Per channel the relay holds at most one market-filtered upstream subscription and
//!   one channel-wide one.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fanout::{PublishError, Publisher, RegistryEvents, Topic, TopicChange};
use protocol::Channel;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use upstream::{BookUpdate, Event, State, SubId, Upstream};

use crate::app::{now_ms, App};
use crate::breakage::{self, Breakage, Every};
use crate::status::UpstreamStatus;

/// Feeds the fanout until the upstream's event stream ends (after its shutdown).
///
/// `released` carries books no longer subscribed upstream ([`follow_registry`]): their cached
/// state is marked stale at once, so a client that subscribes again waits for the fresh snapshot
/// instead of getting a frozen one. The `select!` is biased toward releases: a release is sent
/// before the `add_markets` that could bring that book's next snapshot, so it is always applied
/// first.
///
/// Subscribers are woken once per batch, not once per message: the publisher holds what it
/// sends and releases it when no further upstream event is ready (or every [`RELEASE_EVERY`]
/// items in a continuous stream), so a client woken by a batch finds all of it and writes it in
/// one socket write.
///
/// With a write-coalescing window (`downstream.coalesce_window_seconds`), the release waits until the
/// window, opened by the first market-data message after a release, closes: every client then
/// writes the whole window's frames at once, and one timer serves them all. Everything else (a
/// state change, a lost-messages notice, a released book) is released at once. The cache is
/// updated as messages arrive either way, so a client that subscribes meanwhile starts from the
/// latest book.
pub async fn publish(
    app: Arc<App>,
    mut events: mpsc::Receiver<Event>,
    mut released: mpsc::UnboundedReceiver<String>,
    mut publisher: Publisher<UpstreamStatus>,
) {
    let window = app.config.downstream.coalesce_window();
    // Held items must stay well inside both bounds of the ring, or the clients parked while
    // they were held wake up lagged.
    let max_held = app.config.fanout.queue_messages / 4;
    let max_held_bytes = app.config.fanout.queue_bytes / 4;
    publisher.hold();
    let window_end = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(window_end);
    let mut window_open = false;
    loop {
        let is_data = tokio::select! {
            biased;
            Some(market) = released.recv() => {
                publisher.mark_stale([market]);
                false
            }
            () = &mut window_end, if window_open => {
                window_open = false;
                publisher.release();
                continue;
            }
            event = events.recv() => match event {
                Some(event) => {
                    let is_data = matches!(event, Event::Data(_));
                    apply_event(&app, &mut publisher, event);
                    is_data
                }
                None => break,
            },
        };
        let release = match window {
            Some(window) if is_data => {
                if !window_open {
                    window_open = true;
                    // tokio's timer fires on the first millisecond tick at or after the
                    // deadline, up to a tick late: aiming a tick early keeps the hold within
                    // the window.
                    let hold = window.saturating_sub(TIMER_TICK);
                    window_end
                        .as_mut()
                        .reset(tokio::time::Instant::now() + hold);
                }
                publisher.unreleased() >= max_held || publisher.unreleased_bytes() >= max_held_bytes
            }
            Some(_) => true,
            None => {
                events.is_empty()
                    || publisher.unreleased() >= RELEASE_EVERY.min(max_held)
                    || publisher.unreleased_bytes() >= max_held_bytes
            }
        };
        if release {
            window_open = false;
            publisher.release();
        }
    }
    publisher.release();
}

/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Without a coalescing window, a continuous stream is released at least this often.
const RELEASE_EVERY: usize = 64;

/// State of the deliberate breakages (`breakage.rs`); untouched in a normal build.
static DELTAS: Every = Every::new();
static FILLS: Every = Every::new();
static BROKEN: parking_lot::Mutex<BTreeSet<String>> = parking_lot::Mutex::new(BTreeSet::new());

/// Publishes one upstream event, or applies it to the relay's state.
fn apply_event(app: &App, publisher: &mut Publisher<UpstreamStatus>, event: Event) {
    match event {
        Event::Data(data) => {
            app.traffic
                .upstream_messages
                .fetch_add(1, Ordering::Relaxed);
            publisher.set_received_at(Some(data.received_at));
            let market = data.market.as_deref();
            match (data.book, market) {
                (Some(BookUpdate::Snapshot(_)), Some(m))
                    if breakage::is(Breakage::NoResnapshot) && BROKEN.lock().contains(m) =>
                {
                    // Broken on purpose: the reset snapshot is dropped, clients never hear.
                }
                (Some(BookUpdate::Delta(_)), Some(_))
                    if breakage::is(Breakage::DropDeltas) && DELTAS.every(1000) => {}
                (None, _)
                    if data.channel == Channel::Fill
                        && breakage::is(Breakage::SkipFill)
                        && FILLS.nth(20) => {}
                (Some(BookUpdate::Snapshot(snap)), Some(m)) => {
                    // Whatever made the book stale (a gap, a reconnect, a delta that did not
                    // fit), its snapshot ends it.
                    if let Err(e) = publisher.snapshot(m, snap, data.body) {
                        warn!(market = m, error = %e, "snapshot not published");
                    }
                }
                (Some(BookUpdate::Delta(delta)), Some(m)) => {
                    match publisher.delta(m, delta, data.body) {
                        Ok(_) => {}
                        // The book awaits its snapshot: this delta is covered by it.
                        Err(PublishError::NotSynced { .. }) => {}
                        Err(e @ PublishError::Inconsistent { .. }) => {
                            // The fanout marked the book stale and told its subscribers; a
                            // fresh snapshot from the exchange makes it valid again.
                            warn!(market = m, error = %e, "delta did not fit; re-syncing the book");
                            app.upstream.request_snapshot(vec![m.to_owned()]);
                        }
                        Err(e) => warn!(market = m, error = %e, "delta not published"),
                    }
                }
                _ => {
                    if data.channel.is_private() {
                        app.history.lock().record(crate::resume::Kept {
                            channel: data.channel,
                            kind: data.kind.clone(),
                            market: data.market.clone(),
                            body: data.body.clone(),
                        });
                    }
                    publisher.message(data.channel, market, data.kind, data.body);
                }
            }
        }
        Event::BookStale { markets } => {
            debug!(count = markets.len(), "books stale");
            if breakage::is(Breakage::NoResnapshot) {
                BROKEN.lock().extend(markets.iter().cloned());
            }
            publisher.mark_stale(markets);
        }
        // The fanout's book stays stale until the snapshot that follows.
        Event::BookReset { .. } => {}
        Event::MessagesLost { channel } => {
            warn!(%channel, "private messages lost upstream");
            if channel.is_private() {
                app.history.lock().lost();
            }
            publisher.notice(last_status(publisher).lost(channel));
        }
        Event::State(state) => {
            match &state {
                State::GaveUp { failures } => {
                    error!(
                        failures,
                        "upstream gave up; still probing at the capped delay"
                    )
                }
                State::AuthFailed => error!("upstream refused the credentials"),
                State::Disconnected { reason } => warn!(%reason, "upstream disconnected"),
                other => info!(state = ?other, "upstream state"),
            }
            publisher.notice(last_status(publisher).entered(&state, now_ms()));
        }
    }
}

/// The status the feed last sent (every relay sends one at start).
fn last_status(publisher: &Publisher<UpstreamStatus>) -> UpstreamStatus {
    publisher
        .last_notice()
        .map_or_else(|| UpstreamStatus::starting(now_ms()), |s| (*s).clone())
}

/// The upstream subscriptions the relay holds for one channel.
#[derive(Default)]
pub(crate) struct ChannelSubs {
    /// The market-filtered subscription and its markets.
    filtered: Option<(SubId, BTreeSet<String>)>,
    /// The every-market subscription.
    wide: Option<SubId>,
}

/// Keeps the upstream subscriptions equal to the registry's wanted topics plus `warm` books, and
/// reports books no longer subscribed (not warm) on `released`.
pub async fn follow_registry(
    upstream: Upstream,
    mut registry: RegistryEvents,
    warm: Vec<String>,
    warm_private: bool,
    released: mpsc::UnboundedSender<String>,
) {
    let mut channels: HashMap<Channel, ChannelSubs> = HashMap::new();
    if warm_private {
        // Held for the relay's life: a client's private subscription is live when answered.
        for channel in Channel::ALL.into_iter().filter(|c| c.is_private()) {
            let _private = upstream.subscribe(channel, None);
        }
    }
    if !warm.is_empty() {
        // A subscription of its own, never released: the warm books stay synced for readiness
        // and for the first client's instant snapshot.
        let _warm = upstream.subscribe(Channel::OrderbookDelta, Some(warm.clone()));
    }
    // Books released (marked stale) and not yet wanted again.
    let mut stale_released: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Runs for the relay's life (the registry never closes); aborted at shutdown.
    loop {
        for change in registry.next().await {
            let (wanted, topic) = match &change {
                TopicChange::Wanted(t) => (true, t),
                TopicChange::Unwanted(t) => (false, t),
            };
            let book = match topic {
                Topic {
                    channel: Channel::OrderbookDelta,
                    market: Some(m),
                } => Some(m.to_string()),
                _ => None,
            };
            apply(&upstream, &mut channels, change);
            let Some(m) = book else { continue };
            if wanted {
                // Wanted again after its release: the upstream may still hold the market (no
                // change for it to act on), so ask for the fresh snapshot explicitly.
                if stale_released.remove(&m) {
                    upstream.request_snapshot(vec![m]);
                }
            } else if !warm.contains(&m) {
                stale_released.insert(m.clone());
                let _ = released.send(m);
            }
        }
    }
}

pub(crate) fn apply(
    upstream: &Upstream,
    channels: &mut HashMap<Channel, ChannelSubs>,
    change: TopicChange,
) {
    let (wanted, Topic { channel, market }) = match change {
        TopicChange::Wanted(t) => (true, t),
        TopicChange::Unwanted(t) => (false, t),
    };
    let subs = channels.entry(channel).or_default();
    match (wanted, market) {
        (true, None) => {
            if subs.wide.is_none() {
                subs.wide = Some(upstream.subscribe(channel, None));
            }
        }
        (false, None) => {
            if let Some(id) = subs.wide.take() {
                upstream.unsubscribe(id);
            }
        }
        (true, Some(m)) => match &mut subs.filtered {
            Some((id, markets)) => {
                if markets.insert(m.to_string()) {
                    upstream.add_markets(*id, vec![m.to_string()]);
                }
            }
            None => {
                let id = upstream.subscribe(channel, Some(vec![m.to_string()]));
                subs.filtered = Some((id, BTreeSet::from([m.to_string()])));
            }
        },
        (false, Some(m)) => {
            if let Some((id, markets)) = &mut subs.filtered {
                if markets.remove(m.as_ref()) {
                    if markets.is_empty() {
                        upstream.unsubscribe(*id);
                        subs.filtered = None;
                    } else {
                        upstream.remove_markets(*id, vec![m.to_string()]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fanout::{Delivery, LagCause};
    use protocol::MessageType;
    use tokio_util::sync::CancellationToken;

    /// A caught-up client parked through a coalescing window that holds four times the ring's
    /// byte bound must not wake up lagged: the feed releases before the held bytes get there.
    #[tokio::test(start_paused = true)]
    async fn a_window_holding_more_than_the_byte_bound_does_not_lag_a_parked_client() {
        const TRADES: usize = 100;
        let mut config = crate::config::RelayConfig::with_upstream("ws://127.0.0.1:9/");
        config.fanout.queue_bytes = 4096;
        config.downstream.coalesce_window_seconds = settings::SecondsOrZero::from_millis(100);
        let (publisher, fanout, _registry) = fanout::new(config.fanout.clone());
        let (upstream, _upstream_events) =
            upstream::spawn(config.upstream.clone(), CancellationToken::new()).unwrap();
        let app = Arc::new(App::new(
            config,
            fanout,
            upstream,
            crate::metrics::install_metrics_recorder(),
            None,
        ));
        let mut sub = app.fanout.subscriber();
        sub.add(Topic::channel(Channel::Trade), false).unwrap();
        let reader = tokio::spawn(async move {
            let mut data = 0;
            let mut lags = Vec::new();
            while data < TRADES {
                match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
                    Ok(Some(Delivery::Data(_))) => data += 1,
                    Ok(Some(Delivery::Lagged(report))) => lags.push(report.cause),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            (data, lags)
        });
        let (events, events_rx) = mpsc::channel(1024);
        let (_released, released_rx) = mpsc::unbounded_channel();
        let feed = tokio::spawn(publish(app.clone(), events_rx, released_rx, publisher));
        // 100 trades of about 210 bytes, 1 ms apart: 21 KB within one 100 ms window.
        let body = Bytes::from(format!("{{\"p\":\"{}\"}}", "x".repeat(200)));
        for _ in 0..TRADES {
            let trade = Event::Data(upstream::Data {
                channel: Channel::Trade,
                kind: MessageType::Trade,
                market: Some("M".into()),
                seq: None,
                body: body.clone(),
                book: None,
                received_at: std::time::Instant::now(),
            });
            events.send(trade).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (data, lags) = reader.await.unwrap();
        assert_eq!(lags, Vec::<LagCause>::new(), "the parked client lagged");
        assert_eq!(data, TRADES);
        drop(events);
        feed.await.unwrap();
    }
}
