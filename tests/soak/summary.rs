//! The soak's summary: what ran, what it exercised against its coverage floors, and what it
//! found, printed to stdout and stderr.

use std::sync::atomic::Ordering;

use exchange_sim::Sim;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::fills::RefLog;
use crate::fleet::{Fleet, DRAIN, EXIT_MARGIN};
use crate::quiet::Band;
use crate::sessions::Seen;
use crate::tally::{self, Counts, Tally};

/// What the summary reads.
pub struct Run<'a> {
    pub seed: u64,
    pub seconds: u64,
    pub cluster: Option<usize>,
    pub mode: &'a str,
    pub date: &'a str,
    pub wall: Instant,
    pub tally: &'a Tally,
    pub sim: &'a Sim,
    pub reflog: &'a Mutex<RefLog>,
    pub fleet: &'a Fleet,
    pub sessions: &'a Seen,
    pub band: Band,
}

/// What a run of `seconds` must at least have exercised, or its zero violations mean nothing
/// (a relay that refuses every client would otherwise pass). Measured rates on the shared
/// 2-core machine are several times these (RELIABILITY.md).
pub struct Floors {
    pub connections: u64,
    pub messages: u64,
    pub quiet_points: u64,
    pub books_checked: u64,
    pub chain_links: u64,
    pub reference_fills_checked: u64,
    pub lag_repairs: u64,
}

impl Floors {
    pub fn for_seconds(s: u64) -> Floors {
        Floors {
            connections: s,
            messages: 200 * s,
            quiet_points: s / 15,
            books_checked: s,
            chain_links: 2 * s,
            reference_fills_checked: s / 2,
            lag_repairs: (s / 60).max(1),
        }
    }

    /// What fell short, one line each.
    pub fn shortfalls(&self, c: &tally::Counts, chain_links: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, got: u64, floor: u64| {
            if got < floor {
                out.push(format!("coverage floor: {what} {got} < {floor}"));
            }
        };
        check("client connections", c.connections, self.connections);
        check("messages checked", c.messages, self.messages);
        check("quiet points", c.quiet_points, self.quiet_points);
        check(
            "books checked at quiet points",
            c.books_checked,
            self.books_checked,
        );
        check(
            "fills checked against the position chain",
            chain_links,
            self.chain_links,
        );
        check(
            "fills checked against the reference",
            c.fills_checked,
            self.reference_fills_checked,
        );
        check(
            "lag repairs (relay_lagged) seen",
            c.relay_lagged_events,
            self.lag_repairs,
        );
        out
    }
}

