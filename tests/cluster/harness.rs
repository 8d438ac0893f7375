//! The cluster tests' harness: relay nodes as child processes, a cuttable link to Redis, and
//! the cluster of three with a client on every node.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::testing::RedisServer;
use exchange_sim::{Sim, SimConfig};
use serde_json::Value;
use tokio::time::Instant;

use crate::common::{self, http_get, subscribe, Client};

/// The lease in these tests (the default is 5 s): failover is due within it plus 3 s.
pub const LEASE_SECONDS: f64 = 2.0;
pub const DEADLINE: Duration = Duration::from_secs(30);

/// One test at a time: each runs four processes on a two-core machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Node {
    pub child: Child,
    pub id: String,
    pub addr: SocketAddr,
    pub url: String,
}

impl Node {
    pub fn spawn(id: &str, redis: &str, upstream: &str, rest: &str) -> Node {
        let log = log_path(id);
        let stderr = std::fs::File::create(&log).unwrap();
        let lease = LEASE_SECONDS.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["--listen", "127.0.0.1:0", "--upstream-url", upstream])
            .envs([
                ("RELAY__CLUSTER__REDIS_URL", redis),
                ("RELAY__UPSTREAM__REST__BASE_URL", rest),
                ("RELAY__CLUSTER__NODE_ID", id),
                ("RELAY__CLUSTER__LEASE_SECONDS", lease.as_str()),
                ("RELAY__UPSTREAM__BACKOFF_BASE_SECONDS", "0.1"),
                ("RELAY__UPSTREAM__BACKOFF_CAP_SECONDS", "0.5"),
                ("RELAY__UPSTREAM__CLOSE_TIMEOUT_SECONDS", "1"),
                ("RELAY__FANOUT__LINGER_SECONDS", "0"),
                ("RELAY__DOWNSTREAM__SHUTDOWN_DRAIN_SECONDS", "2"),
                // A node frozen by SIGSTOP (seconds, more on a loaded machine) reads no pong
                // meanwhile: a long pong timeout keeps its clients through the freeze.
                ("RELAY__DOWNSTREAM__PONG_TIMEOUT_SECONDS", "25"),
                ("RELAY__WARM_PRIVATE_CHANNELS", "false"),
                ("RUST_LOG", "info"),
            ])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the relay binary starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{id} printed no ready line (see {})", log.display()));
        std::thread::spawn(move || for _ in lines {});
        let url = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ws="))
            .expect("ws= in the ready line")
            .to_owned();
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Node {
            child,
            id: id.to_owned(),
            addr,
            url,
        }
    }

    pub async fn status(&self) -> Value {
        let (code, body) = http_get(self.addr, "/status").await;
        assert_eq!(code, 200, "{}: /status {body}", self.id);
        serde_json::from_str(&body).unwrap()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {}", self.id);
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_path(id: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("cluster-{id}-{}.log", std::process::id()))
}

/// A TCP hop between one node and Redis that can be cut: a network partition. Cut, it
/// forwards nothing in either direction and closes nothing (a blackhole, as a dead link is);
/// the connections it had stay dead after `heal`, only new ones get through.
pub struct Link {
    pub url: String,
    /// Bumped by every cut and heal: a connection forwards only while the era it was accepted
    /// in is the current one and was not a cut.
    pub era: Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    pub async fn to(redis: &RedisServer) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let era = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let target = format!("127.0.0.1:{}", redis.port);
        let era_of_link = era.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let era = era_of_link.clone();
                let mine = era.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Link::pump(cr, sw, era.clone(), mine));
                tokio::spawn(Link::pump(sr, cw, era, mine));
            }
        });
        Link { url, era }
    }

    pub async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        era: Arc<std::sync::atomic::AtomicU64>,
        mine: u64,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        let mut live = mine % 2 == 0;
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            live = live && era.load(Ordering::SeqCst) == mine;
            if live && to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // A dead connection is held open: the node must notice by itself.
        if !live {
            std::future::pending::<()>().await;
        }
    }

    pub fn cut(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }
}

/// Three nodes, the simulator, Redis, and a client per node holding `BOOKS` books.
pub struct Cluster {
    pub sim: Sim,
    pub redis: RedisServer,
    /// Each node's way to Redis, when the test partitions them (`Cluster::start_linked`).
    pub links: Vec<Link>,
    pub nodes: Vec<Node>,
    pub clients: Vec<Client>,
    pub markets: Vec<String>,
    /// The most exchange sessions the simulator had open at once.
    pub max_sessions: Arc<AtomicUsize>,
    pub watching: Arc<AtomicBool>,
}

