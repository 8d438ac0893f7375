"""Drives pykalshi-client (PyPI `pykalshi-client`, pinned in requirements-pykalshi-client.txt).

Pointed at the relay by `ClientConfig(ws_base_url=...)`, its documented setting (the library adds
`/trade-api/ws/v2`). The library has no book of its own: it hands each frame to a callback, and
its message models are generated from the exchange's AsyncAPI spec, so this driver parses every
frame with those models (a missing or mistyped field fails here) and applies snapshots and deltas
to a plain dict. `listener_loop` reconnects by itself and recovers its subscriptions; a sequence
gap is handled as its README says, with `resubscribe_channel`.
"""

import asyncio
import json
import sys
import threading
from decimal import Decimal

import driver_common as common
from pydantic import ValidationError
from pykalshi import ClientConfig, KalshiCredentials, KalshiWebSocketClient
from pykalshi.exceptions import KalshiSequenceGapError
from pykalshi.models.ws import (
    ErrorResponsePayload,
    OrderbookDeltaPayload,
    OrderbookSnapshotPayload,
    TickerPayload,
    TradePayload,
)

SUFFIX = "/trade-api/ws/v2"
MODELS = {
    "orderbook_snapshot": OrderbookSnapshotPayload,
    "orderbook_delta": OrderbookDeltaPayload,
    "ticker": TickerPayload,
    "trade": TradePayload,
    "error": ErrorResponsePayload,
}

args = common.parse_args()
if not args.url.endswith(SUFFIX):
    sys.exit(f"--url must end with {SUFFIX}")
base = args.url[: -len(SUFFIX)]

record = common.Record()
books = {}
books_lock = threading.Lock()


def fp(value):
    return str(Decimal(value).quantize(Decimal("0.01")))


async def on_message(raw):
    data = json.loads(raw)
    kind = data.get("type")
    model = MODELS.get(kind)
    if model is None:
        return
    try:
        payload = model.model_validate(data)
    except ValidationError as err:
        record.count(f"invalid_{kind}")
        record.invalid_payload(
            kind, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        )
        return
    record.count(kind)
    msg = payload.msg
    if kind == "orderbook_snapshot":
        with books_lock:
            books[msg.market_ticker] = {
                "yes": {p: fp(q) for p, q in (msg.yes_dollars_fp or [])},
                "no": {p: fp(q) for p, q in (msg.no_dollars_fp or [])},
            }
    elif kind == "orderbook_delta":
        with books_lock:
            book = books.get(msg.market_ticker)
            if book is None:
                record.error(f"delta before snapshot for {msg.market_ticker}")
                return
            side = book[msg.side]
            qty = Decimal(side.get(msg.price_dollars, "0")) + Decimal(msg.delta_fp)
            if qty <= 0:
                side.pop(msg.price_dollars, None)
            else:
                side[msg.price_dollars] = fp(qty)
    elif kind == "error":
        record.error(raw)


def current_books():
    with books_lock:
        return {t: {s: sorted(levels.items()) for s, levels in b.items()} for t, b in books.items()}


async def main():
    with common.key_dir() as d:
        creds = KalshiCredentials.from_key_file("relay-test", common.throwaway_key(d))
    ws = KalshiWebSocketClient(creds, ClientConfig(ws_base_url=base), on_message_callback=on_message)
    await ws.connect()
    await ws.add_markets(args.markets, ["orderbook_delta", "ticker", "trade"])

    async def listen():
        while True:
            try:
                await ws.listener_loop()
                return
            except KalshiSequenceGapError as e:
                record.count("sequence_gap")
                await ws.resubscribe_channel(e.channel)

    listener = asyncio.create_task(listen())
    loop = asyncio.get_running_loop()

    def state():
        s = {"connected": ws.ws is not None and ws.ws.state.name == "OPEN"}
        if listener.done() and not listener.cancelled() and listener.exception():
            s["listener_failed"] = repr(listener.exception())
        return s

    record.state = state
    done = asyncio.Event()
    # The command loop blocks on stdin, so it runs on a thread; answers read state under locks.
    await loop.run_in_executor(
        None, common.serve, record, current_books, lambda: loop.call_soon_threadsafe(done.set)
    )
    await done.wait()
    listener.cancel()
    await ws.close()


asyncio.run(main())