/// Prints the summary; returns the final counts, the fills lost silently, and the coverage
/// shortfalls.
pub fn report(run: &Run) -> (Counts, u64, Vec<String>) {
    let Run {
        seed,
        seconds,
        cluster,
        mode,
        date,
        wall,
        tally,
        sim,
        reflog,
        fleet,
        sessions,
        band,
    } = *run;
    let sessions_seen = sessions;
    let c = tally.snapshot();
    let stats = sim.stats();
    let (ref_fills, ref_sessions) = {
        let r = reflog.lock();
        (r.fills.len(), r.sessions)
    };
    let silent = c.fill_gaps_silent + c.fills_missing_silent;
    let chain_links = tally.chain_links.load(Ordering::Relaxed);
    let floors = Floors::for_seconds(seconds);
    let shortfalls = floors.shortfalls(&c, chain_links);
    if ref_sessions != 1 {
        tally.violation(format!(
        "the reference subscriber (exempt from faults) needed {ref_sessions} sessions, not 1: it missed fills"
    ));
    }
    let c = tally.snapshot();
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, "==== chaos soak summary ====".into());
    line(
        &mut out,
        format!(
            "seed: {seed}   (replay: SOAK_SEED={seed} SOAK_SECONDS={seconds}{})",
            cluster.map_or(String::new(), |n| format!(" SOAK_CLUSTER={n}"))
        ),
    );
    line(&mut out, format!("started: {date}"));
    line(&mut out, format!("relays: {mode}"));
    line(
        &mut out,
        format!("duration: {:.1} s", wall.elapsed().as_secs_f64()),
    );
    line(
        &mut out,
        format!(
            "faults injected: {} {:?}",
            c.faults.values().sum::<u64>(),
            c.faults
        ),
    );
    line(
        &mut out,
        format!("simulator fault requests: {:?}", stats.faults),
    );
    line(
        &mut out,
        format!("relay restarts (SIGTERM or kill -9): {}", fleet.restarts),
    );
    if cluster.is_some() {
        line(
            &mut out,
            format!(
                "every node ready again after each Redis restart: {} restarts, slowest {:?}",
                fleet.redis_recoveries.len(),
                fleet
                    .redis_recoveries
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or_default()
            ),
        );
        line(
        &mut out,
        format!(
            "private subscribers closed `private messages lost` after a Redis restart (announced): {}",
            c.losses_announced_after_redis
        ),
    );
    }
    line(&mut out, format!("client connections: {}", c.connections));
    line(&mut out, format!("connection ends: {:?}", c.ends));
    line(&mut out, format!("hostile outcomes: {:?}", c.hostile));
    line(
        &mut out,
        format!(
            "messages delivered: {} (snapshots {}, relay_lagged events {})",
            c.messages, c.snapshots, c.relay_lagged_events
        ),
    );
    line(
        &mut out,
        format!(
            "private reconnections resumed (relay_resume recovered, fill chain carried on): {}",
            c.resumes
        ),
    );
    line(&mut out, format!("quiet points: {}", c.quiet_points));
    line(&mut out, format!("books checked: {}", c.books_checked));
    line(&mut out, format!("books wrong: {}", c.books_wrong));
    line(
        &mut out,
        format!(
            "fills received by relayed private subscribers: {}",
            c.fills_received
        ),
    );
    line(
        &mut out,
        format!(
            "fills seen by the direct reference: {} over {} sessions",
            ref_fills, ref_sessions
        ),
    );
    line(
        &mut out,
        format!(
            "reference fills checked against relayed private subscribers: {}",
            c.fills_checked
        ),
    );
    line(
        &mut out,
        format!(
            "fill chain gaps announced by the close: {}",
            c.fill_gaps_announced
        ),
    );
    line(
        &mut out,
        format!(
            "fills lost silently: {silent} (chain gaps {}, reference fills missing {})",
            c.fill_gaps_silent, c.fills_missing_silent
        ),
    );
    line(
        &mut out,
        format!(
            "max live upstream sessions seen: {} (over {} samples)",
            sessions_seen.max.load(Ordering::SeqCst),
            tally.session_samples.load(Ordering::Relaxed)
        ),
    );
    line(
    &mut out,
    format!(
        "two sessions at once: {} time(s) while a leader was frozen (longest {} ms), {} time(s) outside (longest {} ms)",
        sessions_seen.allowed.load(Ordering::SeqCst),
        sessions_seen.allowed_max_ms.load(Ordering::SeqCst),
        sessions_seen.outside.load(Ordering::SeqCst),
        sessions_seen.outside_max_ms.load(Ordering::SeqCst)
    ),
);
    line(
        &mut out,
        format!(
            "fills checked against the position chain: {}",
            tally.chain_links.load(Ordering::Relaxed)
        ),
    );
    for slot in &fleet.slots {
        let peak = slot.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let last = slot.samples.last().copied().unwrap_or_default();
        let climbs: Vec<i64> = slot.past_rss.iter().map(|r| band.climb(r)).collect();
        line(&mut out, format!(
        "{} RSS: peak {peak} KiB, final {} KiB; fds final {}; threads final {} (quiet-point samples: {}); processes {}, largest climb above warm {} KiB (band {} KiB over the highest of a process's first {} quiet points)",
        slot.name,
        last.rss_kib,
        last.fds,
        last.threads,
        slot.samples.len(),
        slot.past_rss.len(),
        climbs.iter().max().copied().unwrap_or(0),
        band.leak_kib,
        band.warm_points
    ));
    }
    line(
        &mut out,
        format!(
            "relay exits after SIGTERM: {} (each must exit 0 within {:?}), slowest {:?}",
            fleet.exit_times.len(),
            DRAIN + EXIT_MARGIN,
            fleet.exit_times.iter().max().copied().unwrap_or_default()
        ),
    );
    line(
    &mut out,
    format!(
        "coverage floors for {seconds} s: connections {}, messages {}, quiet points {}, books {}, chain links {}, reference fills {}, lag repairs {}",
        floors.connections,
        floors.messages,
        floors.quiet_points,
        floors.books_checked,
        floors.chain_links,
        floors.reference_fills_checked,
        floors.lag_repairs
    ),
);
    line(
        &mut out,
        format!("coverage below a floor: {}", shortfalls.len()),
    );
    for f in &shortfalls {
        line(&mut out, format!("  - {f}"));
    }
    for slot in &fleet.slots {
        line(
            &mut out,
            format!("{} log: {}", slot.name, slot.log.display()),
        );
    }
    line(&mut out, format!("violations: {}", c.violations.len()));
    for v in c.violations.iter().take(40) {
        line(&mut out, format!("  - {v}"));
    }
    eprint!("{out}");
    println!("{out}");
    (c, silent, shortfalls)
}
