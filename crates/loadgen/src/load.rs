//! A population of clients against one URL, and the measurement windows taken over it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Client, Plan};
use crate::procstat::{self, ProcDelta, ProcSample};
use crate::stats::{Class, Connections, Percentiles, Stats, Traffic};

/// Smallest server CPU time over which a per-frame figure is reported (10 ticks of 10 ms).
const MIN_CPU_SECS: f64 = 0.1;
/// File descriptors kept free for everything that is not a client socket.
const SPARE_FDS: u64 = 256;

/// A load: how many clients, how they behave, what they subscribe to.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: String,
    pub clients: usize,
    /// New connections per second; 0 opens them all at once.
    pub connect_rate: f64,
    /// The commands clients send once connected (verbatim): client `i` sends the `i mod len`-th
    /// (none when empty).
    pub subscribe: Vec<String>,
    pub stalled_share: f64,
    pub slow_share: f64,
    /// Frames per second a slow client reads.
    pub slow_rate: f64,
    pub reconnect_share: f64,
    /// A reconnecting client's session lasts a uniform random time in this range, seconds.
    pub reconnect_secs: (f64, f64),
    /// Loopback source addresses, used round-robin; empty lets the kernel choose.
    pub source_addrs: Vec<Ipv4Addr>,
    pub read_buffer_bytes: usize,
    /// Snapshots per client that mark recovery after an upstream fault (its book count).
    pub expected_snapshots: u32,
    /// Seeds the assignment of behaviours to clients.
    pub seed: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            url: String::new(),
            clients: 1,
            connect_rate: 1000.0,
            subscribe: Vec::new(),
            stalled_share: 0.0,
            slow_share: 0.0,
            slow_rate: 10.0,
            reconnect_share: 0.0,
            reconnect_secs: (1.0, 5.0),
            source_addrs: Vec::new(),
            read_buffer_bytes: 16 * 1024,
            expected_snapshots: 1,
            seed: 1,
        }
    }
}

impl LoadConfig {
    /// The behaviour of every client, shuffled so each class spreads over the ramp.
    fn classes(&self) -> Result<Vec<Class>> {
        let shares = [self.stalled_share, self.slow_share, self.reconnect_share];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 {
            bail!("client shares must be in [0, 1] and sum to at most 1, got {shares:?}");
        }
        let n = self.clients;
        let count = |share: f64| (share * n as f64).round() as usize;
        let mut classes = Vec::with_capacity(n);
        classes.extend(std::iter::repeat_n(
            Class::Stalled,
            count(self.stalled_share),
        ));
        classes.extend(std::iter::repeat_n(Class::Slow, count(self.slow_share)));
        classes.extend(std::iter::repeat_n(
            Class::Reconnecting,
            count(self.reconnect_share),
        ));
        classes.truncate(n);
        classes.resize(n, Class::Normal);
        classes.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed));
        Ok(classes)
    }
}

/// Parses `127.0.0.1-127.0.0.20` (a range) or `127.0.0.1,127.0.0.2` (a list).
pub fn parse_source_addrs(spec: &str) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad address {a:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad address range {part:?}");
            }
            out.extend((a..=b).map(Ipv4Addr::from));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part:?}"))?,
            );
        }
    }
    Ok(out)
}

/// Raises this process's open-file limit to hold `sockets` more sockets, up to the hard limit.
pub fn raise_nofile(sockets: u64) -> Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .context("reading RLIMIT_NOFILE")?;
    let want = (sockets + SPARE_FDS).min(hard).max(soft);
    if want > soft {
        rlimit::Resource::NOFILE
            .set(want, hard)
            .context("raising RLIMIT_NOFILE")?;
    }
    if sockets + SPARE_FDS > want {
        tracing::warn!(
            sockets,
            limit = want,
            "open-file limit below the client count"
        );
    }
    Ok(want)
}

/// Resolves the host and port of a `ws://` URL.
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("only ws:// URLs are supported, got {url:?}"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut addrs = tokio::net::lookup_host(hostport.as_str())
        .await
        .with_context(|| format!("resolving {hostport}"))?;
    addrs
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{hostport} has no IPv4 address"))
}

/// A running population of clients.
pub struct Load {
    stats: Arc<Stats>,
    /// Cancels the ramp and every client; owned here, cancelled by [`Load::stop`].
    cancel: CancellationToken,
    /// Tracks the ramp task and every client task, so `stop` can wait for them all.
    tasks: TaskTracker,
    ramp: tokio::task::JoinHandle<()>,
    clients: usize,
    started: Instant,
}

/// The measurement of one window.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub window_secs: f64,
    pub clients: usize,
    pub total: Traffic,
    pub per_class: std::collections::BTreeMap<String, Traffic>,
    pub connections: Connections,
    /// Seconds from the load's start until every client had received data, if they all did.
    pub all_receiving_secs: Option<f64>,
    pub processes: Vec<ProcDelta>,
    /// Server CPU per delivered frame, µs, for the first watched process.
    pub cpu_per_frame_us: Option<f64>,
    /// Cores busy on the whole machine during the window, and the part not used by the
    /// watched processes: other work competing for the CPU (the machine is shared).
    pub host_busy_cores: Option<f64>,
    pub other_cores: Option<f64>,
}

/// An open measurement window: started samples of the watched processes.
pub struct Window {
    started: Instant,
    procs: Vec<(String, u32, ProcSample)>,
    host_busy: Option<f64>,
}

