//! Every Redis operation of cluster mode, each one round trip (scripts run atomically).
//!
//! Keys (one cluster per Redis database; pick the database in the URL to run several):
//! `relay:lease` (holder token `"epoch node"`, expiring), `relay:epoch` (fencing counter),
//! `relay:stream` (the events), `relay:seq` (entry counter), `relay:books` (market ->
//! `"seq id snapshot"`), `relay:books_valid` (`"seq id"` the stored books are valid through),
//! `relay:state` (the upstream state), `relay:generation` (a random name for this Redis's data,
//! set by the first load after Redis started empty), `relay:nodes` (live nodes, scored by expiry),
//! `relay:wanted:<node>` (a node's topics), `relay:control` (wake-ups and snapshot requests for
//! the leader).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::streams::StreamReadReply;
use redis::{Client, Script, Value};

use crate::codec::{self, Encoded, Record};
use crate::conn::Conn;
use crate::Error;

const LEASE: &str = "relay:lease";
const EPOCH: &str = "relay:epoch";
const STREAM: &str = "relay:stream";
const SEQ: &str = "relay:seq";
const BOOKS: &str = "relay:books";
const BOOKS_VALID: &str = "relay:books_valid";
const STATE: &str = "relay:state";
const GENERATION: &str = "relay:generation";
const NODES: &str = "relay:nodes";
const WANTED: &str = "relay:wanted:";
const CONTROL: &str = "relay:control";
/// The control stream only wakes the leader; a short tail is plenty.
const CONTROL_MAXLEN: u64 = 1_000;

/// Bounds every command that does not block, so a dead Redis is noticed within it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    append: Script,
    refresh: Script,
    takeover: Script,
    load: Script,
    wanted: Script,
    union: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            acquire: Script::new(include_str!("scripts/acquire.lua")),
            renew: Script::new(include_str!("scripts/renew.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            append: Script::new(include_str!("scripts/append.lua")),
            refresh: Script::new(include_str!("scripts/refresh.lua")),
            takeover: Script::new(include_str!("scripts/takeover.lua")),
            load: Script::new(include_str!("scripts/load.lua")),
            wanted: Script::new(include_str!("scripts/wanted.lua")),
            union: Script::new(include_str!("scripts/union.lua")),
        }
    }
}

/// A lease held: the token the fence compares (`"epoch node"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub epoch: u64,
    pub value: String,
}

impl Token {
    fn parse(value: String) -> Token {
        let epoch = value
            .split(' ')
            .next()
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        Token { epoch, value }
    }

    /// The holder's node id.
    pub fn node(&self) -> &str {
        self.value.split_once(' ').map_or("", |(_, n)| n)
    }
}

/// What an acquisition attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Ours, with a fresh epoch.
    Taken(Token),
    /// Someone else's (or our own earlier token), for `ttl` more.
    Held { holder: Token, ttl: Duration },
}

/// A position in the stream: the entry number and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub id: String,
}

impl Position {
    pub fn start() -> Position {
        Position {
            seq: 0,
            id: "0-0".into(),
        }
    }

