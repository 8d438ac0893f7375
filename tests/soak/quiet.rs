//! The quiet point: the simulator paused, every relay caught up, and everything checked (books,
//! fills, each node's clients, topics, descriptors and memory), then the simulator resumed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use exchange_sim::Sim;
use parking_lot::Mutex;
use protocol::OrderBook;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

use crate::clients::{self, Ctl};
use crate::fills::{self, RefLog};
use crate::fleet::{Fleet, Slot};
use crate::front::Front;
use crate::relay_proc;
use crate::tally::Tally;
use crate::Client;

/// Leak check: a relay process's RSS at any quiet point may exceed its RSS once warm by
/// `leak_kib`; warm is the highest of its first `warm_points` quiet points.
#[derive(Clone, Copy, Debug)]
pub struct Band {
    pub warm_points: usize,
    pub leak_kib: u64,
}

impl Band {
    /// One relay: the same workload epoch after epoch, warm after one epoch. Measured climbs of
    /// the real relay over a process's life: up to 3.5 MiB (release), 1.5 MiB (debug).
    pub const SINGLE: Band = Band {
        warm_points: 1,
        leak_kib: 6 * 1024,
    };
    /// A cluster node's workload moves: its share of the clients changes as they move between
    /// nodes, and it leads (upstream session, writer, stored books) or follows. Warm is the
    /// highest of its first four quiet points, and the band wider (a follower's RSS measured
    /// 11.5 MiB with no clients, 21 MiB with ten and after a term as leader).
    pub const CLUSTER: Band = Band {
        warm_points: 4,
        leak_kib: 10 * 1024,
    };

    /// A process's RSS once warm, if it has been sampled that often.
    pub fn warm(&self, rss: &[u64]) -> Option<u64> {
        (rss.len() > self.warm_points)
            .then(|| rss[..self.warm_points].iter().copied().max().unwrap_or(0))
    }

    /// A process's largest climb above its warm RSS (0 when it never got warm).
    pub fn climb(&self, rss: &[u64]) -> i64 {
        match self.warm(rss) {
            Some(warm) => rss[self.warm_points..]
                .iter()
                .map(|&r| r as i64 - warm as i64)
                .max()
                .unwrap_or(0),
            None => 0,
        }
    }
}
/// Descriptors beyond one per client may exceed the baseline by this many (transient sockets).
const FD_SLACK: i64 = 8;

pub struct QuietPoint<'a> {
    pub sim: &'a Sim,
    pub clients: &'a [Client],
    pub reflog: &'a Mutex<RefLog>,
    pub tally: &'a Tally,
    pub quiet: &'a watch::Sender<bool>,
    pub epoch: &'a AtomicU64,
    pub band: Band,
}

