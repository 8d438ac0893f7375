//! Cluster mode end to end: three relay processes, a real `redis-server`, the simulator, and a
//! client on every node. The faults: kill -9 the leader, SIGSTOP it past its lease, restart
//! Redis, SIGTERM the leader, cut the leader's link to Redis. Every wait polls with a deadline.

mod common;
#[path = "cluster/harness.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster::testing::RedisServer;
use common::bot::{assert_exactly_once, Bot};
use common::{subscribe, Client};
use harness::{
    every_fill_once_in_order, others, read_fills, Cluster, Node, BOOKS, DEADLINE, LEASE_SECONDS,
    SERIAL,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_the_leader_fails_over_within_the_lease_and_3_s_and_books_stay_true() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1, "one exchange session for the cluster");

    let before = c.snapshot_counts();
    let killed = Instant::now();
    c.nodes[leader].child.kill().unwrap();
    let survivors = others(3, leader);
    let flowing = c.fresh_snapshots(&survivors, &before).await;
    let failover = flowing - killed;
    println!("failover after kill -9: {failover:?} (lease {LEASE_SECONDS} s)");
    assert!(
        failover <= Duration::from_secs_f64(LEASE_SECONDS + 3.0),
        "data flowing again after {failover:?}"
    );
    let new_leader = c.leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    c.converge(&survivors).await;
    assert_eq!(c.sessions(), 1);
    assert_eq!(
        c.max_sessions.load(Ordering::Relaxed),
        1,
        "the simulator saw two sessions at once"
    );
}

/// A private subscriber on a surviving node keeps every fill through a failover: the new leader
/// backfills, over REST, what the account did between the old leader's last entry and its own
/// first (fills made in that gap by a burst), leaving out those already relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_made_during_a_failover_reach_private_subscribers_once_in_order() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let mut private = Client::connect(&c.nodes[node].url).await;
    private
        .send(serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    let mut fills: Vec<String> = Vec::new();
    let read = read_fills;
    read(&mut private, &mut fills, 3).await;
    c.nodes[leader].child.kill().unwrap();
    c.sim.fault(exchange_sim::Fault::Burst { count: 2000 });
    let new_leader = c.leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    let have = fills.len();
    read(&mut private, &mut fills, have + 3).await;
    every_fill_once_in_order(&c.sim, &mut private, &mut fills).await;
}

/// A follower cut off from Redis for longer than the leader's book refresh (1 s) finds, when
/// the link heals, stored books that stand past its place in the stream. It must read on from
/// its place, not from the books': the fills in between reach its private subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_redis_outage_reads_on_from_its_place_and_misses_no_fill() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_linked().await;
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let mut private = Client::connect(&c.nodes[node].url).await;
    private
        .send(serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    let mut fills: Vec<String> = Vec::new();
    read_fills(&mut private, &mut fills, 3).await;
    c.links[node].cut();
    c.await_redis_unavailable(node).await;
    // Two refreshes of the stored books meanwhile, and fills among the entries they pass.
    c.sim.fault(exchange_sim::Fault::Burst { count: 300 });
    c.read_for(Duration::from_millis(2500)).await;
    c.links[node].heal();
    common::await_ready(c.nodes[node].addr, 200).await;
    let have = fills.len();
    read_fills(&mut private, &mut fills, have + 3).await;
    every_fill_once_in_order(&c.sim, &mut private, &mut fills).await;
}