    fn parse(text: &str) -> Option<Position> {
        let (seq, id) = text.split_once(' ')?;
        Some(Position {
            seq: seq.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// One stored book snapshot, valid as of `at`.
#[derive(Clone, Debug)]
pub struct StoredBook {
    pub at: Position,
    /// The snapshot `msg` JSON.
    pub body: Vec<u8>,
}

/// What a late joiner starts from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The stream's last entry when loaded.
    pub head: Position,
    /// Every stored book is valid at least through this position (absent before the leader's
    /// first refresh).
    pub valid: Option<Position>,
    /// The upstream's last reported state.
    pub state: Option<upstream::State>,
    pub books: HashMap<String, StoredBook>,
    /// The name of this Redis's data: unchanged while Redis keeps it, new after Redis started
    /// empty (a restart without persistence). A Redis restored from an older snapshot keeps the
    /// old name with older data: cluster mode needs Redis without persistence (README).
    pub generation: String,
    /// The stream's first entry number still stored (0 when empty).
    pub first_seq: u64,
    /// The number of the entry at the id [`Store::load`] was asked about, if the stream holds it.
    pub probe_seq: Option<u64>,
}

impl Loaded {
    /// Where reading must start so that every stored book can be brought forward.
    pub fn start(&self) -> Position {
        match &self.valid {
            Some(valid) => valid.clone(),
            None => self
                .books
                .values()
                .map(|b| b.at.clone())
                .min_by_key(|p| p.seq)
                .unwrap_or_else(|| self.head.clone()),
        }
    }

    /// The position `market`'s stored book stands at (its entries up to here are in it).
    pub fn book_at(&self, market: &str) -> Option<u64> {
        let book = self.books.get(market)?;
        Some(book.at.seq.max(self.valid.as_ref().map_or(0, |v| v.seq)))
    }
}

/// A control message for the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Some node's wanted topics changed.
    Wanted,
    /// A node needs fresh snapshots of these books (it released them and wants them again).
    Snapshot(Vec<String>),
}

/// The connections to Redis. Cheap to clone.
///
/// Three connections: `commands` (multiplexed, short timeouts) for everything that does not
/// block; `stream` and `control` for the blocking reads, each on its own so a block never
/// delays a lease renewal. All reconnect by themselves, also after a reply timed out.
#[derive(Clone)]
pub struct Store {
    commands: Conn,
    stream: Conn,
    control: Conn,
    scripts: std::sync::Arc<Scripts>,
    block: Duration,
}

impl Store {
    /// Opens the connections lazily: a Redis that is down at start is retried on use.
    /// `block` bounds each blocking read.
    pub fn open(url: &str, block: Duration) -> Result<Store, Error> {
        let client = Client::open(url)?;
        let config = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500))
        };
        let blocking = block + RESPONSE_TIMEOUT;
        Ok(Store {
            commands: Conn::new(client.clone(), config(RESPONSE_TIMEOUT))?,
            stream: Conn::new(client.clone(), config(blocking))?,
            control: Conn::new(client, config(blocking))?,
            scripts: std::sync::Arc::new(Scripts::new()),
            block,
        })
    }

    /// One round trip; for the RTT gauge and readiness.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut c = self.commands.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    // --- the lease ---

    /// Takes the lease if it is free (`SET NX PX` and `INCR epoch`, atomically).
    pub async fn acquire(&self, node: &str, lease: Duration) -> Result<Acquire, Error> {
        let mut c = self.commands.clone();
        let (taken, token, ttl): (u8, String, i64) = self
            .scripts
            .acquire
            .key(LEASE)
            .key(EPOCH)
            .arg(node)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        let token = Token::parse(token);
        Ok(if taken == 1 {
            Acquire::Taken(token)
        } else {
            Acquire::Held {
                holder: token,
                ttl: Duration::from_millis(ttl.max(0) as u64),
            }
        })
    }

    /// Extends the lease if `token` still holds it; false if it does not.
    pub async fn renew(&self, token: &Token, lease: Duration) -> Result<bool, Error> {
        let mut c = self.commands.clone();
        let ours: u8 = self
            .scripts
            .renew
            .key(LEASE)
            .arg(&token.value)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(ours == 1)
    }

    /// Gives the lease up if `token` still holds it.
    pub async fn release(&self, token: &Token) -> Result<bool, Error> {
        let mut c = self.commands.clone();
        let ours: u8 = self
            .scripts
            .release
            .key(LEASE)
            .arg(&token.value)
            .invoke_async(&mut c)
            .await?;
        Ok(ours == 1)
    }

    /// The current holder, if any.
    pub async fn holder(&self) -> Result<Option<Token>, Error> {
        let mut c = self.commands.clone();
        let value: Option<String> = redis::cmd("GET").arg(LEASE).query_async(&mut c).await?;
        Ok(value.map(Token::parse))
    }

    // --- the stream ---

    /// Appends `entries` for the holder of `token`; [`Error::Fenced`] if it no longer holds the
    /// lease (nothing is written then). Returns the last entry's position.
    pub async fn append(
        &self,
        token: &Token,
        max_entries: u64,
        entries: &[Encoded],
    ) -> Result<Position, Error> {
        let mut c = self.commands.clone();
        let mut call = self.scripts.append.prepare_invoke();
        call.key(LEASE)
            .key(STREAM)
            .key(SEQ)
            .key(BOOKS)
            .key(STATE)
            .arg(&token.value)
            .arg(max_entries)
            .arg(token.epoch)
            .arg(entries.len());
        for e in entries {
            call.arg(e.op).arg(&e.arg).arg(e.fields.len() * 2);
            for (name, value) in &e.fields {
                call.arg(*name).arg(value);
            }
        }
        let (seq, id): (u64, String) = call.invoke_async(&mut c).await.map_err(fenced)?;
        Ok(Position { seq, id })
    }

    /// Stores `books` (market, snapshot JSON) as valid through `at`, for the holder of `token`.
    pub async fn refresh(
        &self,
        token: &Token,
        at: &Position,
        books: &[(String, Vec<u8>)],
    ) -> Result<(), Error> {
        let mut c = self.commands.clone();
        let mut call = self.scripts.refresh.prepare_invoke();
        call.key(LEASE)
            .key(BOOKS)
            .key(BOOKS_VALID)
            .arg(&token.value)
            .arg(at.seq)
            .arg(&at.id);
        for (market, body) in books {
            call.arg(market).arg(body);
        }
        let _: u8 = call.invoke_async(&mut c).await.map_err(fenced)?;
        Ok(())
    }

    /// A new leader drops the old session's stored books; returns their markets.
    pub async fn take_over(&self, token: &Token) -> Result<Vec<String>, Error> {
        let mut c = self.commands.clone();
        let markets: Vec<String> = self
            .scripts
            .takeover
            .key(LEASE)
            .key(BOOKS)
            .key(BOOKS_VALID)
            .arg(&token.value)
            .invoke_async(&mut c)
            .await
            .map_err(fenced)?;
        Ok(markets)
    }

    /// The stored books, the upstream state and the stream's head, read atomically, with the
    /// number of the entry at `probe` (where a reloading node stood) as of the same instant.
    pub async fn load(&self, probe: Option<&str>) -> Result<Loaded, Error> {
        let mut c = self.commands.clone();
        let fresh = format!("{:016x}", rand::random::<u64>());
        let (head, head_id, valid, state, books, generation, first_seq, probe_seq): LoadReply =
            self.scripts
                .load
                .key(SEQ)
                .key(BOOKS)
                .key(BOOKS_VALID)
                .key(STATE)
                .key(STREAM)
                .key(GENERATION)
                .arg(fresh)
                .arg(probe.unwrap_or_default())
                .invoke_async(&mut c)
                .await?;
        let mut stored = HashMap::new();
        for (market, value) in books {
            let mut parts = value.splitn(3, |b| *b == b' ');
            let (Some(seq), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::Decode(format!("stored book {market}")));
            };
            let at = std::str::from_utf8(seq)
                .ok()
                .zip(std::str::from_utf8(id).ok())
                .and_then(|(s, i)| Position::parse(&format!("{s} {i}")))
                .ok_or_else(|| Error::Decode(format!("stored book {market}")))?;
            stored.insert(
                market,
                StoredBook {
                    at,
                    body: body.to_vec(),
                },
            );
        }
        Ok(Loaded {
            head: Position {
                seq: head,
                id: head_id,
            },
            valid: valid.as_deref().and_then(Position::parse),
            state: state.as_deref().and_then(codec::state_from_str),
            books: stored,
            generation,
            first_seq,
            probe_seq,
        })
    }

    /// Up to `count` entries after `after`, waiting up to the block time for the first.
    pub async fn read(&self, after: &str, count: usize) -> Result<Vec<Record>, Error> {
        let mut c = self.stream.clone();
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(after)
            .query_async(&mut c)
            .await?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                out.push(codec::decode(entry.id, &entry.map)?);
            }
        }
        Ok(out)
    }

    /// The entries their writer received at or after `since_us` (Unix microseconds), oldest
    /// first, at most `max` (the newest).
    pub async fn since(&self, since_us: u64, max: usize) -> Result<Vec<Record>, Error> {
        const PAGE: usize = 1_000;
        let mut c = self.commands.clone();
        let mut out = Vec::new();
        let mut before = "+".to_owned();
        'pages: while out.len() < max {
            let page: Vec<(String, HashMap<String, Value>)> = redis::cmd("XREVRANGE")
                .arg(STREAM)
                .arg(&before)
                .arg("-")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut c)
                .await?;
            let full = page.len() == PAGE;
            for (id, map) in page {
                let record = codec::decode(id, &map)?;
                if record.at_us < since_us || out.len() >= max {
                    break 'pages;
                }
                before = format!("({}", record.id);
                out.push(record);
            }
            if !full {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The last entry number written.
    pub async fn head_seq(&self) -> Result<u64, Error> {
        let mut c = self.commands.clone();
        let head: Option<u64> = redis::cmd("GET").arg(SEQ).query_async(&mut c).await?;
        Ok(head.unwrap_or(0))
    }

    // --- wanted topics and the leader's control stream ---

    /// Replaces `node`'s wanted topics, alive for `ttl` unless published again.
    pub async fn publish_wanted(
        &self,
        node: &str,
        topics: &BTreeSet<String>,
        ttl: Duration,
    ) -> Result<(), Error> {
        let mut c = self.commands.clone();
        let mut call = self.scripts.wanted.prepare_invoke();
        call.key(NODES)
            .key(format!("{WANTED}{node}"))
            .arg(node)
            .arg(now_ms())
            .arg(ttl.as_millis() as u64);
        for t in topics {
            call.arg(t);
        }
        let _: u8 = call.invoke_async(&mut c).await?;
        Ok(())
    }

    /// Every live node's wanted topics, merged.
    pub async fn union(&self) -> Result<BTreeSet<String>, Error> {
        let mut c = self.commands.clone();
        let topics: Vec<String> = self
            .scripts
            .union
            .key(NODES)
            .arg(now_ms())
            .arg(WANTED)
            .invoke_async(&mut c)
            .await?;
        Ok(topics.into_iter().collect())
    }

    /// Tells the leader something (it reads with [`Store::read_control`]).
    pub async fn send_control(&self, control: &Control) -> Result<(), Error> {
        let mut c = self.commands.clone();
        let (kind, arg) = match control {
            Control::Wanted => ("w", String::new()),
            Control::Snapshot(markets) => ("s", markets.join("\n")),
        };
        let _: String = redis::cmd("XADD")
            .arg(CONTROL)
            .arg("MAXLEN")
            .arg("~")
            .arg(CONTROL_MAXLEN)
            .arg("*")
            .arg("k")
            .arg(kind)
            .arg("a")
            .arg(arg)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Control messages after `after` (`$` for only new ones), waiting up to the block time.
    /// Returns them and the id to read after next.
    pub async fn read_control(&self, after: &str) -> Result<(Vec<Control>, String), Error> {
        let mut c = self.control.clone();
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(CONTROL)
            .arg(after)
            .query_async(&mut c)
            .await?;
        let mut next = after.to_owned();
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                let field = |name: &str| -> String {
                    entry
                        .map
                        .get(name)
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .unwrap_or_default()
                };
                out.push(match field("k").as_str() {
                    "s" => Control::Snapshot(
                        field("a")
                            .split('\n')
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    ),
                    _ => Control::Wanted,
                });
                next = entry.id;
            }
        }
        Ok((out, next))
    }

    /// The id of the control stream's last entry (`0-0` if none): read after it for news.
    pub async fn control_head(&self) -> Result<String, Error> {
        let mut c = self.commands.clone();
        let last: Vec<(String, HashMap<String, Value>)> = redis::cmd("XREVRANGE")
            .arg(CONTROL)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(last
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }
}

/// What `load.lua` answers: head seq, head id, valid, state, stored books, generation, first
/// seq, probed seq.
type LoadReply = (
    u64,
    String,
    Option<String>,
    Option<String>,
    Vec<(String, Vec<u8>)>,
    String,
    u64,
    Option<u64>,
);

/// The fence's refusal as its own error.
fn fenced(e: redis::RedisError) -> Error {
    if e.code() == Some("FENCED") {
        Error::Fenced
    } else {
        Error::Redis(e)
    }
}

fn now_ms() -> u64 {
    codec::unix_us() / 1000
}