impl QuietPoint<'_> {
    /// Pauses the simulator, waits for every relay to catch up, checks everything, resumes.
    pub async fn run(&self, fleet: &mut Fleet) {
        let tally = self.tally;
        tally.log("quiet point: pausing");
        let _ = self.quiet.send(true);
        self.sim.pause();
        let closing = self.epoch.load(Ordering::SeqCst);
        for slot in &fleet.slots {
            let Some(relay) = &slot.relay else { continue };
            if !await_ready(relay.proc.addr, Duration::from_secs(30)).await {
                tally.violation(format!(
                    "quiet point {closing}: {} /readyz not 200 within 30 s",
                    slot.name
                ));
            }
        }
        let truths: Arc<HashMap<String, OrderBook>> = Arc::new(
            self.sim
                .markets()
                .into_iter()
                .map(|m| {
                    let mut b = OrderBook::new(m.clone());
                    b.apply_snapshot(&self.sim.book(&m).unwrap()).unwrap();
                    (m, b)
                })
                .collect(),
        );
        let ref_fills: Arc<Vec<fills::FillSeen>> = Arc::new(
            self.reflog
                .lock()
                .fills
                .iter()
                .filter(|(e, _)| *e == closing)
                .map(|(_, f)| f.clone())
                .collect(),
        );
        let mut pending = Vec::new();
        for c in self.clients {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ctl = Ctl::Check {
                truths: truths.clone(),
                ref_fills: ref_fills.clone(),
                epoch: closing,
                reply: tx,
            };
            match timeout(Duration::from_secs(5), c.ctl.send(ctl)).await {
                Ok(Ok(())) => pending.push((c, rx)),
                Ok(Err(_)) => tally.violation(format!(
                    "quiet point {closing}: the task of {} has died",
                    c.spec.name
                )),
                Err(_) => tally.violation(format!(
                    "quiet point {closing}: {} took no check for 5 s",
                    c.spec.name
                )),
            }
        }
        // Per node: the topics its clients hold.
        let mut topics: Vec<BTreeSet<String>> = vec![BTreeSet::new(); fleet.slots.len()];
        for (c, rx) in pending {
            let Ok(Ok(r)) = timeout(clients::CATCH_UP + Duration::from_secs(10), rx).await else {
                tally.violation(format!(
                    "quiet point {closing}: {} never answered its check",
                    c.spec.name
                ));
                continue;
            };
            if !r.checked {
                continue;
            }
            if let Some(missing) = &r.replies_missing {
                tally.violation(format!(
                    "quiet point {closing}: {} never got its subscribed replies ({missing}) within {:?}",
                    c.spec.name,
                    clients::CATCH_UP
                ));
            }
            topics[r.node].extend(r.topics);
            tally.with(|t| {
                t.books_checked += r.books_checked;
                t.books_wrong += r.books_wrong.len() as u64;
                t.fills_checked += r.fills_checked;
                t.fills_missing_silent += r.fills_missing.len() as u64;
            });
            if !r.books_wrong.is_empty() {
                tally.violation(format!(
                    "quiet point {closing}: {} has wrong books {:?} after {:?}",
                    c.spec.name,
                    r.books_wrong,
                    clients::CATCH_UP
                ));
            }
            if !r.fills_missing.is_empty() {
                tally.violation(format!(
                    "quiet point {closing}: {} (subscribed before they were produced, still connected) never got {} of {} fills the simulator sent the reference, e.g. trade {}",
                    c.spec.name,
                    r.fills_missing.len(),
                    r.fills_checked,
                    r.fills_missing[0]
                ));
            }
            if r.fills_out_of_order > 0 {
                tally.violation(format!(
                    "quiet point {closing}: {} got {} fills out of order",
                    c.spec.name, r.fills_out_of_order
                ));
            }
        }
        for (i, slot) in fleet.slots.iter_mut().enumerate() {
            self.settle(closing, i, slot, &topics[i], &fleet.front)
                .await;
        }
        tally.with(|t| t.quiet_points += 1);
        let total: usize = topics.iter().map(BTreeSet::len).sum();
        tally.log(&format!(
            "quiet point {closing} done (events {}): clients {}, topics {total}, ref fills {}",
            self.sim.stats().events_generated,
            self.tally.live.load(Ordering::SeqCst),
            ref_fills.len()
        ));
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let _ = self.quiet.send(false);
        self.sim.resume();
    }

    /// One node's counts settle to what its clients hold; its descriptors and memory stay in
    /// their bands.
    async fn settle(
        &self,
        closing: u64,
        i: usize,
        slot: &mut Slot,
        topics: &BTreeSet<String>,
        front: &Front,
    ) {
        let tally = self.tally;
        let name = slot.name.clone();
        let Some(relay) = slot.relay.as_mut() else {
            return;
        };
        // No leaked sessions or subscriptions: the relay's counts settle to ours.
        let mut settled = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let live = front.live(i);
            if let Some(s) = status(relay.proc.addr).await {
                let clients = s["clients"].as_u64().unwrap_or(u64::MAX);
                let held = s["topics"].as_u64().unwrap_or(u64::MAX);
                settled = Some((clients, live, held, topics.len() as u64));
                if clients == live && held == topics.len() as u64 {
                    break;
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
        match settled {
            Some((c, l, h, t)) if c == l && h == t => {}
            other => tally.violation(format!(
                "quiet point {closing}: {name} (clients, topics) never settled to ours: (relay clients, ours, relay topics, ours) = {other:?}"
            )),
        }
        let s = relay_proc::sample(relay.proc.pid);
        let clients_now = front.live(i) as i64;
        let free_fds = s.fds as i64 - clients_now;
        match relay.fd_baseline {
            None => relay.fd_baseline = Some(free_fds),
            Some(fds0) if free_fds > fds0 + FD_SLACK => tally.violation(format!(
                "quiet point {closing}: {name} holds {free_fds} descriptors beyond its {clients_now} clients (baseline {fds0})"
            )),
            Some(_) => {}
        }
        // Once warm, a process's RSS has no reason to climb far, so a climb of several MiB is
        // a leak.
        relay.rss.push(s.rss_kib);
        if let Some(warm) = self.band.warm(&relay.rss) {
            let leak = self.band.leak_kib;
            if s.rss_kib > warm + leak {
                tally.violation(format!(
                    "quiet point {closing}: {name} RSS {} KiB, more than {leak} KiB above {warm} KiB, its RSS once warm (leak?)",
                    s.rss_kib
                ));
            }
        }
        slot.samples.push(s);
        tally.log(&format!(
            "quiet point {closing}: {name} rss {} KiB, fds {}, threads {}, clients {clients_now}, topics {}",
            s.rss_kib,
            s.fds,
            s.threads,
            topics.len()
        ));
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    };
    timeout(Duration::from_secs(3), fut).await.ok().flatten()
}

pub async fn await_ready(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(addr, "/readyz").await {
            return true;
        }
        sleep(Duration::from_millis(20)).await;
    }
    false
}

pub async fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let (code, body) = http_get(addr, "/status").await?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
