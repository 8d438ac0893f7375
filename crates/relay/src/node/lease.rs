//! Leading: take the lease when it is free, and while it is held run the upstream session,
//! write its events to the stream ([`super::writer`]) and subscribe the union of every node's
//! wanted topics.
//!
//! The lease is renewed every third of its length. The leader trusts it only until the moment
//! its last successful renewal was *sent* plus the lease, less a tenth: Redis's expiry comes
//! later than that, so a leader cut off from Redis closes its session before anyone else can
//! take the lease, without waiting for Redis to answer. Two sessions can overlap only while an
//! old leader cannot run at all (a paused process, a frozen machine); the stream's fence keeps
//! such a leader from writing when it wakes, and it closes its session then.
//!
//! A lease taken with an epoch no higher than the last one this node saw means Redis lost its
//! state (it restarted empty): the old leader cannot have been told, and holds its session until
//! its own clock says its lease is over. The new leader holds the lease that long before it
//! connects, and then backfills the private channels from before the outage: nobody led
//! meanwhile, and a later successor's backfill would otherwise publish those fills after newer
//! ones.

use std::sync::Arc;
use std::time::Duration;

use cluster::{Acquire, Token};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::writer::{self, Ending};
use super::{Ctx, FAILOVERS_TOTAL, LEASE_RENEW_FAILURES_TOTAL};

/// After a leader announces its session's end, followers try for the lease this often.
const HANDOFF_POLL: Duration = Duration::from_millis(50);

pub async fn run(ctx: Arc<Ctx>) {
    let shutdown = ctx.shutdown.clone();
    let lease = ctx.config.lease();
    let mut failures: u32 = 0;
    let mut wait = Duration::ZERO;
    // Until then, poll fast: the leader said it is stepping down.
    let mut fast_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = ctx.handoff.notified() => {
                fast_until = Some(Instant::now() + lease / 3);
            }
        }
        let fast = fast_until.is_some_and(|t| Instant::now() < t);
        match ctx.store.acquire(&ctx.status.node_id, lease).await {
            Ok(Acquire::Taken(token)) => {
                failures = 0;
                fast_until = None;
                lead(&ctx, token).await;
                wait = Duration::ZERO;
            }
            Ok(Acquire::Held { holder, ttl }) => {
                failures = 0;
                ctx.status.set_leader(Some(&holder), false);
                // Try again when it would lapse, and at least every third of a lease.
                wait = if fast {
                    HANDOFF_POLL
                } else {
                    (ttl + Duration::from_millis(5)).min(lease / 3)
                };
            }
            Err(e) => {
                failures += 1;
                ctx.status.redis_failed(&e);
                wait = super::backoff(failures);
            }
        }
    }
}

/// Leads until the lease is lost or the relay stops.
async fn lead(ctx: &Arc<Ctx>, token: Token) {
    let lease = ctx.config.lease();
    let margin = (lease / 10).max(Duration::from_millis(50));
    // Sent just before the acquisition: the lease lasts at least this long from here.
    let mut valid_until = Instant::now() + lease - margin;
    let redis_forgot = token.epoch <= ctx.status.epoch();
    ctx.status.set_leader(Some(&token), true);
    metrics::counter!(FAILOVERS_TOTAL).increment(1);
    if redis_forgot {
        info!(
            epoch = token.epoch,
            "the lease epoch went back (redis restarted): waiting out the old leader's lease"
        );
        let until = Instant::now() + lease;
        if let Err(ending) = hold(ctx, &token, until, &mut valid_until).await {
            ctx.status.set_leader(None, false);
            if ending == Ending::Shutdown {
                let _ = ctx.store.release(&token).await;
            }
            return;
        }
    }
    info!(
        epoch = token.epoch,
        "this node leads: taking the upstream session"
    );

    // Every node's wanted topics, subscribed before the session's first connect: its
    // `subscribed` state, which the backfill waits for, then covers them all. Subscribed later,
    // a private channel would go live after the backfill had read the exchange's history, and
    // fills made in between would reach no one.
    let union = match ctx.store.union().await {
        Ok(union) => union,
        Err(e) => {
            warn!(error = %e, "wanted topics not read; subscribing them once they are");
            Default::default()
        }
    };
    let session_stop = CancellationToken::new();
    let config = ctx.upstream.clone();
    // A successor backfills what the private channels missed between the last leader's last
    // entry and its own first: at most two leases (the old one running out, this one's
    // acquisition) plus the overlap; fills this node already relayed are left out.
    let spawned = if (token.epoch > 1 || redis_forgot) && config.backfill {
        let window = 2 * lease.as_secs().max(1) as i64;
        let now = crate::app::now_ms() as i64 / 1000;
        // After a Redis restart, from before the outage began (the old leader's last entries).
        let from = match ctx.status.outage_since_s() {
            Some(outage) if redis_forgot => now.min(outage as i64),
            _ => now,
        };
        let since = from - window;
        let from = upstream::Continuation {
            since,
            delivered: published_fills(ctx, since).await,
        };
        upstream::spawn_continuing(config, session_stop.clone(), from)
    } else {
        upstream::spawn(config, session_stop.clone())
    };
    let (upstream, events) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            // Validated at start: unreachable in practice.
            warn!(error = %e, "upstream did not start; giving the lease up");
            let _ = ctx.store.release(&token).await;
            ctx.status.set_leader(None, false);
            return;
        }
    };
    let mut subscribed = writer::Subscribed::default();
    subscribed.apply(&upstream, union);
    let writer_stop = CancellationToken::new();
    let mut writer = tokio::spawn(writer::run(
        ctx.clone(),
        token.clone(),
        events,
        upstream.clone(),
        subscribed,
        writer_stop.clone(),
    ));
    let shutdown = ctx.shutdown.clone();
    let mut renew = tokio::time::interval(lease / 3);
    renew.reset();
    let ending = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ending::Shutdown,
            () = tokio::time::sleep_until(valid_until) => {
                warn!("lease not renewed in time; closing the upstream session");
                break Ending::Lost;
            }
            _ = &mut writer => {
                warn!("fenced: the stream refused a write; closing the upstream session");
                break Ending::Lost;
            }
            _ = renew.tick() => {
                if !renew_once(ctx, &token, &mut valid_until).await {
                    warn!("fenced: the lease is gone; closing the upstream session");
                    break Ending::Lost;
                }
            }
        }
    };
    ctx.status.set_leader(None, false);
    match ending {
        Ending::Lost => {
            // Nothing more may be written: stop the writer first, then the session.
            writer_stop.cancel();
            writer.abort();
            session_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), upstream.closed()).await;
        }
        Ending::Shutdown => {
            // A clean handoff: close the session, let the writer put its last events (the
            // `shutdown` state that tells followers to take over) in the stream, then release.
            session_stop.cancel();
            let budget = Duration::from_secs(2);
            let _ = tokio::time::timeout(budget, upstream.closed()).await;
            if tokio::time::timeout(budget, &mut writer).await.is_err() {
                writer.abort();
            }
            match ctx.store.release(&token).await {
                Ok(true) => info!("lease released for the next leader"),
                Ok(false) => warn!("the lease had already lapsed"),
                Err(e) => warn!(error = %e, "lease not released; it lapses by itself"),
            }
        }
    }
}

