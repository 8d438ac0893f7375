//! The fanout registry's wanted topics into this node's wanted set in Redis.
//!
//! The set is replaced whole on every change and refreshed every third of a lease; it expires
//! three leases after the node falls silent, so a dead node's topics leave the union by
//! themselves. A change wakes the leader through the control stream. While Redis is down the
//! set is kept here and published when it returns.
//!
//! As `feed::follow_registry` does, a book no longer wanted here is released (marked stale
//! locally), and when it is wanted again the leader is asked for a fresh snapshot: another node
//! may have kept the market subscribed, so no snapshot would come by itself.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cluster::Control;
use fanout::{RegistryEvents, Topic, TopicChange};
use protocol::Channel;
use tokio::sync::mpsc;
use tracing::debug;

use super::{topic_key, Ctx, REDIS_RTT_SECONDS};

/// How many leases a silent node's wanted set outlives it.
const WANTED_TTL_LEASES: u32 = 3;

/// The topics a node always wants: its warm books and, if configured, the private channels.
pub fn warm_topics(warm_markets: &[String], warm_private: bool) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = warm_markets
        .iter()
        .map(|m| topic_key(&Topic::market(Channel::OrderbookDelta, m)))
        .collect();
    if warm_private {
        topics.extend(
            Channel::ALL
                .into_iter()
                .filter(|c| c.is_private())
                .map(|c| topic_key(&Topic::channel(c))),
        );
    }
    topics
}

pub async fn run(
    ctx: Arc<Ctx>,
    mut registry: RegistryEvents,
    warm: BTreeSet<String>,
    released: mpsc::UnboundedSender<String>,
) {
    let shutdown = ctx.shutdown.clone();
    let lease = ctx.config.lease();
    let ttl = lease * WANTED_TTL_LEASES;
    let mut topics = warm.clone();
    let mut stale_released: BTreeSet<String> = BTreeSet::new();
    // Snapshot requests not yet delivered (Redis down).
    let mut resnap: Vec<String> = Vec::new();
    let mut dirty = true;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Leave the union at once rather than after the expiry.
                let _ = ctx.store.publish_wanted(&ctx.status.node_id, &BTreeSet::new(), ttl).await;
                let _ = ctx.store.send_control(&Control::Wanted).await;
                return;
            }
            _ = tick.tick() => {
                let started = std::time::Instant::now();
                if publish(&ctx, &topics, ttl, dirty).await {
                    metrics::gauge!(REDIS_RTT_SECONDS).set(started.elapsed().as_secs_f64());
                    dirty = false;
                }
                if let Ok(head) = ctx.store.head_seq().await {
                    super::reader::set_lag_entries(
                        head,
                        ctx.status.applied.load(std::sync::atomic::Ordering::Relaxed),
                    );
                }
            }
            changes = registry.next() => {
                for change in changes {
                    let (wanted, topic) = match &change {
                        TopicChange::Wanted(t) => (true, t),
                        TopicChange::Unwanted(t) => (false, t),
                    };
                    let key = topic_key(topic);
                    let book = match topic {
                        Topic { channel: Channel::OrderbookDelta, market: Some(m) } => Some(m.to_string()),
                        _ => None,
                    };
                    if wanted {
                        dirty |= topics.insert(key);
                        if let Some(m) = book.filter(|m| stale_released.remove(m)) {
                            resnap.push(m);
                        }
                    } else if !warm.contains(&key) {
                        dirty |= topics.remove(&key);
                        if let Some(m) = book {
                            stale_released.insert(m.clone());
                            let _ = released.send(m);
                        }
                    }
                }
                if dirty && publish(&ctx, &topics, ttl, true).await {
                    dirty = false;
                }
            }
        }
        if !resnap.is_empty()
            && ctx
                .store
                .send_control(&Control::Snapshot(resnap.clone()))
                .await
                .is_ok()
        {
            resnap.clear();
        }
    }
}

/// Publishes the set (and wakes the leader if it changed); false if Redis did not take it.
async fn publish(ctx: &Ctx, topics: &BTreeSet<String>, ttl: Duration, changed: bool) -> bool {
    match ctx
        .store
        .publish_wanted(&ctx.status.node_id, topics, ttl)
        .await
    {
        Ok(()) => {
            if changed {
                let _ = ctx.store.send_control(&Control::Wanted).await;
            }
            true
        }
        Err(e) => {
            debug!(error = %e, "wanted topics not published; retrying");
            false
        }
    }
}
