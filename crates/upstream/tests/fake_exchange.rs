//! Precise tests against a scripted fake exchange on 127.0.0.1:0: the test decides how every
//! handshake is answered and writes every frame itself. Timing tests run on tokio's paused clock,
//! so the delays asserted are exact. Tests that exchange many frames run on the real clock: the
//! paused clock auto-advances whenever the runtime idles, even while loopback bytes are in
//! flight, which would fire the liveness timer spuriously.

// tungstenite's handshake callback signature returns its large `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::Channel;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use upstream::{BookUpdate, DisconnectReason, Event, State, SubId, UpstreamConfig};

/// How the fake answers the next handshakes.
#[derive(Clone, Debug)]
enum Mode {
    Refuse {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Accept TCP, never answer the upgrade.
    Stall,
    Accept,
}

type Conn = WebSocketStream<TcpStream>;

struct Fake {
    url: String,
    mode: Arc<Mutex<Mode>>,
    /// When each TCP connection arrived (on the test's clock).
    attempts: Arc<Mutex<Vec<Instant>>>,
    /// Accepted WebSockets with their upgrade headers.
    conns: mpsc::UnboundedReceiver<(Conn, HeaderMap)>,
}

impl Fake {
    async fn start(mode: Mode) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/trade-api/ws/v2", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (tx, conns) = mpsc::unbounded_channel();
        let (m, a) = (mode.clone(), attempts.clone());
        tokio::spawn(async move {
            let mut stalled = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                a.lock().unwrap().push(Instant::now());
                let mode = m.lock().unwrap().clone();
                match mode {
                    Mode::Stall => stalled.push(tcp),
                    Mode::Refuse {
                        status,
                        retry_after,
                    } => {
                        tokio::spawn(async move {
                            let _ = tokio_tungstenite::accept_hdr_async(
                                tcp,
                                move |_: &Request, _: Response| {
                                    let mut resp = ErrorResponse::new(Some("no".into()));
                                    *resp.status_mut() = status.try_into().unwrap();
                                    if let Some(s) = retry_after {
                                        resp.headers_mut().insert("retry-after", s.into());
                                    }
                                    Err(resp)
                                },
                            )
                            .await;
                        });
                    }
                    Mode::Accept => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let headers = Arc::new(Mutex::new(HeaderMap::new()));
                            let h = headers.clone();
                            let ws = tokio_tungstenite::accept_hdr_async(
                                tcp,
                                move |req: &Request, resp: Response| {
                                    *h.lock().unwrap() = req.headers().clone();
                                    Ok(resp)
                                },
                            )
                            .await
                            .unwrap();
                            let headers = headers.lock().unwrap().clone();
                            let _ = tx.send((ws, headers));
                        });
                    }
                }
            }
        });
        Fake {
            url,
            mode,
            attempts,
            conns,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }

    async fn conn(&mut self) -> (Conn, HeaderMap) {
        self.conns.recv().await.unwrap()
    }
}

fn config(url: &str) -> UpstreamConfig {
    UpstreamConfig {
        url: url.to_owned(),
        ..UpstreamConfig::default()
    }
}

async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
    events.recv().await.expect("the session ended")
}

/// The next state event, skipping others.
async fn next_state(events: &mut mpsc::Receiver<Event>) -> State {
    loop {
        if let Event::State(s) = next_event(events).await {
            return s;
        }
    }
}

/// Reads the next command the session sent, answering nothing.
async fn command(ws: &mut Conn) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

