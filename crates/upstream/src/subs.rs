//! Subscriptions as desired state.
//!
//! [`Desired`] is what the owner wants, keyed by stable [`SubId`]s; it outlives connections.
//! [`Actual`] is what one connection holds at the exchange: sids, the markets each carries, the
//! commands in flight. [`Actual::reconcile`] turns the difference into as few commands as it can:
//! one sid per channel (owner subscriptions of a channel are merged), markets moved with
//! `update_subscription`, and more sids only when the exchange answers error 26 (market limit).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use protocol::{
    Action, Channel, Command, Envelope, ErrorBody, ErrorCode, SeqTracker, Subscribe, Subscribed,
    UpdateAction, UpdateSubscription,
};

use crate::event::SubId;

/// Markets wanted on one channel: `None` means every market (channels that allow no filter).
pub(crate) type Markets = Option<BTreeSet<String>>;

#[derive(Debug)]
struct Want {
    channel: Channel,
    markets: Markets,
}

/// What the owner wants. Guarded by a mutex in [`crate::Upstream`]; every access is short.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    next_id: u64,
    subs: BTreeMap<SubId, Want>,
    /// Markets the owner asked fresh snapshots for; drained by the session when connected.
    pub snapshot_requests: BTreeSet<String>,
}

impl Desired {
    pub fn subscribe(&mut self, channel: Channel, markets: Option<Vec<String>>) -> SubId {
        self.next_id += 1;
        let id = SubId(self.next_id);
        let markets = markets.map(|m| m.into_iter().collect());
        self.subs.insert(id, Want { channel, markets });
        id
    }

    pub fn unsubscribe(&mut self, id: SubId) {
        self.subs.remove(&id);
    }

    /// Adds markets to a filtered subscription (a subscription to every market ignores it).
    pub fn add_markets(&mut self, id: SubId, markets: Vec<String>) {
        if let Some(Want {
            markets: Some(set), ..
        }) = self.subs.get_mut(&id)
        {
            set.extend(markets);
        }
    }

    pub fn remove_markets(&mut self, id: SubId, markets: Vec<String>) {
        if let Some(Want {
            markets: Some(set), ..
        }) = self.subs.get_mut(&id)
        {
            for m in &markets {
                set.remove(m);
            }
        }
    }

    /// The merged wish per channel. A channel whose subscriptions name no market is not wanted.
    pub fn wanted(&self) -> BTreeMap<Channel, Markets> {
        let mut out: BTreeMap<Channel, Markets> = BTreeMap::new();
        for want in self.subs.values() {
            match &want.markets {
                None => {
                    out.insert(want.channel, None);
                }
                Some(set) if set.is_empty() => {}
                Some(set) => {
                    if let Some(all) = out
                        .entry(want.channel)
                        .or_insert_with(|| Some(BTreeSet::new()))
                    {
                        all.extend(set.iter().cloned());
                    }
                }
            }
        }
        out
    }

    /// The subscription a message belongs to: the lowest id on `channel` wanting `market`, else
    /// the lowest id on `channel`.
    pub fn owner_of(&self, channel: Channel, market: Option<&str>) -> Option<SubId> {
        let mut first = None;
        for (id, want) in self.subs.iter().filter(|(_, w)| w.channel == channel) {
            first.get_or_insert(*id);
            let wants = match (&want.markets, market) {
                (None, _) => true,
                (Some(set), Some(m)) => set.contains(m),
                (Some(_), None) => false,
            };
            if wants {
                return Some(*id);
            }
        }
        first
    }
}

/// One subscription at the exchange, confirmed (`sid`) or in flight.
#[derive(Debug)]
struct UpSub {
    channel: Channel,
    sid: Option<u64>,
    markets: Markets,
    /// An `unsubscribe` was sent: it carries nothing any more.
    closing: bool,
}

#[derive(Debug)]
enum Pending {
    Subscribe { key: u64 },
    Add { key: u64, markets: Vec<String> },
    Delete { key: u64 },
    Unsubscribe { key: u64 },
    Snapshot { key: u64 },
}

/// What a reply meant, for the session to act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A sid died (terminal error): its markets' books are stale and it will be resubscribed.
    Dead {
        sid: u64,
        channel: Channel,
        markets: Vec<String>,
    },
}

