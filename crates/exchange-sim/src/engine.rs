//! The engine: the true books, the simulated account, and the stream of numbered events.
//!
//! One [`Engine`] per simulator. Its state sits behind one lock; under that lock the engine
//! changes the books, numbers each event, encodes its body once and broadcasts the batch, so the
//! order of the broadcast is the order of the numbers. A connection that snapshots a book under
//! the same lock knows exactly which events the snapshot already contains (those numbered up to
//! [`EngineState::num`]) and skips them: snapshot + later deltas rebuild the book exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::{Channel, Side};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::Pacing;
use crate::encode::{self, AccountFill, Stamp};
use crate::ledger::{Ledger, Record};
use crate::market::{self, LevelChange, Market};

/// How often the engine wakes to generate the events due at the configured rate. Small enough
/// that a 50,000 msg/s stream comes in batches of ~250, large enough to keep wake-ups cheap.
const TICK: Duration = Duration::from_millis(5);
/// Most events in one broadcast batch (bursts are split into batches of this size).
const MAX_BATCH: usize = 256;
/// Batches the broadcast channel keeps for its slowest receiver. A connection that falls further
/// behind gets `RecvError::Lagged` and is treated as the exchange treats a slow reader: error 25
/// on its sids. 1024 batches is about 5 s of stream at any rate; memory is bounded by it.
const BROADCAST_CAPACITY: usize = 1024;
/// After a stall (a paused process, a slow host) at most this much time's worth of events is
/// made up, so the stream never floods to catch up.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);
/// Longest the even pacer sleeps before looking again at the shutdown token, the pause flag and
/// the rate, so that none of them waits for a long gap at a low rate.
const EVEN_POLL: Duration = Duration::from_millis(10);

/// What an event is; decides its channel and wire type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Delta,
    Ticker,
    Trade,
    Fill,
    UserOrder,
    Position,
    Lifecycle,
}

impl Kind {
    pub fn channel(self) -> Channel {
        match self {
            Kind::Delta => Channel::OrderbookDelta,
            Kind::Ticker => Channel::Ticker,
            Kind::Trade => Channel::Trade,
            Kind::Fill => Channel::Fill,
            Kind::UserOrder => Channel::UserOrders,
            Kind::Position => Channel::MarketPositions,
            Kind::Lifecycle => Channel::MarketLifecycleV2,
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Delta => "orderbook_delta",
            Kind::Ticker => "ticker",
            Kind::Trade => "trade",
            Kind::Fill => "fill",
            Kind::UserOrder => "user_order",
            Kind::Position => "market_position",
            Kind::Lifecycle => "market_lifecycle_v2",
        }
    }
}

/// One data message, encoded once and shared by every connection through its [`Batch`].
#[derive(Debug)]
pub(crate) struct Event {
    /// Global number, from 1, in broadcast order.
    pub num: u64,
    pub market: u32,
    pub kind: Kind,
    /// The `msg` JSON object.
    pub body: String,
    /// For deltas: the change, so a `use_yes_price` connection can re-encode a NO price.
    pub change: Option<(LevelChange, i64)>,
}

pub(crate) type Batch = Arc<Vec<Event>>;

/// The simulated account's holdings in one market. Money in cents.
#[derive(Clone, Copy, Debug, Default)]
struct Holding {
    /// YES contracts positive, NO contracts negative.
    position: i64,
    /// What the open position cost.
    cost: i64,
    /// Fees paid on the open position.
    position_fees: i64,
    realized: i64,
    /// Fees paid in this market, in total.
    fees_paid: i64,
    /// Contracts traded in this market, in total.
    volume: i64,
}

impl Holding {
    /// The account bought `count` of `side` at that side's price `side_price`, paying `fee`.
    fn buy(&mut self, side: Side, count: i64, side_price: i64, fee: i64) {
        self.volume += count;
        self.fees_paid += fee;
        let signed = if side == Side::Yes { count } else { -count };
        if self.position == 0 || self.position.signum() == signed.signum() {
            self.position += signed;
            self.cost += count * side_price;
            self.position_fees += fee;
            return;
        }
        // Buying the opposite side closes pairs, each of which settles at 100 cents.
        let open = self.position.abs();
        let closed = count.min(open);
        let avg = self.cost / open;
        let closed_fees = self.position_fees * closed / open;
        self.realized += closed * (100 - avg - side_price);
        self.cost -= closed * avg;
        self.position_fees -= closed_fees;
        self.position += if side == Side::Yes { closed } else { -closed };
        let rest = count - closed;
        if rest > 0 {
            self.position += if side == Side::Yes { rest } else { -rest };
            self.cost = rest * side_price;
            self.position_fees = fee * rest / count;
        }
    }
}

