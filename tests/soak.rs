//! Chaos soak: the simulator (in-process), the relay (a child process, restarted now and then)
//! and a population of clients (normal, slow, stalled, reconnecting, private-channel and hostile)
//! under a seeded random schedule of faults, with the relay's promises checked all along.
//!
//! ```sh
//! cargo test -p relay --test soak -- --nocapture                                   # 60 s
//! SOAK_SECONDS=3600 SOAK_SEED=7 cargo test --release -p relay --test soak -- --nocapture
//! SOAK_CLUSTER=3 SOAK_SECONDS=300 cargo test --release -p relay --test soak -- --nocapture
//! ```
//!
//! With `SOAK_CLUSTER=N` the relay is N cluster nodes on one real `redis-server` (`fleet.rs`),
//! the clients spread over them (`front.rs`: a client whose node is killed or frozen reconnects
//! to another, resuming its private stream), and the deck also deals kill -9, SIGSTOP past the
//! lease and SIGTERM to the leader, and Redis restarts. Every killed node is restarted, every
//! node must be ready again by itself after Redis returns, and two upstream sessions at once are
//! allowed only while a leader is frozen (`sessions.rs`).
//!
//! Invariants, and where each is checked:
//! - every frame (`clients.rs`, `Conn::on_text`): seq contiguous per sid per connection, no delta
//!   before its book's snapshot, every snapshot and delta applies, no unexpected reply or error;
//!   well-behaved clients are only ever closed with 1012 or a 1013 `slow consumer` / `private
//!   messages lost` (1001 `pong timeout` and 1013 `write timeout` for those that stopped
//!   reading), never without a close frame; never `private messages lost` (outages and dead
//!   private sids are backfilled over REST, which never fails here);
//! - every fill (`fills.rs`): the account's position chain per market is unbroken within a
//!   connection, across upstream outages, unless the close that ends the connection announces
//!   the loss; no fill twice;
//! - every quiet point (`quiet.rs`: simulator paused, relays caught up, awaited with a deadline): every
//!   connected client's rebuilt book equals `Sim::book`; every fill a direct reference subscriber
//!   saw in the epoch reached, in order, each private subscriber connected through the epoch; the
//!   relay's client count and topic count equal what the clients hold (no leaked sessions or
//!   subscriptions); its RSS has not climbed more than 6 MiB since the process's first quiet point
//!   and its descriptors minus clients are within a few of the baseline; every client has had
//!   its `subscribed` replies and its task is alive;
//! - every 50 ms (10 ms for a cluster; `sessions.rs`): the simulator sees at most one live
//!   (not blackholed) session from the relays, but while a cluster's leader is frozen;
//! - every restart: the relay exits 0 within its drain time plus a margin after SIGTERM;
//! - at the end: every task stopped cleanly, and the run exercised at least its coverage floors
//!   (`Floors`, scaled by its length), or it fails saying what fell short.
//!
//! The direct reference subscriber reaches the simulator through `Sim::serve_exempt`, so no
//! fault aimed at the relay's upstream touches it.
//!
//! Faults are dealt from a shuffled deck (every kind once per round, order from the seed), three
//! per 8-second epoch; every third epoch draws only faults that leave the upstream up (gap,
//! duplicate, burst, client disconnects), so private subscribers span whole epochs and can be
//! compared with the direct reference. The timeline (faults, quiet points, fill chain breaks,
//! one events client's `relay_status`) goes to stderr with Unix times that match the relay's log.

#[path = "soak/clients.rs"]
mod clients;
#[path = "soak/fills.rs"]
mod fills;
#[path = "soak/fleet.rs"]
mod fleet;
#[path = "soak/front.rs"]
mod front;
#[path = "soak/hostile.rs"]
mod hostile;
#[path = "soak/quiet.rs"]
mod quiet;
#[path = "soak/relay_proc.rs"]
mod relay_proc;
#[path = "soak/sessions.rs"]
mod sessions;
#[path = "soak/summary.rs"]
mod summary;
#[path = "soak/tally.rs"]
mod tally;

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use exchange_sim::{Fault, SimConfig};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use clients::{Ctl, Env, Kind, Spec};
use fills::RefLog;
use fleet::Fleet;
use quiet::{await_ready, Band, QuietPoint};
use tally::Tally;

