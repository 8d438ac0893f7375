"""Drives pykalshi (PyPI `pykalshi`, pinned in requirements-pykalshi.txt) against the relay.

Pointed at the relay by its module-level endpoint constant `pykalshi.feed.DEFAULT_WS_BASE`, read
when a Feed is made; nothing else of the library is touched. Books are kept by the library's
`OrderbookManager`, wired to the feed as its docstring shows. `Feed` reconnects by itself (backoff
from 0.5 s) and replays its subscriptions.
"""

import logging
import threading

import driver_common as common

args = common.parse_args()

import pykalshi.feed  # noqa: E402

pykalshi.feed.DEFAULT_WS_BASE = args.url

from pykalshi import Feed, KalshiClient, OrderbookManager  # noqa: E402
from pykalshi.feed import OrderbookSnapshotMessage  # noqa: E402

record = common.Record()
books = {}
books_lock = threading.Lock()


class InvalidPayloads(logging.Handler):
    """pykalshi logs a model validation failure and hands the raw dict on: record which fields."""

    def emit(self, rec):
        if rec.exc_info and rec.args:
            kind = rec.args[0]
            err = rec.exc_info[1]
            detail = (
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                if hasattr(err, "errors")
                else str(err)
            )
            record.invalid_payload(kind, detail)


logging.getLogger("pykalshi.feed").addHandler(InvalidPayloads())


def on_book(msg):
    if isinstance(msg, dict):
        record.count("unparsed_orderbook")
        return
    with books_lock:
        book = books.setdefault(msg.market_ticker, OrderbookManager(msg.market_ticker))
        if isinstance(msg, OrderbookSnapshotMessage):
            record.count("orderbook_snapshot")
            book.apply_snapshot(msg.yes_dollars, msg.no_dollars)
        else:
            record.count("orderbook_delta")
            book.apply_delta(msg.side, msg.price_dollars, msg.delta_fp)


def on_ticker(msg):
    record.count("ticker" if not isinstance(msg, dict) else "unparsed_ticker")


def on_trade(msg):
    record.count("trade" if not isinstance(msg, dict) else "unparsed_trade")


def on_error(msg):
    record.error(repr(msg))


def current_books():
    with books_lock:
        return {
            t: {"yes": sorted(b.yes.items()), "no": sorted(b.no.items())} for t, b in books.items()
        }


with common.key_dir() as d:
    client = KalshiClient(api_key_id="relay-test", private_key_path=common.throwaway_key(d))
feed = Feed(client)
feed.on("orderbook_delta", on_book)
feed.on("ticker", on_ticker)
feed.on("trade", on_trade)
feed.on("error", on_error)
for channel in ("orderbook_delta", "ticker", "trade"):
    feed.subscribe(channel, market_tickers=args.markets)
feed.start()
record.state = lambda: {"connected": feed.is_connected, "reconnects": feed.reconnect_count}
common.serve(record, current_books, feed.stop)