async fn send(ws: &mut Conn, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn snapshot(sid: u64, seq: u64, market: &str) -> Value {
    json!({"type":"orderbook_snapshot","sid":sid,"seq":seq,"msg":{"market_ticker":market,"yes_dollars_fp":[["0.4000","10.00"]]}})
}

fn delta(sid: u64, seq: u64, market: &str) -> Value {
    json!({"type":"orderbook_delta","sid":sid,"seq":seq,"msg":{"market_ticker":market,"price_dollars":"0.4000","delta_fp":"1.00","side":"yes"}})
}

/// The next `Data` or book event, as a short string: `data A snapshot orderbook_delta`,
/// `stale A,B`, `reset A`.
async fn next_book_event(events: &mut mpsc::Receiver<Event>) -> String {
    loop {
        match next_event(events).await {
            Event::Data(d) => {
                let kind = match d.book {
                    Some(BookUpdate::Snapshot(_)) => "snapshot",
                    Some(BookUpdate::Delta(_)) => "delta",
                    None => d.kind.as_str().to_owned().leak(),
                };
                return format!(
                    "data {} {} {}",
                    d.market.unwrap_or_default(),
                    kind,
                    d.channel
                );
            }
            Event::BookStale { markets } => return format!("stale {}", markets.join(",")),
            Event::BookReset { market } => return format!("reset {market}"),
            Event::MessagesLost { channel } => return format!("lost {channel}"),
            Event::State(_) => continue,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_follows_the_curve_gives_up_and_recovers() {
    let mut fake = Fake::start(Mode::Refuse {
        status: 503,
        retry_after: None,
    })
    .await;
    let cfg = UpstreamConfig {
        backoff_base_seconds: settings::Seconds::from_secs(1),
        backoff_factor: 2.0,
        backoff_cap_seconds: settings::Seconds::from_secs(8),
        max_consecutive_failures: std::num::NonZeroU32::new(5).unwrap(),
        ..config(&fake.url)
    };
    let shutdown = CancellationToken::new();
    let (up, mut events) = upstream::spawn_seeded(cfg, shutdown.clone(), 42).unwrap();
    let mut seen = Vec::new();
    loop {
        let s = next_state(&mut events).await;
        let done = matches!(s, State::GaveUp { .. });
        seen.push(s);
        if done {
            break;
        }
    }
    let rejected = State::Disconnected {
        reason: DisconnectReason::HandshakeRejected { status: 503 },
    };
    let mut expected = Vec::new();
    for _ in 0..4 {
        expected.extend([State::Connecting, rejected.clone()]);
    }
    expected.extend([State::Connecting, State::GaveUp { failures: 5 }]);
    assert_eq!(seen, expected);
    assert_eq!(*up.state().borrow(), State::GaveUp { failures: 5 });

    // Two probes at exactly the cap, without leaving GaveUp.
    while fake.attempts().len() < 7 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let t = fake.attempts();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    for (n, gap) in gaps.iter().take(4).enumerate() {
        let bound = Duration::from_secs(1 << n).min(Duration::from_secs(8));
        assert!(
            *gap >= Duration::from_millis(100) && *gap <= bound,
            "delay {n} = {gap:?}, bound {bound:?}"
        );
    }
    assert_eq!(
        gaps[4],
        Duration::from_secs(8),
        "probe at the cap after giving up"
    );
    assert_eq!(gaps[5], Duration::from_secs(8));

    // The exchange comes back: the session reconnects by itself.
    fake.set(Mode::Accept);
    let (_ws, _) = fake.conn().await;
    assert_eq!(next_state(&mut events).await, State::Connected);
    assert_eq!(
        next_state(&mut events).await,
        State::Subscribed,
        "nothing wanted: subscribed at once"
    );
    shutdown.cancel();
    up.closed().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let fake = Fake::start(Mode::Refuse {
        status: 429,
        retry_after: Some(20),
    })
    .await;
    let shutdown = CancellationToken::new();
    let (_up, mut events) = upstream::spawn(config(&fake.url), shutdown.clone()).unwrap();
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert_eq!(
        next_state(&mut events).await,
        State::Disconnected {
            reason: DisconnectReason::HandshakeRejected { status: 429 }
        }
    );
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert!(matches!(
        next_state(&mut events).await,
        State::Disconnected { .. }
    ));
    let t = fake.attempts();
    assert!(t[1] - t[0] >= Duration::from_secs(20), "{:?}", t[1] - t[0]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn unauthorized_is_auth_failed_with_backoff() {
    let fake = Fake::start(Mode::Refuse {
        status: 401,
        retry_after: None,
    })
    .await;
    let shutdown = CancellationToken::new();
    let (_up, mut events) = upstream::spawn(config(&fake.url), shutdown.clone()).unwrap();
    for _ in 0..4 {
        assert_eq!(next_state(&mut events).await, State::Connecting);
        assert_eq!(next_state(&mut events).await, State::AuthFailed);
    }
    let t = fake.attempts();
    for (n, w) in t.windows(2).enumerate() {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(100) && gap <= Duration::from_secs(1 << n),
            "gap {n}: {gap:?}"
        );
    }
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn stalled_upgrade_times_out_and_is_retried() {
    let mut fake = Fake::start(Mode::Stall).await;
    let cfg = UpstreamConfig {
        handshake_timeout_seconds: settings::Seconds::from_secs(5),
        ..config(&fake.url)
    };
    let shutdown = CancellationToken::new();
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert_eq!(
        next_state(&mut events).await,
        State::Disconnected {
            reason: DisconnectReason::HandshakeTimeout
        }
    );
    let first = fake.attempts()[0];
    assert_eq!(Instant::now() - first, Duration::from_secs(5));
    fake.set(Mode::Accept);
    let _conn = fake.conn().await;
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert_eq!(next_state(&mut events).await, State::Connected);
    shutdown.cancel();
    up.closed().await;
}

#[tokio::test(start_paused = true)]
async fn silence_is_death_but_exchange_pings_keep_a_quiet_market_alive() {
    let mut fake = Fake::start(Mode::Accept).await;
    let cfg = UpstreamConfig {
        ping_interval_seconds: settings::Seconds::from_secs(1000),
        ..config(&fake.url)
    };
    let shutdown = CancellationToken::new();
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    let (mut ws, _) = fake.conn().await;
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert_eq!(next_state(&mut events).await, State::Connected);
    assert_eq!(next_state(&mut events).await, State::Subscribed);
    // Exchange pings every 10 s for 100 s, no data at all: still connected.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        ws.send(Message::Ping("heartbeat".into())).await.unwrap();
    }
    assert_eq!(*up.state().borrow(), State::Subscribed);
    // Then silence (a blackhole): dead exactly one liveness window after the last frame.
    let last = Instant::now();
    assert_eq!(
        next_state(&mut events).await,
        State::Disconnected {
            reason: DisconnectReason::LivenessTimeout
        }
    );
    let detected = Instant::now() - last;
    assert!(
        detected >= Duration::from_secs(30) && detected <= Duration::from_secs(31),
        "{detected:?}"
    );
    let _again = fake.conn().await;
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert_eq!(next_state(&mut events).await, State::Connected);
    shutdown.cancel();
}

/// A session that pings every 30 s and waits 10 s for the pong (liveness out of the way),
/// connected and subscribed: its handle, its events, the exchange's end of the socket, and when
/// it connected.
async fn pinging_session(
    fake: &mut Fake,
    shutdown: &CancellationToken,
) -> (upstream::Upstream, mpsc::Receiver<Event>, Conn, Instant) {
    let cfg = UpstreamConfig {
        ping_interval_seconds: settings::Seconds::from_secs(30),
        pong_timeout_seconds: settings::Seconds::from_secs(10),
        liveness_window_seconds: settings::Seconds::from_secs(1000),
        ..config(&fake.url)
    };
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    let (ws, _) = fake.conn().await;
    let connected = loop {
        if next_state(&mut events).await == State::Connected {
            break Instant::now();
        }
    };
    assert_eq!(next_state(&mut events).await, State::Subscribed);
    (up, events, ws, connected)
}

#[tokio::test(start_paused = true)]
async fn unanswered_ping_is_death() {
    let mut fake = Fake::start(Mode::Accept).await;
    let shutdown = CancellationToken::new();
    // The fake never reads, so it never answers our ping.
    let (_up, mut events, _ws, connected) = pinging_session(&mut fake, &shutdown).await;
    assert_eq!(
        next_state(&mut events).await,
        State::Disconnected {
            reason: DisconnectReason::PongTimeout
        }
    );
    assert_eq!(Instant::now() - connected, Duration::from_secs(40));
    shutdown.cancel();
}

/// Pings answered for a while, then not: dead one pong timeout after the first unanswered ping,
/// however many were answered before it.
#[tokio::test(start_paused = true)]
async fn answered_pings_keep_it_alive_until_one_goes_unanswered() {
    let mut fake = Fake::start(Mode::Accept).await;
    let shutdown = CancellationToken::new();
    let (_up, mut events, mut ws, connected) = pinging_session(&mut fake, &shutdown).await;
    // The exchange reads (tungstenite queues a pong for each ping; the flush sends it) until it
    // has answered three pings, then keeps the socket open without reading.
    let exchange = tokio::spawn(async move {
        let mut answered = 0;
        while answered < 3 {
            if let Message::Ping(_) = ws.next().await.unwrap().unwrap() {
                ws.flush().await.unwrap();
                answered += 1;
            }
        }
        ws
    });
    assert_eq!(
        next_state(&mut events).await,
        State::Disconnected {
            reason: DisconnectReason::PongTimeout
        }
    );
    assert_eq!(Instant::now() - connected, Duration::from_secs(4 * 30 + 10));
    assert!(exchange.is_finished(), "the exchange answered three pings");
    shutdown.cancel();
}

#[tokio::test]
async fn signed_handshake_without_origin() {
    let (private_pem, public_pem) = protocol::sign::generate_key_pair(2048);
    let mut fake = Fake::start(Mode::Accept).await;
    let cfg = UpstreamConfig {
        key_id: Some("key-1".into()),
        private_key_pem: Some(private_pem),
        ..config(&fake.url)
    };
    let shutdown = CancellationToken::new();
    let (up, _events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    let (_ws, headers) = fake.conn().await;
    assert!(headers.get("origin").is_none(), "no Origin header");
    let h = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("KALSHI-ACCESS-KEY").as_deref(), Some("key-1"));
    let mut verifier = protocol::Verifier::new(60_000);
    verifier.add_public_pem(&public_pem).unwrap();
    verifier
        .verify(
            h("KALSHI-ACCESS-KEY").as_deref(),
            h("KALSHI-ACCESS-TIMESTAMP").as_deref(),
            h("KALSHI-ACCESS-SIGNATURE").as_deref(),
            protocol::sign::WS_PATH,
            protocol::sign::now_ms(),
        )
        .unwrap();
    shutdown.cancel();
    up.closed().await;
}

/// Desired state survives disconnection, sequencing and repair, reconnect with stable SubIds,
/// and the clean close.
#[tokio::test]
async fn subscriptions_gaps_reconnect_and_clean_close() {
    let mut fake = Fake::start(Mode::Refuse {
        status: 503,
        retry_after: None,
    })
    .await;
    let shutdown = CancellationToken::new();
    let (up, mut events) = upstream::spawn(config(&fake.url), shutdown.clone()).unwrap();
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert!(matches!(
        next_state(&mut events).await,
        State::Disconnected { .. }
    ));
    // Wanted while disconnected.
    let books = up.subscribe(Channel::OrderbookDelta, Some(vec!["A".into(), "B".into()]));
    let ticker = up.subscribe(Channel::Ticker, None);
    assert_eq!((books, ticker), (SubId(1), SubId(2)));
    fake.set(Mode::Accept);
    let (mut ws, _) = fake.conn().await;
    assert_eq!(
        command(&mut ws).await,
        json!({"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["A","B"],"use_yes_price":false}})
    );
    assert_eq!(
        command(&mut ws).await,
        json!({"id":2,"cmd":"subscribe","params":{"channels":["ticker"],"send_initial_snapshot":true}})
    );
    send(
        &mut ws,
        json!({"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}),
    )
    .await;
    send(
        &mut ws,
        json!({"id":2,"type":"subscribed","msg":{"channel":"ticker","sid":2}}),
    )
    .await;
    assert_eq!(next_state(&mut events).await, State::Connecting);
    assert_eq!(next_state(&mut events).await, State::Connected);
    assert_eq!(next_state(&mut events).await, State::Subscribed);

    for frame in [
        delta(1, 1, "A"), // before any snapshot: withheld
        snapshot(1, 2, "A"),
        snapshot(1, 3, "B"),
        delta(1, 4, "A"),
        delta(1, 4, "A"), // duplicate
        json!({"type":"ticker","sid":2,"msg":{"market_ticker":"Z","price_dollars":"0.5000"}}),
        delta(1, 7, "B"), // gap: 5 and 6 lost
    ] {
        send(&mut ws, frame).await;
    }
    assert_eq!(
        next_book_event(&mut events).await,
        "data A snapshot orderbook_delta"
    );
    assert_eq!(
        next_book_event(&mut events).await,
        "data B snapshot orderbook_delta"
    );
    assert_eq!(
        next_book_event(&mut events).await,
        "data A delta orderbook_delta"
    );
    assert_eq!(next_book_event(&mut events).await, "data Z ticker ticker");
    assert_eq!(next_book_event(&mut events).await, "stale A,B");
    assert_eq!(
        command(&mut ws).await,
        json!({"id":3,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A","B"],"action":"get_snapshot"}})
    );
    send(&mut ws, delta(1, 8, "A")).await; // still stale: withheld
    send(&mut ws, snapshot(1, 9, "A")).await;
    send(&mut ws, snapshot(1, 10, "B")).await;
    send(&mut ws, delta(1, 11, "B")).await;
    assert_eq!(next_book_event(&mut events).await, "reset A");
    assert_eq!(
        next_book_event(&mut events).await,
        "data A snapshot orderbook_delta"
    );
    assert_eq!(next_book_event(&mut events).await, "reset B");
    assert_eq!(
        next_book_event(&mut events).await,
        "data B snapshot orderbook_delta"
    );
    assert_eq!(
        next_book_event(&mut events).await,
        "data B delta orderbook_delta"
    );

    // The exchange drops us: books stale, reconnect, resubscribe on new sids, same SubIds.
    drop(ws);
    let (mut ws, _) = fake.conn().await;
    assert_eq!(
        command(&mut ws).await["params"]["market_tickers"],
        json!(["A", "B"])
    );
    assert_eq!(
        command(&mut ws).await["params"]["channels"],
        json!(["ticker"])
    );
    send(
        &mut ws,
        json!({"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":7}}),
    )
    .await;
    send(
        &mut ws,
        json!({"id":2,"type":"subscribed","msg":{"channel":"ticker","sid":8}}),
    )
    .await;
    send(&mut ws, snapshot(7, 1, "A")).await;
    send(&mut ws, snapshot(7, 2, "B")).await;
    let mut order = Vec::new();
    while order.len() < 6 {
        match next_event(&mut events).await {
            Event::State(s) => order.push(format!("{s:?}")),
            Event::BookStale { markets } => order.push(format!("stale {}", markets.join(","))),
            Event::BookReset { market } => order.push(format!("reset {market}")),
            Event::MessagesLost { channel } => order.push(format!("lost {channel}")),
            Event::Data(d) => order.push(format!("data {} {}", d.market.unwrap(), d.channel)),
        }
    }
    assert_eq!(
        order,
        [
            "stale A,B",
            "Disconnected { reason: ClosedByServer { code: Some(1006) } }",
            "Connecting",
            "Connected",
            "Subscribed",
            "reset A"
        ]
    );
    assert_eq!(
        next_book_event(&mut events).await,
        "data A snapshot orderbook_delta"
    );
    assert_eq!(next_book_event(&mut events).await, "reset B");
    assert_eq!(
        next_book_event(&mut events).await,
        "data B snapshot orderbook_delta"
    );

    // A terminal error on the sid resubscribes the channel.
    send(
        &mut ws,
        json!({"type":"error","sid":7,"msg":{"code":25,"msg":"Subscription buffer overflow"}}),
    )
    .await;
    assert_eq!(next_book_event(&mut events).await, "stale A,B");
    assert_eq!(
        command(&mut ws).await["params"]["market_tickers"],
        json!(["A", "B"])
    );

    // Owner changes move markets with update_subscription.
    send(
        &mut ws,
        json!({"id":3,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":9}}),
    )
    .await;
    up.add_markets(books, vec!["C".into()]);
    assert_eq!(
        command(&mut ws).await,
        json!({"id":4,"cmd":"update_subscription","params":{"sid":9,"market_tickers":["C"],"action":"add_markets"}})
    );
    up.request_snapshot(vec!["B".into()]);
    assert_eq!(
        command(&mut ws).await,
        json!({"id":5,"cmd":"update_subscription","params":{"sid":9,"market_tickers":["B"],"action":"get_snapshot"}})
    );

    // Clean close: unsubscribe everything, close 1000, closed() resolves after the echo.
    shutdown.cancel();
    assert_eq!(
        command(&mut ws).await,
        json!({"id":0,"cmd":"unsubscribe","params":{"sids":[8, 9]}})
    );
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected close, got {other:?}"),
    }
    let _ = ws.next().await; // tungstenite echoes the close
    up.closed().await;
    assert_eq!(
        *up.state().borrow(),
        State::Disconnected {
            reason: DisconnectReason::Shutdown
        }
    );
}

/// Error 26 splits the subscription one market per sid; a gap then re-snapshots one market.
#[tokio::test]
async fn market_limit_splits_and_a_gap_resnapshots_one_market() {
    let mut fake = Fake::start(Mode::Accept).await;
    let shutdown = CancellationToken::new();
    let cfg = UpstreamConfig {
        snapshot_timeout_seconds: settings::Seconds::from_secs_f64(0.3),
        ..config(&fake.url)
    };
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    up.subscribe(
        Channel::OrderbookDelta,
        Some(vec!["A".into(), "B".into(), "C".into()]),
    );
    let (mut ws, _) = fake.conn().await;
    let first = command(&mut ws).await;
    assert_eq!(first["params"]["market_tickers"], json!(["A", "B", "C"]));
    send(
        &mut ws,
        json!({"id":1,"type":"error","msg":{"code":26,"msg":"Subscription market limit exceeded"}}),
    )
    .await;
    for (i, m) in ["A", "B", "C"].iter().enumerate() {
        let c = command(&mut ws).await;
        assert_eq!(c["params"]["market_tickers"], json!([m]));
        let sid = 10 + i as u64;
        send(
            &mut ws,
            json!({"id":c["id"],"type":"subscribed","msg":{"channel":"orderbook_delta","sid":sid}}),
        )
        .await;
        send(&mut ws, snapshot(sid, 1, m)).await;
    }
    for m in ["A", "B", "C"] {
        assert_eq!(
            next_book_event(&mut events).await,
            format!("data {m} snapshot orderbook_delta")
        );
    }
    send(&mut ws, delta(11, 3, "B")).await;
    assert_eq!(next_book_event(&mut events).await, "stale B");
    assert_eq!(
        command(&mut ws).await,
        json!({"id":5,"cmd":"update_subscription","params":{"sid":11,"market_tickers":["B"],"action":"get_snapshot"}})
    );
    // A repair that never comes: the channel's sid is resubscribed after the timeout.
    assert_eq!(
        command(&mut ws).await,
        json!({"id":6,"cmd":"unsubscribe","params":{"sids":[11]}})
    );
    send(&mut ws, json!({"id":6,"type":"unsubscribed","sid":11})).await;
    let c = command(&mut ws).await;
    assert_eq!(c["cmd"], "subscribe");
    assert_eq!(c["params"]["market_tickers"], json!(["B"]));
    shutdown.cancel();
}

/// Two gap repairs, the second asked half a timeout after the first: the first, unanswered, is
/// resubscribed at its deadline, alone; the second, answered after that and before its own
/// deadline, is left alone. (Real time: with tokio's paused clock, time jumps while a frame is
/// in flight on the socket.)
#[tokio::test]
async fn each_gap_repair_times_out_at_its_own_deadline() {
    // Bounded: after a regression a command or event can never come.
    tokio::time::timeout(Duration::from_secs(30), two_repairs_play_out())
        .await
        .expect("the two repairs played out within 30 s");
}

async fn two_repairs_play_out() {
    let mut fake = Fake::start(Mode::Accept).await;
    let shutdown = CancellationToken::new();
    let timeout = Duration::from_secs(2);
    let cfg = UpstreamConfig {
        snapshot_timeout_seconds: settings::Seconds::from_secs_f64(timeout.as_secs_f64()),
        ..config(&fake.url)
    };
    let (up, mut events) = upstream::spawn(cfg, shutdown.clone()).unwrap();
    up.subscribe(Channel::OrderbookDelta, Some(vec!["A".into(), "B".into()]));
    let (mut ws, _) = fake.conn().await;
    command(&mut ws).await;
    send(
        &mut ws,
        json!({"id":1,"type":"error","msg":{"code":26,"msg":"Subscription market limit exceeded"}}),
    )
    .await;
    for (sid, m) in [(10, "A"), (11, "B")] {
        let c = command(&mut ws).await;
        send(
            &mut ws,
            json!({"id":c["id"],"type":"subscribed","msg":{"channel":"orderbook_delta","sid":sid}}),
        )
        .await;
        send(&mut ws, snapshot(sid, 1, m)).await;
    }
    for m in ["A", "B"] {
        assert_eq!(
            next_book_event(&mut events).await,
            format!("data {m} snapshot orderbook_delta")
        );
    }
    send(&mut ws, delta(10, 3, "A")).await;
    assert_eq!(next_book_event(&mut events).await, "stale A");
    assert_eq!(command(&mut ws).await["cmd"], "update_subscription");
    let first = Instant::now();
    tokio::time::sleep(timeout / 2).await;
    send(&mut ws, delta(11, 3, "B")).await;
    assert_eq!(next_book_event(&mut events).await, "stale B");
    assert_eq!(command(&mut ws).await["cmd"], "update_subscription");
    let second = Instant::now();
    // A's repair never comes: A alone is resubscribed, at its deadline.
    assert_eq!(
        command(&mut ws).await,
        json!({"id":6,"cmd":"unsubscribe","params":{"sids":[10]}})
    );
    assert!(first.elapsed() >= timeout, "{:?}", first.elapsed());
    // B's snapshot, before its own deadline: nothing more is asked, even past that deadline.
    send(&mut ws, snapshot(11, 4, "B")).await;
    assert_eq!(next_book_event(&mut events).await, "reset B");
    assert!(second.elapsed() < timeout, "B was answered in time");
    let past_b = second + timeout * 5 / 4;
    while let Ok(c) = tokio::time::timeout_at(past_b, command(&mut ws)).await {
        // A's resubscription goes on; nothing may touch B's sid or market.
        let b = c["params"]["sids"] == json!([11]) || c["params"]["market_tickers"] == json!(["B"]);
        assert!(!b, "B was resubscribed: {c}");
    }
    shutdown.cancel();
}

/// Three refusals, then a connection that lives `up` before it drops, then refusals again: how
/// many refusals it takes to give up (max 4 consecutive failures), and the delay before the
/// first reconnect after the drop (none when it gave up at once).
async fn failures_after_a_connection_that_lived(up: Duration) -> (Vec<State>, Option<Duration>) {
    let mut fake = Fake::start(Mode::Refuse {
        status: 503,
        retry_after: None,
    })
    .await;
    let cfg = UpstreamConfig {
        backoff_base_seconds: settings::Seconds::from_secs(1),
        backoff_factor: 2.0,
        backoff_cap_seconds: settings::Seconds::from_secs(64),
        max_consecutive_failures: std::num::NonZeroU32::new(4).unwrap(),
        healthy_reset_seconds: settings::Seconds::from_secs(10),
        // A silent, idle connection must survive `up` on the paused clock.
        liveness_window_seconds: settings::Seconds::from_secs(3600),
        ping_interval_seconds: settings::Seconds::from_secs(3600),
        ..config(&fake.url)
    };
    let shutdown = CancellationToken::new();
    let (up_session, mut events) = upstream::spawn_seeded(cfg, shutdown.clone(), 7).unwrap();
    while fake.attempts().len() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.set(Mode::Accept);
    let (ws, _) = fake.conn().await;
    while next_state(&mut events).await != State::Subscribed {}
    tokio::time::sleep(up).await;
    fake.set(Mode::Refuse {
        status: 503,
        retry_after: None,
    });
    let before = fake.attempts().len();
    let dropped = Instant::now();
    drop(ws);
    let mut after = Vec::new();
    loop {
        let s = next_state(&mut events).await;
        let done = matches!(s, State::GaveUp { .. });
        if s != State::Connecting {
            after.push(s);
        }
        if done {
            break;
        }
    }
    let first_retry = fake.attempts().get(before).map(|t| *t - dropped);
    shutdown.cancel();
    up_session.closed().await;
    (after, first_retry)
}

#[tokio::test(start_paused = true)]
async fn a_healthy_connection_resets_the_backoff_and_the_failure_count() {
    // Up for 11 s (healthy_reset 10 s): the drop is failure 1 of a fresh count, so three more
    // refusals come before giving up, and the first delay is back to its first bound (1 s).
    let (after, first_retry) =
        failures_after_a_connection_that_lived(Duration::from_secs(11)).await;
    let refused = State::Disconnected {
        reason: DisconnectReason::HandshakeRejected { status: 503 },
    };
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(matches!(after[0], State::Disconnected { .. }), "{after:?}");
    assert_eq!(after[1..3], [refused.clone(), refused]);
    assert_eq!(after[3], State::GaveUp { failures: 4 });
    assert!(
        first_retry.is_some_and(|d| d <= Duration::from_secs(1)),
        "{first_retry:?}"
    );

    // Up for 2 s only: the count goes on from the three refusals, so the drop is the fourth.
    let (after, _) = failures_after_a_connection_that_lived(Duration::from_secs(2)).await;
    assert_eq!(after, [State::GaveUp { failures: 4 }]);
}
