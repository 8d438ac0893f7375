//! What the suite does during one run of each scenario kind, and the headline figures it keeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::admin;
use crate::load::{Load, LoadConfig, Measurement};
use crate::procstat;
use crate::scenario::{Kind, Scenario};
use crate::suite::{SuiteConfig, Target};

type Outcome = (
    BTreeMap<String, f64>,
    BTreeMap<String, Measurement>,
    Vec<String>,
);

/// Runs `scenario`'s clients against `url` and measures them.
pub async fn drive(
    config: &SuiteConfig,
    scenario: &Scenario,
    target: Target,
    url: &str,
    admin_url: &str,
    watch: &[(String, u32)],
    subscribe: &str,
) -> Result<Outcome> {
    let load_config = LoadConfig {
        url: url.to_owned(),
        clients: scenario.clients,
        connect_rate: scenario.connect_rate,
        subscribe: vec![subscribe.to_owned()],
        source_addrs: config.source_addrs.clone(),
        read_buffer_bytes: scenario.read_buffer_bytes,
        expected_snapshots: scenario.books_per_client().max(1),
        ..LoadConfig::default()
    };
    let d = Driver {
        scenario,
        target,
        admin_url,
        watch,
        metrics: BTreeMap::new(),
        windows: BTreeMap::new(),
        notes: Vec::new(),
        upstream_sent: None,
    };
    d.run(load_config).await
}

struct Driver<'a> {
    scenario: &'a Scenario,
    target: Target,
    admin_url: &'a str,
    watch: &'a [(String, u32)],
    metrics: BTreeMap<String, f64>,
    windows: BTreeMap<String, Measurement>,
    notes: Vec<String>,
    /// Messages the simulator sent during the last window (to the one upstream session).
    upstream_sent: Option<u64>,
}

/// Seconds to wait for a ramp of `n` clients at `rate` per second, with slack.
fn ramp_limit(n: usize, rate: f64) -> Duration {
    let secs = if rate > 0.0 { n as f64 / rate } else { 0.0 };
    Duration::from_secs_f64(secs * 2.0 + 30.0)
}