/// Resume works on any node: a bot that leaves one node, misses fills and resumes on another
/// gets exactly the fills it missed. These nodes hold private channels only while a client
/// wants them (`warm_private_channels = false`), so nobody held them meanwhile and the replay
/// comes from the exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_resumes_on_another_node_gets_exactly_the_fills_it_missed() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let [a, b] = others(3, leader)[..] else {
        unreachable!("three nodes")
    };
    let mut first = Bot::connect(&c.nodes[a].url, None).await;
    first.until("live fills", |b| b.fills.len() >= 3).await;
    let position = first.last_position();
    first.client.ws.close(None).await.unwrap();
    c.sim.fault(exchange_sim::Fault::Burst { count: 2000 });
    let mut second = Bot::connect(&c.nodes[b].url, Some(&position)).await;
    let replayed = second.resumed("exchange").await;
    assert!(replayed > 0, "the burst's fills are replayed");
    second.live_after(replayed).await;
    c.sim.pause();
    assert_exactly_once(&c.sim, &first, &mut second).await;
    c.sim.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_finds_itself_fenced_writes_nothing_and_closes_its_session()
{
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let old_epoch = c.nodes[leader].status().await["cluster"]["epoch"]
        .as_u64()
        .unwrap();
    let before = c.snapshot_counts();
    c.nodes[leader].signal("STOP");
    let survivors = others(3, leader);
    c.fresh_snapshots(&survivors, &before).await;
    let new_leader = c.leader(&[leader]).await;
    // The paused process still holds its TCP session: the documented overlap.
    assert_eq!(c.sessions(), 2);

    c.nodes[leader].signal("CONT");
    let resumed = Instant::now();
    let deadline = resumed + DEADLINE;
    while c.sessions() != 1 {
        assert!(
            Instant::now() < deadline,
            "the fenced leader kept its session"
        );
        c.read_for(Duration::from_millis(10)).await;
    }
    println!(
        "fenced leader closed its session {:?} after SIGCONT",
        resumed.elapsed()
    );
    assert!(resumed.elapsed() < Duration::from_secs(3));
    let status = c.nodes[leader].status().await;
    assert_eq!(status["cluster"]["role"], "follower", "{status}");
    assert_eq!(c.leader(&[]).await, new_leader);

    // Nothing of the old epoch after the new one's first entry.
    let store = cluster::Store::open(&c.redis.url(), Duration::from_millis(100)).unwrap();
    let mut epochs = Vec::new();
    let mut after = "0-0".to_owned();
    loop {
        let batch = store.read(&after, 1000).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.id.clone();
        epochs.extend(batch.iter().map(|r| r.epoch));
    }
    let first_new = epochs
        .iter()
        .position(|&e| e > old_epoch)
        .expect("the new leader wrote");
    assert!(
        epochs[first_new..].iter().all(|&e| e > old_epoch),
        "the fenced leader wrote after its successor"
    );
    c.converge(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_a_redis_outage_and_recovers_by_itself_when_redis_returns() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    c.leader(&[]).await;
    c.redis.kill();
    for i in 0..3 {
        c.await_redis_unavailable(i).await;
    }
    let before = c.snapshot_counts();
    c.redis = RedisServer::start_on(c.redis.port);
    c.fresh_snapshots(&[0, 1, 2], &before).await;
    for node in &c.nodes {
        common::await_ready(node.addr, 200).await;
    }
    c.leader(&[]).await;
    c.converge(&[0, 1, 2]).await;
    for (i, client) in c.clients.iter().enumerate() {
        assert!(client.ended.is_none(), "client {i} lost its connection");
    }
}

/// A successor that started after fills the stream already carried (a node restarted a moment
/// ago: its history is younger than the backfill's window) must not publish them again: the
/// backfill leaves out what the stream holds, not only what the successor itself relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_younger_than_the_backfill_window_publishes_no_fill_twice() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let [node, young] = others(3, leader)[..] else {
        unreachable!()
    };
    let mut private = Client::connect(&c.nodes[node].url).await;
    private
        .send(serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}}))
        .await;
    let mut fills: Vec<String> = Vec::new();
    read_fills(&mut private, &mut fills, 3).await;
    // Fills the leader relays, then a fresh node in the third place, then the leader goes while
    // the subscriber's node is frozen: the fresh node, with none of those fills in its history,
    // is the only one left to take over, within the backfill's window of them.
    c.sim.fault(exchange_sim::Fault::Burst { count: 500 });
    let have = fills.len();
    read_fills(&mut private, &mut fills, have + 5).await;
    c.nodes[young].child.kill().unwrap();
    c.nodes[young] = Node::spawn("n4", &c.redis.url(), &c.sim.ws_url(), &c.sim.rest_url());
    c.nodes[node].signal("STOP");
    c.nodes[leader].child.kill().unwrap();
    let new_leader = c.leader(&[leader, node]).await;
    assert_eq!(new_leader, young);
    c.nodes[node].signal("CONT");
    let have = fills.len();
    read_fills(&mut private, &mut fills, have + 3).await;
    every_fill_once_in_order(&c.sim, &mut private, &mut fills).await;
}

