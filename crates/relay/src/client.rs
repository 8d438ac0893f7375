//! One client's subscriptions, as the exchange would keep them: sids per connection, seq per sid.
//!
//! [`ClientState::handle`] turns a validated command into the replies to send and the topic
//! changes to make on the client's fanout subscriber. It does no I/O, so every reply and error
//! code is tested here without sockets. Sids and seqs belong to the client's connection and never
//! change when the upstream reconnects underneath.

use std::collections::BTreeSet;
use std::sync::Arc;

/// A subscription's markets in the order the client gave them (replies list them so, as the
/// exchange does), with lookups by bisection (a command may name up to 1,000). The names sit end
/// to end in one string, with their ends in the client's order and their order by name beside
/// it: a client on 20 markets holds three exact allocations, not 20 strings and a hash table
/// (about 30 bytes a market, where an `IndexSet<String>` took about 80).
#[derive(Clone, Default)]
pub struct Markets {
    /// The names, one after another, in the client's order.
    names: String,
    /// Where each name ends in `names`, in the client's order.
    ends: Vec<u32>,
    /// Positions in `ends`, sorted by name.
    by_name: Vec<u32>,
}

impl Markets {
    /// The `i`th market in the client's order.
    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.names[start..self.ends[i] as usize]
    }

    /// Where `market` is in `by_name`, or where it would go.
    fn find(&self, market: &str) -> Result<usize, usize> {
        self.by_name
            .binary_search_by(|&i| self.get(i as usize).cmp(market))
    }

    pub fn contains(&self, market: &str) -> bool {
        self.find(market).is_ok()
    }

    /// Adds `market` at the end; false if it was there.
    pub fn insert(&mut self, market: &str) -> bool {
        let Err(at) = self.find(market) else {
            return false;
        };
        self.names.push_str(market);
        self.by_name.insert(at, self.ends.len() as u32);
        self.ends.push(self.names.len() as u32);
        true
    }

    /// False if it was not there. The others keep their order.
    pub fn remove(&mut self, market: &str) -> bool {
        let Ok(at) = self.find(market) else {
            return false;
        };
        let i = self.by_name.remove(at) as usize;
        let end = self.ends.remove(i) as usize;
        let len = market.len();
        self.names.replace_range(end - len..end, "");
        for e in &mut self.ends[i..] {
            *e -= len as u32;
        }
        for p in &mut self.by_name {
            if *p as usize > i {
                *p -= 1;
            }
        }
        self.shrink();
        true
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The markets in the client's order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Gives back what growing left unused: the table lives as long as the subscription.
    pub fn shrink(&mut self) {
        self.names.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.by_name.shrink_to_fit();
    }
}

impl PartialEq for Markets {
    fn eq(&self, other: &Markets) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Markets {}

impl std::fmt::Debug for Markets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl IntoIterator for Markets {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into_iter()
    }
}

impl<'a> FromIterator<&'a String> for Markets {
    fn from_iter<I: IntoIterator<Item = &'a String>>(iter: I) -> Self {
        let mut out = Markets::default();
        for m in iter {
            out.insert(m);
        }
        out.shrink();
        out
    }
}

use protocol::{reply, Action, Channel, Command, CommandError, ErrorCode, UpdateAction};

use crate::config::DuplicateSubscribe;

/// One of the client's subscriptions.
#[derive(Debug, Clone)]
pub struct ClientSub {
    pub sid: u64,
    pub channel: Channel,
    /// `None`: every market (a channel subscribed without a market filter). The sids of one
    /// `subscribe` share their list (a client naming 20 markets on three channels holds it
    /// once) until one of them changes.
    pub markets: Option<Arc<Markets>>,
    /// The last seq sent on this sid (sequenced channels only).
    pub seq: u64,
    /// `use_yes_price` (orderbook): `no` levels reported on the yes scale.
    pub use_yes_price: bool,
    /// `skip_ticker_ack`: `ok` replies about this sid leave out its market list.
    pub skip_ack: bool,
}

impl ClientSub {
    /// The next seq for a sequenced message, advancing the counter.
    pub fn next_seq(&mut self) -> Option<u64> {
        self.channel.is_sequenced().then(|| {
            self.seq += 1;
            self.seq
        })
    }

    fn last_seq(&self) -> Option<u64> {
        self.channel.is_sequenced().then_some(self.seq)
    }