/// The exchange's maker fee on `count` contracts at `price` cents: 0.0175 x C x P x (1 - P)
/// dollars, rounded up to the cent.
fn maker_fee_cents(count: i64, price: i64) -> i64 {
    (175 * count * price * (100 - price) + 999_999) / 1_000_000
}

/// Everything behind the engine lock.
pub(crate) struct EngineState {
    pub markets: Vec<Market>,
    /// Number of the last event generated (0 before any).
    pub num: u64,
    pub paused: bool,
    /// Total messages per second.
    pub rate: f64,
    /// Messages due but not yet generated (negative after a multi-message step overshoots).
    credit: f64,
    /// [`Pacing::Even`]: events generated (numbered, applied to the books) but not yet broadcast,
    /// because a step makes several and they leave one at a time. Broadcast before anything newer
    /// (see [`EngineState::flush_queue`]), so the broadcast order stays the numbering order.
    queue: VecDeque<Event>,
    rng: SmallRng,
    holdings: Vec<Holding>,
    /// The simulated account's `user_id`.
    user_id: String,
    /// Orders the account placed so far (for its `client_order_id`s).
    orders: u64,
    /// Broadcasts each batch; held here so sending happens under the lock (see module doc).
    tx: broadcast::Sender<Batch>,
    /// Written in the step that emits the account's messages (see `ledger`).
    ledger: Arc<Mutex<Ledger>>,
}

/// The engine and its lookup tables. Shared by the simulator handle, every connection and the
/// engine task.
pub(crate) struct Engine {
    /// The truth and the event counter. Held briefly: one batch of generation, or one snapshot.
    /// Never held across an `.await`. Lock order: a connection's session lock, then this one.
    pub state: Mutex<EngineState>,
    pub tickers: Vec<String>,
    /// `market_id` of each market, by index (immutable, so readable without the lock).
    pub market_ids: Vec<String>,
    index: HashMap<String, u32>,
    tx: broadcast::Sender<Batch>,
    /// The account's fills, orders and positions, for the REST API. Its lock is taken after the
    /// state lock when recording, alone when reading.
    pub ledger: Arc<Mutex<Ledger>>,
}

impl Engine {
    pub fn new(markets: usize, seed: u64, rate: f64) -> Engine {
        let mut rng = SmallRng::seed_from_u64(seed);
        let tickers = market::tickers(markets, &mut rng);
        let books: Vec<Market> = tickers
            .iter()
            .map(|t| Market::new(t.clone(), &mut rng))
            .collect();
        let market_ids = books.iter().map(|m| m.market_id.clone()).collect();
        let index = tickers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let state = EngineState {
            ledger: ledger.clone(),
            holdings: vec![Holding::default(); books.len()],
            user_id: market::uuid(&mut rng),
            orders: 0,
            markets: books,
            num: 0,
            paused: false,
            rate,
            credit: 0.0,
            queue: VecDeque::new(),
            rng,
            tx: tx.clone(),
        };
        Engine {
            state: Mutex::new(state),
            tickers,
            market_ids,
            index,
            tx,
            ledger,
        }
    }

    /// The index of a ticker.
    pub fn market(&self, ticker: &str) -> Option<u32> {
        self.index.get(ticker).copied()
    }

