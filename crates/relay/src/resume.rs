//! Resume: a client that reconnects picks its private stream up where it left off (README,
//! "Resume after a reconnect").
//!
//! A position is the last fill a client received, `"<ts>:<trade_id>"` (`ts` in Unix seconds), or
//! `"<ts>:"` before its first fill (`ts`: when its private subscription began). Fills are the only
//! private messages with an identity; orders and positions are states, so a resume sends the
//! fills after the position, each once and in order, and the latest state of every order and
//! market that changed since. They come from this relay's recent history when it covers the
//! position, else from the exchange's REST history (so a resume works across a relay restart);
//! when neither can tell exactly what followed, the client is told `recovered: false`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use protocol::{Channel, MessageType};
use serde::Deserialize;

/// A point in the account's private stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Unix seconds of the fill, or of the subscription's start.
    pub ts: i64,
    /// The last fill received; `None` before the first.
    pub trade_id: Option<String>,
}

impl Position {
    /// Parses `"<ts>:<trade_id>"` or `"<ts>:"`.
    pub fn parse(text: &str) -> Option<Position> {
        let (ts, trade_id) = text.split_once(':')?;
        let ts: i64 = ts.parse().ok().filter(|t| *t >= 0)?;
        let trade_id = (!trade_id.is_empty()).then(|| trade_id.to_owned());
        if trade_id
            .as_ref()
            .is_some_and(|t| t.len() > 128 || t.contains('"'))
        {
            return None;
        }
        Some(Position { ts, trade_id })
    }

    /// The position just after the fill `body` (a `fill` msg), if it is one.
    pub fn of_fill(body: &[u8]) -> Option<Position> {
        #[derive(Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            trade_id: std::borrow::Cow<'a, str>,
            ts: i64,
        }
        let id: Id = serde_json::from_slice(body).ok()?;
        Some(Position {
            ts: id.ts,
            trade_id: Some(id.trade_id.into_owned()),
        })
    }

    /// Before any fill, from now.
    pub fn now() -> Position {
        Position {
            ts: now_s(),
            trade_id: None,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ts, self.trade_id.as_deref().unwrap_or(""))
    }
}

/// One private message kept for replay.
#[derive(Clone, Debug)]
pub struct Kept {
    pub channel: Channel,
    pub kind: MessageType,
    pub market: Option<String>,
    pub body: Bytes,
}

/// What a resume sends before the live stream: fills, then orders, then positions.
#[derive(Debug, Default)]
pub struct Replay {
    pub fills: Vec<Kept>,
    pub orders: Vec<Kept>,
    pub positions: Vec<Kept>,
    /// Trade ids at or before the position, in its second or later: the client holds them,
    /// and second-granular times cannot tell them from the replayed ones.
    pub past: Vec<String>,
}

/// What a resumed client already holds, so the live stream after its replay repeats none of
/// it: the fills replayed, and everything at or before the position it resumed from. Fills the
/// relay recovers after an outage arrive in exchange order but may reach back before the
/// replay's end, so the filter holds until a live fill is newer than anything replayed.
#[derive(Debug)]
pub struct Replayed {
    ids: HashSet<String>,
    from: Position,
    /// The newest second the replay covered (`from`'s when it replayed no fill).
    newest: i64,
}

impl Replayed {
    pub fn new(from: &Position, replay: &Replay) -> Replayed {
        let mut newest = from.ts;
        let mut ids = HashSet::new();
        for p in replay
            .fills
            .iter()
            .filter_map(|k| Position::of_fill(&k.body))
        {
            newest = newest.max(p.ts);
            ids.extend(p.trade_id);
        }
        ids.extend(replay.past.iter().cloned());
        Replayed {
            ids,
            from: from.clone(),
            newest,
        }
    }

    /// Whether the live fill at `fill` repeats what the client holds. `None` once the stream
    /// has moved past the replay (the filter is done with).
    pub fn repeats(&mut self, fill: &Position) -> Option<bool> {
        let id = fill.trade_id.as_deref();
        if id.is_some_and(|id| self.ids.remove(id)) {
            return Some(true);
        }
        if fill.ts < self.from.ts || (id.is_some() && id == self.from.trade_id.as_deref()) {
            return Some(true);
        }
        (fill.ts <= self.newest).then_some(false)
    }
}