/// The subscriptions of one connection. Dropped with it: sids never survive a reconnect.
#[derive(Debug)]
pub(crate) struct Actual {
    next_cmd: u64,
    next_key: u64,
    subs: BTreeMap<u64, UpSub>,
    by_sid: HashMap<u64, u64>,
    pending: HashMap<u64, Pending>,
    /// Largest market count per sid learned from error 26, per channel.
    limits: HashMap<Channel, usize>,
    /// What the exchange refused on this connection (not retried until the next one).
    refused: HashSet<(Channel, Option<String>)>,
    use_yes_price: bool,
    /// Seq per sid, with the markets each sid carries.
    pub seq: SeqTracker,
}

impl Actual {
    pub fn new(use_yes_price: bool) -> Actual {
        Actual {
            next_cmd: 0,
            next_key: 0,
            subs: BTreeMap::new(),
            by_sid: HashMap::new(),
            pending: HashMap::new(),
            limits: HashMap::new(),
            refused: HashSet::new(),
            use_yes_price,
            seq: SeqTracker::new(),
        }
    }

    fn command(&mut self, pending: Pending, action: Action) -> Command {
        self.next_cmd += 1;
        self.pending.insert(self.next_cmd, pending);
        Command {
            id: self.next_cmd,
            action,
        }
    }

    fn subscribe_cmd(&mut self, channel: Channel, markets: Markets) -> Command {
        self.next_key += 1;
        let key = self.next_key;
        let list = markets.as_ref().map(|m| m.iter().cloned().collect());
        self.subs.insert(
            key,
            UpSub {
                channel,
                sid: None,
                markets,
                closing: false,
            },
        );
        let action = Action::Subscribe(Subscribe {
            channels: vec![channel],
            markets: list,
            send_initial_snapshot: channel == Channel::Ticker,
            skip_ticker_ack: false,
            use_yes_price: (channel == Channel::OrderbookDelta).then_some(self.use_yes_price),
        });
        self.command(Pending::Subscribe { key }, action)
    }

    fn unsubscribe_cmd(&mut self, key: u64) -> Option<Command> {
        let sub = self.subs.get_mut(&key)?;
        let sid = sub.sid?;
        sub.closing = true;
        Some(self.command(
            Pending::Unsubscribe { key },
            Action::Unsubscribe { sids: vec![sid] },
        ))
    }

    fn update_cmd(
        &mut self,
        key: u64,
        markets: Vec<String>,
        action: UpdateAction,
    ) -> Option<Command> {
        let sub = self.subs.get_mut(&key)?;
        let sid = sub.sid?;
        if let Some(set) = &mut sub.markets {
            match action {
                UpdateAction::AddMarkets => {
                    set.extend(markets.iter().cloned());
                    self.seq.add_markets(sid, markets.iter().cloned());
                }
                UpdateAction::DeleteMarkets => {
                    for m in &markets {
                        set.remove(m);
                    }
                    self.seq.remove_markets(sid, &markets);
                }
                UpdateAction::GetSnapshot => {}
            }
        }
        let pending = match action {
            UpdateAction::AddMarkets => Pending::Add {
                key,
                markets: markets.clone(),
            },
            UpdateAction::DeleteMarkets => Pending::Delete { key },
            UpdateAction::GetSnapshot => Pending::Snapshot { key },
        };
        let update = UpdateSubscription {
            sid,
            markets,
            action,
        };
        Some(self.command(pending, Action::UpdateSubscription(update)))
    }