/// Keeps the lease without leading until `until`: `Err` when it was lost or the relay stops.
async fn hold(
    ctx: &Ctx,
    token: &Token,
    until: Instant,
    valid_until: &mut Instant,
) -> Result<(), Ending> {
    let mut renew = tokio::time::interval(ctx.config.lease() / 3);
    renew.reset();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err(Ending::Shutdown),
            () = tokio::time::sleep_until(until) => return Ok(()),
            () = tokio::time::sleep_until(*valid_until) => return Err(Ending::Lost),
            _ = renew.tick() => {
                if !renew_once(ctx, token, valid_until).await {
                    return Err(Ending::Lost);
                }
            }
        }
    }
}

/// One renewal; false when the lease is no longer ours. A renewal that fails or times out
/// leaves `valid_until` where it was.
async fn renew_once(ctx: &Ctx, token: &Token, valid_until: &mut Instant) -> bool {
    let lease = ctx.config.lease();
    let margin = (lease / 10).max(Duration::from_millis(50));
    let sent = Instant::now();
    let remaining = valid_until.saturating_duration_since(sent);
    match tokio::time::timeout(remaining, ctx.store.renew(token, lease)).await {
        Ok(Ok(true)) => {
            metrics::gauge!(super::REDIS_RTT_SECONDS).set(sent.elapsed().as_secs_f64());
            *valid_until = sent + lease - margin;
            true
        }
        Ok(Ok(false)) => false,
        Ok(Err(e)) => {
            metrics::counter!(LEASE_RENEW_FAILURES_TOTAL).increment(1);
            warn!(error = %e, "lease renewal failed");
            true
        }
        Err(_) => {
            metrics::counter!(LEASE_RENEW_FAILURES_TOTAL).increment(1);
            true
        }
    }
}

/// Trade ids of the fills already relayed since `since` (Unix s): those in the stream (the
/// lease is ours, so nobody adds to them now) and those this node took from the stream. The
/// node's own alone miss what the stream carried before this node started, or that its reader
/// had not yet applied; a backfill would publish those again.
async fn published_fills(ctx: &Ctx, since: i64) -> Vec<String> {
    /// Bounds the read on a busy stream; a backfill window holds far fewer fills.
    const MAX_ENTRIES: usize = 200_000;
    let mut delivered = ctx.delivered.lock().trade_ids();
    // A second early: the writer stamps entries when it received them, after the fill was made.
    let since_us = (since.max(1) as u64 - 1) * 1_000_000;
    match ctx.store.since(since_us, MAX_ENTRIES).await {
        Ok(records) => {
            let known: std::collections::HashSet<String> = delivered.iter().cloned().collect();
            delivered.extend(
                records
                    .into_iter()
                    .filter_map(|r| match r.event {
                        upstream::Event::Data(d) if d.channel == protocol::Channel::Fill => {
                            crate::resume::Position::of_fill(&d.body)?.trade_id
                        }
                        _ => None,
                    })
                    .filter(|id| !known.contains(id)),
            );
        }
        Err(e) => warn!(error = %e, "stream not read; the backfill may repeat fills"),
    }
    delivered
}