    /// A receiver of every batch broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.tx.subscribe()
    }

    /// Generates `count` messages now, paused or not (the `burst` fault).
    pub fn burst(&self, count: u64) {
        let mut left = count as f64;
        while left >= 1.0 {
            let mut state = self.state.lock();
            left -= state.generate(left.min(MAX_BATCH as f64) as usize) as f64;
        }
    }

    /// Runs the clock until `shutdown`, pacing the events as `pacing` says.
    pub async fn run(self: Arc<Self>, pacing: Pacing, shutdown: CancellationToken) {
        match pacing {
            Pacing::Tick => self.run_ticks(shutdown).await,
            // A thread of its own: tokio's timer has a 1 ms resolution, too coarse for the gaps
            // of a few hundred microseconds of a few thousand messages per second.
            Pacing::Even => {
                let ran = tokio::task::spawn_blocking(move || self.run_even(&shutdown)).await;
                if let Err(e) = ran {
                    tracing::error!(error = %e, "the even pacer ended abnormally");
                }
            }
        }
    }

    /// Every [`TICK`], generates the events due at the rate and broadcasts them as one batch.
    async fn run_ticks(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let elapsed = now.duration_since(last).min(MAX_CATCH_UP);
            last = now;
            let mut state = self.state.lock();
            if state.paused || state.rate <= 0.0 {
                state.credit = 0.0;
                continue;
            }
            state.credit += state.rate * elapsed.as_secs_f64();
            while state.credit >= 1.0 {
                let due = state.credit.min(MAX_BATCH as f64) as usize;
                let made = state.generate(due);
                state.credit -= made as f64;
            }
        }
    }

    /// Broadcasts one event at a time, each as a batch of its own, `1 / rate` apart, until
    /// `shutdown`. Blocks its thread. A late wake-up keeps the schedule (the next gap is shorter),
    /// unless it is more than [`MAX_CATCH_UP`] late: then the schedule restarts from now rather
    /// than flooding to catch up.
    fn run_even(&self, shutdown: &CancellationToken) {
        let mut next = Instant::now();
        while !shutdown.is_cancelled() {
            let rate = {
                let state = self.state.lock();
                if state.paused {
                    0.0
                } else {
                    state.rate
                }
            };
            let now = Instant::now();
            if rate <= 0.0 {
                next = now + EVEN_POLL;
                std::thread::sleep(EVEN_POLL);
                continue;
            }
            if next > now {
                std::thread::sleep((next - now).min(EVEN_POLL));
                continue;
            }
            if now - next > MAX_CATCH_UP {
                next = now;
            }
            self.state.lock().emit_one();
            next += Duration::from_secs_f64(1.0 / rate);
        }
    }
}

impl EngineState {
    /// Broadcasts the oldest queued event alone, generating a step first if none is queued.
    fn emit_one(&mut self) {
        if self.queue.is_empty() {
            let mut made = Vec::new();
            let at = Stamp::now();
            while made.is_empty() {
                self.step(&at, &mut made);
            }
            self.queue.extend(made);
        }
        if let Some(event) = self.queue.pop_front() {
            // No receivers is fine: nobody is connected.
            let _ = self.tx.send(Arc::new(vec![event]));
        }
    }

    /// Broadcasts every queued event at once: before a newer one is generated outside the pacer
    /// (a burst), and when activity pauses (after a pause, nothing generated is still unsent).
    pub fn flush_queue(&mut self) {
        if !self.queue.is_empty() {
            let _ = self.tx.send(Arc::new(self.queue.drain(..).collect()));
        }
    }

    /// Generates at least `due` messages (a step may emit several) as one or more batches, each
    /// broadcast before returning. Returns how many were generated.
    fn generate(&mut self, due: usize) -> usize {
        self.flush_queue();
        let mut batch = Vec::with_capacity(due + 6);
        let at = Stamp::now();
        while batch.len() < due {
            self.step(&at, &mut batch);
        }
        let made = batch.len();
        // No receivers is fine: nobody is connected.
        let _ = self.tx.send(Arc::new(batch));
        made
    }

    fn push(&mut self, out: &mut Vec<Event>, market: u32, kind: Kind, body: String) {
        self.num += 1;
        out.push(Event {
            num: self.num,
            market,
            kind,
            body,
            change: None,
        });
    }

