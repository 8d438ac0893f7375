"""Drives kalshi-sdk (PyPI `kalshi-sdk`, pinned in requirements-kalshi-sdk.txt; Python >= 3.12).

Pointed at the relay by `KalshiConfig(ws_base_url=..., allow_unknown_host=True)`, its documented
settings for mock servers and proxies. The library keeps books itself (its `OrderbookManager`;
a snapshot message's `msg.yes` / `msg.no` are the manager's live maps, as its docs say), checks
seq per sid, reconnects by itself and resubscribes, and treats 1002/1003/1007-1010 and 4000-4999
as permanent closes.
"""

import asyncio
import logging

import driver_common as common
from kalshi import KalshiAuth, KalshiConfig
from kalshi.ws import KalshiWebSocket

args = common.parse_args()
record = common.Record()
live_books = {}  # ticker -> the latest snapshot's payload, whose maps the library keeps current


class Rejected(logging.Handler):
    """The library logs frames its models reject and gaps it repairs: record them."""

    def emit(self, rec):
        text = rec.getMessage()
        if rec.levelno >= logging.WARNING and "reconnect" not in text.lower():
            if rec.exc_info and hasattr(rec.exc_info[1], "errors"):
                text += ": " + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in rec.exc_info[1].errors()
                )
            record.error(text[:500])


logging.getLogger("kalshi").addHandler(Rejected())


async def consume(stream, name):
    try:
        async for msg in stream:
            kind = getattr(msg, "type", name)
            record.count(kind)
            if kind == "orderbook_snapshot":
                live_books[msg.msg.market_ticker] = msg.msg
        record.error(f"the {name} stream ended")
    except Exception as e:  # the library ends a stream with an error it could not recover from
        record.error(f"the {name} stream failed: {e!r}")


def current_books():
    def side(levels):
        return sorted((f"{p:.4f}", f"{q:.2f}") for p, q in levels.items())

    return {t: {"yes": side(b.yes), "no": side(b.no)} for t, b in live_books.items()}


async def main():
    with common.key_dir() as d:
        auth = KalshiAuth.from_key_path("relay-test", common.throwaway_key(d))
    config = KalshiConfig(
        base_url=args.url.split("/trade-api")[0].replace("ws://", "http://") + "/trade-api/v2",
        ws_base_url=args.url,
        allow_unknown_host=True,
    )

    async def on_error(err):
        record.error(repr(err))

    state = {"connected": False, "reconnects": 0}

    async def on_state_change(old, new):
        state["connected"] = new.value in ("connected", "streaming")
        if new.value == "reconnecting":
            state["reconnects"] += 1

    record.state = lambda: dict(state)
    ws = KalshiWebSocket(
        auth=auth, config=config, on_error=on_error, on_state_change=on_state_change
    )
    async with ws.connect() as session:
        # Books last: while it awaits a subscribe's reply the library discards other frames, so
        # a snapshot that arrived before a later subscribe's reply would be lost.
        streams = [
            (await session.subscribe_ticker(tickers=args.markets), "ticker"),
            (await session.subscribe_trade(tickers=args.markets), "trade"),
            (await session.subscribe_orderbook_delta(tickers=args.markets), "orderbook"),
        ]
        tasks = [asyncio.create_task(consume(s, n)) for s, n in streams]

        async def stop():
            for t in tasks:
                t.cancel()

        await common.serve_async(record, current_books, stop)


asyncio.run(main())