/// The recent private stream, as the feed published it. Bounded by count and age; a loss (an
/// announced `MessagesLost`, or the relay's start) resets what it covers.
pub struct History {
    /// The private channels are held upstream at all times (`warm_private_channels`). Without
    /// that, nobody holds them while no client wants them, the stream has gaps this history
    /// cannot see, and it replays nothing (resumes read REST).
    continuous: bool,
    max_fills: usize,
    max_age_s: i64,
    /// Fills, oldest first, with their positions and when they were kept.
    fills: VecDeque<(Position, i64, Kept)>,
    /// Latest state per order id / market, and when it changed (Unix s).
    orders: HashMap<String, (i64, Kept)>,
    positions: HashMap<String, (i64, Kept)>,
    /// Everything the account did from this Unix second on is here (or was evicted, which
    /// `covers` accounts for).
    since: i64,
}

impl History {
    pub fn new(max_fills: usize, max_age_s: i64, continuous: bool) -> History {
        History {
            continuous,
            max_fills,
            max_age_s,
            fills: VecDeque::new(),
            orders: HashMap::new(),
            positions: HashMap::new(),
            since: now_s(),
        }
    }

    /// Keeps one private message on its way to subscribers.
    pub fn record(&mut self, kept: Kept) {
        let now = now_s();
        match kept.kind {
            MessageType::Fill => {
                if let Some(position) = Position::of_fill(&kept.body) {
                    self.fills.push_back((position, now, kept));
                }
            }
            MessageType::UserOrder => {
                if let Some(id) = field(&kept.body, "order_id") {
                    self.orders.insert(id, (now, kept));
                }
            }
            MessageType::MarketPosition => {
                if let Some(m) = kept.market.clone() {
                    self.positions.insert(m, (now, kept));
                }
            }
            _ => {}
        }
        self.evict(now);
    }

    /// The bodies of the fills kept made at or after `since` (Unix s), oldest first.
    pub fn fill_bodies_since(&self, since: i64) -> Vec<Bytes> {
        self.fills
            .iter()
            .filter(|(p, _, _)| p.ts >= since)
            .map(|(_, _, k)| k.body.clone())
            .collect()
    }

    /// Messages were lost upstream: nothing before now can be replayed exactly.
    pub fn lost(&mut self) {
        self.fills.clear();
        self.orders.clear();
        self.positions.clear();
        self.since = now_s();
    }

    fn evict(&mut self, now: i64) {
        let cutoff = now - self.max_age_s;
        while self
            .fills
            .front()
            .is_some_and(|(_, at, _)| *at < cutoff || self.fills.len() > self.max_fills)
        {
            if let Some((_, at, _)) = self.fills.pop_front() {
                self.since = self.since.max(at + 1);
            }
        }
        if self.orders.len() > self.max_fills || self.positions.len() > self.max_fills {
            self.orders.retain(|_, (at, _)| *at >= cutoff);
            self.positions.retain(|_, (at, _)| *at >= cutoff);
        }
        self.since = self.since.max(cutoff);
    }

    /// What followed `from`, if this history holds all of it. `overlap` (seconds) widens the
    /// orders and positions sent, for clocks that disagree.
    pub fn replay(&self, from: &Position, overlap: i64) -> Option<Replay> {
        if !self.continuous {
            return None;
        }
        let mut past = Vec::new();
        let fills: Vec<Kept> = match &from.trade_id {
            Some(id) => {
                let i = self
                    .fills
                    .iter()
                    .position(|(p, _, _)| p.trade_id.as_deref() == Some(id))?;
                past = (self.fills.iter().take(i + 1))
                    .filter(|(p, _, _)| p.ts >= from.ts)
                    .filter_map(|(p, _, _)| p.trade_id.clone())
                    .collect();
                self.fills
                    .iter()
                    .skip(i + 1)
                    .map(|(_, _, k)| k.clone())
                    .collect()
            }
            None => {
                if from.ts < self.since {
                    return None;
                }
                self.fills
                    .iter()
                    .filter(|(p, _, _)| p.ts >= from.ts)
                    .map(|(_, _, k)| k.clone())
                    .collect()
            }
        };
        // The position is inside what this history covers (its fill is here, or its time is
        // after `since`): orders and positions from before `since` preceded it.
        let changed_since = (from.ts - overlap).max(self.since);
        let mut orders: Vec<&(i64, Kept)> = self
            .orders
            .values()
            .filter(|(at, _)| *at >= changed_since)
            .collect();
        orders.sort_by_key(|(at, _)| *at);
        let mut positions: Vec<&(i64, Kept)> = self
            .positions
            .values()
            .filter(|(at, _)| *at >= changed_since)
            .collect();
        positions.sort_by_key(|(at, _)| *at);
        Some(Replay {
            fills,
            orders: orders.into_iter().map(|(_, k)| k.clone()).collect(),
            positions: positions.into_iter().map(|(_, k)| k.clone()).collect(),
            past,
        })
    }
}

