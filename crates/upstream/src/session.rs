//! The session task: connect, run the connection, back off, repeat, until shutdown. Also the
//! pieces that outlive one connection: the owner's [`Output`] and the [`Books`] freshness.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use protocol::Channel;
use rand::rngs::StdRng;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::event::{DisconnectReason, Event, State};
use crate::subs::Desired;
use crate::{conn, connect, metrics};

/// What the handle and the session share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The owner's wishes. Locked briefly by handle calls and by the session; never across an
    /// `.await`.
    pub desired: Mutex<Desired>,
    /// Poked by the handle after every change; the session reconciles when woken.
    pub changed: Notify,
}

impl Shared {
    pub fn desired(&self) -> std::sync::MutexGuard<'_, Desired> {
        // A panic while holding the lock cannot leave `Desired` half-updated in a way that
        // matters more than stopping would, so a poisoned lock is used as is.
        self.desired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the session sends toward the owner, through the backfill stage.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Internal {
    /// For the owner.
    Event(Event),
    /// A subscription of this channel was confirmed (for the stage: a private channel that
    /// died at the exchange is live again, so what it missed can be fetched).
    Live(Channel),
}

/// The owner's side: the bounded event channel and the state watch.
pub(crate) struct Output {
    /// Bounded (`event_channel_capacity`); owned by the session, closed when it ends. When full
    /// the session waits, which stops reading the socket: the exchange sees a slow reader, the
    /// owner sees the wait in `relay_upstream_owner_wait_seconds` and a warning.
    events: mpsc::Sender<Internal>,
    capacity: usize,
    pending: ::metrics::Gauge,
    state: watch::Sender<State>,
    shutdown: CancellationToken,
    last_wait_warning: Option<Instant>,
}

impl Output {
    pub fn new(
        events: mpsc::Sender<Internal>,
        capacity: usize,
        state: watch::Sender<State>,
        shutdown: CancellationToken,
    ) -> Output {
        Output {
            events,
            capacity,
            pending: metrics::events_pending(),
            state,
            shutdown,
            last_wait_warning: None,
        }
    }

    /// Hands one event to the owner, waiting for room (but not past shutdown). Reports whether
    /// the event was waited for, so the caller can discount the wait from its liveness clock.
    pub async fn emit(&mut self, event: Event) -> bool {
        self.send(Internal::Event(event)).await
    }

    /// Tells the backfill stage that a subscription of `channel` is live again.
    pub async fn live(&mut self, channel: Channel) {
        self.send(Internal::Live(channel)).await;
    }

    async fn send(&mut self, event: Internal) -> bool {
        let event = match self.events.try_send(event) {
            Ok(()) => {
                let pending = self.capacity - self.events.capacity();
                self.pending.set(pending as f64);
                return false;
            }
            // The owner dropped its receiver: nobody listens, keep running until shutdown.
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(event)) => event,
        };
        self.pending.set(self.capacity as f64);
        let started = Instant::now();
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            _ = self.events.send(event) => {}
        }
        let waited = started.elapsed();
        metrics::owner_wait(waited);
        let quiet = self
            .last_wait_warning
            .is_some_and(|t| t.elapsed().as_secs() < 10);
        if waited.as_millis() >= 100 && !quiet {
            self.last_wait_warning = Some(Instant::now());
            warn!(
                waited_ms = waited.as_millis() as u64,
                capacity = self.capacity,
                "owner is slower than the exchange: event channel full"
            );
        } else {
            debug!(waited_us = waited.as_micros() as u64, "event channel full");
        }
        true
    }

    /// Publishes a state change (watch, metric, event). Repeats are not reported, and `GaveUp`
    /// is reported once per outage.
    pub async fn set_state(&mut self, state: State) {
        let same = {
            let current = self.state.borrow();
            *current == state
                || matches!(
                    (&*current, &state),
                    (State::GaveUp { .. }, State::GaveUp { .. })
                )
        };
        if same {
            return;
        }
        metrics::state(&state);
        self.state.send_replace(state.clone());
        self.emit(Event::State(state)).await;
    }

    /// The last event, sent without waiting (the owner may have stopped reading).
    pub fn finish(&mut self, state: State) {
        metrics::state(&state);
        self.state.send_replace(state.clone());
        let _ = self.events.try_send(Internal::Event(Event::State(state)));
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freshness {
    /// Subscribed, first snapshot not yet seen.
    Awaiting,
    /// The owner's book is valid.
    Fresh,
    /// The owner's book is invalid until the next snapshot (announced by `BookReset`).
    Stale,
}

/// Freshness of every order book market, across connections.
#[derive(Debug, Default)]
pub(crate) struct Books(HashMap<String, Freshness>);

impl Books {
    /// Marks fresh books stale; returns those that were fresh (for `BookStale`).
    pub fn mark_stale<'a>(&mut self, markets: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut out = Vec::new();
        for m in markets {
            if let Some(f @ Freshness::Fresh) = self.0.get_mut(m) {
                *f = Freshness::Stale;
                out.push(m.clone());
            }
        }
        out
    }

    /// Every fresh book goes stale (the connection is gone).
    pub fn all_stale(&mut self) -> Vec<String> {
        let fresh: Vec<String> = self
            .0
            .iter()
            .filter(|(_, f)| **f == Freshness::Fresh)
            .map(|(m, _)| m.clone())
            .collect();
        self.mark_stale(&fresh);
        let mut fresh = fresh;
        fresh.sort();
        fresh
    }

    /// A snapshot arrived; true when it repairs a stale book (emit `BookReset` first).
    pub fn on_snapshot(&mut self, market: &str) -> bool {
        self.0.insert(market.to_owned(), Freshness::Fresh) == Some(Freshness::Stale)
    }

    pub fn is_fresh(&self, market: &str) -> bool {
        self.0.get(market) == Some(&Freshness::Fresh)
    }

    /// Keeps only wanted markets; newly wanted ones await their first snapshot.
    pub fn track(&mut self, wanted: &BTreeSet<String>) {
        self.0.retain(|m, _| wanted.contains(m));
        for m in wanted {
            self.0.entry(m.clone()).or_insert(Freshness::Awaiting);
        }
    }
}

