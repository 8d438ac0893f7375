//! Who a published item wakes: the parked subscribers of its topic, once per released batch;
//! the others read past it later without calling that a lag.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;

use common::*;
use fanout::{Delivery, FanoutConfig, Topic};
use protocol::{Channel, Side};

/// Counts the wake-ups of the task that polls with it.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn held_items_wake_a_parked_subscriber_once_on_release_and_it_finds_them_all() {
    let (mut p, f, _r) = fanout::new::<()>(FanoutConfig::default());
    publish_snapshot(&mut p, "M", &[(Side::Yes, 800, 30000)]);
    let mut sub = f.subscriber();
    sub.add(Topic::market(Channel::OrderbookDelta, "M"), false)
        .unwrap();
    assert!(matches!(sub.try_recv(), Some(Delivery::Cached { .. })));
    assert!(sub.try_recv().is_none());

    p.hold();
    let wakes = Arc::new(CountingWaker(Default::default()));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut positions = Vec::new();
    {
        let mut recv = pin!(sub.recv());
        assert!(recv.as_mut().poll(&mut cx).is_pending(), "caught up: parks");
        for price in [900, 1000, 1100] {
            positions.push(publish_delta(&mut p, "M", Side::Yes, price, 100));
        }
        assert_eq!(wakes.0.load(SeqCst), 0, "held items wake nobody");
        assert_eq!(p.unreleased(), 3);
        p.release();
        assert_eq!(wakes.0.load(SeqCst), 1, "one wake-up for the whole batch");
        assert_eq!(p.unreleased(), 0);
        match recv.as_mut().poll(&mut cx) {
            Poll::Ready(Some(Delivery::Data(item))) => assert_eq!(item.position(), positions[0]),
            other => panic!("expected the first held delta, got {other:?}"),
        }
    }
    // The rest of the batch is ready without waiting.
    for want in &positions[1..] {
        match sub.try_recv() {
            Some(Delivery::Data(item)) => assert_eq!(item.position(), *want),
            other => panic!("expected a held delta, got {other:?}"),
        }
    }
    assert!(sub.try_recv().is_none());

    // Dropping the publisher wakes a parked subscriber, which then sees the end of the stream.
    let mut recv = pin!(sub.recv());
    assert!(recv.as_mut().poll(&mut cx).is_pending());
    drop(p);
    assert_eq!(wakes.0.load(SeqCst), 2);
    assert!(matches!(recv.as_mut().poll(&mut cx), Poll::Ready(None)));
}

/// A subscriber parked on `topic` as its task would be: armed on its group's signal, it reads
/// what is ready only when woken.
struct Parked {
    sub: fanout::Subscriber<&'static str>,
    signal: &'static fanout::Signal,
    armed: Pin<Box<Notified<'static>>>,
    wakes: usize,
}

impl Parked {
    fn on(f: &fanout::Fanout<&'static str>, topic: Topic) -> Parked {
        let mut sub = f.subscriber();
        sub.add(topic, false).unwrap();
        while sub.try_recv().is_some() {}
        let signal: &'static fanout::Signal = Box::leak(Box::new(sub.signal()));
        let mut armed = Box::pin(signal.notified());
        armed.as_mut().enable();
        Parked {
            sub,
            signal,
            armed,
            wakes: 0,
        }
    }

    /// If its group was woken since the last look: re-arms, then reads everything ready.
    fn look(&mut self) -> Vec<Delivery<&'static str>> {
        let mut cx = Context::from_waker(Waker::noop());
        if self.armed.as_mut().poll(&mut cx).is_pending() {
            return Vec::new();
        }
        self.wakes += 1;
        self.armed = Box::pin(self.signal.notified());
        self.armed.as_mut().enable();
        std::iter::from_fn(|| self.sub.try_recv()).collect()
    }
}