    /// One step of one market: a book change, a trade, a ticker, or (rarely) a lifecycle event.
    fn step(&mut self, at: &Stamp, out: &mut Vec<Event>) {
        let idx = self.rng.gen_range(0..self.markets.len());
        let mi = idx as u32;
        let roll: f64 = self.rng.gen();
        if roll < 0.12 {
            let Some(exec) = self.markets[idx].execute(&mut self.rng) else {
                return self.walk(idx, at, out);
            };
            self.push_delta(out, idx, exec.change, at);
            let trade_id = market::uuid(&mut self.rng);
            let m = &self.markets[idx];
            let body = encode::trade(
                m,
                &trade_id,
                exec.maker_side,
                exec.yes_price,
                exec.count,
                at,
            );
            self.push(out, mi, Kind::Trade, body);
            let body = encode::ticker(&self.markets[idx], at);
            self.push(out, mi, Kind::Ticker, body);
            if self.rng.gen_bool(0.2) {
                self.account_fill(idx, &trade_id, exec, at, out);
            }
        } else if roll < 0.82 {
            self.walk(idx, at, out);
        } else if roll < 0.999 {
            let body = encode::ticker(&self.markets[idx], at);
            self.push(out, mi, Kind::Ticker, body);
        } else {
            let close_ts = at.secs + self.rng.gen_range(3_600..30 * 86_400);
            let body = encode::lifecycle(&self.markets[idx], close_ts);
            self.push(out, mi, Kind::Lifecycle, body);
        }
    }

    fn walk(&mut self, idx: usize, at: &Stamp, out: &mut Vec<Event>) {
        let change = self.markets[idx].walk(&mut self.rng);
        self.push_delta(out, idx, change, at);
    }

    fn push_delta(&mut self, out: &mut Vec<Event>, idx: usize, change: LevelChange, at: &Stamp) {
        let m = &self.markets[idx];
        let body = encode::delta(&m.ticker, &m.market_id, change, at.ms, &at.rfc3339, false);
        self.push(out, idx as u32, Kind::Delta, body);
        if let Some(last) = out.last_mut() {
            last.change = Some((change, at.ms));
        }
    }