    /// The `ok` to an update of this sid: its markets after it (unless `skip_ticker_ack`).
    fn ok(&self, id: u64) -> Effect {
        let list: Option<Vec<String>> = (!self.skip_ack).then(|| {
            self.markets
                .iter()
                .flat_map(|m| m.iter())
                .map(str::to_owned)
                .collect()
        });
        Effect::Reply(reply::ok_markets(
            id,
            self.sid,
            self.last_seq(),
            list.as_deref(),
        ))
    }
}

/// What the session must do after a command, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this frame to the client.
    Reply(String),
    /// Send this error reply to the client (counted as a refused command).
    Error(String),
    /// Start receiving a topic. `initial`: send the cached state first (book snapshot always;
    /// ticker only with `send_initial_snapshot`).
    Add {
        channel: Channel,
        market: Option<String>,
        initial: bool,
    },
    /// Stop receiving a topic.
    Remove {
        channel: Channel,
        market: Option<String>,
    },
    /// Send a fresh book snapshot for `market` on the orderbook sid (`get_snapshot`).
    Snapshot { market: String },
    /// Answer the relay's `ping` extension.
    Pong(u64),
}

/// Per-connection limits and rights.
#[derive(Debug, Clone)]
pub struct Limits {
    pub duplicate_subscribe: DuplicateSubscribe,
    /// Whether private channels (fill, user_orders, market_positions) are allowed.
    pub private_allowed: bool,
    /// Most markets over all of one connection's subscriptions.
    pub max_markets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            duplicate_subscribe: DuplicateSubscribe::Merge,
            private_allowed: true,
            max_markets: 10_000,
        }
    }
}

/// A client connection's subscription table.
#[derive(Debug)]
pub struct ClientState {
    limits: Limits,
    next_sid: u64,
    /// In sid order (sids only grow, so a push keeps it). A connection holds a few subscriptions
    /// at most (one per channel): a vector is smaller than a map and as fast to search.
    subs: Vec<ClientSub>,
}

impl ClientState {
    pub fn new(limits: Limits) -> ClientState {
        ClientState {
            limits,
            next_sid: 1,
            subs: Vec::new(),
        }
    }

    /// Allows or forbids private channels from now on (after first-message authentication).
    pub fn set_private_allowed(&mut self, allowed: bool) {
        self.limits.private_allowed = allowed;
    }

