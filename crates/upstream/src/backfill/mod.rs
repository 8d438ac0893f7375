//! What the private channels missed during an outage, fetched over REST.
//!
//! `fill`, `user_orders` and `market_positions` carry no seq and the exchange does not replay
//! them: what happened while the connection was down is only in its REST history. This stage
//! sits between the session and the owner. From the moment an outage begins while a private
//! channel is wanted it holds every private message; once the session is `Subscribed` again it
//! fetches the fills since the last message before the outage (less `backfill_overlap_seconds`),
//! the orders that changed and the current positions, then emits, in this order: the fills the
//! owner has not had (by trade id, oldest first), those orders, the positions of the markets they
//! touched, and the held live messages (fills already emitted left out). Public data and states
//! pass straight through.
//!
//! A private subscription that dies at the exchange (a terminal error; the session resubscribes
//! it) is a gap of the same kind: held from the death, fetched once it is live again.
//!
//! When REST fails past its bound (`upstream.rest.max_total_seconds`), or backfill is off, the
//! loss is announced instead: [`Event::MessagesLost`] for each private channel wanted.

mod convert;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::{Channel, Count, MessageType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::event::{Data, Event, State};
use crate::metrics;
use crate::rest::{Fill, MarketPosition, Order, OrderQuery, PositionQuery, RestClient, RestError};
use crate::session::{Internal, Shared};
use convert::{LiveFill, Memo};

/// Private messages held while a backfill runs; past this the backfill is abandoned and the
/// loss announced (at the exchange's private rates this is hours of activity).
const MAX_HELD: usize = 100_000;

/// How the stage recovers: over REST, or not at all (the loss is announced).
pub(crate) struct Recovery {
    pub rest: Option<RestClient>,
    pub overlap: Duration,
    /// A session taking over another's stream: its first `Subscribed` backfills from here.
    pub continuing: Option<Continuation>,
}

/// Where a new session takes the private stream over from another that ended (a cluster
/// leader's successor): the fills since `since` (Unix s) not among `delivered` are fetched as
/// after an outage, before any live one.
#[derive(Clone, Debug, Default)]
pub struct Continuation {
    pub since: i64,
    /// Trade ids the owner's stream already carried (recent ones suffice: `since` bounds it).
    pub delivered: Vec<String>,
}

/// Runs the stage until `input` ends, then ends `output`.
pub(crate) async fn run(
    mut input: mpsc::Receiver<Internal>,
    output: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    recovery: Recovery,
) {
    let mut memo = Memo::default();
    let mut outage_from = None;
    if let (Some(c), Some(_)) = (&recovery.continuing, &recovery.rest) {
        // Held from the start: what comes live waits for what the predecessor missed.
        for id in &c.delivered {
            memo.remember(id);
        }
        outage_from = Some(c.since);
    }
    let from_start = recovery.continuing.is_none();
    let mut stage = Stage {
        from_start,
        output,
        shared,
        recovery,
        up: false,
        last_data_s: now_s(),
        outage_from,
        held: Vec::new(),
        memo,
        task: None,
        dead: HashSet::new(),
    };
    loop {
        let event = tokio::select! {
            event = input.recv() => match event {
                Some(event) => event,
                None => break,
            },
            done = async { (&mut stage.task.as_mut().expect("guarded").handle).await }, if stage.task.is_some() => {
                let task = stage.task.take().expect("guarded");
                let result = done.unwrap_or_else(|e| Err(RestError::Transport(e.to_string())));
                if stage.finish(task, result).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let handled = match event {
            Internal::Event(event) => stage.on_event(event).await,
            Internal::Live(channel) => {
                stage.on_live(channel);
                Ok(())
            }
        };
        if handled.is_err() {
            return;
        }
    }
    // The session ended (shutdown): whatever is held still goes out, in order.
    if let Some(task) = stage.task.take() {
        task.handle.abort();
    }
    let held = std::mem::take(&mut stage.held);
    for data in held {
        let _ = stage.output.send(Event::Data(data)).await;
    }
}

struct Stage {
    output: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    recovery: Recovery,
    /// The connection was up (`Connected` or `Subscribed`) at the last state.
    up: bool,
    /// Unix seconds of the last data message received.
    last_data_s: i64,
    /// During an outage that private channels were exposed to: the Unix second from which
    /// their messages may be missing. Private messages are held while it is set.
    outage_from: Option<i64>,
    held: Vec<Data>,
    memo: Memo,
    task: Option<Task>,
    /// Private channels whose subscription died at the exchange and is not live again yet.
    dead: HashSet<Channel>,
    /// Not a successor: the stream's past begins when its first private subscription is live.
    from_start: bool,
}

struct Task {
    handle: JoinHandle<Result<Fetched, RestError>>,
    started: Instant,
    channels: Vec<Channel>,
}

struct Fetched {
    fills: Vec<Fill>,
    orders: Vec<Order>,
    positions: Vec<MarketPosition>,
}

/// The owner dropped its receiver.
struct Gone;

impl Stage {
    fn wanted_private(&self) -> Vec<Channel> {
        self.shared
            .desired()
            .wanted()
            .into_keys()
            .filter(|c| c.is_private())
            .collect()
    }

    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.output.send(event).await.map_err(|_| Gone)
    }

    async fn on_event(&mut self, event: Event) -> Result<(), Gone> {
        match event {
            Event::Data(data) => {
                self.last_data_s = now_s();
                if !data.channel.is_private() {
                    return self.send(Event::Data(data)).await;
                }
                if self.outage_from.is_none() {
                    // A fill made while REST was read comes both ways: the backfill sent it, and
                    // its live copy may reach this stage only after.
                    return self.pass_on(data).await;
                }
                self.held.push(data);
                if self.held.len() > MAX_HELD {
                    warn!(
                        held = MAX_HELD,
                        "too many private messages held; backfill abandoned"
                    );
                    if let Some(task) = self.task.take() {
                        task.handle.abort();
                    }
                    let channels = self.wanted_private();
                    return self.give_up(channels, "overflow").await;
                }
                Ok(())
            }
            Event::State(state) => {
                let outage = matches!(
                    state,
                    State::Disconnected { .. } | State::GaveUp { .. } | State::AuthFailed
                );
                if outage && self.up {
                    self.on_outage().await?;
                }
                self.up = state.is_up();
                let subscribed = state == State::Subscribed;
                self.send(Event::State(state)).await?;
                if subscribed && self.outage_from.is_some() {
                    self.start();
                }
                Ok(())
            }
            Event::MessagesLost { channel }
                if channel.is_private() && self.recovery.rest.is_some() =>
            {
                // A subscription died at the exchange and is being re-established: what it
                // misses meanwhile is fetched once it is live again.
                warn!(%channel, "private subscription died at the exchange; backfilling it");
                if let Some(task) = self.task.take() {
                    // Started before this gap: fetch again once the channel is live.
                    task.handle.abort();
                }
                self.dead.insert(channel);
                self.outage_from.get_or_insert(self.last_data_s);
                Ok(())
            }
            other => self.send(other).await,
        }
    }

    /// A subscription of `channel` is live: once no private channel is still dead, the backfill
    /// for their gap starts (an outage meanwhile defers it to the next `Subscribed`).
    fn on_live(&mut self, channel: Channel) {
        let repair = self.dead.contains(&channel) || self.outage_from.is_some();
        if channel.is_private() && self.from_start {
            self.from_start = false;
            self.memo.live_from(now_s());
        } else if channel == Channel::Fill && !repair {
            // Not a repair: nobody held it for a while (no client wanted it), so this is a
            // new subscription whose past begins now.
            self.memo.restart(now_s());
        }
        if self.dead.remove(&channel)
            && self.dead.is_empty()
            && self.up
            && self.task.is_none()
            && self.outage_from.is_some()
        {
            self.start();
        }
    }

    /// The connection was lost: private messages from now on are held until what was missed is
    /// known, or the loss is announced at once when there is no way to know.
    async fn on_outage(&mut self) -> Result<(), Gone> {
        // Every subscription is re-established on the next connection.
        self.dead.clear();
        if let Some(task) = self.task.take() {
            // Another loss while fetching: fetch again, from the first outage, once up.
            task.handle.abort();
        }
        if self.outage_from.is_some() {
            return Ok(());
        }
        let wanted = self.wanted_private();
        if wanted.is_empty() {
            return Ok(());
        }
        if self.recovery.rest.is_none() {
            return self.announce(&wanted).await;
        }
        self.outage_from = Some(self.last_data_s);
        Ok(())
    }

    fn start(&mut self) {
        // A successor's owner may not have asked for its private channels yet when the session
        // first subscribes: it recovers them all (nobody wanting them costs nothing).
        let channels = if self.recovery.continuing.take().is_some() {
            Channel::ALL
                .into_iter()
                .filter(|c| c.is_private())
                .collect()
        } else {
            self.wanted_private()
        };
        let (Some(rest), Some(from)) = (self.recovery.rest.clone(), self.outage_from) else {
            return;
        };
        let since = from - self.recovery.overlap.as_secs().max(1) as i64;
        let wants = |c: Channel| channels.contains(&c);
        let (fills, orders, positions) = (
            wants(Channel::Fill) || wants(Channel::MarketPositions),
            wants(Channel::Fill) || wants(Channel::UserOrders),
            wants(Channel::Fill) || wants(Channel::MarketPositions),
        );
        info!(since, ?channels, "backfilling private channels over REST");
        let handle = tokio::spawn(async move {
            let (fills, positions) = if fills || positions {
                fills_and_positions(&rest, since).await?
            } else {
                (Vec::new(), Vec::new())
            };
            let orders = if orders {
                let query = OrderQuery {
                    min_ts: Some(since),
                    ..OrderQuery::default()
                };
                rest.orders(&query).await?
            } else {
                Vec::new()
            };
            Ok(Fetched {
                fills,
                orders,
                positions,
            })
        });
        self.task = Some(Task {
            handle,
            started: Instant::now(),
            channels,
        });
    }

    async fn finish(&mut self, task: Task, result: Result<Fetched, RestError>) -> Result<(), Gone> {
        let fetched = match result {
            Ok(fetched) => fetched,
            Err(e) => {
                let elapsed = task.started.elapsed();
                warn!(error = %e, ?elapsed, "backfill failed; announcing the loss");
                return self.give_up(task.channels, "failed").await;
            }
        };
        let wants = |c: Channel| task.channels.contains(&c);
        let mut out = Vec::new();
        // The markets the missing fills touched, and the contracts they add to each volume.
        let mut volume: HashMap<String, Count> = HashMap::new();
        for f in self.memo.missing(&fetched.fills) {
            let v = volume.entry(f.ticker.clone()).or_insert(Count::ZERO);
            *v = Count::from_units(v.units() + f.count_fp.units());
        }
        let mut touched: HashSet<String> = volume.keys().cloned().collect();
        let held: Vec<LiveFill> = self
            .held
            .iter()
            .filter(|d| d.kind == MessageType::Fill)
            .filter_map(LiveFill::parse)
            .collect();
        let fills = self
            .memo
            .fills(&fetched.fills, &fetched.orders, &fetched.positions, &held);
        let recovered = fills.len();
        if wants(Channel::Fill) {
            out.extend(fills);
        }
        let since_ms =
            (self.outage_from.unwrap_or(0) - self.recovery.overlap.as_secs() as i64) * 1000;
        let changed: Vec<Order> = fetched
            .orders
            .iter()
            .filter(|o| {
                o.last_update_time
                    .as_deref()
                    .and_then(convert::rfc3339_ms)
                    .is_none_or(|ms| ms >= since_ms)
            })
            .cloned()
            .collect();
        touched.extend(changed.iter().map(|o| o.ticker.clone()));
        let orders = self.memo.orders(&changed);
        if wants(Channel::UserOrders) {
            out.extend(orders);
        }
        if wants(Channel::MarketPositions) {
            out.extend(self.memo.positions(&fetched.positions, &touched, &volume));
        }
        self.outage_from = None;
        for data in out {
            self.send(Event::Data(data)).await?;
        }
        let held = self.held.len();
        self.release_held().await?;
        let elapsed = task.started.elapsed();
        metrics::backfill("ok", elapsed, recovered as u64);
        info!(recovered, held, ?elapsed, "backfill complete");
        Ok(())
    }

    /// The held messages, fills the backfill already delivered left out.
    async fn release_held(&mut self) -> Result<(), Gone> {
        for data in std::mem::take(&mut self.held) {
            self.pass_on(data).await?;
        }
        Ok(())
    }

    /// A private message on to the owner, unless it is a fill already delivered.
    async fn pass_on(&mut self, data: Data) -> Result<(), Gone> {
        if !self.memo.note(&data) {
            return Ok(());
        }
        self.send(Event::Data(data)).await
    }

    async fn give_up(&mut self, channels: Vec<Channel>, outcome: &'static str) -> Result<(), Gone> {
        metrics::backfill(outcome, Duration::ZERO, 0);
        self.outage_from = None;
        self.announce(&channels).await?;
        self.release_held().await
    }

    async fn announce(&mut self, channels: &[Channel]) -> Result<(), Gone> {
        self.memo.forget_positions();
        for &channel in channels {
            self.send(Event::MessagesLost { channel }).await?;
        }
        Ok(())
    }
}

/// What REST says a private stream missed after a point, for a client resuming it
/// ([`recover`]), as the messages the stream would have carried.
#[derive(Debug, Default)]
pub struct Recovered {
    /// `fill` messages, oldest first.
    pub fills: Vec<Data>,
    /// `user_order`: the latest state of each order changed since.
    pub orders: Vec<Data>,
    /// `market_position`: the position of each market those fills and orders touched.
    pub positions: Vec<Data>,
    /// Trade ids REST lists at or before `after`: fills the asker already holds, which a live
    /// stream that looks back over the same seconds must not repeat.
    pub past: Vec<String>,
}

/// The account's private messages after the fill `after` (made at `since`, Unix seconds), or
/// since `since` when `after` is `None`, from the exchange's REST history, for the `channels`
/// asked. `live`: `fill` bodies the owner received live since `since`, oldest first (they anchor
/// each market's `post_position_fp` exactly; without one REST's current position is walked
/// back). `Ok(None)`: REST no longer lists `after`, so what followed it cannot be told exactly.
pub async fn recover(
    rest: &RestClient,
    since: i64,
    after: Option<&str>,
    channels: &[Channel],
    live: &[bytes::Bytes],
) -> Result<Option<Recovered>, RestError> {
    let (mut fills, positions) = fills_and_positions(rest, since).await?;
    let mut past = Vec::new();
    if let Some(after) = after {
        let Some(i) = fills.iter().position(|f| f.trade_id == after) else {
            return Ok(None);
        };
        past = fills.drain(..=i).map(|f| f.trade_id).collect();
    }
    let query = OrderQuery {
        min_ts: Some(since),
        ..OrderQuery::default()
    };
    let orders = rest.orders(&query).await?;
    let mut memo = Memo::default();
    let mut volume: HashMap<String, Count> = HashMap::new();
    for f in &fills {
        let v = volume.entry(f.ticker.clone()).or_insert(Count::ZERO);
        *v = Count::from_units(v.units() + f.count_fp.units());
    }
    let mut touched: HashSet<String> = volume.keys().cloned().collect();
    touched.extend(orders.iter().map(|o| o.ticker.clone()));
    let wants = |c: Channel| channels.contains(&c);
    let live: Vec<LiveFill> = live.iter().filter_map(|b| LiveFill::from_body(b)).collect();
    Ok(Some(Recovered {
        fills: if wants(Channel::Fill) {
            memo.fills(&fills, &orders, &positions, &live)
        } else {
            Vec::new()
        },
        orders: if wants(Channel::UserOrders) {
            memo.orders(&orders)
        } else {
            Vec::new()
        },
        positions: if wants(Channel::MarketPositions) {
            memo.positions(&positions, &touched, &volume)
        } else {
            Vec::new()
        },
        past,
    }))
}

/// Reads of fills and positions that agree, at most this many times over.
const MAX_READS: usize = 5;

/// The fills since `since` (oldest first) and the positions they lead to, read so that they
/// agree: a market's `post_position_fp` is walked back from its position, which must count
/// exactly the fills listed. Fills, then positions, then the fills again: a fill that arrived in
/// between may be counted in the positions, so it joins the list and the positions are read
/// again.
async fn fills_and_positions(
    rest: &RestClient,
    since: i64,
) -> Result<(Vec<Fill>, Vec<MarketPosition>), RestError> {
    let mut fills = rest.fills_since(Some(since), None).await?;
    let mut positions = Vec::new();
    for _ in 0..MAX_READS {
        positions = rest
            .positions(&PositionQuery::default())
            .await?
            .market_positions;
        let from = fills.last().and_then(convert::fill_ts).unwrap_or(since);
        let known: HashSet<String> = fills.iter().map(|f| f.trade_id.clone()).collect();
        let newer: Vec<Fill> = rest
            .fills_since(Some(from), None)
            .await?
            .into_iter()
            .filter(|f| !known.contains(&f.trade_id))
            .collect();
        if newer.is_empty() {
            return Ok((fills, positions));
        }
        fills.extend(newer);
    }
    warn!("fills kept coming while reading positions; positions walked back may be off");
    Ok((fills, positions))
}

#[cfg(test)]
mod tests;

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