impl Load {
    /// Starts the ramp; returns at once.
    pub async fn start(config: LoadConfig) -> Result<Load> {
        let classes = config.classes()?;
        raise_nofile(config.clients as u64)?;
        let target = resolve(&config.url).await?;
        let plan = Arc::new(Plan {
            url: config.url.clone(),
            target,
            subscribe: config.subscribe.clone(),
            read_buffer_bytes: config.read_buffer_bytes,
            slow_rate: config.slow_rate,
            reconnect_secs: config.reconnect_secs,
            expected_snapshots: config.expected_snapshots.max(1),
        });
        let stats = Arc::new(Stats::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let sources: Vec<Option<IpAddr>> = if config.source_addrs.is_empty() {
            vec![None]
        } else {
            config
                .source_addrs
                .iter()
                .map(|a| Some(IpAddr::V4(*a)))
                .collect()
        };
        let ramp = {
            let (stats, cancel, tasks2) = (stats.clone(), cancel.clone(), tasks.clone());
            let rate = config.connect_rate;
            tasks.spawn(async move {
                let started = tokio::time::Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let mut spawned = 0usize;
                while spawned < classes.len() {
                    let due = if rate <= 0.0 {
                        classes.len()
                    } else {
                        ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(classes.len())
                    };
                    while spawned < due {
                        let client = Client {
                            index: spawned,
                            class: classes[spawned],
                            source: sources[spawned % sources.len()],
                            plan: plan.clone(),
                            stats: stats.clone(),
                            cancel: cancel.child_token(),
                        };
                        tasks2.spawn(client.run());
                        spawned += 1;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                }
            })
        };
        Ok(Load {
            stats,
            cancel,
            tasks,
            ramp,
            clients: config.clients,
            started: Instant::now(),
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn open(&self) -> u64 {
        self.stats.open.load(Ordering::Relaxed)
    }

    pub fn receiving(&self) -> u64 {
        self.stats.receiving.load(Ordering::Relaxed)
    }

    /// Waits until every client was started, then until all are open (or `limit` passes).
    pub async fn ramped(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let _ = tokio::time::timeout_at(deadline, &mut self.ramp).await;
        while self.open() < self.clients as u64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every client has received data, or `limit` passes.
    pub async fn all_receiving(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.receiving() >= self.clients as u64 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts counting frames and samples the watched processes `(name, pid)`.
    pub fn begin_window(&self, watch: &[(String, u32)]) -> Window {
        let procs = watch
            .iter()
            .filter_map(|(n, p)| procstat::sample(*p).map(|s| (n.clone(), *p, s)))
            .collect();
        self.stats.begin_window();
        Window {
            started: Instant::now(),
            procs,
            host_busy: procstat::host_busy_secs(),
        }
    }

    /// Closes a window: traffic inside it, connection figures so far, the processes' deltas.
    pub fn end_window(&self, window: Window) -> Measurement {
        let secs = window.started.elapsed().as_secs_f64();
        let (total, per_class) = self.stats.end_window(secs);
        let processes: Vec<ProcDelta> = window
            .procs
            .iter()
            .filter_map(|(name, pid, a)| {
                procstat::sample(*pid).map(|b| ProcDelta::between(name, *pid, *a, b, secs))
            })
            .collect();
        let cpu_per_frame_us = processes
            .first()
            // Below 10 clock ticks the figure is mostly rounding: leave it out.
            .filter(|p| total.frames > 0 && p.cpu_secs >= MIN_CPU_SECS)
            .map(|p| p.cpu_secs * 1e6 / total.frames as f64);
        let host_busy_cores = window
            .host_busy
            .zip(procstat::host_busy_secs())
            .map(|(a, b)| (b - a).max(0.0) / secs.max(1e-9));
        let watched: f64 = processes.iter().map(|p| p.cpu_cores).sum();
        let other_cores = host_busy_cores.map(|h| (h - watched).max(0.0));
        let connections = self.stats.connections();
        let all_receiving_secs = (connections.receiving >= self.clients as u64).then(|| {
            let last = self.stats.last_first_data_ns();
            let start_ns =
                crate::stats::wall_ns().saturating_sub(self.started.elapsed().as_nanos() as u64);
            last.saturating_sub(start_ns) as f64 / 1e9
        });
        Measurement {
            window_secs: secs,
            clients: self.clients,
            total,
            per_class,
            connections,
            all_receiving_secs,
            processes,
            cpu_per_frame_us,
            host_busy_cores,
            other_cores,
        }
    }

    /// Marks an upstream fault now: clients time their next `expected_snapshots` snapshots.
    pub fn mark_fault(&self) -> u64 {
        let now = crate::stats::wall_ns();
        self.stats.fault_epoch_ns.store(now, Ordering::Relaxed);
        now
    }

    /// Time from the fault to each client's fresh snapshots.
    pub fn recovery(&self) -> Percentiles {
        self.stats.recovery()
    }

    /// Cancels every client (each sends a close frame, briefly) and waits for them.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_ranges() {
        let a = parse_source_addrs("127.0.0.1-127.0.0.3,127.0.1.1").unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a[2], Ipv4Addr::new(127, 0, 0, 3));
        assert!(parse_source_addrs("127.0.0.5-127.0.0.1").is_err());
    }

    #[test]
    fn assigns_classes_by_share() {
        let c = LoadConfig {
            clients: 100,
            stalled_share: 0.1,
            slow_share: 0.2,
            ..LoadConfig::default()
        };
        let classes = c.classes().unwrap();
        let n = |k| classes.iter().filter(|c| **c == k).count();
        assert_eq!(
            (n(Class::Stalled), n(Class::Slow), n(Class::Normal)),
            (10, 20, 70)
        );
    }
}