/// A successor backfills from the exchange's history what its predecessor may have missed,
/// once its session is subscribed. That history must be read after the successor's private
/// channels are live, or the fills made in between reach no one: the simulator sees the fill
/// subscription before the first history request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_reads_the_exchange_history_only_once_its_private_channels_are_live() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let sub = serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}});
    // The race is a few milliseconds wide: three failovers.
    for round in 1..=3 {
        let leader = c.leader(&[]).await;
        let node = others(3, leader)[0];
        let mut private = Client::connect(&c.nodes[node].url).await;
        private.send(sub.clone()).await;
        let mut fills: Vec<String> = Vec::new();
        read_fills(&mut private, &mut fills, 1).await;
        let stats = c.sim.stats();
        let last = stats.per_connection.iter().map(|s| s.id).max();
        let requests = stats.rest_requests;
        c.nodes[leader].child.kill().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "the successor never backfilled");
            let stats = c.sim.stats();
            if stats.rest_requests > requests {
                let fill_live = stats
                    .per_connection
                    .iter()
                    .filter(|s| Some(s.id) > last)
                    .any(|s| {
                        s.sids
                            .iter()
                            .any(|sid| sid.channel == protocol::Channel::Fill)
                    });
                assert!(
                    fill_live,
                    "failover {round}: the successor read the exchange's history before its fill subscription was live"
                );
                break;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        let id = format!("{}-{round}", c.nodes[leader].id);
        c.nodes[leader] = Node::spawn(&id, &c.redis.url(), &c.sim.ws_url(), &c.sim.rest_url());
    }
}

/// Redis restarted empty has forgotten the lease and its epoch: a follower can take a fresh
/// lease while the old leader, not yet told, still holds its session. The new leader must not
/// connect before the old lease has run out on the old leader's own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_exchange_never_sees_two_sessions() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    for round in 1..=4 {
        c.leader(&[]).await;
        let before = c.snapshot_counts();
        c.redis.restart();
        c.fresh_snapshots(&[0, 1, 2], &before).await;
        c.leader(&[]).await;
        assert_eq!(
            c.max_sessions.load(Ordering::Relaxed),
            1,
            "two sessions at once after Redis restart {round}"
        );
    }
    c.converge(&[0, 1, 2]).await;
}

