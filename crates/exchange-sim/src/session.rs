//! One connection's subscriptions: commands in, replies and data frames out.
//!
//! [`Session`] is plain synchronous state, driven by the connection task ([`crate::conn`]): it
//! answers each command (with the reference's error codes), filters each broadcast batch down
//! to this connection's sids, numbers sequenced messages per sid, and applies the per-connection
//! faults (gap, duplicate, error). Snapshots are taken under the engine lock together with the
//! engine's event number, and events up to that number are skipped for that market afterwards,
//! so a snapshot is always followed by exactly the deltas it does not contain.

use std::collections::{BTreeSet, HashMap};

use protocol::command::{reply, Subscribe, UpdateAction, UpdateSubscription};
use protocol::{Action, Channel, Command, ErrorCode, Side};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::DuplicatePolicy;
use crate::encode;
use crate::engine::{Engine, EngineState, Event};

/// Frames to send, in order.
pub(crate) type Out = Vec<Utf8Bytes>;

/// One sid as `/admin/stats` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidStats {
    pub sid: u64,
    pub channel: Channel,
    /// The markets of the subscription; `null` for all markets.
    pub markets: Option<Vec<String>>,
    /// The last seq sent on a sequenced channel (0 before the first); `null` otherwise.
    pub seq: Option<u64>,
}

/// Per-connection settings taken from the simulator config and the handshake.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    pub authenticated: bool,
    pub duplicate: DuplicatePolicy,
    pub max_markets: Option<usize>,
}

struct Sub {
    sid: u64,
    channel: Channel,
    /// `None`: every market.
    markets: Option<BTreeSet<u32>>,
    /// Last seq sent (sequenced channels only).
    seq: u64,
    use_yes_price: bool,
    /// `skip_ticker_ack`: its `ok` replies leave out the market list.
    skip_ack: bool,
    /// Events numbered up to this predate the subscription.
    since: u64,
    /// Per market: events numbered up to this are already in a snapshot sent on this sid (or
    /// predate the market joining it). Entries are dropped once passed.
    fresh_from: HashMap<u32, u64>,
    /// `gap` fault armed: drop the next data message (for that market, if given).
    gap: Option<Option<u32>>,
    /// `duplicate` fault armed before anything was sent: send the next message twice.
    duplicate_next: bool,
    /// Last sequenced frame, for the `duplicate` fault.
    last: Option<Utf8Bytes>,
}

impl Sub {
    fn sequenced(&self) -> bool {
        self.channel.is_sequenced()
    }

    fn next_seq(&mut self) -> Option<u64> {
        self.sequenced().then(|| {
            self.seq += 1;
            self.seq
        })
    }

    fn holds(&self, market: u32) -> bool {
        self.markets.as_ref().is_none_or(|m| m.contains(&market))
    }

    fn market_list(&self, tickers: &[String]) -> Option<Vec<String>> {
        self.markets
            .as_ref()
            .map(|m| m.iter().map(|&i| tickers[i as usize].clone()).collect())
    }

    fn all_markets_list(&self, tickers: &[String]) -> Vec<String> {
        self.market_list(tickers)
            .unwrap_or_else(|| tickers.to_vec())
    }

    /// The `ok` to an update of this sid: its markets after it (unless `skip_ticker_ack`).
    fn ok(&self, id: u64, tickers: &[String]) -> Utf8Bytes {
        let list = (!self.skip_ack).then(|| self.all_markets_list(tickers));
        reply::ok_markets(id, self.sid, self.last_seq(), list.as_deref()).into()
    }

    /// The last seq sent on a sequenced sid.
    fn last_seq(&self) -> Option<u64> {
        self.sequenced().then_some(self.seq)
    }
}

/// The subscriptions of one connection.
pub(crate) struct Session {
    rules: Rules,
    next_sid: u64,
    subs: Vec<Sub>,
}

impl Session {
    pub fn new(rules: Rules) -> Session {
        Session {
            rules,
            next_sid: 1,
            subs: Vec::new(),
        }
    }

