//! Human tables and markdown: one run's [`Measurement`], and the suite's medians and verdicts.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::load::Measurement;
use crate::stats::Percentiles;
use crate::suite::{ScenarioResult, SuiteReport, Target};

fn pct_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "{name:<22} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        p.count, p.p50, p.p90, p.p99, p.p999, p.max
    );
}

/// The table `loadgen run` prints.
pub fn measurement_table(m: &Measurement) -> String {
    let mut out = String::new();
    let c = &m.connections;
    let _ = writeln!(
        out,
        "window {:.1} s, {} clients: {} open, {} receiving, {} reconnects",
        m.window_secs, m.clients, c.open, c.receiving, c.reconnects
    );
    let _ = writeln!(
        out,
        "delivered: {} frames ({:.0}/s), {} bytes ({:.2} MB/s), {} snapshots",
        m.total.frames,
        m.total.frames_per_sec,
        m.total.bytes,
        m.total.bytes_per_sec / 1e6,
        m.total.snapshots
    );
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "ms", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    pct_row(&mut out, "latency (all)", &m.total.latency_ms);
    for (class, t) in &m.per_class {
        pct_row(&mut out, &format!("latency ({class})"), &t.latency_ms);
    }
    pct_row(&mut out, "connect", &c.connect_ms);
    pct_row(&mut out, "first data", &c.first_data_ms);
    if let Some(t) = m.all_receiving_secs {
        let _ = writeln!(out, "all clients receiving {t:.3} s after start");
    }
    if !c.errors.is_empty() {
        let _ = writeln!(out, "errors: {:?}", c.errors);
    }
    if !c.closes.is_empty() {
        let _ = writeln!(out, "closes: {:?}", c.closes);
    }
    for p in &m.processes {
        let _ = writeln!(
            out,
            "process {} ({}): {:.3} s CPU ({:.2} cores), RSS {} -> {} KiB, peak {} KiB",
            p.name, p.pid, p.cpu_secs, p.cpu_cores, p.rss_start_kib, p.rss_end_kib, p.peak_rss_kib
        );
    }
    if let (Some(h), Some(o)) = (m.host_busy_cores, m.other_cores) {
        let _ = writeln!(
            out,
            "machine: {h:.2} cores busy, {o:.2} of them outside the watched processes"
        );
    }
    if let Some(c) = m.cpu_per_frame_us {
        let _ = writeln!(out, "server CPU per delivered frame: {c:.3} us");
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Per target, per metric: the median over rounds and the number of rounds.
pub fn medians(s: &ScenarioResult) -> BTreeMap<&'static str, BTreeMap<String, (f64, usize)>> {
    let mut out: BTreeMap<&'static str, BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    let mut values: BTreeMap<(&'static str, String), Vec<f64>> = BTreeMap::new();
    for run in &s.runs {
        for (k, v) in &run.metrics {
            values
                .entry((run.target.name(), k.clone()))
                .or_default()
                .push(*v);
        }
    }
    for ((t, k), v) in values {
        let n = v.len();
        if let Some(m) = median(v) {
            out.entry(t).or_default().insert(k, (m, n));
        }
    }
    out
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The ratios shown, `(numerator, denominator)`, each its own column when both ran: the relay
/// against each baseline and against the reference build, and a cluster node against the single
/// relay.
const RATIOS: [(&str, &str); 6] = [
    ("relay", "baseline"),
    ("relay", "baseline-naive"),
    ("relay", "relay-ref"),
    ("relay-ref", "baseline"),
    ("relay-follower", "relay"),
    ("relay-leader", "relay"),
];

/// One scenario as a markdown table: metrics by target, and the [`RATIOS`] of those that ran.
pub fn scenario_markdown(s: &ScenarioResult) -> String {
    let mut out = String::new();
    let sc = &s.scenario;
    let _ = writeln!(out, "### `{}`\n\n{}.\n", sc.name, sc.description);
    let med = medians(s);
    let targets: Vec<&'static str> = [
        Target::Relay,
        Target::RelayCoalesce,
        Target::RelayRef,
        Target::Baseline,
        Target::BaselineNaive,
        Target::Direct,
        Target::RelayFollower,
        Target::RelayLeader,
    ]
    .iter()
    .map(|t| t.name())
    .filter(|t| med.contains_key(t))
    .collect();
    if targets.is_empty() {
        let _ = writeln!(out, "No successful run.\n");
    } else {
        let ratios: Vec<(&str, &str)> = RATIOS
            .into_iter()
            .filter(|(a, b)| med.contains_key(a) && med.contains_key(b))
            .collect();
        let _ = write!(out, "| metric (median) |");
        for t in &targets {
            let _ = write!(out, " {t} |");
        }
        for (a, b) in &ratios {
            let _ = write!(out, " {a} / {b} |");
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "|---|{}{}",
            "---:|".repeat(targets.len()),
            "---:|".repeat(ratios.len())
        );
        let keys: std::collections::BTreeSet<&String> =
            med.values().flat_map(|m| m.keys()).collect();
        for k in keys {
            let _ = write!(out, "| {k} |");
            for t in &targets {
                let cell = med[t].get(k).map_or("-".into(), |(v, _)| fmt_num(*v));
                let _ = write!(out, " {cell} |");
            }
            for (a, b) in &ratios {
                let ratio = match (med[a].get(k), med[b].get(k)) {
                    (Some((r, _)), Some((b, _))) if b.abs() >= 1e-3 => format!("{:.2}x", r / b),
                    _ => "-".into(),
                };
                let _ = write!(out, " {ratio} |");
            }
            let _ = writeln!(out);
        }
        let rounds: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{t}: {}",
                    s.runs.iter().filter(|r| r.target.name() == *t).count()
                )
            })
            .collect();
        let _ = writeln!(out, "\nRounds: {}.", rounds.join(", "));
    }
    for run in &s.runs {
        for n in &run.notes {
            let _ = writeln!(out, "- {} round {}: {n}", run.target.name(), run.round + 1);
        }
    }
    for e in &s.errors {
        let _ = writeln!(out, "- FAILED {e}");
    }
    let _ = writeln!(out);
    out
}

