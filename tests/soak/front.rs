//! How clients reach the relays: a stand-in for the load balancer in front of them.
//!
//! One relay: every connection goes to it. A cluster: each connection goes to a node that is up,
//! picked at random, so the population spreads over every node and moves when one goes. A node
//! the soak kills or freezes is *lost*: its generation changes before the signal is sent, and
//! every client connected to it drops that connection and reconnects elsewhere (as a load
//! balancer's health check would make it); an abrupt end on a lost node is expected.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

pub struct Node {
    pub url: String,
    /// Whether new connections may go here.
    up: AtomicBool,
    /// Bumped when the node is lost (killed, frozen).
    generation: watch::Sender<u64>,
    /// Connections (well-behaved and hostile) open to this node now.
    live: AtomicU64,
}

pub struct Front {
    nodes: Vec<Node>,
    /// Until then, a `private messages lost` close is an announced loss, not a violation: Redis
    /// restarted empty and took the stream's history with it.
    loss_allowed_until: Mutex<Option<Instant>>,
}

/// Where one connection goes.
pub struct Pick {
    pub node: usize,
    pub url: String,
    /// Changes when that node is lost.
    pub generation: watch::Receiver<u64>,
}

impl Front {
    pub fn new(urls: Vec<String>) -> Front {
        Front {
            nodes: urls
                .into_iter()
                .map(|url| Node {
                    url,
                    up: AtomicBool::new(true),
                    generation: watch::channel(0).0,
                    live: AtomicU64::new(0),
                })
                .collect(),
            loss_allowed_until: Mutex::new(None),
        }
    }

    /// A node that is up, at random (any node when none is).
    pub fn pick(&self, rng: &mut impl Rng) -> Pick {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up.load(Ordering::SeqCst))
            .collect();
        let node = if up.is_empty() {
            rng.gen_range(0..self.nodes.len())
        } else {
            up[rng.gen_range(0..up.len())]
        };
        let n = &self.nodes[node];
        Pick {
            node,
            url: n.url.clone(),
            generation: n.generation.subscribe(),
        }
    }

    /// No new connections to node `i` (it is stopping; its clients are closed by it).
    pub fn down(&self, i: usize) {
        self.nodes[i].up.store(false, Ordering::SeqCst);
    }

    /// Node `i` is about to be killed or frozen: its clients leave it.
    pub fn lose(&self, i: usize) {
        self.down(i);
        self.nodes[i].generation.send_modify(|g| *g += 1);
    }

    pub fn up(&self, i: usize) {
        self.nodes[i].up.store(true, Ordering::SeqCst);
    }

    pub fn opened(&self, i: usize) {
        self.nodes[i].live.fetch_add(1, Ordering::SeqCst);
    }

    pub fn closed(&self, i: usize) {
        self.nodes[i].live.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn live(&self, i: usize) -> u64 {
        self.nodes[i].live.load(Ordering::SeqCst)
    }

    pub fn allow_loss_until(&self, until: Instant) {
        *self.loss_allowed_until.lock() = Some(until);
    }

    pub fn loss_allowed(&self) -> bool {
        self.loss_allowed_until
            .lock()
            .is_some_and(|t| Instant::now() < t)
    }
}
