//! [`start`] and the [`Sim`] handle: the shared state every task of one simulator sees.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protocol::OrderbookSnapshot;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{SimAuth, SimConfig};
use crate::engine::Engine;
use crate::fault::{Fault, DEFAULT_HOLD_SECONDS};
use crate::ledger::Ledger;
use crate::rest::RestFaults;
use crate::session::Session;
use crate::stats::{ConnectionStats, Stats};
use crate::{admin, conn};

/// How long [`Sim::shutdown`] waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An instruction from the simulator to one connection task.
#[derive(Debug)]
pub(crate) enum Control {
    Drop,
    Blackhole(Duration),
    Close { code: u16, reason: String },
    Duplicate { sid: Option<u64> },
    Error { code: u32, sid: Option<u64> },
}

/// One open connection, as the rest of the simulator sees it. Registered by the connection task
/// after the upgrade and removed by it when it ends.
pub(crate) struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    pub authenticated: bool,
    /// Accepted on an exempt listener ([`Sim::serve_exempt`]): no fault reaches it.
    pub exempt: bool,
    pub blackholed: AtomicBool,
    /// The connection's subscriptions. Locked by its task once per command or batch, and by
    /// `stats` and the `gap` fault; never across an `.await`.
    pub session: Mutex<Session>,
    /// Faults for the task. Unbounded because faults are rare admin requests; the task owns the
    /// receiver and closes it by ending.
    pub control: mpsc::UnboundedSender<Control>,
}

/// Counters, all monotonic.
#[derive(Default)]
pub(crate) struct Counters {
    pub handshakes_accepted: AtomicU64,
    pub handshakes_rejected: AtomicU64,
    pub handshakes_stalled: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub messages_sent: AtomicU64,
    pub rest_requests: AtomicU64,
}

/// State shared by the handle, the accept loops, the connections and the admin API.
pub(crate) struct Shared {
    pub config: SimConfig,
    pub engine: Arc<Engine>,
    pub counters: Counters,
    /// Handshakes still to answer 401 (`reject_auth`).
    pub reject_auth: AtomicU64,
    /// TCP connections still to hold unanswered (`stall_handshake`).
    pub stall: AtomicU64,
    faults: Mutex<BTreeMap<String, u64>>,
    /// REST faults still to apply (see `rest`).
    pub rest_faults: Mutex<RestFaults>,
    /// The account's fills, orders and positions; written by the engine, read by `rest`.
    pub ledger: Arc<Mutex<Ledger>>,
    /// Open connections by id.
    pub conns: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    next_conn: AtomicU64,
}

/// Takes one from a fault counter if it is above zero.
pub(crate) fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

impl Shared {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Every open connection that faults may reach (not the exempt ones).
    fn each_conn(&self, f: impl Fn(&ConnHandle)) {
        let conns: Vec<Arc<ConnHandle>> = self
            .conns
            .lock()
            .values()
            .filter(|c| !c.exempt)
            .cloned()
            .collect();
        for c in conns {
            f(&c);
        }
    }

    fn send_all(&self, make: impl Fn() -> Control) {
        // A send fails only when the task has just ended: nothing left to fault.
        self.each_conn(|c| drop(c.control.send(make())));
    }

    pub fn book(&self, ticker: &str) -> Option<OrderbookSnapshot> {
        let idx = self.engine.market(ticker)?;
        Some(self.engine.state.lock().markets[idx as usize].snapshot())
    }

    pub fn set_paused(&self, paused: bool) {
        let mut state = self.engine.state.lock();
        state.paused = paused;
        if paused {
            state.flush_queue();
        }
        drop(state);
        tracing::info!(paused, "market activity");
    }