    /// The subscription carrying `channel`, if any (one sid per channel per connection).
    pub fn by_channel(&mut self, channel: Channel) -> Option<&mut ClientSub> {
        self.subs.iter_mut().find(|s| s.channel == channel)
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &ClientSub> {
        self.subs.iter()
    }

    /// Every topic the client holds.
    #[cfg(test)]
    pub fn topics(&self) -> Vec<(Channel, Option<String>)> {
        let mut out = Vec::new();
        for sub in &self.subs {
            match &sub.markets {
                None => out.push((sub.channel, None)),
                Some(ms) => out.extend(ms.iter().map(|m| (sub.channel, Some(m.to_owned())))),
            }
        }
        out
    }

    fn market_count(&self) -> usize {
        self.subs
            .iter()
            .map(|s| s.markets.as_ref().map_or(0, |m| m.len()))
            .sum()
    }

    /// Applies one command.
    pub fn handle(&mut self, cmd: Command) -> Vec<Effect> {
        let id = cmd.id;
        let result = match cmd.action {
            Action::Subscribe(s) => self.subscribe(id, s),
            Action::Unsubscribe { sids } => Ok(self.unsubscribe(id, &sids)),
            Action::UpdateSubscription(u) => self.update(id, u),
            Action::ListSubscriptions => {
                let list: Vec<(String, u64)> = self
                    .subs
                    .iter()
                    .map(|s| (s.channel.as_str().to_owned(), s.sid))
                    .collect();
                Ok(vec![Effect::Reply(reply::ok_list(id, &list))])
            }
            Action::Ping => Ok(vec![Effect::Pong(id)]),
            // Authentication is the session's business before any command reaches here.
            // The session checks tokens and answers `auth` itself: nothing to change here.
            Action::Auth { .. } => Ok(Vec::new()),
        };
        result.unwrap_or_else(|e| vec![Effect::Error(e.reply())])
    }

    fn subscribe(&mut self, id: u64, s: protocol::Subscribe) -> Result<Vec<Effect>, CommandError> {
        let err = |code| CommandError::new(id, code);
        if !self.limits.private_allowed && s.channels.iter().any(|c| c.is_private()) {
            return Err(err(ErrorCode::AuthRequired));
        }
        let new_markets: BTreeSet<String> = s.markets.iter().flatten().cloned().collect();
        // Check every limit before changing anything: a refused command changes nothing. (Sids
        // need no limit: one per channel at most.)
        if self.market_count() + new_markets.len() * s.channels.len() > self.limits.max_markets {
            return Err(err(ErrorCode::MarketLimitExceeded));
        }
        let mut effects = Vec::new();
        let markets = s
            .markets
            .as_ref()
            .map(|m| Arc::new(m.iter().collect::<Markets>()));
        for channel in s.channels {
            if let Some(sid) = self.channel_sid(channel) {
                // Per channel, as the exchange does: the other channels still subscribe.
                match self.limits.duplicate_subscribe {
                    DuplicateSubscribe::Error => effects.push(Effect::Error(reply::error(
                        id,
                        ErrorCode::AlreadySubscribed,
                        None,
                    ))),
                    DuplicateSubscribe::Merge => {
                        effects.extend(self.merge(id, sid, s.markets.as_deref()))
                    }
                }
                continue;
            }
            let sid = self.next_sid;
            self.next_sid += 1;
            let markets = markets.clone();
            let initial = channel == Channel::OrderbookDelta
                || (channel == Channel::Ticker && s.send_initial_snapshot);
            effects.push(Effect::Reply(reply::subscribed(id, channel.as_str(), sid)));
            match &markets {
                None => effects.push(Effect::Add {
                    channel,
                    market: None,
                    initial,
                }),
                Some(ms) => effects.extend(ms.iter().map(|m| Effect::Add {
                    channel,
                    market: Some(m.to_owned()),
                    initial,
                })),
            }
            // Exactly one more slot: most connections hold one or two subscriptions, and a
            // vector's first growth would reserve four.
            self.subs.reserve_exact(1);
            self.subs.push(ClientSub {
                sid,
                channel,
                markets,
                seq: 0,
                use_yes_price: s.use_yes_price.unwrap_or(false),
                skip_ack: s.skip_ticker_ack,
            });
        }
        Ok(effects)
    }

    fn sub_mut(&mut self, sid: u64) -> Option<&mut ClientSub> {
        self.subs.iter_mut().find(|s| s.sid == sid)
    }

    fn channel_sid(&self, channel: Channel) -> Option<u64> {
        self.subs
            .iter()
            .find(|s| s.channel == channel)
            .map(|s| s.sid)
    }

    /// A second `subscribe` on a held channel, in merge mode: the markets are added, `ok`.
    fn merge(&mut self, id: u64, sid: u64, markets: Option<&[String]>) -> Vec<Effect> {
        let sub = self.sub_mut(sid).expect("sid exists");
        let mut effects = Vec::new();
        match (&mut sub.markets, markets) {
            // Already every market, or widening to every market: nothing to add per market.
            (None, _) => {}
            (Some(held), None) => {
                for m in held.iter() {
                    effects.push(Effect::Remove {
                        channel: sub.channel,
                        market: Some(m.to_owned()),
                    });
                }
                sub.markets = None;
                effects.push(Effect::Add {
                    channel: sub.channel,
                    market: None,
                    initial: sub.channel == Channel::OrderbookDelta,
                });
            }
            (Some(held), Some(new)) => {
                let held = Arc::make_mut(held);
                for m in new {
                    if held.insert(m) {
                        effects.push(Effect::Add {
                            channel: sub.channel,
                            market: Some(m.clone()),
                            initial: sub.channel == Channel::OrderbookDelta,
                        });
                    }
                }
                held.shrink();
            }
        }
        effects.insert(0, sub.ok(id));
        effects
    }

    fn unsubscribe(&mut self, id: u64, sids: &[u64]) -> Vec<Effect> {
        let mut effects = Vec::new();
        for sid in sids {
            let Some(at) = self.subs.iter().position(|s| s.sid == *sid) else {
                effects.push(Effect::Error(reply::error(id, ErrorCode::UnknownSid, None)));
                continue;
            };
            let sub = self.subs.remove(at);
            match &sub.markets {
                None => effects.push(Effect::Remove {
                    channel: sub.channel,
                    market: None,
                }),
                Some(ms) => effects.extend(ms.iter().map(|m| Effect::Remove {
                    channel: sub.channel,
                    market: Some(m.to_owned()),
                })),
            }
            effects.push(Effect::Reply(reply::unsubscribed(id, *sid, sub.last_seq())));
        }
        effects
    }

    fn update(
        &mut self,
        id: u64,
        u: protocol::UpdateSubscription,
    ) -> Result<Vec<Effect>, CommandError> {
        let err = |code| CommandError::new(id, code);
        let market_count = self.market_count();
        let max_markets = self.limits.max_markets;
        let sub = self.sub_mut(u.sid).ok_or(err(ErrorCode::UnknownSid))?;
        let channel = sub.channel;
        let mut effects = Vec::new();
        match u.action {
            // Every market already: nothing to add.
            UpdateAction::AddMarkets if sub.markets.is_none() => {}
            UpdateAction::AddMarkets => {
                let held = Arc::make_mut(
                    sub.markets
                        .as_mut()
                        .expect("a market-filtered subscription"),
                );
                let fresh: Vec<&String> = u.markets.iter().filter(|m| !held.contains(m)).collect();
                if market_count + fresh.len() > max_markets {
                    return Err(err(ErrorCode::MarketLimitExceeded));
                }
                for m in fresh {
                    held.insert(m);
                    effects.push(Effect::Add {
                        channel,
                        market: Some(m.clone()),
                        initial: channel == Channel::OrderbookDelta,
                    });
                }
                held.shrink();
            }
            UpdateAction::DeleteMarkets => {
                let held = Arc::make_mut(
                    sub.markets
                        .as_mut()
                        .ok_or(err(ErrorCode::InvalidParameter))?,
                );
                for m in &u.markets {
                    if held.remove(m) {
                        effects.push(Effect::Remove {
                            channel,
                            market: Some(m.clone()),
                        });
                    }
                }
            }
            UpdateAction::GetSnapshot => {
                if channel != Channel::OrderbookDelta {
                    return Err(err(ErrorCode::UnsupportedAction));
                }
                for m in &u.markets {
                    if !sub.markets.as_ref().is_none_or(|held| held.contains(m)) {
                        return Err(CommandError {
                            id,
                            code: ErrorCode::InvalidParameter,
                            market_ticker: Some(m.clone()),
                        });
                    }
                }
                effects.push(sub.ok(id));
                effects.extend(
                    u.markets
                        .into_iter()
                        .map(|market| Effect::Snapshot { market }),
                );
                return Ok(effects);
            }
        }
        effects.insert(0, sub.ok(id));
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markets_keep_the_clients_order_and_find_by_name() {
        let names: Vec<String> = ["KX-C", "KX-A", "KX-BB", "KX-B"].map(String::from).to_vec();
        let mut ms: Markets = names.iter().collect();
        assert!(!ms.insert("KX-A"), "already there");
        assert!(ms.insert("KX-0"));
        assert_eq!(
            ms.iter().collect::<Vec<_>>(),
            ["KX-C", "KX-A", "KX-BB", "KX-B", "KX-0"]
        );
        assert!(ms.contains("KX-BB") && !ms.contains("KX-") && !ms.contains("KX-BBB"));
        assert!(ms.remove("KX-A") && !ms.remove("KX-A"));
        assert!(ms.remove("KX-0"));
        assert_eq!(ms.iter().collect::<Vec<_>>(), ["KX-C", "KX-BB", "KX-B"]);
        for m in ["KX-C", "KX-BB", "KX-B"] {
            assert!(ms.contains(m), "{m}");
        }
        assert_eq!(ms.len(), 3);
        assert_eq!(
            ms.clone().into_iter().collect::<Vec<_>>(),
            ["KX-C", "KX-BB", "KX-B"]
        );
    }

    #[test]
    fn the_sids_of_one_subscribe_share_their_list_until_one_changes() {
        let mut s = ClientState::new(Limits::default());
        run(
            &mut s,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["ticker","trade"],"market_tickers":["A","B"]}}"#,
        );
        let lists = |s: &ClientState| -> Vec<Vec<String>> {
            s.subscriptions()
                .map(|sub| {
                    sub.markets
                        .iter()
                        .flat_map(|m| m.iter())
                        .map(str::to_owned)
                        .collect()
                })
                .collect()
        };
        let held: Vec<&Arc<Markets>> = s.subscriptions().flat_map(|sub| &sub.markets).collect();
        assert!(Arc::ptr_eq(held[0], held[1]), "one list for both sids");
        run(
            &mut s,
            r#"{"id":2,"cmd":"update_subscription","params":{"sid":2,"market_tickers":["C"],"action":"add_markets"}}"#,
        );
        assert_eq!(lists(&s), [vec!["A", "B"], vec!["A", "B", "C"]]);
        run(
            &mut s,
            r#"{"id":3,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A"],"action":"delete_markets"}}"#,
        );
        assert_eq!(lists(&s), [vec!["B"], vec!["A", "B", "C"]]);
    }