    /// Answers one command frame.
    pub fn command(&mut self, frame: &[u8], engine: &Engine, stamp: Option<u128>, out: &mut Out) {
        let cmd = match Command::parse(frame) {
            Ok(cmd) => cmd,
            Err(e) => return out.push(e.reply().into()),
        };
        let id = cmd.id;
        let result = match cmd.action {
            Action::Subscribe(s) => self.subscribe(id, s, engine, stamp, out),
            Action::Unsubscribe { sids } => {
                self.unsubscribe(id, &sids, out);
                Ok(())
            }
            Action::UpdateSubscription(u) => self.update(id, u, engine, stamp, out),
            Action::ListSubscriptions => {
                let list: Vec<(String, u64)> = self
                    .subs
                    .iter()
                    .map(|s| (s.channel.as_str().to_owned(), s.sid))
                    .collect();
                out.push(reply::ok_list(id, &list).into());
                Ok(())
            }
            // Relay extensions the exchange does not know.
            Action::Ping | Action::Auth { .. } => Err((ErrorCode::UnknownCommand, None)),
        };
        if let Err((code, market)) = result {
            out.push(reply::error(id, code, market.as_deref()).into());
        }
    }

    /// Tickers to indexes, deduplicated in order; error 11 names the first unknown one (16,
    /// "Market not found", is retired in the newest spec).
    fn resolve(&self, engine: &Engine, tickers: &[String]) -> Result<Vec<u32>, Refusal> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(tickers.len());
        for t in tickers {
            let idx = engine
                .market(t)
                .ok_or_else(|| (ErrorCode::InvalidParameter, Some(t.clone())))?;
            if seen.insert(idx) {
                out.push(idx);
            }
        }
        Ok(out)
    }

    fn check_limit(&self, n: usize) -> Result<(), Refusal> {
        match self.rules.max_markets {
            Some(max) if n > max => Err((ErrorCode::MarketLimitExceeded, None)),
            _ => Ok(()),
        }
    }

    fn subscribe(
        &mut self,
        id: u64,
        s: Subscribe,
        engine: &Engine,
        stamp: Option<u128>,
        out: &mut Out,
    ) -> Result<(), Refusal> {
        if !self.rules.authenticated && s.channels.iter().any(|c| c.is_private()) {
            return Err((ErrorCode::AuthRequired, None));
        }
        let markets = s
            .markets
            .as_deref()
            .map(|t| self.resolve(engine, t))
            .transpose()?;
        if let Some(m) = &markets {
            self.check_limit(m.len())?;
        }
        let state = engine.state.lock();
        for channel in s.channels {
            if let Some(pos) = self.subs.iter().position(|sub| sub.channel == channel) {
                if self.rules.duplicate == DuplicatePolicy::Error6 {
                    out.push(reply::error(id, ErrorCode::AlreadySubscribed, None).into());
                    continue;
                }
                let sub = &self.subs[pos];
                let added: Vec<u32> = match (&sub.markets, &markets) {
                    (None, _) => Vec::new(),
                    (Some(_), None) => (0..engine.tickers.len() as u32)
                        .filter(|m| !sub.holds(*m))
                        .collect(),
                    (Some(_), Some(new)) => {
                        new.iter().copied().filter(|m| !sub.holds(*m)).collect()
                    }
                };
                let merged_len = sub.markets.as_ref().map(|m| m.len() + added.len());
                if let (Some(n), Some(_)) = (merged_len, &markets) {
                    if let Err(e) = self.check_limit(n) {
                        out.push(reply::error(id, e.0, None).into());
                        continue;
                    }
                }
                let sub = &mut self.subs[pos];
                if markets.is_none() {
                    sub.markets = None;
                }
                add_markets(sub, &added, &state, engine, stamp, id, out);
                continue;
            }
            let sid = self.next_sid;
            self.next_sid += 1;
            let mut sub = Sub {
                sid,
                channel,
                markets: markets.as_ref().map(|m| m.iter().copied().collect()),
                seq: 0,
                use_yes_price: s.use_yes_price.unwrap_or(false),
                skip_ack: s.skip_ticker_ack,
                since: state.num,
                fresh_from: HashMap::new(),
                gap: None,
                duplicate_next: false,
                last: None,
            };
            out.push(reply::subscribed(id, channel.as_str(), sid).into());
            let initial: Vec<u32> = markets
                .clone()
                .unwrap_or_else(|| (0..engine.tickers.len() as u32).collect());
            if channel == Channel::OrderbookDelta {
                for &m in &initial {
                    send_snapshot(&mut sub, m, &state, stamp, out);
                }
            } else if channel == Channel::Ticker && s.send_initial_snapshot {
                let at = encode::Stamp::now();
                for &m in &initial {
                    let body = encode::ticker(&state.markets[m as usize], &at);
                    out.push(encode::envelope("ticker", sid, None, &body, stamp).into());
                }
            }
            self.subs.push(sub);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, id: u64, sids: &[u64], out: &mut Out) {
        for &sid in sids {
            match self.subs.iter().position(|s| s.sid == sid) {
                Some(pos) => {
                    let sub = self.subs.remove(pos);
                    let seq = sub.sequenced().then_some(sub.seq);
                    out.push(reply::unsubscribed(id, sid, seq).into());
                }
                None => out.push(reply::error(id, ErrorCode::UnknownSid, None).into()),
            }
        }
    }

    fn update(
        &mut self,
        id: u64,
        u: UpdateSubscription,
        engine: &Engine,
        stamp: Option<u128>,
        out: &mut Out,
    ) -> Result<(), Refusal> {
        let pos = self
            .subs
            .iter()
            .position(|s| s.sid == u.sid)
            .ok_or((ErrorCode::UnknownSid, None))?;
        let markets = self.resolve(engine, &u.markets)?;
        let tickers = &engine.tickers;
        match u.action {
            UpdateAction::AddMarkets => {
                let sub = &self.subs[pos];
                let added: Vec<u32> = markets.into_iter().filter(|m| !sub.holds(*m)).collect();
                if let Some(held) = &sub.markets {
                    self.check_limit(held.len() + added.len())?;
                }
                let state = engine.state.lock();
                add_markets(&mut self.subs[pos], &added, &state, engine, stamp, id, out);
            }
            UpdateAction::DeleteMarkets => {
                let sub = &mut self.subs[pos];
                let held = sub
                    .markets
                    .get_or_insert_with(|| (0..tickers.len() as u32).collect());
                for m in &markets {
                    held.remove(m);
                    sub.fresh_from.remove(m);
                }
                out.push(sub.ok(id, tickers));
            }
            UpdateAction::GetSnapshot => {
                let sub = &mut self.subs[pos];
                if sub.channel != Channel::OrderbookDelta {
                    return Err((ErrorCode::UnsupportedAction, None));
                }
                if let Some(&m) = markets.iter().find(|m| !sub.holds(**m)) {
                    return Err((
                        ErrorCode::InvalidParameter,
                        Some(tickers[m as usize].clone()),
                    ));
                }
                out.push(sub.ok(id, tickers));
                let state = engine.state.lock();
                for m in markets {
                    send_snapshot(sub, m, &state, stamp, out);
                }
            }
        }
        Ok(())
    }

    /// Filters one broadcast batch down to this connection's sids.
    pub fn batch(&mut self, batch: &[Event], engine: &Engine, stamp: Option<u128>, out: &mut Out) {
        if self.subs.is_empty() {
            return;
        }
        for ev in batch {
            let channel = ev.kind.channel();
            let Some(sub) = self.subs.iter_mut().find(|s| s.channel == channel) else {
                continue;
            };
            if ev.num <= sub.since || !sub.holds(ev.market) {
                continue;
            }
            if let Some(&from) = sub.fresh_from.get(&ev.market) {
                if ev.num <= from {
                    continue;
                }
                sub.fresh_from.remove(&ev.market);
            }
            let seq = sub.next_seq();
            if let Some(target) = sub.gap {
                if target.is_none_or(|m| m == ev.market) {
                    // The seq is consumed: the client sees it skip.
                    sub.gap = None;
                    continue;
                }
            }
            let yes_scaled;
            let body = match ev.change {
                Some((change, ts_ms)) if sub.use_yes_price && change.side == Side::No => {
                    let m = ev.market as usize;
                    let time = encode::Stamp::at(ts_ms).rfc3339;
                    yes_scaled = encode::delta(
                        &engine.tickers[m],
                        &engine.market_ids[m],
                        change,
                        ts_ms,
                        &time,
                        true,
                    );
                    &yes_scaled
                }
                _ => &ev.body,
            };
            let frame: Utf8Bytes =
                encode::envelope(ev.kind.type_name(), sub.sid, seq, body, stamp).into();
            if seq.is_some() {
                if std::mem::take(&mut sub.duplicate_next) {
                    out.push(frame.clone());
                }
                sub.last = Some(frame.clone());
            }
            out.push(frame);
        }
    }

    /// The broadcast outran this connection: like the exchange with a slow reader, every sid
    /// gets error 25 and ends.
    pub fn lagged(&mut self, out: &mut Out) {
        for sub in self.subs.drain(..) {
            out.push(
                encode::sid_error(sub.sid, ErrorCode::SubscriptionBufferOverflow.code()).into(),
            );
        }
    }

    fn matching(
        &mut self,
        sid: Option<u64>,
        sequenced_only: bool,
    ) -> impl Iterator<Item = &mut Sub> {
        self.subs.iter_mut().filter(move |s| {
            sid.is_none_or(|sid| s.sid == sid) && (!sequenced_only || s.sequenced())
        })
    }

    /// `gap` fault: arm a drop of the next data message on the matching sequenced sids.
    pub fn arm_gap(&mut self, sid: Option<u64>, market: Option<u32>) {
        for sub in self.matching(sid, true) {
            if market.is_none_or(|m| sub.holds(m)) {
                sub.gap = Some(market);
            }
        }
    }

    /// `duplicate` fault: resend the last sequenced frame of the matching sids.
    pub fn duplicate(&mut self, sid: Option<u64>, out: &mut Out) {
        for sub in self.matching(sid, true) {
            match &sub.last {
                Some(frame) => out.push(frame.clone()),
                None => sub.duplicate_next = true,
            }
        }
    }

    /// `error` fault: send `code` on the matching sids; a terminal code ends them.
    pub fn inject_error(&mut self, code: u32, sid: Option<u64>, out: &mut Out) {
        for sub in self.matching(sid, false) {
            out.push(encode::sid_error(sub.sid, code).into());
        }
        if ErrorCode::from_code(code).is_some_and(ErrorCode::is_terminal) {
            self.subs.retain(|s| sid.is_some_and(|sid| s.sid != sid));
        }
    }

    pub fn stats(&self, tickers: &[String]) -> Vec<SidStats> {
        self.subs
            .iter()
            .map(|s| SidStats {
                sid: s.sid,
                channel: s.channel,
                markets: s.market_list(tickers),
                seq: s.sequenced().then_some(s.seq),
            })
            .collect()
    }
}