    /// The account's resting bid was the maker of this trade: fill, order update, position.
    fn account_fill(
        &mut self,
        idx: usize,
        trade_id: &str,
        exec: market::Execution,
        at: &Stamp,
        out: &mut Vec<Event>,
    ) {
        let side = exec.maker_side;
        let side_price = match side {
            Side::Yes => exec.yes_price,
            Side::No => 100 - exec.yes_price,
        };
        let fee = maker_fee_cents(exec.count, side_price);
        let holding = &mut self.holdings[idx];
        holding.buy(side, exec.count, side_price, fee);
        let holding = *holding;
        let order_id = market::uuid(&mut self.rng);
        self.orders += 1;
        let client_order_id = format!("sim-{}", self.orders);
        let extra = self.rng.gen_range(0..=exec.count * 2);
        // The order rested for a while before it was hit.
        let created = Stamp::at(at.ms - self.rng.gen_range(1..120_000));
        let f = AccountFill {
            user_id: &self.user_id,
            trade_id,
            order_id: &order_id,
            client_order_id: &client_order_id,
            side,
            yes_price: exec.yes_price,
            count: exec.count,
            fee_cents: fee,
            order_initial: exec.count + extra,
            order_remaining: extra,
            order_created: &created,
            position: holding.position,
            position_cost_cents: holding.cost,
            position_fees_cents: holding.position_fees,
            realized_pnl_cents: holding.realized,
            fees_paid_cents: holding.fees_paid,
            volume: holding.volume,
            at,
        };
        let m = &self.markets[idx];
        let fill = encode::fill(m, &f);
        // Same step, same values: REST and `/admin/fills` agree with the stream.
        self.ledger.lock().record(&Record {
            ticker: &m.ticker,
            user_id: f.user_id,
            trade_id,
            order_id: &order_id,
            client_order_id: &client_order_id,
            side,
            yes_price: exec.yes_price,
            count: exec.count,
            fee_cents: fee,
            order_initial: f.order_initial,
            order_remaining: f.order_remaining,
            order_created_rfc3339: &created.rfc3339,
            ts_ms: at.ms,
            rfc3339: &at.rfc3339,
            position: holding.position,
            position_cost_cents: holding.cost,
            realized_pnl_cents: holding.realized,
            fees_paid_cents: holding.fees_paid,
            ws_fill: &fill,
        });
        let bodies = [
            (Kind::Fill, fill),
            (Kind::UserOrder, encode::user_order(m, &f)),
            (Kind::Position, encode::position(m, &f)),
        ];
        for (kind, body) in bodies {
            self.push(out, idx as u32, kind, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_close_pairs_at_a_dollar() {
        let mut h = Holding::default();
        h.buy(Side::Yes, 10, 40, 5);
        assert_eq!((h.position, h.cost, h.realized), (10, 400, 0));
        h.buy(Side::No, 4, 50, 2); // 4 pairs cost 40 + 50, settle at 100: +10 each
        assert_eq!((h.position, h.cost, h.realized), (6, 240, 40));
        assert_eq!((h.position_fees, h.fees_paid, h.volume), (3, 7, 14));
        h.buy(Side::No, 8, 70, 4); // closes 6 (-10 each), opens 2 NO at 70
        assert_eq!((h.position, h.cost, h.realized), (-2, 140, -20));
        assert_eq!((h.position_fees, h.fees_paid, h.volume), (1, 11, 22));
    }

    #[test]
    fn maker_fees_round_up_to_the_cent() {
        // 0.0175 x 278 x 0.75 x 0.25 = 0.912 dollars.
        assert_eq!(maker_fee_cents(278, 75), 92);
        assert_eq!(maker_fee_cents(1, 50), 1);
        assert_eq!(maker_fee_cents(100, 50), 44); // 0.4375
    }

    #[test]
    fn events_are_numbered_in_order_and_replay_onto_the_books() {
        let engine = Engine::new(4, 9, 0.0);
        let mut rx = engine.subscribe();
        let start: Vec<Market> = engine.state.lock().markets.clone();
        engine.burst(5_000);
        let mut books = start;
        let mut next = 1;
        while let Ok(batch) = rx.try_recv() {
            for ev in batch.iter() {
                assert_eq!(ev.num, next);
                next += 1;
                if let Some((change, _)) = ev.change {
                    books[ev.market as usize].apply(change);
                }
            }
        }
        assert!(next > 5_000);
        let state = engine.state.lock();
        assert_eq!(state.num, next - 1);
        for (rebuilt, truth) in books.iter().zip(&state.markets) {
            assert_eq!(rebuilt.snapshot(), truth.snapshot());
        }
    }

    #[test]
    fn even_pacing_sends_one_message_at_a_time_evenly_spaced() {
        const RATE: f64 = 400.0; // 2.5 ms apart; the 5 ms tick would send two at a time
        const N: usize = 200;
        let engine = Arc::new(Engine::new(4, 3, RATE));
        let mut rx = engine.subscribe();
        let shutdown = CancellationToken::new();
        let pacer = {
            let (engine, shutdown) = (engine.clone(), shutdown.clone());
            std::thread::spawn(move || engine.run_even(&shutdown))
        };
        let mut at = Vec::with_capacity(N);
        let mut next = 1;
        while at.len() < N {
            let batch = rx.blocking_recv().expect("the pacer is running");
            at.push(Instant::now());
            assert_eq!(batch.len(), 1, "one message per batch");
            assert_eq!(batch[0].num, next, "in numbering order");
            next += 1;
        }
        shutdown.cancel();
        pacer.join().unwrap();

        let gap = Duration::from_secs_f64(1.0 / RATE);
        let span = at[N - 1] - at[0];
        let expected = gap * (N as u32 - 1);
        assert!(
            span > expected.mul_f64(0.8) && span < expected.mul_f64(1.25),
            "{N} messages took {span:?}, expected about {expected:?}"
        );
        // A loaded machine delays some wake-ups (the next gap is then shorter); a burst
        // would make most gaps nearly zero.
        let short = at.windows(2).filter(|w| w[1] - w[0] < gap / 2).count();
        assert!(
            short < N / 10,
            "{short} of {} gaps shorter than {:?}",
            N - 1,
            gap / 2
        );
    }

    #[test]
    fn queued_messages_leave_before_a_burst() {
        let engine = Engine::new(4, 9, 0.0);
        let mut rx = engine.subscribe();
        let mut state = engine.state.lock();
        // Until a step leaves messages queued (a trade makes three).
        while state.queue.is_empty() {
            state.emit_one();
        }
        let generated = state.num;
        state.flush_queue();
        assert!(state.queue.is_empty());
        state.emit_one();
        drop(state);
        engine.burst(50);
        let mut next = 1;
        while let Ok(batch) = rx.try_recv() {
            for ev in batch.iter() {
                assert_eq!(ev.num, next);
                next += 1;
            }
        }
        assert!(next > generated + 50);
        assert_eq!(engine.state.lock().num, next - 1, "nothing left unsent");
    }
}