pub const BOOKS: usize = 3;

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::start_with(false).await
    }

    /// Each node reaches Redis through a [`Link`] of its own.
    pub async fn start_linked() -> Cluster {
        Cluster::start_with(true).await
    }

    pub async fn start_with(linked: bool) -> Cluster {
        let sim = common::sim(SimConfig {
            markets: 6,
            rate: 150.0,
            seed: 15,
            ping_interval: Duration::from_millis(500),
            ..Default::default()
        })
        .await;
        let redis = RedisServer::start();
        let mut links = Vec::new();
        if linked {
            for _ in 0..3 {
                links.push(Link::to(&redis).await);
            }
        }
        let nodes: Vec<Node> = ["n1", "n2", "n3"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let url = links.get(i).map_or_else(|| redis.url(), |l| l.url.clone());
                Node::spawn(id, &url, &sim.ws_url(), &sim.rest_url())
            })
            .collect();
        let markets: Vec<String> = sim.markets().into_iter().take(BOOKS).collect();
        let mut clients = Vec::new();
        for node in &nodes {
            let mut c = Client::connect(&node.url).await;
            c.send(subscribe(1, &["orderbook_delta"], &markets)).await;
            clients.push(c);
        }
        for c in &mut clients {
            c.until("every book's snapshot", |c| c.books.len() == BOOKS)
                .await;
        }
        let max_sessions = Arc::new(AtomicUsize::new(0));
        let watching = Arc::new(AtomicBool::new(true));
        let cluster = Cluster {
            sim,
            redis,
            links,
            nodes,
            clients,
            markets,
            max_sessions,
            watching,
        };
        cluster.watch_sessions();
        cluster
    }

    /// Samples the simulator's open sessions every 5 ms until the test ends.
    pub fn watch_sessions(&self) {
        let (max, watching) = (self.max_sessions.clone(), self.watching.clone());
        let admin = self.sim.admin_addr();
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let (_, body) = http_get(admin, "/admin/stats").await;
                if let Ok(stats) = serde_json::from_str::<Value>(&body) {
                    let open = stats["connections"].as_u64().unwrap_or(0) as usize;
                    max.fetch_max(open, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    pub fn sessions(&self) -> usize {
        self.sim.stats().connections
    }

    /// The node every live node names as leader, once they agree and it says so itself.
    pub async fn leader(&self, except: &[usize]) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut leaders = Vec::new();
            let mut named = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if except.contains(&i) {
                    continue;
                }
                let status = node.status().await;
                if status["cluster"]["role"] == "leader" {
                    leaders.push(i);
                }
                named.push(status["cluster"]["leader"].as_str().map(str::to_owned));
            }
            if let [one] = leaders[..] {
                if named
                    .iter()
                    .all(|n| n.as_deref() == Some(&self.nodes[one].id))
                {
                    return one;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single leader: {leaders:?} named {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every client in `which` has had a fresh snapshot of every book since
    /// `before` (their snapshot counts then); returns when the last one had.
    pub async fn fresh_snapshots(&mut self, which: &[usize], before: &[u64]) -> Instant {
        let deadline = Instant::now() + DEADLINE;
        let want = |c: &Client, i: usize| c.snapshots >= before[i] + BOOKS as u64;
        loop {
            let pending: Vec<usize> = which
                .iter()
                .copied()
                .filter(|&i| !want(&self.clients[i], i))
                .collect();
            if pending.is_empty() {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "clients {pending:?} never got fresh snapshots"
            );
            for i in pending {
                self.clients[i].step(Duration::from_millis(5)).await;
            }
        }
    }

    /// Pauses the simulator and waits until every client in `which` holds its true books.
    pub async fn converge(&mut self, which: &[usize]) {
        self.sim.pause();
        for &i in which {
            let (sim, markets) = (&self.sim, &self.markets);
            self.clients[i].converge(sim, markets).await;
        }
        self.sim.resume();
    }

    /// Waits until node `i` answers `/readyz` with 503 `redis unavailable`.
    pub async fn await_redis_unavailable(&mut self, i: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (code, body) = http_get(self.nodes[i].addr, "/readyz").await;
            if code == 503 && body.contains("redis unavailable") {
                return;
            }
            assert!(Instant::now() < deadline, "node {i} /readyz {code} {body}");
            self.read_for(Duration::from_millis(20)).await;
        }
    }

    pub fn snapshot_counts(&self) -> Vec<u64> {
        self.clients.iter().map(|c| c.snapshots).collect()
    }

    /// Keeps every client reading (the relays must not see them as slow) for `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            for c in &mut self.clients {
                c.step(Duration::from_millis(2)).await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.watching.store(false, Ordering::Relaxed);
    }
}

pub fn others(n: usize, except: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != except).collect()
}

/// Reads `private`'s fills (trade ids) until it holds `until` of them; it must stay connected.
pub async fn read_fills(private: &mut Client, fills: &mut Vec<String>, until: usize) {
    let deadline = Instant::now() + DEADLINE;
    while fills.len() < until {
        assert!(
            Instant::now() < deadline,
            "{} of {until} fills: {fills:?}",
            fills.len()
        );
        if let Some(f) = private.step(Duration::from_millis(50)).await {
            if f["type"] == "fill" {
                fills.push(f["msg"]["trade_id"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(private.ended, None, "the private subscriber was closed");
    }
}

/// With the market paused: `private` got every fill the exchange made since its first, once
/// each, in exchange order.
pub async fn every_fill_once_in_order(sim: &Sim, private: &mut Client, fills: &mut Vec<String>) {
    sim.pause();
    let truth = common::admin_trade_ids(sim).await;
    let start = truth.iter().position(|t| *t == fills[0]).unwrap();
    let want = truth[start..].to_vec();
    // Until the client is quiet for a moment, so that a missing fill and a repeat both show.
    let deadline = Instant::now() + DEADLINE;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(500) {
        if let Some(f) = private.step(Duration::from_millis(50)).await {
            quiet_since = Instant::now();
            if f["type"] == "fill" {
                fills.push(f["msg"]["trade_id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        *fills, want,
        "every fill, once, in exchange order (connection: {:?})",
        private.ended
    );
    sim.resume();
}