/// After Redis restarted empty, nobody led for a while (the old leader's lease running out on
/// its clock, then the new one's wait): the first leader backfills the fills of that gap before
/// its live ones, and a later successor publishes none of them again. The new stream holds each
/// fill at most once, in exchange order, and with the fills relayed before the restart, every
/// fill the exchange made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_stream_carries_each_fill_once_in_order() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let sub = serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}});
    let mut private = Client::connect(&c.nodes[node].url).await;
    private.send(sub.clone()).await;
    let mut before: Vec<String> = Vec::new();
    read_fills(&mut private, &mut before, 3).await;

    let snapshots = c.snapshot_counts();
    c.redis.restart();
    c.sim.fault(exchange_sim::Fault::Burst { count: 300 });
    c.fresh_snapshots(&[0, 1, 2], &snapshots).await;
    // What the node delivered before it noticed: the subscriber is then told of the loss.
    let deadline = Instant::now() + DEADLINE;
    while private.ended.is_none() {
        assert!(Instant::now() < deadline, "the loss was never announced");
        if let Some(f) = private.step(Duration::from_millis(50)).await {
            if f["type"] == "fill" {
                before.push(f["msg"]["trade_id"].as_str().unwrap().to_owned());
            }
        }
    }
    // Someone still wants fills, and the leader that took over after the restart goes too.
    let mut again = Client::connect(&c.nodes[node].url).await;
    again.send(sub).await;
    let mut after: Vec<String> = Vec::new();
    read_fills(&mut again, &mut after, 3).await;
    let first = c.leader(&[]).await;
    c.nodes[first].child.kill().unwrap();
    c.leader(&[first]).await;
    let have = after.len();
    read_fills(&mut again, &mut after, have + 3).await;

    c.sim.pause();
    let truth = common::admin_trade_ids(&c.sim).await;
    let at = |id: &String| {
        truth
            .iter()
            .position(|t| t == id)
            .expect("a fill the exchange made")
    };
    let store = cluster::Store::open(&c.redis.url(), Duration::from_millis(100)).unwrap();
    let mut stream: Vec<String> = Vec::new();
    let mut from = "0-0".to_owned();
    loop {
        let batch = store.read(&from, 1000).await.unwrap();
        let Some(last) = batch.last() else { break };
        from = last.id.clone();
        stream.extend(batch.into_iter().filter_map(|r| match r.event {
            upstream::Event::Data(d) if d.channel == protocol::Channel::Fill => {
                let msg: serde_json::Value = serde_json::from_slice(&d.body).ok()?;
                Some(msg["trade_id"].as_str()?.to_owned())
            }
            _ => None,
        }));
    }
    let order: Vec<usize> = stream.iter().map(at).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "the new stream repeats fills or publishes them out of exchange order: {order:?}"
    );
    let start = at(&before[0]);
    let held: std::collections::HashSet<&String> = before.iter().chain(&stream).collect();
    let missing: Vec<usize> = (start..truth.len())
        .filter(|&i| !held.contains(&truth[i]))
        .collect();
    assert!(
        missing.is_empty(),
        "fills in neither: {missing:?} of {}",
        truth.len()
    );
    c.sim.resume();
}

/// After a Redis restart a node stands at the start of the new, empty stream. Losing Redis again
/// before that stream has an entry loses nothing: the private subscriber that came back after
/// the restart's loss notice is not told of a loss a second time, and gets the fills that
/// follow (RELIABILITY finding 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_before_the_new_stream_has_an_entry_announces_no_second_loss() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_linked().await;
    let (node, mut private) = private_at_the_start_of_an_empty_stream(&mut c).await;
    cut_off_and_back(&mut c, node, "the reload with a subscriber").await;
    c.redis.command(&["DEL", "relay:lease"]).await.unwrap();
    // Anything the node announced on its way back comes before these.
    read_fills(&mut private, &mut Vec::new(), 3).await;
}

/// The other side of the same rule: a node at the start of a stream that Redis then lost (a
/// second restart) cannot tell what the lost stream carried, so it announces the loss even
/// though the new stream is empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_the_start_of_a_stream_redis_lost_again_announces_the_loss() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_linked().await;
    let (_, mut private) = private_at_the_start_of_an_empty_stream(&mut c).await;
    c.redis.restart();
    hold_the_lease_outside(&c).await;
    private.told_of_a_private_loss().await;
}

/// Restarts Redis into a stream nobody writes to, on a follower that had a private subscriber;
/// returns the follower and a private subscriber that came back after the restart's loss
/// notice, the follower standing at the new stream's start.
async fn private_at_the_start_of_an_empty_stream(c: &mut Cluster) -> (usize, Client) {
    let leader = c.leader(&[]).await;
    let node = others(3, leader)[0];
    let sub = serde_json::json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}});
    let mut private = Client::connect(&c.nodes[node].url).await;
    private.send(sub.clone()).await;
    read_fills(&mut private, &mut Vec::new(), 1).await;

    c.redis.restart();
    hold_the_lease_outside(c).await;
    private.told_of_a_private_loss().await;
    // The node may have loaded before the state was stored: once more, to be sure it has it.
    cut_off_and_back(c, node, "the reload with the state stored").await;
    let mut again = Client::connect(&c.nodes[node].url).await;
    again.send(sub).await;
    again.replies_until(1).await;
    (node, again)
}

