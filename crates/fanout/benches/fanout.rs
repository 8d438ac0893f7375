//! Publish cost by subscriber count, receive-and-envelope cost per message per subscriber (with a
//! naive re-encoding baseline), and snapshot-from-cache cost for a 100-level book.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout::{Delivery, FanoutConfig, Publisher, Subscriber, Topic};
use protocol::{Channel, MessageType, OrderbookDelta, OrderbookSnapshot};

const MARKET: &str = "KXFED-26JAN-T4.25";

fn snapshot(levels: usize) -> (OrderbookSnapshot, Bytes) {
    let side = |offset: usize| {
        (0..levels / 2)
            .map(|i| {
                let p = protocol::Price::from_units(((i + offset) * 100 + 100) as i64);
                serde_json::json!([p.to_string(), "300.00"])
            })
            .collect::<Vec<_>>()
    };
    let body = serde_json::json!({
        "market_ticker": MARKET, "market_id": "9b0f6c9e-1b7a-4a4e-8c36-1f7d0f2a5c11",
        "yes_dollars_fp": side(0), "no_dollars_fp": side(1),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

fn delta(change: &str) -> (OrderbookDelta, Bytes) {
    let body = format!(
        r#"{{"market_ticker":"{MARKET}","market_id":"9b0f6c9e-1b7a-4a4e-8c36-1f7d0f2a5c11","price_dollars":"0.0100","delta_fp":"{change}","side":"yes","ts_ms":1669149841000}}"#
    );
    let bytes = Bytes::from(body);
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

fn setup(levels: usize, queue_messages: usize) -> (Publisher, fanout::Fanout) {
    let config = FanoutConfig {
        queue_messages,
        ..FanoutConfig::default()
    };
    let (mut p, f, _events) = fanout::new(config);
    let (s, b) = snapshot(levels);
    p.snapshot(MARKET, s, b).unwrap();
    (p, f)
}

/// Publishing one delta (apply to the cached book, number, append to the ring) with N idle
/// subscribers of that book. The parsed delta is cloned each time (the caller hands it over).
fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_delta");
    let (up, up_body) = delta("1.00");
    let (down, down_body) = delta("-1.00");
    for n in [1usize, 100, 1_000, 10_000] {
        let (mut p, f) = setup(20, 4096);
        let subs: Vec<Subscriber> = (0..n)
            .map(|_| {
                let mut s = f.subscriber();
                s.add(Topic::market(Channel::OrderbookDelta, MARKET), false)
                    .unwrap();
                s
            })
            .collect();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut flip = false;
            b.iter(|| {
                flip = !flip;
                let (d, body) = if flip {
                    (up.clone(), up_body.clone())
                } else {
                    (down.clone(), down_body.clone())
                };
                black_box(p.delta(MARKET, d, body).unwrap())
            })
        });
        drop(subs);
    }
    group.finish();

    let mut group = c.benchmark_group("publish_trade");
    let body = Bytes::from_static(br#"{"trade_id":"d91b","market_ticker":"KXFED-26JAN-T4.25","yes_price_dollars":"0.3600","no_price_dollars":"0.6400","count_fp":"136.00","taker_outcome_side":"no","ts_ms":1669149841000}"#);
    for n in [1usize, 10_000] {
        let (mut p, f) = setup(20, 4096);
        let subs: Vec<Subscriber> = (0..n)
            .map(|_| {
                let mut s = f.subscriber();
                s.add(Topic::channel(Channel::Trade), false).unwrap();
                s
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                black_box(p.message(
                    Channel::Trade,
                    Some(MARKET),
                    MessageType::Trade,
                    body.clone(),
                ))
            })
        });
        drop(subs);
    }
    group.finish();
}