/// Default seed: a run is replayed by its seed (and duration).
const DEFAULT_SEED: u64 = 20261127;
const DEFAULT_SECONDS: u64 = 60;
/// Chaos between two quiet points.
const EPOCH: Duration = Duration::from_secs(8);
/// Faults dealt per epoch.
const FAULTS_PER_EPOCH: usize = 3;
/// The deck of faults: shuffled, dealt in order, reshuffled when empty, so every kind comes up
/// once per round whatever the seed.
const FAULT_KINDS: &[&str] = &[
    "drop",
    "blackhole",
    "stall_handshake",
    "reject_auth",
    "gap",
    "duplicate",
    "error_25",
    "burst",
    "client_disconnect",
    "relay_restart",
];

/// Added to the deck in cluster mode: faults aimed at the leader and at Redis.
const CLUSTER_KINDS: &[&str] = &[
    "leader_kill9",
    "leader_stop",
    "leader_term",
    "redis_restart",
];

/// Faults that leave the upstream connection and its subscriptions up.
const CALM_KINDS: &[&str] = &["gap", "duplicate", "burst", "client_disconnect"];
const CALM_EVERY: u64 = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Client {
    spec: Spec,
    ctl: mpsc::Sender<Ctl>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let seconds = env_u64("SOAK_SECONDS", DEFAULT_SECONDS);
    let seed = env_u64("SOAK_SEED", DEFAULT_SEED);
    let wall = Instant::now();
    let date = std::process::Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    // `SOAK_CLUSTER=N`: N relays as one cluster on a real redis-server.
    let cluster = match env_u64("SOAK_CLUSTER", 0) {
        0 => None,
        n => Some(n as usize),
    };
    let mode = cluster.map_or("one relay".to_owned(), |n| format!("a cluster of {n}"));
    eprintln!("soak: seed {seed}, {seconds} s, {mode}, started {date}");
    let mut rng = StdRng::seed_from_u64(seed);

    let sim = Arc::new(
        exchange_sim::start(
            SimConfig {
                markets: 8,
                rate: 250.0,
                seed,
                ping_interval: Duration::from_millis(300),
                ..SimConfig::default()
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap(),
    );
    let markets = sim.markets();
    let mut fleet = Fleet::start(cluster, &sim.ws_url(), &sim.rest_url(), seed).await;

    let tally = Tally::new();
    let stop = CancellationToken::new();
    let (quiet_tx, quiet_rx) = watch::channel(false);
    let epoch = Arc::new(AtomicU64::new(0));
    let env = Env {
        front: fleet.front.clone(),
        tally: tally.clone(),
        quiet: quiet_rx,
        epoch: epoch.clone(),
        stop: stop.clone(),
    };

    // The direct reference subscriber and the upstream-session watch.
    let reflog = Arc::new(Mutex::new(RefLog::default()));
    // The reference reaches the same exchange through a listener no fault touches.
    let ref_url = sim
        .serve_exempt(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let mut tasks = vec![tokio::spawn(fills::reference(
        ref_url,
        epoch.clone(),
        reflog.clone(),
        tally.clone(),
        stop.clone(),
    ))];
    let sessions_seen = Arc::new(sessions::Seen::default());
    let mut names = vec!["reference".to_owned(), "upstream watch".to_owned()];
    // A cluster's overlaps last milliseconds: sample often enough to see them.
    let every = Duration::from_millis(if cluster.is_some() { 10 } else { 50 });
    tasks.push(tokio::spawn(sessions::watch(
        sim.clone(),
        reflog.clone(),
        fleet.windows.clone(),
        every,
        tally.clone(),
        sessions_seen.clone(),
        stop.clone(),
    )));

    // The population.
    let some = |rng: &mut StdRng, lo: usize, hi: usize| -> Vec<String> {
        let n = rng.gen_range(lo..=hi);
        markets.choose_multiple(rng, n).cloned().collect()
    };
    let mut specs = Vec::new();
    let mut add = |name: &str, kind: Kind, books: Vec<String>, private: Option<Vec<String>>| {
        specs.push(Spec {
            name: name.to_owned(),
            kind,
            books,
            private_markets: private,
        })
    };
    for i in 0..4 {
        add(
            &format!("normal{i}"),
            Kind::Normal,
            some(&mut rng, 3, 8),
            None,
        );
    }
    add("slow0", Kind::Slow { ms: 10 }, some(&mut rng, 2, 4), None);
    add("slow1", Kind::Slow { ms: 40 }, some(&mut rng, 4, 8), None);
    for i in 0..2 {
        add(
            &format!("stalled{i}"),
            Kind::Stalled,
            some(&mut rng, 2, 6),
            None,
        );
    }
    for i in 0..3 {
        add(
            &format!("reconnecting{i}"),
            Kind::Reconnecting,
            some(&mut rng, 1, 5),
            None,
        );
    }
    add("private0", Kind::Private { events: false }, vec![], None);
    add(
        "private1",
        Kind::Private { events: true },
        some(&mut rng, 1, 3),
        None,
    );
    let filtered = some(&mut rng, 2, 4);
    add(
        "private2",
        Kind::Private { events: false },
        vec![],
        Some(filtered),
    );
    add(
        "stalled-private0",
        Kind::StalledPrivate,
        some(&mut rng, 4, 8),
        None,
    );
    let mut clients = Vec::new();
    for spec in specs {
        let (ctl, handle) = clients::spawn(spec.clone(), env.clone(), rng.gen());
        tasks.push(handle);
        names.push(spec.name.clone());
        clients.push(Client { spec, ctl });
    }
    for attack in [
        hostile::Attack::Garbage,
        hostile::Attack::InvalidUtf8,
        hostile::Attack::Oversized,
        hostile::Attack::Flood,
        hostile::Attack::RawTcp,
    ] {
        tasks.push(hostile::spawn(attack, env.clone(), rng.gen()));
        names.push(format!("hostile {attack:?}"));
    }

    // Warm up, then epochs of chaos, each closed by a quiet point.
    sleep(Duration::from_secs(2)).await;
    let mut deck: Vec<&str> = Vec::new();
    let mut calm_deck: Vec<&str> = Vec::new();
    let mut epoch_no = 0u64;
    let band = if cluster.is_some() {
        Band::CLUSTER
    } else {
        Band::SINGLE
    };
    let kinds: Vec<&str> = match cluster {
        None => FAULT_KINDS.to_vec(),
        Some(_) => [FAULT_KINDS, CLUSTER_KINDS].concat(),
    };
    let q = QuietPoint {
        sim: &sim,
        clients: &clients,
        reflog: &reflog,
        tally: &tally,
        quiet: &quiet_tx,
        epoch: &epoch,
        band,
    };
    q.run(&mut fleet).await;
    let deadline = wall + Duration::from_secs(seconds);
    while Instant::now() + EPOCH / 2 < deadline {
        epoch_no += 1;
        // Every CALM_EVERY-th epoch the upstream stays up, so private subscribers span whole
        // epochs and the reference comparison has something to compare.
        let calm = epoch_no % CALM_EVERY == 0;
        let start = Instant::now();
        let mut offsets: Vec<Duration> = (0..FAULTS_PER_EPOCH)
            .map(|_| Duration::from_millis(rng.gen_range(300..EPOCH.as_millis() as u64 - 2500)))
            .collect();
        offsets.sort();
        for at in offsets {
            sleep_until(start + at).await;
            let kind = if calm {
                if calm_deck.is_empty() {
                    calm_deck = CALM_KINDS.to_vec();
                    calm_deck.shuffle(&mut rng);
                }
                calm_deck.pop().unwrap()
            } else {
                if deck.is_empty() {
                    deck = kinds.clone();
                    deck.shuffle(&mut rng);
                }
                deck.pop().unwrap()
            };
            tally.fault(kind);
            tally.log(&format!("fault {kind}"));
            match kind {
                "drop" => sim.fault(Fault::Drop),
                "blackhole" => sim.fault(Fault::Blackhole { seconds: Some(3) }),
                "stall_handshake" => {
                    let count = rng.gen_range(1..=2);
                    sim.fault(Fault::StallHandshake { count });
                    sim.fault(Fault::Drop);
                }
                "reject_auth" => {
                    let count = rng.gen_range(1..=3);
                    sim.fault(Fault::RejectAuth { count });
                    sim.fault(Fault::Drop);
                }
                "gap" => {
                    let market = rng
                        .gen_bool(0.7)
                        .then(|| markets.choose(&mut rng).unwrap().clone());
                    sim.fault(Fault::Gap { sid: None, market });
                }
                "duplicate" => sim.fault(Fault::Duplicate { sid: None }),
                "error_25" => sim.fault(Fault::Error {
                    code: 25,
                    sid: None,
                }),
                "burst" => sim.fault(Fault::Burst {
                    count: rng.gen_range(500..3000),
                }),
                "client_disconnect" => {
                    for c in clients.choose_multiple(&mut rng, 3) {
                        let _ = c.ctl.try_send(Ctl::Disconnect);
                    }
                }
                "relay_restart" => {
                    let i = rng.gen_range(0..fleet.slots.len());
                    let what = format!("{} restart {}", fleet.slots[i].name, fleet.restarts + 1);
                    fleet.restart(i, &tally, &what).await;
                }
                "redis_restart" => {
                    let down = Duration::from_millis(rng.gen_range(200..1500));
                    fleet.restart_redis(down, &tally).await;
                }
                leader_fault => {
                    let Some(i) = fleet.leader().await else {
                        tally.log("no single leader to aim at: skipped");
                        continue;
                    };
                    let name = fleet.slots[i].name.clone();
                    tally.log(&format!("{leader_fault} on the leader, {name}"));
                    match leader_fault {
                        "leader_kill9" => fleet.kill9(i).await,
                        "leader_term" => {
                            let what = format!("{name} (leader) SIGTERM");
                            fleet.restart(i, &tally, &what).await;
                        }
                        "leader_stop" => {
                            let past = rng.gen_range(300..1500);
                            fleet
                                .freeze(i, fleet::LEASE + Duration::from_millis(past))
                                .await;
                        }
                        _ => unreachable!(),
                    }
                }
            }
            fleet.check_alive(&tally);
        }
        sleep_until(start + EPOCH).await;
        q.run(&mut fleet).await;
        fleet.check_alive(&tally);
    }

    // Stop: clients first (so a live relay closes nothing under them), then the relay.
    stop.cancel();
    for (t, name) in tasks.into_iter().zip(names) {
        match timeout(Duration::from_secs(10), t).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tally.violation(format!("task {name} failed: {e}")),
            Err(_) => tally.violation(format!("task {name} did not stop within 10 s")),
        }
    }
    fleet.stop(&tally).await;

    let (c, silent, shortfalls) = summary::report(&summary::Run {
        seed,
        seconds,
        cluster,
        mode: &mode,
        date: &date,
        wall,
        tally: &tally,
        sim: &sim,
        reflog: &reflog,
        fleet: &fleet,
        sessions: &sessions_seen,
        band,
    });
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
    assert!(
        c.violations.is_empty() && c.books_wrong == 0 && silent == 0,
        "the soak found {} violation(s), first: {:?}; replay with SOAK_SEED={seed} SOAK_SECONDS={seconds}",
        c.violations.len(),
        c.violations.first()
    );
    assert!(
        shortfalls.is_empty(),
        "the soak exercised too little to mean anything: {shortfalls:?}"
    );
}

/// The smallest reproduction of what the soak found: a client subscribed to `fill` through the
/// relay, the upstream connection drops (and two handshakes are refused, so the outage lasts a
/// few backoff steps), the simulator keeps trading meanwhile. The fills of the outage are
/// backfilled: the client stays connected with an unbroken position chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_drop_never_leaves_a_private_subscriber_with_a_silent_fill_gap() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let (sim, relay) = busy_private_pair(3, |c| {
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.2);
        c.upstream.backoff_cap_seconds = settings::Seconds::from_secs_f64(0.5);
        c.upstream.liveness_window_seconds = settings::Seconds::from_secs(2);
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(relay.ws_url())
        .await
        .unwrap();
    let sub = r#"{"id":1,"cmd":"subscribe","params":{"channels":["fill"]}}"#;
    ws.send(WsMessage::text(sub)).await.unwrap();

    let mut track = fills::FillTrack::default();
    let mut ended = None;
    let mut faulted = false;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && ended.is_none() {
        if !faulted && track.seen.len() >= 10 {
            sim.fault(Fault::RejectAuth { count: 2 });
            sim.fault(Fault::Drop);
            faulted = true;
        }
        match timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let env = protocol::Envelope::parse(text.as_bytes()).unwrap();
                if let Some(f) = fills::decode(&env) {
                    track.apply(f);
                }
            }
            Ok(Some(Ok(WsMessage::Close(c)))) => {
                ended = Some(c.map_or((1005, String::new()), |c| {
                    (u16::from(c.code), c.reason.to_string())
                }))
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => ended = Some((0, String::new())),
        }
    }
    assert!(faulted, "the simulator produced too few fills");
    assert!(
        track.breaks.is_empty() && track.duplicates == 0 && ended.is_none(),
        "fills lost or repeated: {} gap(s), first {:?}, connection {}",
        track.breaks.len(),
        track.breaks.first(),
        match ended {
            None => "still open".to_owned(),
            Some((code, reason)) => format!("closed {code} {reason}"),
        }
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The smallest reproduction of the second silent loss the soak found: a client subscribes to
/// `fill` through the relay while the relay's upstream is down (here its reconnect is held by a
/// stalled handshake; in the soak, the client had just been closed and reconnected at once,
/// as clients do). The relay used to answer `subscribed` at once although nothing could reach it
/// until the upstream was back, and the client was never told. Fixed: a private subscription is
/// answered once the upstream is subscribed (the relay keeps the private channels live upstream). Every fill the simulator produced after the
/// client's `subscribed` reply (by its `ts_ms`) and that a direct reference subscriber saw must
/// reach the client, or the close that ends it must announce the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_subscription_made_during_an_upstream_outage_never_misses_fills_silently() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let (sim, relay) = busy_private_pair(4, |c| {
        c.upstream.backoff_base_seconds = settings::Seconds::from_secs_f64(0.1);
        c.upstream.backoff_cap_seconds = settings::Seconds::from_secs_f64(0.2);
        c.upstream.handshake_timeout_seconds = settings::Seconds::from_secs(2);
    })
    .await;
    assert!(await_ready(relay.addr, Duration::from_secs(10)).await);

    // The upstream goes, and its first reconnect is held unanswered for the handshake timeout.
    let stalled_before = sim.stats().handshakes_stalled;
    sim.fault(Fault::StallHandshake { count: 1 });
    sim.fault(Fault::Drop);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().handshakes_stalled == stalled_before {
        assert!(Instant::now() < deadline, "the relay never reconnected");
        sleep(Duration::from_millis(10)).await;
    }

    // Now: a direct reference subscriber, and a client of the relay, both on `fill`.
    let sub = r#"{"id":1,"cmd":"subscribe","params":{"channels":["fill"]}}"#;
    let (mut reference, _) = tokio_tungstenite::connect_async(sim.ws_url())
        .await
        .unwrap();
    reference.send(WsMessage::text(sub)).await.unwrap();
    let (mut client, _) = tokio_tungstenite::connect_async(relay.ws_url())
        .await
        .unwrap();
    client.send(WsMessage::text(sub)).await.unwrap();

    let mut ack_ms = None;
    let mut got = HashSet::new();
    let mut seen = Vec::new();
    let mut ended = None;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && ended.is_none() {
        tokio::select! {
            f = client.next() => match f {
                Some(Ok(WsMessage::Text(t))) => {
                    let env = protocol::Envelope::parse(t.as_bytes()).unwrap();
                    if env.kind == "subscribed" && ack_ms.is_none() {
                        ack_ms = Some(fills::now_ms());
                    }
                    if let Some(f) = fills::decode(&env) {
                        got.insert(f.trade_id);
                    }
                }
                Some(Ok(WsMessage::Close(c))) => ended = Some(close_of(c)),
                Some(Ok(_)) => {}
                _ => ended = Some((0, String::new())),
            },
            f = reference.next() => if let Some(Ok(WsMessage::Text(t))) = f {
                let env = protocol::Envelope::parse(t.as_bytes()).unwrap();
                if let Some(f) = fills::decode(&env) {
                    seen.push(f);
                }
            },
        }
    }
    // Let the relay deliver what it has, with the market still.
    sim.pause();
    let drain = Instant::now() + Duration::from_secs(1);
    while ended.is_none() {
        match timeout(
            drain.saturating_duration_since(Instant::now()),
            client.next(),
        )
        .await
        {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                let env = protocol::Envelope::parse(t.as_bytes()).unwrap();
                if let Some(f) = fills::decode(&env) {
                    got.insert(f.trade_id);
                }
            }
            Ok(Some(Ok(WsMessage::Close(c)))) => ended = Some(close_of(c)),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let ack = ack_ms.expect("the relay acknowledged the subscription");
    let owed: Vec<&fills::FillSeen> = seen
        .iter()
        .filter(|f| f.ts_ms > ack + fills::START_MARGIN_MS)
        .collect();
    let missing = owed.iter().filter(|f| !got.contains(&f.trade_id)).count();
    assert!(!owed.is_empty(), "the simulator produced no fill to check");
    assert!(
        missing == 0
            || matches!(&ended, Some((code, reason)) if fills::announces_loss(*code, reason)),
        "{missing} of {} fills produced after the client's subscribed reply never reached it, and it was not told (ended: {ended:?})",
        owed.len()
    );
    relay.shutdown().await;
    sim.shutdown().await;
}

/// The regression tests' setup: a busy two-market simulator (many fills) and an in-process relay
/// in front of it, linger 0, with `tweak` applied to the relay's configuration.
async fn busy_private_pair(
    seed: u64,
    tweak: impl FnOnce(&mut relay::config::RelayConfig),
) -> (exchange_sim::Sim, relay::RelayHandle) {
    let sim = exchange_sim::start(
        SimConfig {
            markets: 2,
            rate: 2000.0,
            seed,
            ping_interval: Duration::from_millis(300),
            ..SimConfig::default()
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let mut config = relay::config::RelayConfig::with_upstream(&sim.ws_url());
    config.fanout.linger_seconds = settings::SecondsOrZero::from_secs(0);
    config.upstream.rest.base_url = Some(sim.rest_url());
    tweak(&mut config);
    let listeners = relay::Listeners::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let relay = relay::spawn(config, listeners).await.unwrap();
    (sim, relay)
}

/// A close frame's code and reason (1005 and no reason when it had none).
fn close_of(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> (u16, String) {
    frame.map_or((1005, String::new()), |c| {
        (u16::from(c.code), c.reason.to_string())
    })
}
