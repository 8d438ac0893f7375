//! Per-connection memory: an idle client costs its socket buffers, its subscriber, and one task
//! whose allocation is the size of the session future. The future's size and the whole heap an
//! idle client and a subscribed client hold are guarded here (in the test profile), so a change
//! that keeps a large state or buffer per connection fails a test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::*;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The session future's size today is 2,984 bytes in the test profile (it was 3,752 before the
/// handlers were boxed); 10,000 idle clients pay it 10,000 times.
const MAX_SESSION_FUTURE_BYTES: usize = 3_200;

/// The heap counter is process-wide: the tests of this file take turns, so one's relay never
/// allocates while the other measures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn an_idle_session_task_stays_small() {
    let _serial = SERIAL.lock().await;
    let sim = sim(exchange_sim::SimConfig::default()).await;
    let relay = relay(&sim, |_| {}).await;
    let app = relay.app().clone();
    let (_client, server) = tokio::io::duplex(64);
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        server,
        Role::Server,
        Some(app.ws_config()),
    )
    .await;
    let options = session_options(&app);
    let session = relay::session::run(app.clone(), ws, options);
    let size = std::mem::size_of_val(&session);
    assert!(
        size <= MAX_SESSION_FUTURE_BYTES,
        "a session task is {size} bytes, over {MAX_SESSION_FUTURE_BYTES}: box the new state"
    );
    drop(session);
    relay.shutdown().await;
    sim.shutdown().await;
}

/// Counts the bytes the process holds on the heap, for the test below.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        q
    }
}

/// What an idle client subscribed to one book may cost the relay's heap, in bytes: it is about
/// 4,300 here (test profile). It was 8,577 before the session task was split from the upgrade,
/// the subscription table became a vector and the write buffers were released between batches,
/// and 10,619 while the session's task was sized for the resume's REST fetch.
const MAX_HEAP_PER_IDLE_CLIENT: isize = 5_000;

/// The heap grown since `before`, per client. Each client has its snapshots; its session
/// finishes the flush and releases its buffers right after. Polls until the figure has settled
/// (the same in two readings 50 ms apart), or gives the last one.
async fn settled_heap_per_client(before: isize, clients: usize) -> isize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = isize::MAX;
    loop {
        let per_client = (LIVE_BYTES.load(Ordering::Relaxed) - before) / clients as isize;
        if per_client == last || tokio::time::Instant::now() > deadline {
            return per_client;
        }
        last = per_client;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that holds no heap of its own once connected: a blocking socket that upgrades,
/// subscribes to one book and reads until its snapshot has arrived, then only sits there.
fn idle_client(addr: std::net::SocketAddr, market: &str) -> std::net::TcpStream {
    let command = format!(
        r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta"],"market_tickers":["{market}"]}}}}"#
    );
    quiet_client(addr, &[command], 1)
}

/// A blocking socket that upgrades, sends `commands` and reads until `snapshots` order book
/// snapshots have arrived, then reads no more.
fn quiet_client(
    addr: std::net::SocketAddr,
    commands: &[String],
    snapshots: usize,
) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(
        b"GET /trade-api/ws/v2 HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the relay closed during the upgrade");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    for command in commands {
        // One masked text frame, as a client must send.
        let mask = [7u8, 1, 9, 3];
        let mut frame = vec![0x81u8];
        if command.len() < 126 {
            frame.push(0x80 | command.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(command.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(command.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
    }
    got.clear();
    let count = |got: &[u8]| {
        got.windows(18)
            .filter(|w| w == b"orderbook_snapshot")
            .count()
    };
    while count(&got) < snapshots {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the relay closed before the snapshots");
        got.extend_from_slice(&chunk[..n]);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_costs_the_relay_under_5000_bytes_of_heap() {
    let _serial = SERIAL.lock().await;
    const CLIENTS: usize = 200;
    let sim = sim(exchange_sim::SimConfig {
        markets: 2,
        rate: 1.0,
        ..exchange_sim::SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |_| {}).await;
    let addr = relay.addr;
    let market = sim.markets()[0].clone();
    // The first client makes the relay subscribe upstream and cache the book: not per client.
    let warm = {
        let market = market.clone();
        tokio::task::spawn_blocking(move || idle_client(addr, &market))
            .await
            .unwrap()
    };
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let clients = tokio::task::spawn_blocking(move || {
        (0..CLIENTS)
            .map(|_| idle_client(addr, &market))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let per_client = settled_heap_per_client(before, CLIENTS).await;
    println!("heap per idle client: {per_client} bytes");
    assert!(
        per_client <= MAX_HEAP_PER_IDLE_CLIENT,
        "an idle client holds {per_client} bytes of the relay's heap, over {MAX_HEAP_PER_IDLE_CLIENT}"
    );
    drop(clients);
    drop(warm);
    relay.shutdown().await;
    sim.shutdown().await;
}

/// This process's resident set, in bytes (`/proc/self/statm`, pages of 4 KiB).
fn rss_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: isize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// What a client on 20 markets x 3 channels may cost the relay's heap once its 20 snapshots are
/// sent, in bytes: about 8,700 here (test profile), of which the fanout's topic table is 60
/// entries of 32 bytes and a 256-byte index over them. Each of these would break it: a session
/// task sized for the resume's REST fetch (8 KiB), a map per client with an array of all seven
/// channels per market (4 KiB), a set of owned names per sid (5 KiB for three sids on the same
/// 20 markets), or keeping the snapshot burst's write buffer (about 10 KiB).
const MAX_HEAP_PER_SUBSCRIBED_CLIENT: isize = 9_000;

/// 300 clients, each on the 20 books, tickers and trades of 20 markets (every snapshot received),
/// then silent on a 1 msg/s feed: what each holds of the relay's heap (RSS printed beside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_client_costs_the_relay_under_9000_bytes_of_heap() {
    let _serial = SERIAL.lock().await;
    const CLIENTS: usize = 300;
    const MARKETS: usize = 20;
    let sim = sim(exchange_sim::SimConfig {
        markets: MARKETS,
        rate: 1.0,
        ..exchange_sim::SimConfig::default()
    })
    .await;
    let relay = relay(&sim, |_| {}).await;
    let addr = relay.addr;
    let tickers = sim.markets().join("\",\"");
    // As a trading screen does: each market named, on every channel.
    let commands = [format!(
        r#"{{"id":1,"cmd":"subscribe","params":{{"channels":["orderbook_delta","ticker","trade"],"market_tickers":["{tickers}"]}}}}"#
    )];
    let warm = {
        let commands = commands.clone();
        tokio::task::spawn_blocking(move || quiet_client(addr, &commands, MARKETS))
            .await
            .unwrap()
    };
    let (heap_before, rss_before) = (LIVE_BYTES.load(Ordering::Relaxed), rss_bytes());
    let clients = tokio::task::spawn_blocking(move || {
        (0..CLIENTS)
            .map(|_| quiet_client(addr, &commands, MARKETS))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let per_client = settled_heap_per_client(heap_before, CLIENTS).await;
    let rss_per_client = (rss_bytes() - rss_before) / CLIENTS as isize;
    println!("subscribed client: heap {per_client} bytes, RSS {rss_per_client} bytes");
    assert!(
        per_client <= MAX_HEAP_PER_SUBSCRIBED_CLIENT,
        "a subscribed client holds {per_client} bytes of the relay's heap, over {MAX_HEAP_PER_SUBSCRIBED_CLIENT}"
    );
    drop(clients);
    drop(warm);
    relay.shutdown().await;
    sim.shutdown().await;
}
