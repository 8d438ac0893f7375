//! Repairing a subscriber after a lag: every topic is compared with one cut of the cache, which
//! tells what it lost and what brings it back ([`Repair`]).

use std::sync::Arc;

use protocol::Channel;

use crate::cache::{BookCut, Cut};
use crate::item::{Item, Topic};
use crate::subscriber::{LagCause, LagReport, Verdict};
use crate::topics::TopicState;

/// Built one topic at a time from cuts taken under one hold of the cache lock, so that together
/// they describe one instant of the stream.
pub(crate) struct Repair {
    report: LagReport,
    /// The first private topic that lost messages, with how many.
    private_lost: Option<(Channel, u64)>,
    books: Vec<(BookCut, Arc<str>)>,
    tickers: Vec<Arc<Item>>,
    newly_stale: Vec<Arc<str>>,
}

/// What a repair queues, in this order.
pub(crate) struct RepairPlan {
    /// The [`Delivery::Lagged`](crate::Delivery::Lagged) report (its book lists sorted).
    pub report: LagReport,
    /// Books that went stale while the subscriber was behind: it is told, as it would have been
    /// by their stale markers.
    pub newly_stale: Vec<Arc<str>>,
    /// A snapshot for each synced book (encoded outside the lock).
    pub books: Vec<(BookCut, Arc<str>)>,
    /// The latest ticker for each ticker topic.
    pub tickers: Vec<Arc<Item>>,
}

impl Repair {
    pub fn new(cause: LagCause) -> Repair {
        Repair {
            report: LagReport {
                cause,
                messages_lost: 0,
                trades_lost: 0,
                books_repaired: Vec::new(),
                books_stale: Vec::new(),
                tickers_repaired: 0,
            },
            private_lost: None,
            books: Vec::new(),
            tickers: Vec::new(),
            newly_stale: Vec::new(),
        }
    }

    /// Accounts `topic`, in `state`, against its `cut` (with the book for a book topic and the
    /// latest tickers for a ticker topic), and moves the state to the cut.
    pub fn account(&mut self, topic: Topic, state: &mut TopicState, cut: Cut) {
        let lost = cut.seen - state.seen;
        state.seen = cut.seen;
        self.report.messages_lost += lost;
        if topic.channel == Channel::Trade {
            self.report.trades_lost += lost;
        }
        if topic.channel.is_private() && lost > 0 && self.private_lost.is_none() {
            self.private_lost = Some((topic.channel, lost));
        }
        if let (Some(book), Some(market)) = (cut.book, topic.market) {
            if let BookCut::Stale = book {
                if !state.waiting_reset {
                    self.newly_stale.push(market.clone());
                }
                state.waiting_reset = true;
                self.report.books_stale.push(market);
            } else {
                state.waiting_reset = false;
                self.report.books_repaired.push(market.clone());
                self.books.push((book, market));
            }
        }
        self.tickers.extend(cut.tickers);
    }

    /// Whether none of the subscriber's topics changed while it was behind.
    pub fn lost_nothing(&self) -> bool {
        self.report.messages_lost == 0 && self.newly_stale.is_empty()
    }

    /// Messages of the subscriber's topics it will never receive.
    pub fn messages_lost(&self) -> u64 {
        self.report.messages_lost
    }

    /// Of those, trades.
    pub fn trades_lost(&self) -> u64 {
        self.report.trades_lost
    }

    /// Lost messages of a private channel cannot be repaired (they carry no seq): the verdict.
    pub fn private_loss(&self) -> Option<Verdict> {
        self.private_lost
            .map(|(channel, messages_lost)| Verdict::PrivateChannelLag {
                channel,
                messages_lost,
            })
    }

