//! The Redis side of cluster mode against a real `redis-server` on a random port.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use cluster::codec::{encode, unix_us};
use cluster::testing::RedisServer;
use cluster::{Acquire, Control, Error, Store, Token};
use protocol::{Channel, MessageType};
use tokio::time::Instant;
use upstream::{BookUpdate, Data, Event, State};

const BLOCK: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(10);
const MAXLEN: u64 = 10_000;

fn store(redis: &RedisServer) -> Store {
    Store::open(&redis.url(), BLOCK).unwrap()
}

async fn take(store: &Store, node: &str, lease: Duration) -> Token {
    match store.acquire(node, lease).await.unwrap() {
        Acquire::Taken(token) => token,
        held => panic!("{node} could not take the lease: {held:?}"),
    }
}

fn data(kind: MessageType, market: &str, body: &str) -> Event {
    let book = match kind {
        MessageType::OrderbookSnapshot => {
            Some(BookUpdate::Snapshot(serde_json::from_str(body).unwrap()))
        }
        MessageType::OrderbookDelta => Some(BookUpdate::Delta(serde_json::from_str(body).unwrap())),
        _ => None,
    };
    let channel = match kind {
        MessageType::Trade => Channel::Trade,
        MessageType::Fill => Channel::Fill,
        _ => Channel::OrderbookDelta,
    };
    Event::Data(Data {
        channel,
        kind,
        market: Some(market.into()),
        seq: Some(1),
        body: Bytes::from(body.to_owned()),
        book,
        received_at: std::time::Instant::now(),
    })
}