/// Everything a connection needs from the session.
pub(crate) struct Ctx {
    pub settings: Settings,
    pub shared: Arc<Shared>,
    pub out: Output,
    pub books: Books,
    pub shutdown: CancellationToken,
}

/// Runs the session until `ctx.shutdown`, then cancels `closed`.
pub(crate) async fn run(mut ctx: Ctx, rng: StdRng, closed: CancellationToken) {
    let s = &ctx.settings;
    let mut backoff = Backoff::new(s.backoff_base, s.backoff_factor, s.backoff_cap, rng);
    let max_failures = s.max_consecutive_failures;
    let mut failures: u32 = 0;
    // The watch starts at `Connecting`; the stream says so too.
    metrics::state(&State::Connecting);
    ctx.out.emit(Event::State(State::Connecting)).await;
    loop {
        let gave_up = matches!(ctx.out.state(), State::GaveUp { .. });
        if !gave_up {
            ctx.out.set_state(State::Connecting).await;
        }
        let attempt = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            attempt = connect::connect(&ctx.settings) => attempt,
        };
        let (reason, healthy, retry_after) = match attempt {
            Ok(ws) => {
                metrics::connected();
                info!(url = %ctx.settings.url, "connected to the exchange");
                let started = Instant::now();
                let reason = conn::run(ws, &mut ctx).await;
                (
                    reason,
                    started.elapsed() >= ctx.settings.healthy_reset,
                    None,
                )
            }
            Err(e) => {
                let level_warn = !gave_up && failures + 1 < max_failures;
                if level_warn {
                    warn!(reason = %e.reason, detail = %e.detail, "connection attempt failed");
                } else {
                    debug!(reason = %e.reason, detail = %e.detail, "connection attempt failed");
                }
                (e.reason, false, e.retry_after)
            }
        };
        metrics::disconnected(&reason);
        let stale = ctx.books.all_stale();
        if !stale.is_empty() {
            ctx.out.emit(Event::BookStale { markets: stale }).await;
        }
        if reason == DisconnectReason::Shutdown {
            break;
        }
        if healthy {
            backoff.reset();
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let gave_up = matches!(ctx.out.state(), State::GaveUp { .. });
        if failures >= max_failures {
            if !gave_up {
                error!(failures, last_reason = %reason, probe_seconds = backoff.cap().as_secs_f64(),
                    "giving up on the exchange: still probing at the capped delay");
            }
            ctx.out.set_state(State::GaveUp { failures }).await;
        } else if reason == DisconnectReason::AuthRejected {
            error!("the exchange refused our credentials (401)");
            ctx.out.set_state(State::AuthFailed).await;
        } else {
            ctx.out
                .set_state(State::Disconnected {
                    reason: reason.clone(),
                })
                .await;
        }
        let mut delay = if failures >= max_failures {
            backoff.cap()
        } else {
            backoff.next_delay()
        };
        if let Some(retry_after) = retry_after {
            delay = delay.max(retry_after);
        }
        metrics::backoff(delay);
        debug!(
            delay_ms = delay.as_millis() as u64,
            failures, "reconnecting after a delay"
        );
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    ctx.out.finish(State::Disconnected {
        reason: DisconnectReason::Shutdown,
    });
    info!("upstream session closed");
    closed.cancel();
}