    pub fn finish(mut self) -> RepairPlan {
        self.report.tickers_repaired = self.tickers.len();
        self.report.books_repaired.sort();
        self.report.books_stale.sort();
        RepairPlan {
            report: self.report,
            newly_stale: self.newly_stale,
            books: self.books,
            tickers: self.tickers,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use protocol::MessageType;

    use super::*;
    use crate::item::Payload;

    fn ticker(market: &str) -> Arc<Item> {
        Arc::new(Item::new(
            1,
            Channel::Ticker,
            MessageType::Ticker,
            Some(market.into()),
            Bytes::new(),
            1,
            1,
            0,
            Payload::None,
        ))
    }

    fn cut(seen: u64, book: Option<BookCut>, tickers: Vec<Arc<Item>>) -> Cut {
        Cut {
            seen,
            book,
            tickers,
            market: None,
        }
    }

    fn state(seen: u64, waiting_reset: bool) -> TopicState {
        TopicState {
            seen,
            waiting_reset,
        }
    }

    #[test]
    fn counts_what_each_topic_lost_and_queues_what_repairs_it() {
        let mut repair = Repair::new(LagCause::Messages);
        let mut trades = state(3, false);
        let mut tickers = state(10, false);
        let mut book_b = state(20, false);
        let mut book_a = state(7, false);
        repair.account(
            Topic::channel(Channel::Trade),
            &mut trades,
            cut(8, None, vec![]),
        );
        repair.account(
            Topic::channel(Channel::Ticker),
            &mut tickers,
            cut(12, None, vec![ticker("A"), ticker("B")]),
        );
        let snap = ticker("B");
        repair.account(
            Topic::market(Channel::OrderbookDelta, "B"),
            &mut book_b,
            cut(25, Some(BookCut::Ready(snap)), vec![]),
        );
        repair.account(
            Topic::market(Channel::OrderbookDelta, "A"),
            &mut book_a,
            cut(7, Some(BookCut::Ready(ticker("A"))), vec![]),
        );
        assert_eq!(
            (repair.messages_lost(), repair.trades_lost()),
            (5 + 2 + 5, 5)
        );
        assert_eq!(repair.private_loss(), None);
        // Every state is at its cut: the stream's next items follow it.
        assert_eq!(
            [trades, tickers, book_b, book_a].map(|s| s.seen),
            [8, 12, 25, 7]
        );

        let plan = repair.finish();
        assert_eq!(
            plan.report,
            LagReport {
                cause: LagCause::Messages,
                messages_lost: 12,
                trades_lost: 5,
                books_repaired: vec!["A".into(), "B".into()],
                books_stale: vec![],
                tickers_repaired: 2,
            }
        );
        let books: Vec<&str> = plan.books.iter().map(|(_, m)| &**m).collect();
        assert_eq!(books, ["B", "A"], "in the order accounted");
        assert_eq!(plan.tickers.len(), 2);
        assert!(plan.newly_stale.is_empty());
    }

    #[test]
    fn stale_books_wait_for_their_reset_and_only_newly_stale_ones_are_told() {
        let mut repair = Repair::new(LagCause::Bytes);
        let mut was_synced = state(4, false);
        let mut was_stale = state(4, true);
        let mut recovered = state(4, true);
        for (m, s, book) in [
            ("N", &mut was_synced, BookCut::Stale),
            ("S", &mut was_stale, BookCut::Stale),
            ("R", &mut recovered, BookCut::Ready(ticker("R"))),
        ] {
            repair.account(
                Topic::market(Channel::OrderbookDelta, m),
                s,
                cut(6, Some(book), vec![]),
            );
        }
        assert_eq!(
            [was_synced, was_stale, recovered],
            [state(6, true), state(6, true), state(6, false)]
        );
        let plan = repair.finish();
        assert_eq!(plan.report.books_stale, [Arc::from("N"), Arc::from("S")]);
        assert_eq!(plan.report.books_repaired, [Arc::from("R")]);
        assert_eq!(plan.newly_stale, [Arc::from("N")]);
        assert_eq!(plan.books.len(), 1);
    }

    #[test]
    fn a_private_loss_is_a_verdict_naming_the_first_channel_that_lost() {
        let mut repair = Repair::new(LagCause::Messages);
        let mut untouched = state(2, false);
        let mut fills = state(2, false);
        let mut orders = state(0, false);
        repair.account(
            Topic::channel(Channel::UserOrders),
            &mut untouched,
            cut(2, None, vec![]),
        );
        assert_eq!(repair.private_loss(), None, "nothing lost, nothing to say");
        repair.account(
            Topic::channel(Channel::Fill),
            &mut fills,
            cut(5, None, vec![]),
        );
        repair.account(
            Topic::channel(Channel::MarketPositions),
            &mut orders,
            cut(1, None, vec![]),
        );
        assert_eq!(
            repair.private_loss(),
            Some(Verdict::PrivateChannelLag {
                channel: Channel::Fill,
                messages_lost: 3
            })
        );
        assert_eq!(repair.messages_lost(), 4);
    }
}