/// A refused command: the code and the market it is about, if any.
type Refusal = (ErrorCode, Option<String>);

/// Adds markets to a sid, answers `ok` with the sid's markets, then snapshots the new markets
/// of an order book sid. New markets' older events are skipped.
fn add_markets(
    sub: &mut Sub,
    added: &[u32],
    state: &EngineState,
    engine: &Engine,
    stamp: Option<u128>,
    id: u64,
    out: &mut Out,
) {
    if let Some(held) = &mut sub.markets {
        held.extend(added.iter().copied());
    }
    for &m in added {
        sub.fresh_from.insert(m, state.num);
    }
    out.push(sub.ok(id, &engine.tickers));
    if sub.channel == Channel::OrderbookDelta {
        for &m in added {
            send_snapshot(sub, m, state, stamp, out);
        }
    }
}

/// Sends the true book of `market` as of event [`EngineState::num`], and skips that market's
/// events up to that number on this sid.
fn send_snapshot(
    sub: &mut Sub,
    market: u32,
    state: &EngineState,
    stamp: Option<u128>,
    out: &mut Out,
) {
    let body = encode::snapshot(&state.markets[market as usize], sub.use_yes_price);
    let seq = sub.next_seq();
    sub.fresh_from.insert(market, state.num);
    let frame: Utf8Bytes =
        encode::envelope("orderbook_snapshot", sub.sid, seq, &body, stamp).into();
    sub.last = Some(frame.clone());
    out.push(frame);
}