/// One subscriber draining a backlog of deltas: `try_recv` + filter + envelope into a reused
/// buffer, per message. The naive baseline re-encodes each body per subscriber with serde_json.
fn receive(c: &mut Criterion) {
    const BATCH: u64 = 1024;
    let mut group = c.benchmark_group("receive_and_envelope");
    group.throughput(Throughput::Elements(1));
    let (up, up_body) = delta("1.00");
    let (down, down_body) = delta("-1.00");
    for (name, other_markets) in [("own_market", false), ("one_in_four_other_market", true)] {
        let (mut p, f) = setup(20, 4096);
        let (s, b) = snapshot(20);
        let mut s = s;
        s.market_ticker = "OTHER".into();
        p.snapshot("OTHER", s, b).unwrap();
        let mut sub = f.subscriber();
        sub.add(Topic::market(Channel::OrderbookDelta, MARKET), false)
            .unwrap();
        while sub.try_recv().is_some() {}
        let mut buf = Vec::with_capacity(64 * 1024);
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                let mut left = iters;
                let mut seq = 0u64;
                while left > 0 {
                    let n = left.min(BATCH);
                    for i in 0..n {
                        if other_markets && i % 4 == 3 {
                            let (mut d, _) = delta("1.00");
                            d.market_ticker = "OTHER".into();
                            let body = Bytes::from(serde_json::to_vec(&d).unwrap());
                            p.delta("OTHER", d, body).unwrap();
                        } else if i % 2 == 0 {
                            p.delta(MARKET, up.clone(), up_body.clone()).unwrap();
                        } else {
                            p.delta(MARKET, down.clone(), down_body.clone()).unwrap();
                        }
                    }
                    let start = std::time::Instant::now();
                    let mut got = 0;
                    while let Some(d) = sub.try_recv() {
                        if let Delivery::Data(item) = d {
                            buf.clear();
                            seq += 1;
                            item.write_envelope(&mut buf, 2, Some(seq), false);
                            black_box(&buf);
                        }
                        got += 1;
                    }
                    total += start.elapsed();
                    debug_assert!(got > 0);
                    left -= n;
                }
                total
            })
        });
    }

    let (_, body) = delta("1.00");
    let mut buf = Vec::with_capacity(4096);
    group.bench_function("naive_reencode_baseline", |bench| {
        let mut seq = 0u64;
        bench.iter(|| {
            seq += 1;
            let msg: serde_json::Value = serde_json::from_slice(&body).unwrap();
            buf.clear();
            serde_json::to_writer(
                &mut buf,
                &serde_json::json!({"type": "orderbook_delta", "sid": 2, "seq": seq, "msg": msg}),
            )
            .unwrap();
            black_box(&buf);
        })
    });
    group.finish();
}

/// A subscriber's `get_snapshot` of a 100-level book: served from the encoded cache, or encoded
/// once after the book changed (that case includes publishing the delta that changed it).
fn snapshot_from_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_100_levels");
    let (mut p, f) = setup(100, 4096);
    let mut sub = f.subscriber();
    sub.add(Topic::market(Channel::OrderbookDelta, MARKET), false)
        .unwrap();
    while sub.try_recv().is_some() {}
    let (up, up_body) = delta("1.00");
    let (down, down_body) = delta("-1.00");
    // Warm the cache with an encoded (not upstream) snapshot.
    p.delta(MARKET, up.clone(), up_body.clone()).unwrap();
    sub.request_snapshot(MARKET).unwrap();
    while sub.try_recv().is_some() {}
    group.bench_function("cached", |b| {
        b.iter(|| {
            sub.request_snapshot(MARKET).unwrap();
            black_box(sub.try_recv().unwrap())
        })
    });
    let mut flip = false;
    group.bench_function("encode_after_change", |b| {
        b.iter(|| {
            flip = !flip;
            let (d, body) = if flip {
                (down.clone(), down_body.clone())
            } else {
                (up.clone(), up_body.clone())
            };
            p.delta(MARKET, d, body).unwrap();
            sub.request_snapshot(MARKET).unwrap();
            let mut last = None;
            while let Some(d) = sub.try_recv() {
                last = Some(d);
            }
            black_box(last)
        })
    });
    group.finish();
}

/// Publishing one trade when N subscriber tasks are parked in `recv` on a 2-worker runtime: the
/// send wakes every one of them (each iteration waits, untimed, until all have taken the previous
/// item and parked again). This is the "apart from wake-ups" part of the publish cost.
fn publish_waking(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let mut group = c.benchmark_group("publish_trade_waking_parked_tasks");
    group.sample_size(10);
    let body = Bytes::from_static(
        br#"{"trade_id":"d91b","market_ticker":"KXFED-26JAN-T4.25","count_fp":"1.00"}"#,
    );
    for n in [100u64, 1_000, 10_000] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (mut p, f) = setup(20, 4096);
        let done = Arc::new(AtomicU64::new(0));
        for _ in 0..n {
            let mut s = f.subscriber();
            s.add(Topic::channel(Channel::Trade), false).unwrap();
            let done = done.clone();
            rt.spawn(async move {
                while let Some(d) = s.recv().await {
                    black_box(d);
                    done.fetch_add(1, Ordering::Release);
                }
            });
        }
        let mut published = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    while done.load(Ordering::Acquire) < published * n {
                        std::thread::yield_now();
                    }
                    // Let the last woken task get back into `recv`.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    let start = std::time::Instant::now();
                    p.message(
                        Channel::Trade,
                        Some(MARKET),
                        MessageType::Trade,
                        body.clone(),
                    );
                    total += start.elapsed();
                    published += 1;
                }
                total
            })
        });
        drop(p);
        rt.shutdown_background();
    }
    group.finish();
}

criterion_group!(
    benches,
    publish,
    receive,
    snapshot_from_cache,
    publish_waking
);
criterion_main!(benches);