/// A target of the issue, checked against the medians of one scenario.
pub struct Verdict {
    pub scenario: String,
    pub target: String,
    /// `Some(met)`, or `None` when the run needed to judge is missing.
    pub met: Option<bool>,
    pub measured: String,
}

fn get(
    med: &BTreeMap<&'static str, BTreeMap<String, (f64, usize)>>,
    t: &str,
    k: &str,
) -> Option<f64> {
    med.get(t)?.get(k).map(|(v, _)| *v)
}

/// The targets, judged mechanically from the medians.
pub fn verdicts(report: &SuiteReport) -> Vec<Verdict> {
    let mut out = Vec::new();
    for s in &report.scenarios {
        let med = medians(s);
        let m = |t: &str, k: &str| get(&med, t, k);
        // The targets set before the batching baseline existed are judged against the naive one.
        let ratio = |t: &str, k: &str| Some(m(t, k)? / m("baseline-naive", k)?);
        let batching = |t: &str, k: &str| Some(m(t, k)? / m("baseline", k)?);
        let mut push = |target: &str, met: Option<bool>, measured: String| {
            out.push(Verdict {
                scenario: s.scenario.name.clone(),
                target: target.to_owned(),
                met,
                measured,
            })
        };
        let f = |v: Option<f64>| v.map_or("n/a".to_owned(), fmt_num);
        // Cluster mode (issue 15), on any scenario where a follower and a single relay both ran.
        let follower = |k: &str| Some(m("relay-follower", k)? / m("relay", k)?);
        if let Some(r) = follower("cpu_per_frame_us") {
            push(
                "cluster: follower CPU/frame <= 1.15x a single relay's",
                Some(r <= 1.15),
                format!("{}x, p99 {}x", f(Some(r)), f(follower("p99_ms"))),
            );
        }
        match s.scenario.name.as_str() {
            "fanout" => {
                let (r, p) = (ratio("relay", "cpu_per_frame_us"), m("relay", "p99_ms"));
                push(
                    "CPU/frame <= 1.25x baseline-naive, p99 <= 5 ms",
                    r.zip(p).map(|(r, p)| r <= 1.25 && p <= 5.0),
                    format!("{}x, p99 {} ms", f(r), f(p)),
                );
                let (r, p) = (
                    ratio("relay-coalesce", "cpu_per_frame_us"),
                    m("relay-coalesce", "p99_ms"),
                );
                push(
                    "2 ms coalescing: CPU/frame <= 0.6x baseline-naive, p99 <= 8 ms",
                    r.zip(p).map(|(r, p)| r <= 0.6 && p <= 8.0),
                    format!("{}x, p99 {} ms", f(r), f(p)),
                );
            }
            "fanout-hot" => {
                let (r, d) = (
                    ratio("relay", "cpu_per_frame_us"),
                    m("relay", "delivered_ratio"),
                );
                push(
                    "CPU/frame <= 1.3x baseline-naive, every frame delivered",
                    r.zip(d).map(|(r, d)| r <= 1.3 && d >= 0.999),
                    format!("{}x, delivered {}", f(r), f(d)),
                );
            }
            "fanout-single" | "fanout-single-hot" => {
                let (r, p) = (
                    batching("relay", "cpu_per_frame_us"),
                    batching("relay", "p99_ms"),
                );
                push(
                    "CPU/frame <= 1.15x baseline, p99 <= baseline's",
                    r.zip(p).map(|(r, p)| r <= 1.15 && p <= 1.0),
                    format!("{}x, p99 {}x", f(r), f(p)),
                );
                if s.scenario.name == "fanout-single" {
                    let r = batching("relay-coalesce", "cpu_per_frame_us");
                    push(
                        "10 ms coalescing: CPU/frame <= 0.5x baseline",
                        r.map(|r| r <= 0.5),
                        format!("{}x", f(r)),
                    );
                }
            }
            "ramp" => {
                let r = ratio("relay", "last_good_rate");
                push(
                    "highest sustained rate >= 0.8x baseline-naive",
                    r.map(|r| r >= 0.8),
                    format!(
                        "relay {} msg/s, baseline-naive {} msg/s ({}x)",
                        f(m("relay", "last_good_rate")),
                        f(m("baseline-naive", "last_good_rate")),
                        f(r)
                    ),
                );
            }
            "idle" => {
                let (rss, cpu) = (
                    m("relay", "rss_per_conn_kib"),
                    m("relay", "cpu_per_conn_us_per_sec"),
                );
                push(
                    "<= 8 KiB RSS per connection, < 1 us CPU per second per connection",
                    rss.zip(cpu).map(|(r, c)| r <= 8.0 && c < 1.0),
                    format!("{} KiB, {} us/s", f(rss), f(cpu)),
                );
            }
            "subscribed" => {
                let rss = m("relay", "rss_per_conn_kib");
                push(
                    "<= 10 KiB RSS per subscribed client",
                    rss.map(|r| r <= 10.0),
                    format!("{} KiB", f(rss)),
                );
            }
            "slow-consumer" => {
                let r = m("relay", "p99_with_over_alone");
                push(
                    "readers' p99 within 10% of the run without stalled clients",
                    r.map(|r| r <= 1.1),
                    format!(
                        "p99 {} ms alone, {} ms with stalled ({}x); RSS {} -> {} MiB",
                        f(m("relay", "p99_alone_ms")),
                        f(m("relay", "p99_with_stalled_ms")),
                        f(r),
                        f(m("relay", "rss_alone_mib")),
                        f(m("relay", "rss_with_stalled_mib"))
                    ),
                );
            }
            "storm" => {
                let (t, sessions, conns) = (
                    m("relay", "all_receiving_secs"),
                    m("relay", "sim_new_sessions"),
                    m("relay", "sim_max_connections"),
                );
                push(
                    "all 5,000 receiving within 10 s, one upstream session throughout",
                    t.zip(sessions)
                        .zip(conns)
                        .map(|((t, s), c)| t <= 10.0 && s == 0.0 && c <= 1.0),
                    format!(
                        "{} s, {} new upstream sessions, max {} simulator connections",
                        f(t),
                        f(sessions),
                        f(conns)
                    ),
                );
            }
            _ => {}
        }
    }
    out
}