    /// True while a `subscribe` is unanswered.
    pub fn subscribing(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::Subscribe { .. }))
    }

    /// The channel of a live sid.
    pub fn channel_of(&self, sid: u64) -> Option<Channel> {
        let sub = self.subs.get(self.by_sid.get(&sid)?)?;
        (!sub.closing).then_some(sub.channel)
    }

    /// Every confirmed sid (for the unsubscribe on shutdown).
    pub fn sids(&self) -> Vec<u64> {
        self.subs.values().filter_map(|s| s.sid).collect()
    }

    /// The commands that move this connection towards `wanted`.
    pub fn reconcile(&mut self, wanted: &BTreeMap<Channel, Markets>) -> Vec<Command> {
        let mut out = Vec::new();
        let channels: BTreeSet<Channel> = wanted
            .keys()
            .copied()
            .chain(self.subs.values().map(|s| s.channel))
            .collect();
        for channel in channels {
            let live: Vec<u64> = self
                .subs
                .iter()
                .filter(|(_, s)| s.channel == channel && !s.closing)
                .map(|(k, _)| *k)
                .collect();
            // `unsubscribe_cmd` leaves subscribes in flight alone: the reconcile after their
            // answer unsubscribes them.
            match wanted.get(&channel) {
                None => {
                    for key in &live {
                        out.extend(self.unsubscribe_cmd(*key));
                    }
                }
                Some(None) => {
                    for key in &live {
                        if self.subs[key].markets.is_some() {
                            out.extend(self.unsubscribe_cmd(*key));
                        }
                    }
                    let has_all = live.iter().any(|k| self.subs[k].markets.is_none());
                    if !has_all && !self.refused.contains(&(channel, None)) {
                        out.push(self.subscribe_cmd(channel, None));
                    }
                }
                Some(Some(want)) => self.reconcile_markets(channel, &live, want, &mut out),
            }
        }
        out
    }

    fn reconcile_markets(
        &mut self,
        channel: Channel,
        live: &[u64],
        want: &BTreeSet<String>,
        out: &mut Vec<Command>,
    ) {
        let mut carried = BTreeSet::new();
        let mut filtered = Vec::new();
        for key in live {
            let sub = &self.subs[key];
            match &sub.markets {
                None if sub.sid.is_some() => out.extend(self.unsubscribe_cmd(*key)),
                None => {}
                Some(markets) => {
                    carried.extend(markets.iter().cloned());
                    filtered.push(*key);
                }
            }
        }
        // Markets no longer wanted leave the sids that carry them (a sid left empty goes).
        for key in &filtered {
            let sub = &self.subs[key];
            let (Some(markets), Some(_)) = (&sub.markets, sub.sid) else {
                continue;
            };
            let gone: Vec<String> = markets.difference(want).cloned().collect();
            if gone.is_empty() {
                continue;
            }
            if gone.len() == markets.len() {
                out.extend(self.unsubscribe_cmd(*key));
            } else {
                out.extend(self.update_cmd(*key, gone, UpdateAction::DeleteMarkets));
            }
        }
        let mut add: Vec<String> = want
            .difference(&carried)
            .filter(|m| !self.refused.contains(&(channel, Some((*m).clone()))))
            .cloned()
            .collect();
        // New markets wait for a subscribe in flight: its answer may change the limit.
        if add.is_empty() || filtered.iter().any(|k| self.subs[k].sid.is_none()) {
            return;
        }
        let limit = self.limits.get(&channel).copied().unwrap_or(usize::MAX);
        for key in &filtered {
            let room =
                limit.saturating_sub(self.subs[key].markets.as_ref().map_or(0, BTreeSet::len));
            if room == 0 || add.is_empty() || self.subs[key].closing {
                continue;
            }
            let chunk: Vec<String> = add.drain(..room.min(add.len())).collect();
            out.extend(self.update_cmd(*key, chunk, UpdateAction::AddMarkets));
        }
        while !add.is_empty() {
            let chunk: BTreeSet<String> = add.drain(..limit.min(add.len())).collect();
            out.push(self.subscribe_cmd(channel, Some(chunk)));
        }
    }

    /// A `get_snapshot` per sid for those of `markets` an orderbook sid carries.
    pub fn snapshot_commands(&mut self, markets: &BTreeSet<String>) -> Vec<Command> {
        let mut per_key: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (key, sub) in &self.subs {
            if sub.channel != Channel::OrderbookDelta || sub.closing || sub.sid.is_none() {
                continue;
            }
            if let Some(carried) = &sub.markets {
                let hit: Vec<String> = carried.intersection(markets).cloned().collect();
                if !hit.is_empty() {
                    per_key.insert(*key, hit);
                }
            }
        }
        per_key
            .into_iter()
            .filter_map(|(key, m)| self.update_cmd(key, m, UpdateAction::GetSnapshot))
            .collect()
    }

    /// `get_snapshot` for markets of one sid (gap repair).
    pub fn snapshot_sid(&mut self, sid: u64, markets: Vec<String>) -> Option<Command> {
        let key = *self.by_sid.get(&sid)?;
        self.update_cmd(key, markets, UpdateAction::GetSnapshot)
    }

    /// Drops `sid` (fallback repair): unsubscribes it, so the next reconcile subscribes its
    /// markets again on a new sid.
    pub fn resubscribe(&mut self, sid: u64) -> Option<Command> {
        let key = *self.by_sid.get(&sid)?;
        self.seq.remove(sid);
        self.unsubscribe_cmd(key)
    }

    /// Applies a `subscribed`, `unsubscribed`, `ok` or `error` reply.
    pub fn on_reply(&mut self, env: &Envelope) -> Vec<Outcome> {
        let pending = env.id.and_then(|id| self.pending.remove(&id));
        match env.kind.as_str() {
            "subscribed" => {
                let (Some(Pending::Subscribe { key }), Ok(body)) =
                    (pending, env.body::<Subscribed>())
                else {
                    tracing::warn!(id = ?env.id, "subscribed reply for no subscribe of ours");
                    return Vec::new();
                };
                if let Some(sub) = self.subs.get_mut(&key) {
                    sub.sid = Some(body.sid);
                    self.by_sid.insert(body.sid, key);
                    self.seq.remove(body.sid);
                    if let Some(markets) = &sub.markets {
                        self.seq.add_markets(body.sid, markets.iter().cloned());
                    }
                    tracing::debug!(sid = body.sid, channel = %sub.channel, "subscribed");
                }
                Vec::new()
            }
            "unsubscribed" => {
                let sid = env.sid.or_else(|| match pending {
                    Some(Pending::Unsubscribe { key }) => self.subs.get(&key).and_then(|s| s.sid),
                    _ => None,
                });
                if let Some(key) = sid.and_then(|sid| self.by_sid.remove(&sid)) {
                    self.subs.remove(&key);
                }
                if let Some(sid) = sid {
                    self.seq.remove(sid);
                }
                Vec::new()
            }
            "ok" => Vec::new(),
            "error" => self.on_error(env, pending),
            _ => Vec::new(),
        }
    }

    fn on_error(&mut self, env: &Envelope, pending: Option<Pending>) -> Vec<Outcome> {
        let body = env.body::<ErrorBody>().ok();
        let code = body.as_ref().and_then(|b| ErrorCode::from_code(b.code));
        let market = body.as_ref().and_then(|b| b.market_ticker.clone());
        tracing::warn!(id = ?env.id, sid = ?env.sid, code = ?body.as_ref().map(|b| b.code),
            msg = ?body.as_ref().map(|b| &b.msg), "exchange refused a command");
        let terminal = code.is_some_and(ErrorCode::is_terminal);
        match pending {
            Some(Pending::Subscribe { key }) => {
                let Some(sub) = self.subs.remove(&key) else {
                    return Vec::new();
                };
                let n = sub.markets.as_ref().map_or(0, BTreeSet::len);
                match (code, &sub.markets) {
                    (Some(ErrorCode::MarketLimitExceeded), Some(_)) if n > 1 => {
                        let limit = self.limits.entry(sub.channel).or_insert(usize::MAX);
                        *limit = (*limit).min(n / 2).max(1);
                        tracing::info!(channel = %sub.channel, limit = *limit, "market limit per subscription learned");
                    }
                    (Some(code), Some(_)) if market.is_some() && names_unknown_market(code) => {
                        self.refused.insert((sub.channel, market));
                    }
                    (_, Some(markets)) => {
                        self.refused
                            .extend(markets.iter().map(|m| (sub.channel, Some(m.clone()))));
                    }
                    (_, None) => {
                        self.refused.insert((sub.channel, None));
                    }
                }
                Vec::new()
            }
            Some(Pending::Add { key, markets }) if !terminal => {
                if let Some(sub) = self.subs.get_mut(&key) {
                    if let Some(set) = &mut sub.markets {
                        for m in &markets {
                            set.remove(m);
                        }
                        match (code, &market) {
                            (Some(ErrorCode::MarketLimitExceeded), _) => {
                                self.limits.insert(sub.channel, set.len().max(1));
                            }
                            // The exchange named the one market it does not know: only that one
                            // is refused; the others of the batch are added again by the next
                            // reconcile (a client's bogus ticker must not poison its neighbours).
                            (Some(code), Some(m))
                                if names_unknown_market(code) && markets.contains(m) =>
                            {
                                self.refused.insert((sub.channel, Some(m.clone())));
                            }
                            _ => self
                                .refused
                                .extend(markets.iter().map(|m| (sub.channel, Some(m.clone())))),
                        }
                    }
                    if let Some(sid) = sub.sid {
                        self.seq.remove_markets(sid, &markets);
                    }
                }
                Vec::new()
            }
            Some(Pending::Unsubscribe { key }) => {
                if let Some(sid) = self.subs.remove(&key).and_then(|s| s.sid) {
                    self.by_sid.remove(&sid);
                    self.seq.remove(sid);
                }
                Vec::new()
            }
            Some(
                Pending::Add { key, .. } | Pending::Delete { key } | Pending::Snapshot { key },
            ) => {
                let sid = self.subs.get(&key).and_then(|s| s.sid);
                match sid {
                    Some(sid) if terminal => self.kill(sid).into_iter().collect(),
                    _ => Vec::new(),
                }
            }
            None => match env.sid {
                Some(sid) if terminal => self.kill(sid).into_iter().collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Forgets a dead sid; the next reconcile subscribes its markets again.
    fn kill(&mut self, sid: u64) -> Option<Outcome> {
        let key = self.by_sid.remove(&sid)?;
        let sub = self.subs.remove(&key)?;
        let markets: Vec<String> = self.seq.markets(sid).cloned().collect();
        self.seq.remove(sid);
        Some(Outcome::Dead {
            sid,
            channel: sub.channel,
            markets,
        })
    }
}

/// An error naming one market refuses that market: 16 "Market not found" from older servers, 11
/// "Invalid parameter" from the newest (which retired 16).
fn names_unknown_market(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MarketNotFound | ErrorCode::InvalidParameter
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(frame: &str) -> Envelope {
        Envelope::parse(frame.as_bytes()).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn owner_subscriptions_of_a_channel_merge_into_one_command() {
        let mut d = Desired::default();
        let a = d.subscribe(Channel::OrderbookDelta, Some(names(&["A", "B"])));
        let b = d.subscribe(Channel::OrderbookDelta, Some(names(&["B", "C"])));
        let t = d.subscribe(Channel::Ticker, None);
        assert_eq!((a, b, t), (SubId(1), SubId(2), SubId(3)));
        let mut act = Actual::new(false);
        let cmds: Vec<String> = act
            .reconcile(&d.wanted())
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [
                r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["A","B","C"],"use_yes_price":false}}"#,
                r#"{"id":2,"cmd":"subscribe","params":{"channels":["ticker"],"send_initial_snapshot":true}}"#,
            ]
        );
        assert!(
            act.reconcile(&d.wanted()).is_empty(),
            "nothing twice while in flight"
        );
        assert_eq!(d.owner_of(Channel::OrderbookDelta, Some("C")), Some(b));
        assert_eq!(d.owner_of(Channel::OrderbookDelta, Some("B")), Some(a));
    }

    #[test]
    fn markets_move_with_update_subscription_and_empty_sids_go() {
        let mut d = Desired::default();
        let a = d.subscribe(Channel::OrderbookDelta, Some(names(&["A", "B"])));
        let mut act = Actual::new(false);
        act.reconcile(&d.wanted());
        act.on_reply(&env(
            r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":7}}"#,
        ));
        assert!(!act.subscribing());
        d.add_markets(a, names(&["C"]));
        d.remove_markets(a, names(&["A"]));
        let cmds: Vec<String> = act
            .reconcile(&d.wanted())
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [
                r#"{"id":2,"cmd":"update_subscription","params":{"sid":7,"market_tickers":["A"],"action":"delete_markets"}}"#,
                r#"{"id":3,"cmd":"update_subscription","params":{"sid":7,"market_tickers":["C"],"action":"add_markets"}}"#,
            ]
        );
        assert_eq!(
            act.seq.markets(7).cloned().collect::<Vec<_>>(),
            names(&["B", "C"])
        );
        d.unsubscribe(a);
        let cmds: Vec<String> = act
            .reconcile(&d.wanted())
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [r#"{"id":4,"cmd":"unsubscribe","params":{"sids":[7]}}"#]
        );
        act.on_reply(&env(r#"{"id":4,"type":"unsubscribed","sid":7}"#));
        assert!(act.sids().is_empty());
    }

    #[test]
    fn error_26_splits_until_the_exchange_accepts() {
        let mut d = Desired::default();
        d.subscribe(Channel::OrderbookDelta, Some(names(&["A", "B", "C"])));
        let mut act = Actual::new(false);
        act.reconcile(&d.wanted());
        act.on_reply(&env(r#"{"id":1,"type":"error","msg":{"code":26,"msg":"Subscription market limit exceeded"}}"#));
        let cmds = act.reconcile(&d.wanted());
        let sizes: Vec<usize> = cmds
            .iter()
            .map(|c| match &c.action {
                Action::Subscribe(s) => s.markets.as_ref().unwrap().len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [1, 1, 1], "3 markets, limit 3/2 = 1");
        for (i, c) in cmds.iter().enumerate() {
            let reply = format!(
                r#"{{"id":{},"type":"subscribed","msg":{{"channel":"orderbook_delta","sid":{}}}}}"#,
                c.id,
                10 + i
            );
            act.on_reply(&env(&reply));
        }
        assert_eq!(act.sids(), [10, 11, 12]);
        assert_eq!(
            act.seq.markets(11).cloned().collect::<Vec<_>>(),
            names(&["B"])
        );
        // A market added later opens a sid of its own, the others are full.
        let mut d2 = d;
        let id = SubId(1);
        d2.add_markets(id, names(&["D"]));
        let cmds: Vec<String> = act
            .reconcile(&d2.wanted())
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [
                r#"{"id":5,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["D"],"use_yes_price":false}}"#
            ]
        );
    }

    #[test]
    fn terminal_error_kills_the_sid_and_refused_markets_are_not_retried() {
        let mut d = Desired::default();
        d.subscribe(Channel::OrderbookDelta, Some(names(&["A", "B"])));
        let mut act = Actual::new(false);
        act.reconcile(&d.wanted());
        act.on_reply(&env(
            r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":3}}"#,
        ));
        let out = act.on_reply(&env(
            r#"{"type":"error","sid":3,"msg":{"code":25,"msg":"Subscription buffer overflow"}}"#,
        ));
        assert_eq!(
            out,
            [Outcome::Dead {
                sid: 3,
                channel: Channel::OrderbookDelta,
                markets: names(&["A", "B"])
            }]
        );
        let cmds = act.reconcile(&d.wanted());
        assert_eq!(cmds.len(), 1, "resubscribed");
        let id = cmds[0].id;
        act.on_reply(&env(&format!(
            r#"{{"id":{id},"type":"error","msg":{{"code":16,"msg":"Market not found","market_ticker":"B"}}}}"#
        )));
        let cmds: Vec<String> = act
            .reconcile(&d.wanted())
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [
                r#"{"id":3,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["A"],"use_yes_price":false}}"#
            ]
        );
    }

    #[test]
    fn an_unknown_market_in_a_batch_does_not_refuse_its_neighbours() {
        let mut d = Desired::default();
        let id = d.subscribe(Channel::OrderbookDelta, Some(names(&["A"])));
        let mut act = Actual::new(false);
        act.reconcile(&d.wanted());
        act.on_reply(&env(
            r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":5}}"#,
        ));
        d.add_markets(id, names(&["B", "NOPE", "C"]));
        let cmds = act.reconcile(&d.wanted());
        assert_eq!(cmds.len(), 1, "one update for the batch");
        let cmd = cmds[0].id;
        act.on_reply(&env(&format!(
            r#"{{"id":{cmd},"type":"error","msg":{{"code":11,"msg":"Invalid parameter","market_ticker":"NOPE"}}}}"#
        )));
        let cmds: Vec<String> = act
            .reconcile(&d.wanted())
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [
                r#"{"id":3,"cmd":"update_subscription","params":{"sid":5,"market_tickers":["B","C"],"action":"add_markets"}}"#
            ],
            "the good markets are added again, the unknown one is not"
        );
    }

    #[test]
    fn snapshot_requests_go_to_the_sids_carrying_the_markets() {
        let mut d = Desired::default();
        d.subscribe(Channel::OrderbookDelta, Some(names(&["A", "B"])));
        let mut act = Actual::new(false);
        act.reconcile(&d.wanted());
        act.on_reply(&env(
            r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":4}}"#,
        ));
        let want: BTreeSet<String> = names(&["B", "Z"]).into_iter().collect();
        let cmds: Vec<String> = act
            .snapshot_commands(&want)
            .iter()
            .map(Command::to_json)
            .collect();
        assert_eq!(
            cmds,
            [
                r#"{"id":2,"cmd":"update_subscription","params":{"sid":4,"market_tickers":["B"],"action":"get_snapshot"}}"#
            ]
        );
    }
}
