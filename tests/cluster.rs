//! Cluster mode end to end: three relay processes, a real `redis-server`, the simulator, and a
//! client on every node. The faults: kill -9 the leader, SIGSTOP it past its lease, restart
//! Redis, SIGTERM the leader, cut the leader's link to Redis. Every wait polls with a deadline.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::testing::RedisServer;
use common::{http_get, subscribe, Client};
use exchange_sim::{Sim, SimConfig};
use serde_json::Value;
use tokio::time::Instant;

/// The lease in these tests (the default is 5 s): failover is due within it plus 3 s.
const LEASE_SECONDS: f64 = 2.0;
const DEADLINE: Duration = Duration::from_secs(30);

/// One test at a time: each runs four processes on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Node {
    child: Child,
    id: String,
    addr: SocketAddr,
    url: String,
}

impl Node {
    fn spawn(id: &str, redis: &str, upstream: &str, rest: &str) -> Node {
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

    async fn status(&self) -> Value {
        let (code, body) = http_get(self.addr, "/status").await;
        assert_eq!(code, 200, "{}: /status {body}", self.id);
        serde_json::from_str(&body).unwrap()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {}", self.id);
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(id: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("cluster-{id}-{}.log", std::process::id()))
}

/// A TCP hop between one node and Redis that can be cut: a network partition. Cut, it
/// forwards nothing in either direction and closes nothing (a blackhole, as a dead link is);
/// the connections it had stay dead after `heal`, only new ones get through.
struct Link {
    url: String,
    /// Bumped by every cut and heal: a connection forwards only while the era it was accepted
    /// in is the current one and was not a cut.
    era: Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    async fn to(redis: &RedisServer) -> Link {
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

    async fn pump(
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

    fn cut(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }
}

/// Three nodes, the simulator, Redis, and a client per node holding `BOOKS` books.
struct Cluster {
    sim: Sim,
    redis: RedisServer,
    /// Each node's way to Redis, when the test partitions them (`Cluster::start_linked`).
    links: Vec<Link>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    markets: Vec<String>,
    /// The most exchange sessions the simulator had open at once.
    max_sessions: Arc<AtomicUsize>,
    watching: Arc<AtomicBool>,
}

const BOOKS: usize = 3;

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(false).await
    }

    /// Each node reaches Redis through a [`Link`] of its own.
    async fn start_linked() -> Cluster {
        Cluster::start_with(true).await
    }

    async fn start_with(linked: bool) -> Cluster {
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
    fn watch_sessions(&self) {
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

    fn sessions(&self) -> usize {
        self.sim.stats().connections
    }

    /// The node every live node names as leader, once they agree and it says so itself.
    async fn leader(&self, except: &[usize]) -> usize {
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
    async fn fresh_snapshots(&mut self, which: &[usize], before: &[u64]) -> Instant {
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
    async fn converge(&mut self, which: &[usize]) {
        self.sim.pause();
        for &i in which {
            let (sim, markets) = (&self.sim, &self.markets);
            self.clients[i].converge(sim, markets).await;
        }
        self.sim.resume();
    }

    /// Waits until node `i` answers `/readyz` with 503 `redis unavailable`.
    async fn await_redis_unavailable(&mut self, i: usize) {
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

    fn snapshot_counts(&self) -> Vec<u64> {
        self.clients.iter().map(|c| c.snapshots).collect()
    }

    /// Keeps every client reading (the relays must not see them as slow) for `d`.
    async fn read_for(&mut self, d: Duration) {
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

fn others(n: usize, except: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != except).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_the_leader_fails_over_within_the_lease_and_3_s_and_books_stay_true() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1, "one exchange session for the cluster");

    let before = c.snapshot_counts();
    let killed = Instant::now();
    c.nodes[leader].child.kill().unwrap();
    let survivors = others(3, leader);
    let flowing = c.fresh_snapshots(&survivors, &before).await;
    let failover = flowing - killed;
    println!("failover after kill -9: {failover:?} (lease {LEASE_SECONDS} s)");
    assert!(
        failover <= Duration::from_secs_f64(LEASE_SECONDS + 3.0),
        "data flowing again after {failover:?}"
    );
    let new_leader = c.leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    c.converge(&survivors).await;
    assert_eq!(c.sessions(), 1);
    assert_eq!(
        c.max_sessions.load(Ordering::Relaxed),
        1,
        "the simulator saw two sessions at once"
    );
}

/// A private subscriber on a surviving node keeps every fill through a failover: the new leader
/// backfills, over REST, what the account did between the old leader's last entry and its own
/// first (fills made in that gap by a burst), leaving out those already relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_during_a_failover_reach_private_subscribers_once_in_order() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let mut private = Client::connect(&c.nodes[node].url).await;
    private
        .send(serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    let mut fills: Vec<String> = Vec::new();
    let read = read_fills;
    read(&mut private, &mut fills, 3).await;
    c.nodes[leader].child.kill().unwrap();
    c.sim.fault(exchange_sim::Fault::Burst { count: 2000 });
    let new_leader = c.leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    let have = fills.len();
    read(&mut private, &mut fills, have + 3).await;
    every_fill_once_in_order(&c.sim, &mut private, &mut fills).await;
}

/// Reads `private`'s fills (trade ids) until it holds `until` of them; it must stay connected.
async fn read_fills(private: &mut Client, fills: &mut Vec<String>, until: usize) {
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
async fn every_fill_once_in_order(sim: &Sim, private: &mut Client, fills: &mut Vec<String>) {
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

/// A follower cut off from Redis for longer than the leader's book refresh (1 s) finds, when
/// the link heals, stored books that stand past its place in the stream. It must read on from
/// its place, not from the books': the fills in between reach its private subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_redis_outage_reads_on_from_its_place_and_misses_no_fill() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_linked().await;
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let mut private = Client::connect(&c.nodes[node].url).await;
    private
        .send(serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    let mut fills: Vec<String> = Vec::new();
    read_fills(&mut private, &mut fills, 3).await;
    c.links[node].cut();
    c.await_redis_unavailable(node).await;
    // Two refreshes of the stored books meanwhile, and fills among the entries they pass.
    c.sim.fault(exchange_sim::Fault::Burst { count: 300 });
    c.read_for(Duration::from_millis(2500)).await;
    c.links[node].heal();
    common::await_ready(c.nodes[node].addr, 200).await;
    let have = fills.len();
    read_fills(&mut private, &mut fills, have + 3).await;
    every_fill_once_in_order(&c.sim, &mut private, &mut fills).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_finds_itself_fenced_writes_nothing_and_closes_its_session()
{
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let old_epoch = c.nodes[leader].status().await["cluster"]["epoch"]
        .as_u64()
        .unwrap();
    let before = c.snapshot_counts();
    c.nodes[leader].signal("STOP");
    let survivors = others(3, leader);
    c.fresh_snapshots(&survivors, &before).await;
    let new_leader = c.leader(&[leader]).await;
    // The paused process still holds its TCP session: the documented overlap.
    assert_eq!(c.sessions(), 2);

    c.nodes[leader].signal("CONT");
    let resumed = Instant::now();
    let deadline = resumed + DEADLINE;
    while c.sessions() != 1 {
        assert!(
            Instant::now() < deadline,
            "the fenced leader kept its session"
        );
        c.read_for(Duration::from_millis(10)).await;
    }
    println!(
        "fenced leader closed its session {:?} after SIGCONT",
        resumed.elapsed()
    );
    assert!(resumed.elapsed() < Duration::from_secs(3));
    let status = c.nodes[leader].status().await;
    assert_eq!(status["cluster"]["role"], "follower", "{status}");
    assert_eq!(c.leader(&[]).await, new_leader);

    // Nothing of the old epoch after the new one's first entry.
    let store = cluster::Store::open(&c.redis.url(), Duration::from_millis(100)).unwrap();
    let mut epochs = Vec::new();
    let mut after = "0-0".to_owned();
    loop {
        let batch = store.read(&after, 1000).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.id.clone();
        epochs.extend(batch.iter().map(|r| r.epoch));
    }
    let first_new = epochs
        .iter()
        .position(|&e| e > old_epoch)
        .expect("the new leader wrote");
    assert!(
        epochs[first_new..].iter().all(|&e| e > old_epoch),
        "the fenced leader wrote after its successor"
    );
    c.converge(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_a_redis_outage_and_recovers_by_itself_when_redis_returns() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    c.leader(&[]).await;
    c.redis.kill();
    for i in 0..3 {
        c.await_redis_unavailable(i).await;
    }
    let before = c.snapshot_counts();
    c.redis = RedisServer::start_on(c.redis.port);
    c.fresh_snapshots(&[0, 1, 2], &before).await;
    for node in &c.nodes {
        common::await_ready(node.addr, 200).await;
    }
    c.leader(&[]).await;
    c.converge(&[0, 1, 2]).await;
    for (i, client) in c.clients.iter().enumerate() {
        assert!(client.ended.is_none(), "client {i} lost its connection");
    }
}

/// A successor that started after fills the stream already carried (a node restarted a moment
/// ago: its history is younger than the backfill's window) must not publish them again: the
/// backfill leaves out what the stream holds, not only what the successor itself relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_younger_than_the_backfill_window_publishes_no_fill_twice() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let [node, young] = others(3, leader)[..] else {
        unreachable!()
    };
    let mut private = Client::connect(&c.nodes[node].url).await;
    private
        .send(serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    let mut fills: Vec<String> = Vec::new();
    read_fills(&mut private, &mut fills, 3).await;
    // Fills the leader relays, then a fresh node in the third place, then the leader goes while
    // the subscriber's node is frozen: the fresh node, with none of those fills in its history,
    // is the only one left to take over, within the backfill's window of them.
    c.sim.fault(exchange_sim::Fault::Burst { count: 500 });
    let have = fills.len();
    read_fills(&mut private, &mut fills, have + 5).await;
    c.nodes[young].child.kill().unwrap();
    c.nodes[young] = Node::spawn("n4", &c.redis.url(), &c.sim.ws_url(), &c.sim.rest_url());
    c.nodes[node].signal("STOP");
    c.nodes[leader].child.kill().unwrap();
    let new_leader = c.leader(&[leader, node]).await;
    assert_eq!(new_leader, young);
    c.nodes[node].signal("CONT");
    let have = fills.len();
    read_fills(&mut private, &mut fills, have + 3).await;
    every_fill_once_in_order(&c.sim, &mut private, &mut fills).await;
}

/// Redis restarted empty has forgotten the lease and its epoch: a follower can take a fresh
/// lease while the old leader, not yet told, still holds its session. The new leader must not
/// connect before the old lease has run out on the old leader's own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_exchange_never_sees_two_sessions() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    for round in 1..=4 {
        c.leader(&[]).await;
        let before = c.snapshot_counts();
        c.redis.restart();
        c.fresh_snapshots(&[0, 1, 2], &before).await;
        c.leader(&[]).await;
        assert_eq!(
            c.max_sessions.load(Ordering::Relaxed),
            1,
            "two sessions at once after Redis restart {round}"
        );
    }
    c.converge(&[0, 1, 2]).await;
}

/// After Redis restarted empty, nobody led for a while (the old leader's lease running out on
/// its clock, then the new one's wait): the first leader backfills the fills of that gap before
/// its live ones, and a later successor publishes none of them again. The new stream holds each
/// fill at most once, in exchange order, and with the fills relayed before the restart, every
/// fill the exchange made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_stream_carries_each_fill_once_in_order() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let sub = serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}});
    let mut private = Client::connect(&c.nodes[node].url).await;
    private.send(sub.clone()).await;
    let mut before: Vec<String> = Vec::new();
    read_fills(&mut private, &mut before, 3).await;

    let snapshots = c.snapshot_counts();
    c.redis.restart();
    c.sim.fault(exchange_sim::Fault::Burst { count: 300 });
    c.fresh_snapshots(&[0, 1, 2], &snapshots).await;
    // What the node delivered before it noticed: the subscriber is then told of the loss.
    let deadline = Instant::now() + DEADLINE;
    while private.ended.is_none() {
        assert!(Instant::now() < deadline, "the loss was never announced");
        if let Some(f) = private.step(Duration::from_millis(50)).await {
            if f["type"] == "fill" {
                before.push(f["msg"]["trade_id"].as_str().unwrap().to_owned());
            }
        }
    }
    // Someone still wants fills, and the leader that took over after the restart goes too.
    let mut again = Client::connect(&c.nodes[node].url).await;
    again.send(sub).await;
    let mut after: Vec<String> = Vec::new();
    read_fills(&mut again, &mut after, 3).await;
    let first = c.leader(&[]).await;
    c.nodes[first].child.kill().unwrap();
    c.leader(&[first]).await;
    let have = after.len();
    read_fills(&mut again, &mut after, have + 3).await;

    c.sim.pause();
    let truth = common::admin_trade_ids(&c.sim).await;
    let at = |id: &String| {
        truth
            .iter()
            .position(|t| t == id)
            .expect("a fill the exchange made")
    };
    let store = cluster::Store::open(&c.redis.url(), Duration::from_millis(100)).unwrap();
    let mut stream: Vec<String> = Vec::new();
    let mut from = "0-0".to_owned();
    loop {
        let batch = store.read(&from, 1000).await.unwrap();
        let Some(last) = batch.last() else { break };
        from = last.id.clone();
        stream.extend(batch.into_iter().filter_map(|r| match r.event {
            upstream::Event::Data(d) if d.channel == protocol::Channel::Fill => {
                let msg: serde_json::Value = serde_json::from_slice(&d.body).ok()?;
                Some(msg["trade_id"].as_str()?.to_owned())
            }
            _ => None,
        }));
    }
    let order: Vec<usize> = stream.iter().map(at).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "the new stream repeats fills or publishes them out of exchange order: {order:?}"
    );
    let start = at(&before[0]);
    let held: std::collections::HashSet<&String> = before.iter().chain(&stream).collect();
    let missing: Vec<usize> = (start..truth.len())
        .filter(|&i| !held.contains(&truth[i]))
        .collect();
    assert!(
        missing.is_empty(),
        "fills in neither: {missing:?} of {}",
        truth.len()
    );
    c.sim.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_the_session_off_within_2_s() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let before = c.snapshot_counts();
    let stopped = Instant::now();
    c.nodes[leader].signal("TERM");
    let survivors = others(3, leader);
    let flowing = c.fresh_snapshots(&survivors, &before).await;
    let handoff = flowing - stopped;
    println!("handoff after SIGTERM: {handoff:?}");
    assert!(
        handoff <= Duration::from_secs(2),
        "handoff took {handoff:?}"
    );
    assert_eq!(
        c.clients[leader].ended().await,
        common::Ended::Close(1012, "service restart".into())
    );
    let deadline = Instant::now() + DEADLINE;
    while !c.nodes[leader].exited() {
        assert!(Instant::now() < deadline, "the stopped node never exited");
        c.read_for(Duration::from_millis(20)).await;
    }
    c.leader(&[leader]).await;
    c.converge(&survivors).await;
    assert_eq!(c.sessions(), 1);

    // A late joiner in its place starts from the books stored in Redis and the stream after
    // them: its client's books come out true too.
    c.read_for(Duration::from_millis(1500)).await;
    c.nodes[leader] = Node::spawn("n4", &c.redis.url(), &c.sim.ws_url(), &c.sim.rest_url());
    let mut late = Client::connect(&c.nodes[leader].url).await;
    late.send(subscribe(1, &["orderbook_delta"], &c.markets))
        .await;
    late.until("every book's snapshot", |l| l.books.len() == BOOKS)
        .await;
    c.clients[leader] = late;
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1, "the late joiner did not open a session");
}

/// A leader cut off from Redis while it still reaches the exchange closes its session on its
/// own clock before anyone can take the lease: the exchange never sees two sessions. Its
/// successor serves the other nodes; once the link heals, the cut node rejoins by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_redis_closes_its_session_before_its_successor_opens_one() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_linked().await;
    let leader = c.leader(&[]).await;
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1);

    let before = c.snapshot_counts();
    let cut = Instant::now();
    c.links[leader].cut();
    let survivors = others(3, leader);
    let flowing = c.fresh_snapshots(&survivors, &before).await;
    println!("failover after the partition: {:?}", flowing - cut);
    assert!(flowing - cut <= Duration::from_secs_f64(LEASE_SECONDS + 3.0));
    let new_leader = c.leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    c.await_redis_unavailable(leader).await;
    assert_eq!(c.sessions(), 1);
    assert_eq!(
        c.max_sessions.load(Ordering::Relaxed),
        1,
        "the simulator saw the cut leader's session beside its successor's"
    );

    let before = c.snapshot_counts();
    c.links[leader].heal();
    c.fresh_snapshots(&[leader], &before).await;
    common::await_ready(c.nodes[leader].addr, 200).await;
    assert_eq!(c.leader(&[]).await, new_leader);
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1);
    assert_eq!(c.max_sessions.load(Ordering::Relaxed), 1);
    for (i, client) in c.clients.iter().enumerate() {
        assert!(client.ended.is_none(), "client {i} lost its connection");
    }
}