    fn run(state: &mut ClientState, frame: &str) -> Vec<Effect> {
        state.handle(Command::parse(frame.as_bytes()).expect("a valid command"))
    }

    fn replies(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Reply(r) | Effect::Error(r) => Some(r.as_str()),
                _ => None,
            })
            .collect()
    }

    fn add(channel: Channel, market: &str, initial: bool) -> Effect {
        Effect::Add {
            channel,
            market: Some(market.into()),
            initial,
        }
    }

    #[test]
    fn subscribe_answers_per_channel_and_adds_topics() {
        let mut s = ClientState::new(Limits::default());
        let e = run(
            &mut s,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta","trade"],"market_tickers":["A","B"]}}"#,
        );
        assert_eq!(
            e,
            vec![
                Effect::Reply(
                    r#"{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}"#
                        .into()
                ),
                add(Channel::OrderbookDelta, "A", true),
                add(Channel::OrderbookDelta, "B", true),
                Effect::Reply(
                    r#"{"id":1,"type":"subscribed","msg":{"channel":"trade","sid":2}}"#.into()
                ),
                add(Channel::Trade, "A", false),
                add(Channel::Trade, "B", false),
            ]
        );
        let e = run(
            &mut s,
            r#"{"id":2,"cmd":"subscribe","params":{"channels":["ticker"],"skip_ticker_ack":true,"send_initial_snapshot":true}}"#,
        );
        // `skip_ticker_ack` keeps the `subscribed`; `ok` replies about the sid lose the list.
        assert_eq!(
            e,
            vec![
                Effect::Reply(
                    r#"{"id":2,"type":"subscribed","msg":{"channel":"ticker","sid":3}}"#.into()
                ),
                Effect::Add {
                    channel: Channel::Ticker,
                    market: None,
                    initial: true
                }
            ]
        );
        let e = run(
            &mut s,
            r#"{"id":4,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A"],"action":"delete_markets"}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![r#"{"id":4,"type":"ok","sid":1,"msg":{"market_tickers":["B"]}}"#]
        );
        let e = run(
            &mut s,
            r#"{"id":5,"cmd":"subscribe","params":{"channels":["fill"],"market_ticker":"A","skip_ticker_ack":true}}"#,
        );
        assert_eq!(e.len(), 2, "subscribed, add");
        let e = run(
            &mut s,
            r#"{"id":6,"cmd":"update_subscription","params":{"sid":4,"market_tickers":["C"],"action":"add_markets"}}"#,
        );
        assert_eq!(replies(&e), vec![r#"{"id":6,"type":"ok","sid":4}"#]);
        let e = run(&mut s, r#"{"id":3,"cmd":"list_subscriptions"}"#);
        assert_eq!(
            replies(&e),
            vec![
                r#"{"id":3,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},{"channel":"trade","sid":2},{"channel":"ticker","sid":3},{"channel":"fill","sid":4}]}"#
            ]
        );
    }

    #[test]
    fn seq_counts_per_sid_and_only_on_sequenced_channels() {
        let mut s = ClientState::new(Limits::default());
        run(
            &mut s,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta","ticker"],"market_ticker":"A"}}"#,
        );
        let book = s.by_channel(Channel::OrderbookDelta).unwrap();
        assert_eq!((book.next_seq(), book.next_seq()), (Some(1), Some(2)));
        assert_eq!(s.by_channel(Channel::Ticker).unwrap().next_seq(), None);
        let e = run(
            &mut s,
            r#"{"id":2,"cmd":"unsubscribe","params":{"sids":[1,2,9]}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![
                r#"{"id":2,"type":"unsubscribed","sid":1,"seq":2}"#,
                r#"{"id":2,"type":"unsubscribed","sid":2,"seq":1}"#,
                r#"{"id":2,"type":"error","msg":{"code":7,"msg":"Unknown subscription ID"}}"#,
            ]
        );
        assert!(s.topics().is_empty());
    }

    #[test]
    fn duplicate_subscribe_merges_or_errors_per_channel() {
        let mut merge = ClientState::new(Limits::default());
        run(
            &mut merge,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_ticker":"A"}}"#,
        );
        let e = run(
            &mut merge,
            r#"{"id":2,"cmd":"subscribe","params":{"channels":["orderbook_delta","trade"],"market_tickers":["A","B"]}}"#,
        );
        assert_eq!(
            e,
            vec![
                Effect::Reply(
                    r#"{"id":2,"type":"ok","sid":1,"msg":{"market_tickers":["A","B"]}}"#.into()
                ),
                add(Channel::OrderbookDelta, "B", true),
                Effect::Reply(
                    r#"{"id":2,"type":"subscribed","msg":{"channel":"trade","sid":2}}"#.into()
                ),
                add(Channel::Trade, "A", false),
                add(Channel::Trade, "B", false),
            ]
        );

        let mut error = ClientState::new(Limits {
            duplicate_subscribe: DuplicateSubscribe::Error,
            ..Limits::default()
        });
        run(
            &mut error,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_ticker":"A"}}"#,
        );
        let e = run(
            &mut error,
            r#"{"id":2,"cmd":"subscribe","params":{"channels":["orderbook_delta","trade"],"market_ticker":"B"}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![
                r#"{"id":2,"type":"error","msg":{"code":6,"msg":"Already subscribed"}}"#,
                r#"{"id":2,"type":"subscribed","msg":{"channel":"trade","sid":2}}"#,
            ]
        );
    }

    #[test]
    fn update_subscription_adds_deletes_and_snapshots() {
        let mut s = ClientState::new(Limits::default());
        run(
            &mut s,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_ticker":"A"}}"#,
        );
        let e = run(
            &mut s,
            r#"{"id":2,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["B","A"],"action":"add_markets"}}"#,
        );
        assert_eq!(
            e,
            vec![
                Effect::Reply(
                    r#"{"id":2,"type":"ok","sid":1,"msg":{"market_tickers":["A","B"]}}"#.into()
                ),
                add(Channel::OrderbookDelta, "B", true),
            ]
        );
        let e = run(
            &mut s,
            r#"{"id":3,"cmd":"update_subscription","params":{"sids":[1],"market_tickers":["A"],"action":"delete_markets"}}"#,
        );
        assert_eq!(
            e[1],
            Effect::Remove {
                channel: Channel::OrderbookDelta,
                market: Some("A".into())
            }
        );
        let e = run(
            &mut s,
            r#"{"id":4,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["B"],"action":"get_snapshot"}}"#,
        );
        assert_eq!(e[1], Effect::Snapshot { market: "B".into() });
        let e = run(
            &mut s,
            r#"{"id":5,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A"],"action":"get_snapshot"}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![
                r#"{"id":5,"type":"error","msg":{"code":11,"msg":"Invalid parameter","market_ticker":"A"}}"#
            ]
        );
        let e = run(
            &mut s,
            r#"{"id":6,"cmd":"update_subscription","params":{"sid":7,"market_tickers":["A"],"action":"add_markets"}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![r#"{"id":6,"type":"error","msg":{"code":7,"msg":"Unknown subscription ID"}}"#]
        );
    }

    #[test]
    fn limits_refuse_without_changing_anything() {
        let mut s = ClientState::new(Limits {
            private_allowed: false,
            max_markets: 2,
            ..Limits::default()
        });
        let e = run(
            &mut s,
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["fill"]}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![r#"{"id":1,"type":"error","msg":{"code":9,"msg":"Authentication required"}}"#]
        );
        let e = run(
            &mut s,
            r#"{"id":2,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["A","B","C"]}}"#,
        );
        assert_eq!(
            replies(&e),
            vec![
                r#"{"id":2,"type":"error","msg":{"code":26,"msg":"Subscription market limit exceeded"}}"#
            ]
        );
        assert!(s.subscriptions().next().is_none());
        assert_eq!(
            run(&mut s, r#"{"id":3,"cmd":"ping"}"#),
            vec![Effect::Pong(3)]
        );
    }
}