/// Where a resume's replay came from (`source` of `relay_resume`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Relay,
    Exchange,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Relay => "relay",
            Source::Exchange => "exchange",
        }
    }
}

/// Everything after `from` on the private `channels`: from `history` when it holds all of it,
/// else from the exchange's REST history through `rest`. `Err` says why it cannot be complete.
pub async fn fetch(
    history: &parking_lot::Mutex<History>,
    rest: Option<&upstream::RestClient>,
    overlap: i64,
    from: &Position,
    channels: &[Channel],
) -> Result<(Replay, Source), String> {
    let kept = history.lock().replay(from, overlap);
    if let Some(mut replay) = kept {
        replay.fills.retain(|k| channels.contains(&k.channel));
        replay.orders.retain(|k| channels.contains(&k.channel));
        replay.positions.retain(|k| channels.contains(&k.channel));
        return Ok((replay, Source::Relay));
    }
    let Some(rest) = rest else {
        return Err("the position is older than the relay's history and backfill is off".into());
    };
    let since = from.ts - overlap;
    let live = history.lock().fill_bodies_since(since);
    match upstream::recover(rest, since, from.trade_id.as_deref(), channels, &live).await {
        Ok(Some(recovered)) => Ok((from_recovered(recovered), Source::Exchange)),
        Ok(None) => Err("the exchange no longer lists the position's fill".into()),
        Err(e) => Err(format!("the exchange's REST API failed: {e}")),
    }
}

