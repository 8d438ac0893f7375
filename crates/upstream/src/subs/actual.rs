//! What one connection holds at the exchange, and the commands that move it towards the wish.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use protocol::{
    Action, Channel, Command, Envelope, ErrorBody, ErrorCode, MessageType, SeqTracker, Subscribe,
    Subscribed, UpdateAction, UpdateSubscription,
};

use super::policy::{policy, Answered, Policy};
use super::{Markets, Sid};

/// The id of a command we sent, echoed on its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CmdId(u64);

/// Our name for one subscription at the exchange: stable from the `subscribe` on, while its
/// sid is still unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SubKey(u64);

/// One subscription at the exchange, confirmed (`sid`) or in flight.
#[derive(Debug)]
struct UpSub {
    channel: Channel,
    sid: Option<Sid>,
    markets: Markets,
    /// An `unsubscribe` was sent: it carries nothing any more.
    closing: bool,
}

/// A command in flight, and the subscription it acts on.
#[derive(Debug)]
enum Pending {
    Subscribe { key: SubKey },
    Add { key: SubKey, markets: Vec<String> },
    Delete { key: SubKey },
    Unsubscribe { key: SubKey },
    Snapshot { key: SubKey },
}

impl Pending {
    fn answered(&self) -> (Answered, SubKey) {
        match self {
            Pending::Subscribe { key } => (Answered::Subscribe, *key),
            Pending::Add { key, .. } => (Answered::AddMarkets, *key),
            Pending::Delete { key } => (Answered::DeleteMarkets, *key),
            Pending::Unsubscribe { key } => (Answered::Unsubscribe, *key),
            Pending::Snapshot { key } => (Answered::GetSnapshot, *key),
        }
    }
}

/// What a reply meant, for the session to act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A sid died (terminal error): its markets' books are stale and it will be resubscribed.
    Dead {
        sid: Sid,
        channel: Channel,
        markets: Vec<String>,
    },
    /// A subscription of `channel` was confirmed.
    Live { channel: Channel },
}

/// The subscriptions of one connection. Dropped with it: sids never survive a reconnect.
///
/// Invariants, kept by `confirm` and `forget` alone: a sid is in `by_sid` exactly while its
/// subscription is in `subs` with that sid, and `seq` tracks exactly the confirmed sids, with the
/// markets each carries.
#[derive(Debug)]
pub(crate) struct Actual {
    next_cmd: u64,
    next_key: u64,
    subs: BTreeMap<SubKey, UpSub>,
    by_sid: HashMap<Sid, SubKey>,
    pending: HashMap<CmdId, Pending>,
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

    /// The exchange confirmed `key` as `sid`.
    fn confirm(&mut self, key: SubKey, sid: Sid) -> Option<Channel> {
        let sub = self.subs.get_mut(&key)?;
        sub.sid = Some(sid);
        self.by_sid.insert(sid, key);
        self.seq.remove(sid.0);
        if let Some(markets) = &sub.markets {
            self.seq.add_markets(sid.0, markets.iter().cloned());
        }
        tracing::debug!(sid = sid.0, channel = %sub.channel, "subscribed");
        Some(sub.channel)
    }

    /// Drops a subscription and everything kept about its sid.
    fn forget(&mut self, key: SubKey) -> Option<UpSub> {
        let sub = self.subs.remove(&key)?;
        if let Some(sid) = sub.sid {
            self.by_sid.remove(&sid);
            self.seq.remove(sid.0);
        }
        Some(sub)
    }

    fn command(&mut self, pending: Pending, action: Action) -> Command {
        self.next_cmd += 1;
        self.pending.insert(CmdId(self.next_cmd), pending);
        Command {
            id: self.next_cmd,
            action,
        }
    }

