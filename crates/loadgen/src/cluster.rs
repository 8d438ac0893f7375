//! The cluster targets: a real `redis-server` and two relay nodes in cluster mode sharing it, so
//! the suite can measure what serving from the Redis stream costs (`relay-follower`,
//! `relay-leader`) against a single relay on the same feed.
//!
//! Node `a` starts first and is awaited as leader, then node `b` as follower: which node is which
//! is fixed, and no run measures an election. Every process is a [`ChildProc`], killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::admin;
use crate::children::{self, ChildProc};

/// How long a node may take to report its role after answering `/healthz`.
const ROLE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a cluster needs besides the upstream: where the binaries are and what every node gets.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Directory holding the `relay` binary.
    pub bin_dir: PathBuf,
    /// The `redis-server` binary (a bare name is looked up in `PATH`).
    pub redis_server: PathBuf,
    /// Extra arguments and environment for both nodes.
    pub relay_args: Vec<String>,
    pub relay_env: Vec<(String, String)>,
    /// Children's logs (and their working directory); file names start with `tag`.
    pub log_dir: PathBuf,
    pub tag: String,
}

/// One relay node of the cluster.
pub struct Node {
    pub proc: ChildProc,
    pub addr: SocketAddr,
}

impl Node {
    pub fn url(&self) -> String {
        format!("ws://{}/trade-api/ws/v2", self.addr)
    }
}

/// Redis and two nodes: `leader` holds the lease and the upstream, `follower` serves from the
/// stream only.
pub struct Cluster {
    pub redis: ChildProc,
    pub leader: Node,
    pub follower: Node,
    /// Redis's working directory and the nodes' config files; removed by [`Cluster::stop`] and
    /// on drop.
    dir: ScratchDir,
}

impl Cluster {
    /// Starts Redis, then node `a` until it leads, then node `b` until it follows.
    pub async fn start(spec: &ClusterSpec, upstream_url: &str) -> Result<Cluster> {
        let dir = ScratchDir::new()?;
        let log = |what: &str| spec.log_dir.join(format!("{}-{what}.log", spec.tag));
        let redis_addr = children::free_addr()?;
        let args: Vec<String> = [
            "--port",
            &redis_addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            // No persistence: nothing on disk competes with the run.
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
            "--dir",
            &dir.0.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut redis = ChildProc::spawn(
            "redis-server",
            &spec.redis_server,
            &args,
            &[],
            &dir.0,
            &log("redis"),
        )?;
        redis.wait_ready(redis_addr, None).await?;
        let redis_url = format!("redis://{redis_addr}");
        let leader =
            start_node(spec, &dir.0, "a", &redis_url, upstream_url, &log("node-a")).await?;
        await_role(&leader, "leader").await?;
        let follower =
            start_node(spec, &dir.0, "b", &redis_url, upstream_url, &log("node-b")).await?;
        await_role(&follower, "follower").await?;
        Ok(Cluster {
            redis,
            leader,
            follower,
            dir,
        })
    }

    /// The leader, or the follower.
    pub fn node(&self, leader: bool) -> &Node {
        if leader {
            &self.leader
        } else {
            &self.follower
        }
    }

    /// Kills the nodes, then Redis, and removes the scratch directory.
    pub async fn stop(self) {
        self.follower.proc.stop().await;
        self.leader.proc.stop().await;
        self.redis.stop().await;
        drop(self.dir);
    }
}

/// Writes node `id`'s config (a `[cluster]` section only: every other setting is the built-in
/// default, as for the single relay) and starts it.
async fn start_node(
    spec: &ClusterSpec,
    dir: &Path,
    id: &str,
    redis_url: &str,
    upstream_url: &str,
    log: &Path,
) -> Result<Node> {
    let config = dir.join(format!("node-{id}.toml"));
    let text = format!("[cluster]\nredis_url = \"{redis_url}\"\nnode_id = \"bench-{id}\"\n");
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let bin = children::sibling(&spec.bin_dir, "relay")?;
    let addr = children::free_addr()?;
    let mut args: Vec<String> = [
        "--config",
        &config.to_string_lossy(),
        "--listen",
        &addr.to_string(),
        "--upstream-url",
        upstream_url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(spec.relay_args.iter().cloned());
    let mut env = vec![(
        // As for the single relay (see `suite::start_server`): the upstream carries exactly
        // what the clients asked for.
        "RELAY__WARM_PRIVATE_CHANNELS".to_owned(),
        "false".to_owned(),
    )];
    env.extend(spec.relay_env.iter().cloned());
    let mut proc = ChildProc::spawn(
        &format!("relay-{id}"),
        &bin,
        &args,
        &env,
        &spec.log_dir,
        log,
    )?;
    proc.wait_ready(addr, Some("/healthz")).await?;
    Ok(Node { proc, addr })
}

/// Polls the node's `/status` until `cluster.role` is `role`.
async fn await_role(node: &Node, role: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + ROLE_TIMEOUT;
    let mut last = String::new();
    loop {
        if let Ok((200, body)) =
            admin::http("GET", &format!("http://{}", node.addr), "/status", None).await
        {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if v["cluster"]["role"] == role {
                return Ok(());
            }
            last = body;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} not {role} within {ROLE_TIMEOUT:?} (last /status: {last})",
                node.proc.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir> {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("loadgen-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
