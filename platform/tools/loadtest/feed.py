"""A worker process of market-data subscribers, and of deliberately slow ones.

Each subscriber follows ``depth``, ``trade`` and ``bookTicker`` of every market in the
run. It keeps a local book from the ``depthSnapshot`` frame and the deltas, counts a
gap whenever a delta's ``U`` is not the previous ``u`` + 1 (an empty delta repeating the
previous ``u`` is a heartbeat of a quiet book, not a gap), and measures feed lag
(receive time minus the frame's event time ``E``) and, for trades, fill-to-stream lag
(receive time minus the engine time ``T`` of the fill). At the end it asks the node
for a fresh snapshot on the same connection -- the reply queues behind every delta
sent before it -- and compares it with the local book.

A slow subscriber subscribes through a socket with a tiny receive buffer and never
reads: the node should disconnect it, which shows as end-of-stream when it finally
drains its socket.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from satchel.tools.loadtest.trader import MAX_US, new_hist


class _Feed:
    def __init__(self) -> None:
        self.frames = 0
        self.gaps = 0
        self.mismatches = 0
        self.checked = 0
        self.lag = new_hist()
        self.trade_lag = new_hist()
        self.disconnects = 0


def _apply(levels: dict[str, str], changes: list[list[str]]) -> None:
    for price, qty in changes:
        if qty == "0":
            levels.pop(price, None)
        else:
            levels[price] = qty


async def _subscriber(url: str, symbols: list[str], feed: _Feed, warm_end: float, end: float) -> None:
    books: dict[str, dict[str, Any]] = {}
    async with open_websocket_url(url, max_message_size=1 << 24) as ws:
        streams = [f"{kind}.{s}" for s in symbols for kind in ("depth", "trade", "bookTicker")]
        await ws.send_message(orjson.dumps({"method": "SUBSCRIBE", "params": streams}).decode())
        snapshots: dict[int, dict] = {}

        async def reader() -> None:
            while True:
                msg = orjson.loads(await ws.get_message())
                now_us = time.time_ns() // 1000
                if "stream" not in msg:
                    if "id" in msg and msg["id"] is not None:
                        snapshots[msg["id"]] = msg
                    continue
                d = msg["data"]
                kind = d.get("e")
                if kind == "depthSnapshot":
                    books[d["s"]] = {"a": dict(d["asks"]), "b": dict(d["bids"]), "u": int(d["lastUpdateId"])}
                    continue
                counted = trio.current_time() >= warm_end
                if counted:
                    feed.frames += 1
                    feed.lag.record_value(min(MAX_US, max(1, now_us - d["E"])))
                if kind == "depth":
                    book = books.get(d["s"])
                    if book is None:
                        continue
                    if d["U"] == d["u"] == book["u"] and not d["a"] and not d["b"]:
                        continue  # a heartbeat: the book is unchanged
                    if d["U"] != book["u"] + 1:
                        feed.gaps += 1
                    book["u"] = d["u"]
                    _apply(book["a"], d["a"])
                    _apply(book["b"], d["b"])
                elif kind == "trade" and counted:
                    feed.trade_lag.record_value(min(MAX_US, max(1, now_us - d["T"])))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep_until(end)
            for i, sym in enumerate(symbols, start=1):
                await ws.send_message(orjson.dumps({"id": i, "method": "depth", "params": {"symbol": sym}}).decode())
            with trio.move_on_after(10):
                while len(snapshots) < len(symbols):
                    await trio.sleep(0.01)
            for i, sym in enumerate(symbols, start=1):
                snap = snapshots.get(i, {}).get("result")
                book = books.get(sym)
                feed.checked += 1
                if snap is None or book is None or book["u"] != int(snap["lastUpdateId"]) \
                        or book["a"] != dict(snap["asks"]) or book["b"] != dict(snap["bids"]):
                    feed.mismatches += 1
            nursery.cancel_scope.cancel()


async def stalled_subscription(port: int, streams: list[str]) -> trio.SocketStream:
    """Handshake and subscribe through a 4 KiB receive buffer; the caller then never reads."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await stream.receive_some(4096))
    await stream.send_all(ws.send(TextMessage(orjson.dumps({"method": "SUBSCRIBE", "params": streams}).decode())))
    return stream


async def _slow_subscriber(port: int, symbols: list[str], end: float) -> bool:
    """Subscribe, never read until the end; True if the node had closed the connection."""
    stream = await stalled_subscription(port, [f"{kind}.{s}" for s in symbols for kind in ("depth", "trade")])
    await trio.sleep_until(end)
    try:
        with trio.fail_after(10):
            while await stream.receive_some(1 << 20):
                pass
        return True  # end of stream: the node hung up on us
    except (trio.TooSlowError, trio.BrokenResourceError, OSError):
        return False
    finally:
        await stream.aclose()


def run_feed(url: str, port: int, symbols: list[str], count: int, slow: int, cfg: dict, queue: Any) -> None:
    feed = _Feed()
    dropped: list[bool] = []

    async def main() -> None:
        t0 = trio.current_time() + max(0.0, cfg["start_at"] - time.time())
        warm_end = t0 + cfg["warmup"]
        # subscribers stay until after the traders' drain, then compare books
        end = warm_end + cfg["duration"] + 2.0

        async def guarded() -> None:
            try:
                await _subscriber(url, symbols, feed, warm_end, end)
            except* (ConnectionClosed, OSError):
                feed.disconnects += 1

        async def slow_one() -> None:
            dropped.append(await _slow_subscriber(port, symbols, end))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(guarded)
            for _ in range(slow):
                nursery.start_soon(slow_one)

    trio.run(main)
    queue.put({
        "type": "feed", "frames": feed.frames, "gaps": feed.gaps, "mismatches": feed.mismatches, "checked": feed.checked,
        "lag": feed.lag.encode(), "trade_lag": feed.trade_lag.encode(), "disconnects": feed.disconnects,
        "slow": len(dropped), "slow_dropped": sum(dropped),
    })