    fn subscribe_cmd(&mut self, channel: Channel, markets: Markets) -> Command {
        self.next_key += 1;
        let key = SubKey(self.next_key);
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
            resume_from: None,
        });
        self.command(Pending::Subscribe { key }, action)
    }

    fn unsubscribe_cmd(&mut self, key: SubKey) -> Option<Command> {
        let sub = self.subs.get_mut(&key)?;
        let sid = sub.sid?;
        sub.closing = true;
        Some(self.command(
            Pending::Unsubscribe { key },
            Action::Unsubscribe { sids: vec![sid.0] },
        ))
    }

    fn update_cmd(
        &mut self,
        key: SubKey,
        markets: Vec<String>,
        action: UpdateAction,
    ) -> Option<Command> {
        let sub = self.subs.get_mut(&key)?;
        let sid = sub.sid?;
        if let Some(set) = &mut sub.markets {
            match action {
                UpdateAction::AddMarkets => {
                    set.extend(markets.iter().cloned());
                    self.seq.add_markets(sid.0, markets.iter().cloned());
                }
                UpdateAction::DeleteMarkets => {
                    for m in &markets {
                        set.remove(m);
                    }
                    self.seq.remove_markets(sid.0, &markets);
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
            sid: sid.0,
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
    pub fn channel_of(&self, sid: Sid) -> Option<Channel> {
        let sub = self.subs.get(self.by_sid.get(&sid)?)?;
        (!sub.closing).then_some(sub.channel)
    }

    /// Every confirmed sid not already being unsubscribed (for the unsubscribe on shutdown).
    pub fn sids(&self) -> Vec<Sid> {
        self.subs
            .values()
            .filter(|s| !s.closing)
            .filter_map(|s| s.sid)
            .collect()
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
            let live: Vec<SubKey> = self
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
        live: &[SubKey],
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
        let mut per_key: BTreeMap<SubKey, Vec<String>> = BTreeMap::new();
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
    pub fn snapshot_sid(&mut self, sid: Sid, markets: Vec<String>) -> Option<Command> {
        let key = *self.by_sid.get(&sid)?;
        self.update_cmd(key, markets, UpdateAction::GetSnapshot)
    }

    /// Drops `sid` (fallback repair): unsubscribes it, so the next reconcile subscribes its
    /// markets again on a new sid. Its seq is forgotten at once: nothing it sends counts now.
    pub fn resubscribe(&mut self, sid: Sid) -> Option<Command> {
        let key = *self.by_sid.get(&sid)?;
        self.seq.remove(sid.0);
        self.unsubscribe_cmd(key)
    }

    /// Applies a `subscribed`, `unsubscribed`, `ok` or `error` reply.
    pub fn on_reply(&mut self, env: &Envelope) -> Vec<Outcome> {
        let pending = env.id.and_then(|id| self.pending.remove(&CmdId(id)));
        match env.message_type() {
            MessageType::Subscribed => match (pending, env.body::<Subscribed>()) {
                (Some(Pending::Subscribe { key }), Ok(body)) => self
                    .confirm(key, Sid(body.sid))
                    .map(|channel| Outcome::Live { channel })
                    .into_iter()
                    .collect(),
                _ => {
                    tracing::warn!(id = ?env.id, "subscribed reply for no subscribe of ours");
                    Vec::new()
                }
            },
            MessageType::Unsubscribed => {
                let key = match (env.sid, pending) {
                    (Some(sid), _) => self.by_sid.get(&Sid(sid)).copied(),
                    (None, Some(Pending::Unsubscribe { key })) => Some(key),
                    (None, _) => None,
                };
                if let Some(key) = key {
                    self.forget(key);
                }
                Vec::new()
            }
            MessageType::Error => self.on_error(env, pending),
            _ => Vec::new(),
        }
    }

    fn on_error(&mut self, env: &Envelope, pending: Option<Pending>) -> Vec<Outcome> {
        let body = env.body::<ErrorBody>().ok();
        let code = body.as_ref().and_then(|b| ErrorCode::from_code(b.code));
        let named = body.as_ref().and_then(|b| b.market_ticker.clone());
        tracing::warn!(id = ?env.id, sid = ?env.sid, code = ?body.as_ref().map(|b| b.code),
            msg = ?body.as_ref().map(|b| &b.msg), "exchange refused a command");
        let (answered, key) = match &pending {
            Some(p) => {
                let (answered, key) = p.answered();
                (answered, Some(key))
            }
            None => (
                Answered::Nothing,
                env.sid.and_then(|sid| self.by_sid.get(&Sid(sid)).copied()),
            ),
        };
        // The markets the refused command carried.
        let batch: Vec<String> = match (&pending, key.and_then(|k| self.subs.get(&k))) {
            (Some(Pending::Add { markets, .. }), _) => markets.clone(),
            (Some(Pending::Subscribe { .. }), Some(sub)) => {
                sub.markets.iter().flatten().cloned().collect()
            }
            _ => Vec::new(),
        };
        let named = named.filter(|m| batch.contains(m));
        let decision = policy(answered, code, batch.len(), named.is_some());
        let Some(key) = key else {
            return Vec::new();
        };
        // A refused subscribe never got a sid; a refused add leaves the sid as it was.
        let channel = match answered {
            Answered::Subscribe => match self.forget(key) {
                Some(sub) => sub.channel,
                None => return Vec::new(),
            },
            Answered::AddMarkets if decision != Policy::Kill => {
                let Some(sub) = self.subs.get_mut(&key) else {
                    return Vec::new();
                };
                if let Some(set) = &mut sub.markets {
                    for m in &batch {
                        set.remove(m);
                    }
                }
                if let Some(sid) = sub.sid {
                    self.seq.remove_markets(sid.0, &batch);
                }
                sub.channel
            }
            _ => match self.subs.get(&key) {
                Some(sub) => sub.channel,
                None => return Vec::new(),
            },
        };
        match decision {
            Policy::Ignore => {}
            Policy::Forget => {
                self.forget(key);
            }
            Policy::Kill => return self.kill(key).into_iter().collect(),
            Policy::LearnLimit => {
                let limit = self.limits.entry(channel).or_insert(usize::MAX);
                *limit = match answered {
                    // Half the refused batch, until the exchange accepts.
                    Answered::Subscribe => (*limit).min(batch.len() / 2).max(1),
                    // What the sid holds is what it can hold.
                    _ => self
                        .subs
                        .get(&key)
                        .and_then(|s| s.markets.as_ref())
                        .map_or(1, |m| m.len().max(1)),
                };
                tracing::info!(%channel, limit = *limit, "market limit per subscription learned");
            }
            Policy::RefuseNamed => {
                self.refused.insert((channel, named));
            }
            Policy::RefuseBatch if batch.is_empty() => {
                self.refused.insert((channel, None));
            }
            Policy::RefuseBatch => {
                self.refused
                    .extend(batch.into_iter().map(|m| (channel, Some(m))));
            }
        }
        Vec::new()
    }

    /// Forgets a dead sid; the next reconcile subscribes its markets again.
    fn kill(&mut self, key: SubKey) -> Option<Outcome> {
        let sid = self.subs.get(&key)?.sid?;
        let markets: Vec<String> = self.seq.markets(sid.0).cloned().collect();
        let sub = self.forget(key)?;
        Some(Outcome::Dead {
            sid,
            channel: sub.channel,
            markets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SubId;
    use crate::subs::Desired;

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
        assert!(
            act.sids().is_empty(),
            "a sid being unsubscribed is not unsubscribed again at shutdown"
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
        assert_eq!(act.sids(), [Sid(10), Sid(11), Sid(12)]);
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
                sid: Sid(3),
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