/// The markets of data deliveries; anything else by name.
fn seen(ds: Vec<Delivery<&'static str>>) -> Vec<String> {
    ds.into_iter()
        .map(|d| match d {
            Delivery::Data(item) => item.market().unwrap().to_owned(),
            Delivery::Notice(n) => format!("notice {n}"),
            Delivery::Lagged(_) => "lagged".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn an_item_wakes_only_the_subscribers_of_its_topic() {
    let (mut p, f, _r) = fanout::new::<&'static str>(FanoutConfig::default());
    publish_snapshot(&mut p, "A", &[(Side::Yes, 800, 100)]);
    publish_snapshot(&mut p, "B", &[(Side::Yes, 800, 100)]);
    // Consecutive subscribers park in different groups.
    let mut a = Parked::on(&f, Topic::market(Channel::OrderbookDelta, "A"));
    let mut b = Parked::on(&f, Topic::market(Channel::OrderbookDelta, "B"));
    let mut tickers = Parked::on(&f, Topic::channel(Channel::Ticker));
    publish_delta(&mut p, "B", Side::Yes, 900, 10);
    assert_eq!(seen(b.look()), ["B"]);
    assert!(a.look().is_empty() && tickers.look().is_empty());
    publish_ticker(&mut p, "A", 1);
    assert_eq!(seen(tickers.look()), ["A"]);
    assert!(a.look().is_empty() && b.look().is_empty());
    assert_eq!((a.wakes, b.wakes, tickers.wakes), (0, 1, 1));
    // Woken for its own delta, `a` finds it behind the others' items.
    publish_delta(&mut p, "A", Side::Yes, 900, 10);
    assert_eq!(seen(a.look()), ["A"]);
    // A notice is for everyone.
    p.notice("status");
    for s in [&mut a, &mut b, &mut tickers] {
        assert_eq!(seen(s.look()), ["notice status"]);
    }
    // A topic removed wakes its subscriber no more.
    a.sub.remove(&Topic::market(Channel::OrderbookDelta, "A"));
    publish_delta(&mut p, "A", Side::Yes, 1000, 10);
    assert!(a.look().is_empty());
    assert_eq!(a.wakes, 2);
}

#[test]
fn a_subscriber_of_a_quiet_topic_is_woken_once_per_half_ring_and_never_lags() {
    let (mut p, f, _r) = fanout::new::<&'static str>(FanoutConfig {
        queue_messages: 8,
        ..FanoutConfig::default()
    });
    publish_snapshot(&mut p, "A", &[(Side::Yes, 800, 100)]);
    publish_snapshot(&mut p, "B", &[(Side::Yes, 800, 100)]);
    let mut a = Parked::on(&f, Topic::market(Channel::OrderbookDelta, "A"));
    // Another that does not read even when woken: the ring overwrites what it had not read.
    let mut idle = Parked::on(&f, Topic::market(Channel::OrderbookDelta, "A"));
    for n in 0..48 {
        publish_delta(&mut p, "B", Side::Yes, 900 + n, 10);
        assert!(a.look().is_empty(), "nothing of its own, and no lag");
    }
    assert_eq!(
        a.wakes, 12,
        "one wake-up per 4 items (half the ring) of others"
    );
    // None of what `idle` missed was its own: not a lag.
    assert!(idle.look().is_empty());
    let mine = publish_delta(&mut p, "A", Side::Yes, 900, 10);
    match &a.look()[..] {
        [Delivery::Data(item)] => assert_eq!(item.position(), mine),
        other => panic!("expected only A's delta, got {other:?}"),
    }
    match &idle.look()[..] {
        [Delivery::Data(item)] => assert_eq!(item.position(), mine),
        other => panic!("expected only A's delta, got {other:?}"),
    }
    // A subscriber that does not read while its own topic moves on lags, as ever.
    for n in 0..20 {
        publish_delta(&mut p, "A", Side::Yes, 1000 + n, 10);
    }
    assert_eq!(seen(a.look())[0], "lagged");
}
