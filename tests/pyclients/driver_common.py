"""What every driver shares: arguments, a throwaway key, and the line protocol with the Rust test.

The test writes one command per line on stdin and reads one JSON object per line on stdout:
  stats  -> {"counts": {type: n}, "invalid": {type: [error, ...]}, "errors": [...], plus what the
             library tells of its connection ("connected", and "reconnects" where it counts them)}
  books  -> {"books": {ticker: {"yes": [[price, qty], ...], "no": [...]}}}
  mark   -> {"marked": true}   (counts and errors start again from zero)
  quit   -> the driver stops its client and exits
The driver never reconnects by hand: whatever reconnecting happens is the library's own.
"""

import argparse
import json
import logging
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def parse_args():
    # The library's own log lines (disconnects, reconnects, rejected payloads) go to stderr, which
    # the test keeps in a file and shows when it fails.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="ws://HOST:PORT/trade-api/ws/v2")
    p.add_argument("--markets", required=True, help="comma-separated tickers")
    args = p.parse_args()
    args.markets = args.markets.split(",")
    return args


def throwaway_key(directory: str) -> str:
    """A fresh RSA key for libraries that insist on signing; the demo relay ignores the headers."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = Path(directory) / "throwaway.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def key_dir():
    return tempfile.TemporaryDirectory(prefix="pyclients-key-")


class Record:
    """What the library delivered, guarded by one lock: handlers run on the library's thread or loop."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = Counter()
        self.invalid = {}
        self.errors = []
        # Set by the driver: what the library itself says about its connection.
        self.state = dict

    def count(self, kind):
        with self.lock:
            self.counts[kind] += 1

    def invalid_payload(self, kind, error):
        with self.lock:
            seen = self.invalid.setdefault(kind, [])
            if error not in seen and len(seen) < 5:
                seen.append(error)

    def error(self, text):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(text)

    def stats(self):
        with self.lock:
            out = {
                "counts": dict(self.counts),
                "invalid": dict(self.invalid),
                "errors": list(self.errors),
            }
        out.update(self.state())
        return out

    def mark(self):
        with self.lock:
            self.counts.clear()
            self.invalid.clear()
            self.errors.clear()


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(record, books, stop):
    """Answers the test's commands until `quit` or end of input; `books()` returns the books."""
    reply({"ready": True})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            reply(record.stats())
        elif cmd == "books":
            reply({"books": books()})
        elif cmd == "mark":
            record.mark()
            reply({"marked": True})
        elif cmd == "quit":
            break
        else:
            reply({"unknown": cmd})
    stop()


async def serve_async(record, books, stop):
    """`serve` for drivers whose library state lives on the event loop: commands are read on a
    thread and answered on the loop, so `books()` never races the library's own updates."""
    import asyncio

    loop = asyncio.get_running_loop()
    reply({"ready": True})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if not line or cmd == "quit":
            break
        if cmd == "stats":
            reply(record.stats())
        elif cmd == "books":
            reply({"books": books()})
        elif cmd == "mark":
            record.mark()
            reply({"marked": True})
        else:
            reply({"unknown": cmd})
    await stop()