    pub fn fault(&self, fault: Fault) {
        if let Err(problem) = fault.validate() {
            tracing::warn!(%problem, "fault ignored");
            return;
        }
        tracing::info!(?fault, "fault");
        *self
            .faults
            .lock()
            .entry(fault.kind().to_owned())
            .or_default() += 1;
        match fault {
            Fault::Drop => self.send_all(|| Control::Drop),
            Fault::Blackhole { seconds } => {
                let hold = Duration::from_secs(seconds.unwrap_or(DEFAULT_HOLD_SECONDS));
                self.send_all(|| Control::Blackhole(hold));
            }
            Fault::Close { code, reason } => self.send_all(|| Control::Close {
                code,
                reason: reason.clone(),
            }),
            Fault::Gap { sid, market } => {
                let market = match market {
                    Some(t) => match self.engine.market(&t) {
                        Some(m) => Some(m),
                        None => {
                            return tracing::warn!(market = %t, "gap fault for an unknown market")
                        }
                    },
                    None => None,
                };
                self.each_conn(|c| c.session.lock().arm_gap(sid, market));
            }
            Fault::Duplicate { sid } => self.send_all(|| Control::Duplicate { sid }),
            Fault::Error { code, sid } => self.send_all(|| Control::Error { code, sid }),
            Fault::RejectAuth { count } => self.reject_auth.store(count, Ordering::Release),
            Fault::StallHandshake { count } => self.stall.store(count, Ordering::Release),
            Fault::Rate { msgs_per_sec } => self.engine.state.lock().rate = msgs_per_sec,
            Fault::Burst { count } => self.engine.burst(count),
            Fault::RestError { status, count } => self.rest_faults.lock().error = (count, status),
            Fault::RestRateLimit {
                retry_after_seconds,
                count,
            } => self.rest_faults.lock().rate_limit = (count, retry_after_seconds),
            Fault::RestSlow { delay_ms, count } => {
                self.rest_faults.lock().slow = (count, Duration::from_millis(delay_ms));
            }
            Fault::RestTruncate { cut_body, count } => {
                self.rest_faults.lock().truncate = (count, cut_body);
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let (events_generated, paused, rate) = {
            let state = self.engine.state.lock();
            (state.num, state.paused, state.rate)
        };
        let mut per_connection: Vec<ConnectionStats> = {
            let conns = self.conns.lock();
            conns
                .values()
                .map(|c| ConnectionStats {
                    id: c.id,
                    peer: c.peer.to_string(),
                    authenticated: c.authenticated,
                    blackholed: c.blackholed.load(Ordering::Relaxed),
                    sids: c.session.lock().stats(&self.engine.tickers),
                })
                .collect()
        };
        per_connection.sort_by_key(|c| c.id);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections: per_connection.len(),
            handshakes_accepted: load(&self.counters.handshakes_accepted),
            handshakes_rejected: load(&self.counters.handshakes_rejected),
            handshakes_stalled: load(&self.counters.handshakes_stalled),
            handshakes_failed: load(&self.counters.handshakes_failed),
            messages_sent: load(&self.counters.messages_sent),
            rest_requests: load(&self.counters.rest_requests),
            events_generated,
            paused,
            rate,
            faults: self.faults.lock().clone(),
            per_connection,
        }
    }
}

/// A running simulator. Dropping it stops every task (without waiting); [`Sim::shutdown`]
/// stops them and waits.
pub struct Sim {
    shared: Arc<Shared>,
    ws_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Starts a simulator on two bound listeners (WebSocket and admin HTTP) and returns at once.
/// Must be called within a Tokio runtime. Fails with `InvalidInput` for a bad configuration
/// (see [`SimConfig::problems`]) and with the listener's error if its address is unavailable.
pub async fn start(mut config: SimConfig, ws: TcpListener, admin: TcpListener) -> io::Result<Sim> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if let SimAuth::Verifier(v) = &mut config.auth {
        v.window_ms = config.auth_window_ms;
    }
    let ws_addr = ws.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let engine = Arc::new(Engine::new(config.markets, config.seed, config.rate));
    let ledger = engine.ledger.clone();
    let shared = Arc::new(Shared {
        config,
        engine: engine.clone(),
        counters: Counters::default(),
        reject_auth: AtomicU64::new(0),
        stall: AtomicU64::new(0),
        faults: Mutex::new(BTreeMap::new()),
        rest_faults: Mutex::new(RestFaults::default()),
        ledger,
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(0),
    });
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(engine.run(shared.config.pacing, shutdown.clone()));
    tasks.spawn(conn::accept_loop(
        ws,
        shared.clone(),
        shutdown.clone(),
        tasks.clone(),
        false,
    ));
    tasks.spawn(admin::serve(
        admin,
        shared.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    tracing::info!(%ws_addr, %admin_addr, markets = shared.engine.tickers.len(), "exchange-sim started");
    Ok(Sim {
        shared,
        ws_addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

impl Sim {
    /// The WebSocket listener's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The admin HTTP listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `ws://ADDR/trade-api/ws/v2`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.ws_addr, protocol::sign::WS_PATH)
    }

    /// The base of the REST API, `http://ADMIN_ADDR/trade-api/v2` (served on the admin listener).
    pub fn rest_url(&self) -> String {
        format!("http://{}{}", self.admin_addr, crate::rest::API_PREFIX)
    }

    /// `http://ADMIN_ADDR`, the admin API's base.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Serves the same exchange on one more listener whose connections no fault reaches (no
    /// drop, blackhole, close, gap, duplicate, error, refused or stalled handshake): a reference
    /// observer that must see everything while the faults aim at everyone else. Returns its
    /// `ws://` URL.
    pub fn serve_exempt(&self, listener: TcpListener) -> io::Result<String> {
        let addr = listener.local_addr()?;
        self.tasks.spawn(conn::accept_loop(
            listener,
            self.shared.clone(),
            self.shutdown.clone(),
            self.tasks.clone(),
            true,
        ));
        Ok(format!("ws://{addr}{}", protocol::sign::WS_PATH))
    }

    /// The tickers, in a fixed order.
    pub fn markets(&self) -> Vec<String> {
        self.shared.engine.tickers.clone()
    }

    /// The true book of `ticker` now, in the wire form of `orderbook_snapshot`.
    pub fn book(&self, ticker: &str) -> Option<OrderbookSnapshot> {
        self.shared.book(ticker)
    }

    /// Stops all market activity. Once this returns no further event is generated (a `burst`
    /// fault still is).
    pub fn pause(&self) {
        self.shared.set_paused(true);
    }

    /// Restarts market activity.
    pub fn resume(&self) {
        self.shared.set_paused(false);
    }

    /// Applies a fault, as `POST /admin/fault/{kind}` does. A fault that fails
    /// [`Fault::validate`] is logged and ignored.
    pub fn fault(&self, fault: Fault) {
        self.shared.fault(fault);
    }

    /// The same view as `GET /admin/stats`.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops accepting, closes every connection (close code 1001) and waits up to 5 s for the
    /// tasks to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("exchange-sim tasks still running after the shutdown grace period");
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