/// The whole suite as markdown, ready for `BENCHMARKS.md`.
pub fn suite_markdown(report: &SuiteReport) -> String {
    let mut out = String::new();
    let mach = &report.machine;
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(out, "- Date: {}", report.date);
    let _ = writeln!(
        out,
        "- Machine: {} cores, {}, {} MiB RAM, {}",
        mach.cores, mach.cpu_model, mach.mem_total_mib, mach.kernel
    );
    let _ = writeln!(out, "- Command: `{}`", report.command);
    let _ = writeln!(
        out,
        "- Each figure is the median of {} round(s); targets alternate within a round, each run \
         with a fresh simulator and server.\n",
        report.repeat
    );
    let _ = writeln!(
        out,
        "### Targets\n\n| scenario | target | met | measured (relay) |\n|---|---|---|---|"
    );
    for v in verdicts(report) {
        let met = match v.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {met} | {} |",
            v.scenario, v.target, v.measured
        );
    }
    let _ = writeln!(out);
    for s in &report.scenarios {
        out.push_str(&scenario_markdown(s));
    }
    out
}

/// The suite's stdout table: one line per scenario, target and headline metric.
pub fn suite_table(report: &SuiteReport) -> String {
    let mut out = String::new();
    for s in &report.scenarios {
        let _ = writeln!(out, "{}:", s.scenario.name);
        for (t, metrics) in medians(s) {
            let line: Vec<String> = metrics
                .iter()
                .map(|(k, (v, _))| format!("{k}={}", fmt_num(*v)))
                .collect();
            let _ = writeln!(out, "  {t:<15} {}", line.join(" "));
        }
        for e in &s.errors {
            let _ = writeln!(out, "  FAILED {e}");
        }
    }
    out
}