/// A leader that never writes, so the new stream stays empty, and its upstream state, so that
/// private subscriptions are answered meanwhile.
async fn hold_the_lease_outside(c: &Cluster) {
    for command in [
        // Long, not endless: a lease without expiry has the nodes poll for it every 5 ms.
        &["SET", "relay:lease", "1 outsider", "PX", "600000"][..],
        &["SET", "relay:state", "subscribed"],
    ] {
        c.redis.command(command).await.unwrap();
    }
}

/// Cuts `node` off from Redis until it notices, then lets it back and waits until it has loaded
/// again, at the start of the empty stream.
async fn cut_off_and_back(c: &mut Cluster, node: usize, what: &str) {
    let at_start = |s: &serde_json::Value| {
        let cluster = &s["cluster"];
        cluster["redis"] == "ok" && cluster["applied"] == 0 && cluster["leader"] == "outsider"
    };
    common::await_status(c.nodes[node].addr, "the new stream's start", at_start).await;
    c.links[node].cut();
    c.await_redis_unavailable(node).await;
    c.links[node].heal();
    common::await_status(c.nodes[node].addr, what, at_start).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_the_session_off_within_2_s() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let leader = c.leader(&[]).await;
    let before = c.snapshot_counts();
    let stopped = Instant::now();
    c.nodes[leader].signal("TERM");
    let survivors = others(3, leader);
    let flowing = c.fresh_snapshots(&survivors, &before).await;
    let handoff = flowing - stopped;
    println!("handoff after SIGTERM: {handoff:?}");
    assert!(
        handoff <= Duration::from_secs(2),
        "handoff took {handoff:?}"
    );
    assert_eq!(
        c.clients[leader].ended().await,
        common::Ended::Close(1012, "service restart".into())
    );
    let deadline = Instant::now() + DEADLINE;
    while !c.nodes[leader].exited() {
        assert!(Instant::now() < deadline, "the stopped node never exited");
        c.read_for(Duration::from_millis(20)).await;
    }
    c.leader(&[leader]).await;
    c.converge(&survivors).await;
    assert_eq!(c.sessions(), 1);

    // A late joiner in its place starts from the books stored in Redis and the stream after
    // them: its client's books come out true too.
    c.read_for(Duration::from_millis(1500)).await;
    c.nodes[leader] = Node::spawn("n4", &c.redis.url(), &c.sim.ws_url(), &c.sim.rest_url());
    let mut late = Client::connect(&c.nodes[leader].url).await;
    late.send(subscribe(1, &["orderbook_delta"], &c.markets))
        .await;
    late.until("every book's snapshot", |l| l.books.len() == BOOKS)
        .await;
    c.clients[leader] = late;
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1, "the late joiner did not open a session");
}

/// A leader cut off from Redis while it still reaches the exchange closes its session on its
/// own clock before anyone can take the lease: the exchange never sees two sessions. Its
/// successor serves the other nodes; once the link heals, the cut node rejoins by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_redis_closes_its_session_before_its_successor_opens_one() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_linked().await;
    let leader = c.leader(&[]).await;
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1);

    let before = c.snapshot_counts();
    let cut = Instant::now();
    c.links[leader].cut();
    let survivors = others(3, leader);
    let flowing = c.fresh_snapshots(&survivors, &before).await;
    println!("failover after the partition: {:?}", flowing - cut);
    assert!(flowing - cut <= Duration::from_secs_f64(LEASE_SECONDS + 3.0));
    let new_leader = c.leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    c.await_redis_unavailable(leader).await;
    assert_eq!(c.sessions(), 1);
    assert_eq!(
        c.max_sessions.load(Ordering::Relaxed),
        1,
        "the simulator saw the cut leader's session beside its successor's"
    );

    let before = c.snapshot_counts();
    c.links[leader].heal();
    c.fresh_snapshots(&[leader], &before).await;
    common::await_ready(c.nodes[leader].addr, 200).await;
    assert_eq!(c.leader(&[]).await, new_leader);
    c.converge(&[0, 1, 2]).await;
    assert_eq!(c.sessions(), 1);
    assert_eq!(c.max_sessions.load(Ordering::Relaxed), 1);
    for (i, client) in c.clients.iter().enumerate() {
        assert!(client.ended.is_none(), "client {i} lost its connection");
    }
}