/// Adds `"relay_position":"<position>"` to the envelope just written at the end of `out`.
pub fn stamp(out: &mut bytes::BytesMut, position: &Position) {
    if out.last() == Some(&b'}') {
        out.truncate(out.len() - 1);
        out.extend_from_slice(b",\"relay_position\":\"");
        out.extend_from_slice(position.to_string().as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

/// REST's answer as a replay.
pub fn from_recovered(r: upstream::Recovered) -> Replay {
    let kept = |d: upstream::Data| Kept {
        channel: d.channel,
        kind: d.kind,
        market: d.market,
        body: d.body,
    };
    Replay {
        fills: r.fills.into_iter().map(kept).collect(),
        orders: r.orders.into_iter().map(kept).collect(),
        positions: r.positions.into_iter().map(kept).collect(),
        past: r.past,
    }
}

fn field(body: &[u8], key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get(key)?.as_str().map(str::to_owned)
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(id: &str, ts: i64) -> Kept {
        Kept {
            channel: Channel::Fill,
            kind: MessageType::Fill,
            market: Some("A".into()),
            body: Bytes::from(format!(
                r#"{{"trade_id":"{id}","ts":{ts},"market_ticker":"A"}}"#
            )),
        }
    }

    fn order(id: &str) -> Kept {
        Kept {
            channel: Channel::UserOrders,
            kind: MessageType::UserOrder,
            market: Some("A".into()),
            body: Bytes::from(format!(r#"{{"order_id":"{id}","ticker":"A"}}"#)),
        }
    }

    fn ids(r: &Replay) -> Vec<String> {
        (r.fills.iter())
            .filter_map(|k| Position::of_fill(&k.body)?.trade_id)
            .collect()
    }

    #[test]
    fn a_stamped_envelope_stays_json_with_the_position() {
        let mut out =
            bytes::BytesMut::from(&br#"{"type":"fill","sid":3,"msg":{"trade_id":"t"}}"#[..]);
        stamp(&mut out, &Position::parse("5:t").unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["relay_position"], "5:t");
        assert_eq!(v["msg"]["trade_id"], "t");
    }

    #[test]
    fn positions_parse_and_print() {
        for text in ["1796205601:d91bc706-ee49", "1796205601:"] {
            assert_eq!(Position::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            "x:y",
            "-1:a",
            "12",
            &format!("1:{}", "a".repeat(129)),
            "1:a\"b",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
        let p = Position::of_fill(br#"{"trade_id":"t1","ts":5,"x":1}"#).unwrap();
        assert_eq!(p.to_string(), "5:t1");
    }

    #[test]
    fn a_position_in_the_history_replays_what_followed_it() {
        let mut h = History::new(100, 3600, true);
        let now = now_s();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            h.record(fill(id, now + i as i64));
        }
        h.record(order("o1"));
        let from = Position::parse(&format!("{now}:a")).unwrap();
        let r = h.replay(&from, 5).unwrap();
        assert_eq!(ids(&r), ["b", "c"]);
        assert_eq!(r.orders.len(), 1);
        // A fill this relay never saw: only the exchange can say what followed it.
        assert!(h
            .replay(&Position::parse(&format!("{now}:zz")).unwrap(), 5)
            .is_none());
        // Before any fill, from a time the history covers: every fill since.
        let r = h
            .replay(
                &Position {
                    ts: now,
                    trade_id: None,
                },
                0,
            )
            .unwrap();
        assert_eq!(ids(&r), ["a", "b", "c"]);
    }

    #[test]
    fn eviction_and_loss_end_what_the_history_covers() {
        let mut h = History::new(2, 3600, true);
        let now = now_s();
        for id in ["a", "b", "c"] {
            h.record(fill(id, now));
        }
        // "a" fell out: a client at "a" cannot be served from here.
        assert!(h
            .replay(&Position::parse(&format!("{now}:a")).unwrap(), 0)
            .is_none());
        let r = h
            .replay(&Position::parse(&format!("{now}:b")).unwrap(), 0)
            .unwrap();
        assert_eq!(ids(&r), ["c"]);
        // What the client holds in the position's second, so no recovered fill repeats it.
        assert_eq!(r.past, ["b"]);
        h.lost();
        assert!(h
            .replay(&Position::parse(&format!("{now}:c")).unwrap(), 0)
            .is_none());
        assert!(h
            .replay(
                &Position {
                    ts: now - 10,
                    trade_id: None
                },
                0
            )
            .is_none());
    }

    #[test]
    fn a_history_with_gaps_it_cannot_see_replays_nothing() {
        let mut h = History::new(100, 3600, false);
        let now = now_s();
        for id in ["a", "b"] {
            h.record(fill(id, now));
        }
        assert!(h.replay(&at(now, "a"), 0).is_none());
    }

    fn at(ts: i64, id: &str) -> Position {
        Position {
            ts,
            trade_id: Some(id.into()),
        }
    }

    #[test]
    fn after_a_replay_no_live_fill_repeats_what_the_client_holds() {
        let replay = Replay {
            fills: vec![fill("t1", 10), fill("t2", 11)],
            past: vec!["same-second".into(), "t0".into()],
            ..Replay::default()
        };
        let mut r = Replayed::new(&at(9, "t0"), &replay);
        // Recovered fills reaching back before the position (one in its very second), then the
        // replay's own, with a fill REST had not listed among them: only that one is new.
        assert_eq!(r.repeats(&at(8, "old")), Some(true));
        assert_eq!(r.repeats(&at(9, "same-second")), Some(true));
        assert_eq!(r.repeats(&at(9, "t0")), Some(true));
        assert_eq!(r.repeats(&at(10, "t1")), Some(true));
        assert_eq!(r.repeats(&at(11, "unlisted")), Some(false));
        assert_eq!(r.repeats(&at(11, "t2")), Some(true));
        // Newer than anything replayed: the filter is done.
        assert_eq!(r.repeats(&at(12, "t3")), None);
    }
}