impl Driver<'_> {
    fn server_pid(&self) -> Option<u32> {
        (self.target != Target::Direct).then(|| self.watch[0].1)
    }

    fn set(&mut self, key: &str, value: f64) {
        if value.is_finite() {
            self.metrics.insert(key.to_owned(), value);
        }
    }

    async fn sim_sent(&self) -> Option<u64> {
        let stats = admin::sim_stats(self.admin_url).await.ok()?;
        stats.get("messages_sent")?.as_u64()
    }

    /// One window of `secs`, with the frames the simulator sent meanwhile.
    async fn window(&mut self, load: &Load, secs: f64, clients: usize) -> Measurement {
        let sent_before = self.sim_sent().await;
        let w = load.begin_window(self.watch);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let m = load.end_window(w);
        self.upstream_sent = None;
        if let (Some(a), Some(b)) = (sent_before, self.sim_sent().await) {
            self.upstream_sent = Some(b - a);
            // The simulator's frames all go to the server's one upstream connection, which
            // delivers each to every client; direct clients each have their own.
            let expected = if self.target == Target::Direct {
                b - a
            } else {
                (b - a) * clients as u64
            };
            if expected > 0 {
                self.set("delivered_ratio", m.total.frames as f64 / expected as f64);
            }
        }
        m
    }

    /// The figures every steady window reports.
    fn steady_metrics(&mut self, m: &Measurement) {
        self.set("frames_per_sec", m.total.frames_per_sec);
        self.set("p50_ms", m.total.latency_ms.p50);
        self.set("p99_ms", m.total.latency_ms.p99);
        self.set("p999_ms", m.total.latency_ms.p999);
        self.set("max_ms", m.total.latency_ms.max);
        if let Some(c) = m.cpu_per_frame_us {
            self.set("cpu_per_frame_us", c);
        }
        if let Some(p) = m
            .processes
            .first()
            .filter(|_| self.target != Target::Direct)
        {
            self.set("server_cpu_cores", p.cpu_cores);
            self.set("server_peak_rss_mib", p.peak_rss_kib as f64 / 1024.0);
        }
        if let Some(p) = m.processes.iter().find(|p| p.name == "loadgen") {
            self.set("loadgen_cpu_cores", p.cpu_cores);
        }
        if let Some(o) = m.other_cores {
            self.set("other_cpu_cores", o);
        }
        let closes: u64 = m.connections.closes.values().sum();
        let errors: u64 = m.connections.errors.values().sum();
        self.set("closes", closes as f64);
        self.set("errors", errors as f64);
        if self.target.is_cluster() {
            self.cluster_metrics(m);
        }
    }

    /// What the rest of a cluster cost in the window: the other node and Redis (watched second
    /// and third, see `suite::Server::watch`), and the whole cluster per delivered frame.
    fn cluster_metrics(&mut self, m: &Measurement) {
        let (Some(serving), Some(other), Some(redis)) =
            (m.processes.first(), m.processes.get(1), m.processes.get(2))
        else {
            return;
        };
        self.set("other_node_cpu_cores", other.cpu_cores);
        self.set("redis_cpu_cores", redis.cpu_cores);
        if let Some(sent) = self.upstream_sent.filter(|n| *n > 0) {
            self.set(
                "redis_cpu_per_upstream_msg_us",
                redis.cpu_secs * 1e6 / sent as f64,
            );
        }
        if m.total.frames > 0 {
            let secs = serving.cpu_secs + other.cpu_secs + redis.cpu_secs;
            self.set(
                "cluster_cpu_per_frame_us",
                secs * 1e6 / m.total.frames as f64,
            );
        }
    }

    async fn run(mut self, cfg: LoadConfig) -> Result<Outcome> {
        let s = self.scenario;
        let rss_before = self.server_pid().and_then(procstat::sample);
        let mut load = Load::start(cfg.clone()).await?;
        match s.kind {
            Kind::Steady | Kind::Idle => {
                load.ramped(ramp_limit(s.clients, s.connect_rate)).await;
                sleep(s.warmup_seconds.as_secs_f64()).await;
                let m = self
                    .window(&load, s.duration_seconds.as_secs_f64(), s.clients)
                    .await;
                self.steady_metrics(&m);
                if s.kind == Kind::Idle {
                    self.idle_metrics(&m, rss_before);
                }
                self.windows.insert("main".into(), m);
            }
            Kind::Ramp => self.ramp(&mut load).await?,
            Kind::SlowConsumer => self.slow_consumer(&mut load, &cfg).await?,
            Kind::Storm => self.storm(&mut load).await?,
            Kind::UpstreamDrop => self.upstream_drop(&mut load).await?,
        }
        load.stop().await;
        Ok((self.metrics, self.windows, self.notes))
    }

    fn idle_metrics(&mut self, m: &Measurement, before: Option<procstat::ProcSample>) {
        let n = m.clients as f64;
        if let (Some(before), Some(p)) = (before, m.processes.first()) {
            if self.target != Target::Direct {
                let grown = p.rss_end_kib.saturating_sub(before.rss_kib) as f64;
                self.set("rss_per_conn_kib", grown / n);
                self.set(
                    "cpu_per_conn_us_per_sec",
                    p.cpu_secs * 1e6 / m.window_secs / n,
                );
            }
        }
        self.set("open_connections", m.connections.open as f64);
    }

    async fn ramp(&mut self, load: &mut Load) -> Result<()> {
        let s = self.scenario;
        load.ramped(ramp_limit(s.clients, s.connect_rate)).await;
        sleep(s.warmup_seconds.as_secs_f64()).await;
        let mut last_good = 0.0;
        let mut good_metrics = BTreeMap::new();
        for &rate in &s.ramp_rates {
            let body = format!(r#"{{"msgs_per_sec":{rate}}}"#);
            admin::sim_fault(self.admin_url, "rate", Some(&body)).await?;
            sleep(s.settle_seconds.as_secs_f64()).await;
            self.metrics.remove("delivered_ratio");
            let m = self
                .window(load, s.duration_seconds.as_secs_f64(), s.clients)
                .await;
            let delivered = self.metrics.get("delivered_ratio").copied().unwrap_or(0.0);
            let p99 = m.total.latency_ms.p99;
            let good = m.total.latency_ms.count > 0
                && p99 <= s.p99_limit_seconds.as_secs_f64() * 1000.0
                && delivered >= s.min_delivered;
            self.notes.push(format!(
                "rate {rate}: p99 {p99:.2} ms, delivered {:.3}, {:.0} frames/s, server cpu/frame {} -> {}",
                delivered,
                m.total.frames_per_sec,
                m.cpu_per_frame_us.map_or("-".into(), |c| format!("{c:.2} us")),
                if good { "good" } else { "fail" }
            ));
            self.windows.insert(format!("rate_{rate}"), m.clone());
            if !good {
                break;
            }
            last_good = rate;
            self.steady_metrics(&m);
            self.set("delivered_ratio", delivered);
            good_metrics = self.metrics.clone();
        }
        // The headline figures are those of the last good step, not of the failed one.
        self.metrics = good_metrics;
        self.set("last_good_rate", last_good);
        Ok(())
    }

    async fn slow_consumer(&mut self, load: &mut Load, cfg: &LoadConfig) -> Result<()> {
        let s = self.scenario;
        load.ramped(ramp_limit(s.clients, s.connect_rate)).await;
        sleep(s.warmup_seconds.as_secs_f64()).await;
        let alone = self
            .window(load, s.duration_seconds.as_secs_f64(), s.clients)
            .await;
        let stalled = Load::start(LoadConfig {
            clients: s.stalled,
            stalled_share: 1.0,
            connect_rate: 0.0,
            seed: 2,
            ..cfg.clone()
        })
        .await?;
        sleep(s.settle_seconds.as_secs_f64()).await;
        let with = self
            .window(load, s.duration_seconds.as_secs_f64(), s.clients)
            .await;
        stalled.stop().await;
        self.steady_metrics(&with);
        let (a, b) = (alone.total.latency_ms.p99, with.total.latency_ms.p99);
        self.set("p99_alone_ms", a);
        self.set("p99_with_stalled_ms", b);
        if a > 0.0 {
            self.set("p99_with_over_alone", b / a);
        }
        if let (Some(pa), Some(pb)) = (alone.processes.first(), with.processes.first()) {
            if self.target != Target::Direct {
                self.set("rss_alone_mib", pa.rss_end_kib as f64 / 1024.0);
                self.set("rss_with_stalled_mib", pb.rss_end_kib as f64 / 1024.0);
            }
        }
        self.windows.insert("readers_alone".into(), alone);
        self.windows.insert("readers_with_stalled".into(), with);
        Ok(())
    }

    async fn storm(&mut self, load: &mut Load) -> Result<()> {
        let s = self.scenario;
        let accepted =
            |v: &serde_json::Value| v.get("handshakes_accepted").and_then(|x| x.as_u64());
        let before = admin::sim_stats(self.admin_url).await.ok();
        // Polls the simulator's open connections during the storm; stopped below.
        let max_conns = Arc::new(AtomicU64::new(0));
        let poll = {
            let (admin, max_conns) = (self.admin_url.to_owned(), max_conns.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(v) = admin::sim_stats(&admin).await {
                        if let Some(c) = v.get("connections").and_then(|x| x.as_u64()) {
                            max_conns.fetch_max(c, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let all = load
            .all_receiving(Duration::from_secs_f64(s.deadline_seconds.as_secs_f64()))
            .await;
        let m = self
            .window(load, s.duration_seconds.as_secs_f64(), s.clients)
            .await;
        poll.abort();
        let after = admin::sim_stats(self.admin_url).await.ok();
        self.steady_metrics(&m);
        self.set("receiving", m.connections.receiving as f64);
        if all {
            if let Some(t) = m.all_receiving_secs {
                self.set("all_receiving_secs", t);
            }
        } else {
            self.notes.push(format!(
                "only {} of {} clients received data within {} s",
                m.connections.receiving,
                s.clients,
                s.deadline_seconds.as_secs_f64()
            ));
        }
        self.set("connect_p99_ms", m.connections.connect_ms.p99);
        self.set("first_data_p99_ms", m.connections.first_data_ms.p99);
        if self.target != Target::Direct {
            self.set(
                "sim_max_connections",
                max_conns.load(Ordering::Relaxed) as f64,
            );
            if let (Some(a), Some(b)) = (
                before.as_ref().and_then(accepted),
                after.as_ref().and_then(accepted),
            ) {
                self.set("sim_new_sessions", (b - a) as f64);
            }
        }
        self.windows.insert("main".into(), m);
        Ok(())
    }

    async fn upstream_drop(&mut self, load: &mut Load) -> Result<()> {
        let s = self.scenario;
        load.ramped(ramp_limit(s.clients, s.connect_rate)).await;
        sleep(s.warmup_seconds.as_secs_f64()).await;
        let m = self
            .window(load, s.duration_seconds.as_secs_f64(), s.clients)
            .await;
        self.steady_metrics(&m);
        load.mark_fault();
        admin::sim_fault(self.admin_url, "drop", None).await?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs_f64(s.deadline_seconds.as_secs_f64());
        while load.recovery().count < s.clients as u64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = load.recovery();
        self.set("recovered_clients", r.count as f64);
        if r.count > 0 {
            self.set("recovery_p50_ms", r.p50);
            self.set("recovery_p99_ms", r.p99);
            self.set("recovery_max_ms", r.max);
        }
        if r.count < s.clients as u64 {
            self.notes.push(format!(
                "{} of {} clients had fresh snapshots within {} s of the drop",
                r.count,
                s.clients,
                s.deadline_seconds.as_secs_f64()
            ));
        }
        let after = load.stats().connections();
        let closes: u64 = after.closes.values().sum::<u64>() + after.errors.values().sum::<u64>();
        self.set("client_disconnects", closes as f64);
        self.windows.insert("before_drop".into(), m);
        Ok(())
    }
}

async fn sleep(secs: f64) {
    if secs > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
}