fn snapshot(market: &str, yes: u32) -> Event {
    data(
        MessageType::OrderbookSnapshot,
        market,
        &format!(r#"{{"market_ticker":"{market}","yes":[[8,{yes}]],"no":[[54,20]]}}"#),
    )
}

fn delta(market: &str) -> Event {
    data(
        MessageType::OrderbookDelta,
        market,
        &format!(r#"{{"market_ticker":"{market}","price":8,"delta":-1,"side":"yes"}}"#),
    )
}

async fn append(
    store: &Store,
    token: &Token,
    events: &[Event],
) -> Result<cluster::Position, Error> {
    let encoded: Vec<_> = events.iter().map(|e| encode(e, unix_us())).collect();
    store.append(token, MAXLEN, &encoded).await
}

/// Everything in the stream, in order.
async fn read_all(store: &Store) -> Vec<cluster::Record> {
    let mut out = Vec::new();
    let mut after = "0-0".to_owned();
    loop {
        let batch = store.read(&after, 100).await.unwrap();
        let Some(last) = batch.last() else { return out };
        after = last.id.clone();
        out.extend(batch);
    }
}

#[tokio::test]
async fn the_lease_is_exclusive_renewable_releasable_and_each_holder_gets_a_new_epoch() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let lease = Duration::from_secs(30);
    let a = take(&s, "a", lease).await;
    assert_eq!((a.epoch, a.node()), (1, "a"));
    match s.acquire("b", lease).await.unwrap() {
        Acquire::Held { holder, ttl } => {
            assert_eq!(holder, a);
            assert!(ttl > Duration::from_secs(25) && ttl <= lease, "{ttl:?}");
        }
        taken => panic!("b took a held lease: {taken:?}"),
    }
    assert!(s.renew(&a, lease).await.unwrap());
    let impostor = Token {
        epoch: 1,
        value: "1 b".into(),
    };
    assert!(!s.renew(&impostor, lease).await.unwrap());
    assert!(
        !s.release(&impostor).await.unwrap(),
        "only the holder releases"
    );
    assert_eq!(s.holder().await.unwrap(), Some(a.clone()));
    assert!(s.release(&a).await.unwrap());
    assert_eq!(s.holder().await.unwrap(), None);
    let b = take(&s, "b", lease).await;
    assert_eq!((b.epoch, b.node()), (2, "b"));
    assert!(
        !s.renew(&a, lease).await.unwrap(),
        "a released: its token is dead"
    );
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_the_next_holder_fences_the_old_one_off() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let a = take(&s, "a", Duration::from_millis(300)).await;
    append(&s, &a, &[Event::State(State::Subscribed)])
        .await
        .unwrap();
    // Poll until the lease lapses and b gets it.
    let deadline = Instant::now() + DEADLINE;
    let b = loop {
        match s.acquire("b", Duration::from_secs(30)).await.unwrap() {
            Acquire::Taken(token) => break token,
            Acquire::Held { .. } => {
                assert!(Instant::now() < deadline, "the lease never lapsed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(b.epoch, 2);
    // a wakes up believing it leads: every write is refused, nothing lands.
    assert!(matches!(
        append(&s, &a, &[snapshot("M", 1), Event::State(State::Connecting)]).await,
        Err(Error::Fenced)
    ));
    assert!(matches!(
        s.refresh(
            &a,
            &cluster::Position::start(),
            &[("M".into(), b"{}".to_vec())]
        )
        .await,
        Err(Error::Fenced)
    ));
    assert!(!s.renew(&a, Duration::from_secs(30)).await.unwrap());
    append(&s, &b, &[Event::State(State::Connected)])
        .await
        .unwrap();
    let entries = read_all(&s).await;
    let epochs: Vec<(u64, u64)> = entries.iter().map(|r| (r.seq, r.epoch)).collect();
    assert_eq!(
        epochs,
        vec![(1, 1), (2, 2)],
        "only the holders' entries, each with its epoch"
    );
    assert!(
        s.load(None).await.unwrap().books.is_empty(),
        "a's snapshot was not stored"
    );
}

#[tokio::test]
async fn a_lapsed_lease_nobody_took_still_fences_its_old_holder() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let a = take(&s, "a", Duration::from_millis(200)).await;
    let deadline = Instant::now() + DEADLINE;
    while s.holder().await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lease never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        append(&s, &a, &[Event::State(State::Subscribed)]).await,
        Err(Error::Fenced)
    ));
    assert!(read_all(&s).await.is_empty());
}

#[tokio::test]
async fn events_come_back_from_the_stream_as_written_numbered_and_tagged() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let a = take(&s, "a", Duration::from_secs(30)).await;
    let events = vec![
        Event::State(State::Subscribed),
        snapshot("M", 300),
        delta("M"),
        data(
            MessageType::Trade,
            "M",
            r#"{"trade_id":"t1","yes_price":8}"#,
        ),
        data(MessageType::Fill, "M", r#"{"trade_id":"f1"}"#),
        Event::BookStale {
            markets: vec!["M".into(), "N".into()],
        },
        Event::BookReset { market: "M".into() },
        Event::MessagesLost {
            channel: Channel::Fill,
        },
    ];
    let head = append(&s, &a, &events).await.unwrap();
    assert_eq!(head.seq, events.len() as u64);
    let read = read_all(&s).await;
    assert_eq!(read.len(), events.len());
    assert_eq!(read.last().unwrap().id, head.id);
    for (i, (record, want)) in read.iter().zip(&events).enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(record.epoch, 1);
        match (&record.event, want) {
            (Event::Data(got), Event::Data(want)) => {
                assert_eq!(got.channel, want.channel);
                assert_eq!(got.kind, want.kind);
                assert_eq!(got.market, want.market);
                assert_eq!(got.seq, want.seq);
                assert_eq!(got.body, want.body, "the body byte for byte");
                assert_eq!(got.book, want.book);
            }
            (got, want) => assert_eq!(format!("{got:?}"), format!("{want:?}")),
        }
    }
    // Reading past the head waits (up to the block time) and finds nothing.
    assert!(s.read(&head.id, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_late_joiner_loads_each_book_with_the_position_it_stands_at() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let a = take(&s, "a", Duration::from_secs(30)).await;
    // M: snapshot at 2, deltas after. N: snapshot at 4, then stale at 5. Q: snapshot at 6.
    append(
        &s,
        &a,
        &[
            Event::State(State::Subscribed),
            snapshot("M", 300),
            delta("M"),
        ],
    )
    .await
    .unwrap();
    append(
        &s,
        &a,
        &[
            snapshot("N", 5),
            Event::BookStale {
                markets: vec!["N".into()],
            },
        ],
    )
    .await
    .unwrap();
    let head = append(&s, &a, &[snapshot("Q", 7)]).await.unwrap();
    let loaded = s.load(None).await.unwrap();
    assert_eq!(loaded.head, head);
    assert_eq!(loaded.state, Some(State::Subscribed));
    let markets: BTreeSet<&str> = loaded.books.keys().map(String::as_str).collect();
    assert_eq!(
        markets,
        BTreeSet::from(["M", "Q"]),
        "N went stale: not served to joiners"
    );
    assert_eq!(loaded.book_at("M"), Some(2));
    assert_eq!(loaded.book_at("Q"), Some(6));
    assert_eq!(
        loaded.start().seq,
        2,
        "read from the oldest book's position"
    );
    let body: serde_json::Value = serde_json::from_slice(&loaded.books["M"].body).unwrap();
    assert_eq!(body["yes"][0][1], 300);

    // The leader's refresh brings M forward: every book is valid through the head.
    let book = br#"{"market_ticker":"M","yes":[[8,299]],"no":[[54,20]]}"#.to_vec();
    s.refresh(&a, &head, &[("M".into(), book)]).await.unwrap();
    let loaded = s.load(None).await.unwrap();
    assert_eq!(loaded.start(), head);
    assert_eq!(loaded.book_at("M"), Some(6));
    assert_eq!(loaded.book_at("Q"), Some(6));
    let body: serde_json::Value = serde_json::from_slice(&loaded.books["M"].body).unwrap();
    assert_eq!(body["yes"][0][1], 299);

    // A new leader drops the old session's books and learns which they were.
    s.release(&a).await.unwrap();
    let b = take(&s, "b", Duration::from_secs(30)).await;
    let mut dropped = s.take_over(&b).await.unwrap();
    dropped.sort();
    assert_eq!(dropped, vec!["M", "Q"]);
    let loaded = s.load(None).await.unwrap();
    assert!(loaded.books.is_empty() && loaded.valid.is_none());
    assert_eq!(loaded.start(), head, "nothing stored: read from the head");
}

#[tokio::test]
async fn the_stream_is_trimmed_near_its_bound_and_the_first_seq_shows_it() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let a = take(&s, "a", Duration::from_secs(30)).await;
    let batch: Vec<_> = (0..500).map(|_| encode(&delta("M"), unix_us())).collect();
    for _ in 0..10 {
        s.append(&a, 1_000, &batch).await.unwrap();
    }
    assert_eq!(s.head_seq().await.unwrap(), 5_000);
    let first = s.load(None).await.unwrap().first_seq;
    assert!(
        first > 3_000,
        "trimmed to about 1000 entries, first is {first}"
    );
}

/// What a reloading node decides by: the generation (the same while Redis keeps its data, a new
/// one after a restart), the stream's first entry, and whether the entry it stood at is still
/// there, all from one load.
#[tokio::test]
async fn a_load_tells_whether_redis_kept_its_data_and_the_entry_a_node_stood_at() {
    let mut redis = RedisServer::start();
    let s = store(&redis);
    let empty = s.load(None).await.unwrap();
    assert_eq!(
        (empty.first_seq, empty.probe_seq),
        (0, None),
        "an empty stream"
    );
    let a = take(&s, "a", Duration::from_secs(30)).await;
    let at = append(&s, &a, &[Event::State(State::Subscribed), delta("M")])
        .await
        .unwrap();
    let filled = s.load(Some(&at.id)).await.unwrap();
    assert_eq!(filled.generation, empty.generation);
    assert_eq!((filled.first_seq, filled.probe_seq), (1, Some(2)));
    assert_eq!(s.load(Some("1-0")).await.unwrap().probe_seq, None);
    // An id Redis cannot parse finds nothing; it does not fail the load.
    assert_eq!(s.load(Some("not-an-id")).await.unwrap().probe_seq, None);

    redis.restart();
    let deadline = Instant::now() + DEADLINE;
    let restarted = loop {
        // The connection notices the restart on its first use.
        match s.load(Some(&at.id)).await {
            Ok(loaded) => break loaded,
            Err(e) => assert!(Instant::now() < deadline, "no load after the restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(restarted.generation, empty.generation);
    assert_eq!((restarted.first_seq, restarted.probe_seq), (0, None));
    assert_eq!(s.load(None).await.unwrap().generation, restarted.generation);
}

/// A batch Redis would refuse is refused whole, and an entry not added takes no number: the next
/// entry written gets the number the refused one would have had, so readers never find a hole
/// in the numbering or an entry twice.
#[tokio::test]
async fn an_append_redis_refuses_writes_nothing_and_leaves_no_hole_in_the_numbering() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let a = take(&s, "a", Duration::from_secs(30)).await;
    append(&s, &a, &[delta("M")]).await.unwrap();
    append(&s, &a, &[snapshot("M", 5)]).await.unwrap();
    // Each key in turn holds a string instead; what it held is put back after.
    for key in ["relay:stream", "relay:books"] {
        redis.command(&["RENAME", key, "kept"]).await.unwrap();
        redis.command(&["SET", key, "x"]).await.unwrap();
        let refused = append(&s, &a, &[delta("M"), snapshot("M", 6)]).await;
        assert!(
            matches!(refused, Err(Error::Redis(_))),
            "{key}: {refused:?}"
        );
        assert_eq!(s.head_seq().await.unwrap(), 2, "{key}");
        redis.command(&["RENAME", "kept", key]).await.unwrap();
    }
    let at = append(&s, &a, &[delta("M")]).await.unwrap();
    assert_eq!(at.seq, 3);
    let seqs: Vec<u64> = read_all(&s).await.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The stored book is still the snapshot of entry 2.
    assert_eq!(s.load(None).await.unwrap().books["M"].at.seq, 2);
}

#[tokio::test]
async fn the_union_holds_every_live_nodes_topics_and_forgets_a_silent_node() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let set = |items: &[&str]| items.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>();
    s.publish_wanted(
        "a",
        &set(&["trade", "orderbook_delta:M"]),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    s.publish_wanted(
        "b",
        &set(&["orderbook_delta:M", "ticker:N"]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        s.union().await.unwrap(),
        set(&["trade", "orderbook_delta:M", "ticker:N"])
    );
    // b replaces its set wholesale.
    s.publish_wanted("b", &set(&["ticker:N"]), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        s.union().await.unwrap(),
        set(&["trade", "orderbook_delta:M", "ticker:N"])
    );
    // a stops refreshing: after its expiry only b's topics remain.
    let deadline = Instant::now() + DEADLINE;
    while s.union().await.unwrap() != set(&["ticker:N"]) {
        assert!(Instant::now() < deadline, "a's topics never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn control_messages_reach_the_leader_in_order() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let head = s.control_head().await.unwrap();
    assert_eq!(head, "0-0");
    s.send_control(&Control::Wanted).await.unwrap();
    s.send_control(&Control::Snapshot(vec!["M".into(), "N".into()]))
        .await
        .unwrap();
    let (got, next) = s.read_control(&head).await.unwrap();
    assert_eq!(
        got,
        vec![
            Control::Wanted,
            Control::Snapshot(vec!["M".into(), "N".into()])
        ]
    );
    let (none, same) = s.read_control(&next).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(same, next);
}

#[tokio::test]
async fn a_store_opened_while_redis_is_down_fails_fast_and_recovers_when_it_returns() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    redis.kill();
    let s = Store::open(&format!("redis://127.0.0.1:{port}"), BLOCK).unwrap();
    let started = Instant::now();
    assert!(matches!(s.ping().await, Err(Error::Redis(_))));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + DEADLINE;
    while s.ping().await.is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    take(&s, "a", Duration::from_secs(1)).await;
}
