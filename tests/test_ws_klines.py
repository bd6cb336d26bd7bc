"""The ``kline.<interval>.<symbol>`` stream and the depth heartbeat of a quiet book: frames
from ``MarketData`` alone, the same over a live node, and real ccxt.pro syncing on them."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import orjson
import trio

from conftest import LISTING
from satchel.api.format import Formatter
from satchel.api.klines import INTERVALS, bucket
from satchel.api.marketdata import MarketData
from satchel.core.messages import BID, BlockHeader, DepthDelta, Fill
from satchel.rest import serve
from satchel.tools.client import connect

SYM = "SOL_USDC"
MINUTE = 60_000_000
TS = 1_754_064_000_000_000  # 2025-08-01T16:00:00 UTC, µs: a whole minute


def limit(side: str, price: str, qty: str) -> dict:
    return {"symbol": SYM, "side": side, "orderType": "Limit", "price": price, "quantity": qty}


def utc(text: str) -> datetime:
    """A kline's ``t``/``T``: ISO 8601 without a zone, meaning UTC."""
    assert "T" in text and "+" not in text and not text.endswith("Z")
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def ohlcv(d: dict) -> tuple:
    return d["o"], d["h"], d["l"], d["c"], d["v"], d["n"], d["X"]


# ---------------------------------------------------------------- MarketData alone, block by block


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict] = []

    def push(self, frame: str) -> None:
        self.frames.append(orjson.loads(frame))

    def take(self) -> list[dict]:
        out, self.frames = self.frames, []
        return out


def header(ts: int) -> BlockHeader:
    return BlockHeader(1, 1, ts, b"", 1, 0, b"", b"")


def fill(price: int, qty: int, trade_id: int = 1) -> Fill:
    # SOL_USDC: price in 0.01 USDC ticks, quantity in 0.01 SOL lots
    return Fill(1, SYM, trade_id, price, qty, price * qty * 100, 2, 1, "taker", "maker", BID, 0, 0, 0, 0)


def test_candles_one_frame_per_block_and_rollover_on_sequenced_time():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    sink = Sink()
    md.subscribe(f"kline.1s.{SYM}", sink)
    md.subscribe(f"kline.1m.{SYM}", sink)
    assert sink.take() == []  # nothing has traded: no open candle to send
    assert set(md._markets[SYM].candles) == {"1s", "1m"}  # only the watched intervals are kept
    t0 = TS + 10_000_000
    md.publish(header(t0), [fill(15_000, 200, 1), fill(15_100, 100, 2), fill(14_900, 50, 3)])
    frames = sink.take()
    assert [f["stream"] for f in frames] == [f"kline.1s.{SYM}", f"kline.1m.{SYM}"]  # one per stream per block
    for f in frames:
        assert ohlcv(f["data"]) == ("150", "151", "149", "149", "3.5", 3, False)
    one_s, one_m = (f["data"] for f in frames)
    assert (one_s["t"], one_s["T"]) == ("2025-08-01T16:00:10", "2025-08-01T16:00:11")
    assert (one_m["t"], one_m["T"]) == ("2025-08-01T16:00:00", "2025-08-01T16:01:00")
    assert one_s["e"] == "kline" and one_s["s"] == SYM and isinstance(one_s["E"], int)
    # a block past the 1s candle's end closes it, trade or not; the 1m candle stays open
    md.publish(header(t0 + 1_500_000), [])
    [closed] = sink.take()
    assert closed["stream"] == f"kline.1s.{SYM}" and closed["data"]["t"] == "2025-08-01T16:00:10"
    assert ohlcv(closed["data"]) == ("150", "151", "149", "149", "3.5", 3, True)
    md.publish(header(t0 + 2_000_000), [fill(15_200, 100, 4)])
    new_s, more_m = (f["data"] for f in sink.take())
    assert new_s["t"] == "2025-08-01T16:00:12" and ohlcv(new_s) == ("152", "152", "152", "152", "1", 1, False)
    assert ohlcv(more_m) == ("150", "152", "149", "152", "4.5", 4, False)
    # a trade in the next minute: the old candles go out closed first, then the new ones
    md.publish(header(TS + MINUTE + 5_000_000), [fill(15_300, 100, 5)])
    frames = sink.take()
    order = [(f["stream"].split(".")[1], f["data"]["X"]) for f in frames]
    assert order == [("1s", True), ("1m", True), ("1s", False), ("1m", False)]
    assert ohlcv(frames[1]["data"]) == ("150", "152", "149", "152", "4.5", 4, True)
    assert frames[3]["data"]["t"] == "2025-08-01T16:01:00"
    assert ohlcv(frames[3]["data"]) == ("153", "153", "153", "153", "1", 1, False)
    # the last subscriber leaves: the candle is dropped, later trades cost nothing for it
    md.unsubscribe(f"kline.1s.{SYM}", sink)
    md.unsubscribe(f"kline.1m.{SYM}", sink)
    assert md._markets[SYM].candles == {}
    md.publish(header(TS + 2 * MINUTE), [fill(15_300, 100, 6)])
    assert sink.take() == []


def test_a_subscriber_dropped_while_candles_close_leaves_nothing_behind():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    streams = [f"kline.1s.{SYM}", f"kline.1m.{SYM}"]

    class Dropped(Sink):  # a session whose queue fills on the first closed candle drops all its streams
        def push(self, frame: str) -> None:
            super().push(frame)
            if self.frames[-1]["data"]["X"]:
                md.drop(self, streams)

    gone = Dropped()
    for s in streams:
        md.subscribe(s, gone)
    md.publish(header(TS), [fill(15_000, 100)])  # opens both candles
    md.publish(header(TS + MINUTE), [])  # closes both: the first closing push drops both streams
    assert [f["stream"] for f in gone.take()] == streams + streams[:1]
    assert md.subscriber_count() == 0 and md._markets[SYM].candles == {}


def test_a_first_subscriber_gets_the_open_candle_rebuilt():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    md.publish(header(TS + 1_000_000), [fill(15_000, 100, 1)])
    md.publish(header(TS + 61_000_000), [fill(15_500, 100, 2)])
    md.publish(header(TS + 62_500_000), [fill(14_500, 200, 3)])
    five, second = Sink(), Sink()
    md.subscribe(f"kline.5m.{SYM}", five)  # from the one-minute buckets
    md.subscribe(f"kline.1s.{SYM}", second)  # from the recent trades
    [f] = five.take()
    assert f["data"]["t"] == "2025-08-01T16:00:00" and ohlcv(f["data"]) == ("150", "155", "145", "145", "4", 3, False)
    [f] = second.take()
    assert f["data"]["t"] == "2025-08-01T16:01:02" and ohlcv(f["data"]) == ("145", "145", "145", "145", "2", 1, False)
    later = Sink()
    md.subscribe(f"kline.5m.{SYM}", later)  # a later subscriber gets the candle as kept
    assert ohlcv(later.take()[0]["data"]) == ("150", "155", "145", "145", "4", 3, False)
    # once sequenced time has passed the last trade's candle, there is no open candle to send
    md.publish(header(TS + 64_000_000), [])
    assert second.take()[0]["data"]["X"] is True
    md.unsubscribe(f"kline.1s.{SYM}", second)
    again = Sink()
    md.subscribe(f"kline.1m.{SYM}", again)
    assert ohlcv(again.take()[0]["data"])[5] == 2  # the 1m candle from 16:01 is still open
    md.subscribe(f"kline.1s.{SYM}", again)
    assert again.take() == []


def test_every_interval_is_a_stream_and_unknown_ones_are_not():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    for interval in INTERVALS:
        assert md.valid_public(f"kline.{interval}.{SYM}") and md.valid_public(f"kline.{interval}.SOL_USDC_PERP")
    for bad in ("kline.2m.SOL_USDC", "kline.1M.SOL_USDC", "kline.1min.SOL_USDC", "kline.1m.DOGE_USDC", "kline.1m",
                "kline..SOL_USDC", "kline.SOL_USDC", "kline.1m.SOL_USDC.x", "kline"):
        assert not md.valid_public(bad), bad


def test_heartbeat_only_after_a_quiet_interval_and_only_while_watched():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    sink, other = Sink(), Sink()
    md.subscribe(f"depth.{SYM}", sink)
    md.subscribe("depth.BTC_USDC", other)
    assert [f["data"]["e"] for f in sink.take()] == ["depthSnapshot"]
    other.take()
    md.depth_heartbeat()
    assert sink.take() == []  # the snapshot was news: a heartbeat waits a whole interval
    md.publish(header(TS), [DepthDelta(1, SYM, 7, [(15_000, 100)], [])])
    assert sink.take()[0]["data"]["U"] == 7
    md.depth_heartbeat()
    assert sink.take() == []  # a delta went out during this interval
    assert [f["data"]["U"] for f in other.take()] == [0]  # BTC_USDC has been quiet since its snapshot
    md.depth_heartbeat()
    assert [f["data"]["U"] for f in other.take()] == [0]
    [hb] = sink.take()
    assert hb["stream"] == f"depth.{SYM}"
    d = hb["data"]
    assert (d["e"], d["s"], d["a"], d["b"], d["U"], d["u"], d["T"]) == ("depth", SYM, [], [], 7, 7, TS)
    md.unsubscribe(f"depth.{SYM}", sink)
    md.unsubscribe("depth.BTC_USDC", other)
    assert md._depth_watched == {}
    md.depth_heartbeat()
    assert sink.take() == [] and other.take() == []


# ---------------------------------------------------------------- a live node


async def test_kline_stream_on_a_live_node(server, traders):
    alice, bob = traders
    async with connect(server.url, alice) as a, connect(server.url, bob) as b, \
            connect(server.url) as sec, connect(server.url) as mins, connect(server.url) as every:
        await sec.subscribe([f"kline.1s.{SYM}"])
        await mins.subscribe([f"kline.1m.{SYM}"])
        await every.subscribe([f"kline.{i}.{SYM}" for i in INTERVALS])
        await every.subscribe([f"kline.7m.{SYM}"])
        assert await every.next_frame() == {"id": None, "error": {"code": 4006, "message": "Invalid stream"}}
        await b.request("orderExecute", limit("Ask", "150", "2"))
        await b.request("orderExecute", limit("Ask", "151", "1"))
        taken = await a.request("orderExecute", {"symbol": SYM, "side": "Bid", "orderType": "Market", "quantity": "3"})
        assert taken["status"] == "Filled"  # two fills in one block: one frame per stream
        first = (await sec.next_frame("kline."))["data"]
        assert ohlcv(first) == ("150", "151", "150", "151", "3", 2, False)
        assert utc(first["T"]) - utc(first["t"]) == timedelta(seconds=1)
        m = (await mins.next_frame("kline."))["data"]
        assert ohlcv(m) == ("150", "151", "150", "151", "3", 2, False)
        assert utc(m["t"]).second == 0 and utc(m["T"]) - utc(m["t"]) == timedelta(minutes=1)
        # every interval: one frame each, cut by klines.bucket
        seen = {}
        while len(seen) < len(INTERVALS):
            f = await every.next_frame("kline.")
            interval = f["stream"].split(".")[1]
            assert interval not in seen
            seen[interval] = f["data"]
            assert ohlcv(f["data"])[4:] == ("3", 2, False)
        for interval, d in seen.items():
            start, end = bucket(int(utc(d["t"]).timestamp()) * 1_000_000, interval)
            assert (utc(d["t"]).timestamp(), utc(d["T"]).timestamp()) == (start / 1e6, end / 1e6), interval
        # a second later (sequenced time), the next block closes the 1s candle before any trade
        await trio.sleep(1.1)
        await b.request("orderExecute", limit("Ask", "152", "1"))
        closed = (await sec.next_frame("kline."))["data"]
        assert ohlcv(closed) == ohlcv(first)[:6] + (True,) and closed["t"] == first["t"]
        await a.request("orderExecute", {"symbol": SYM, "side": "Bid", "orderType": "Market", "quantity": "1"})
        nxt = (await sec.next_frame("kline."))["data"]
        assert ohlcv(nxt) == ("152", "152", "152", "152", "1", 1, False) and utc(nxt["t"]) > utc(first["t"])
        m2 = (await mins.next_frame("kline."))["data"]
        if m2["X"]:  # the minute ended between the trades
            assert m2["t"] == m["t"]
            m2 = (await mins.next_frame("kline."))["data"]
            assert ohlcv(m2) == ("152", "152", "152", "152", "1", 1, False)
        else:
            assert ohlcv(m2) == ("150", "152", "150", "152", "4", 3, False)
        # a late subscriber gets the open candle at once
        async with connect(server.url) as late:
            await late.subscribe([f"kline.1m.{SYM}"])
            assert ohlcv((await late.next_frame("kline."))["data"]) == ohlcv(m2)
    md = server.gateway.marketdata
    with trio.fail_after(2):
        while md.subscriber_count():  # each session drops its subscriptions as it ends
            await trio.sleep(0.01)
    assert md._markets[SYM].candles == {}


async def test_depth_heartbeats_on_a_quiet_book(server, traders):
    _, bob = traders
    md = server.gateway.marketdata
    period = server.gateway.settings.depth_heartbeat_ms / 1000
    async with connect(server.url, bob) as b, connect(server.url) as feed:
        await b.request("orderExecute", limit("Ask", "150", "2"))
        await feed.subscribe([f"depth.{SYM}"])
        snap = (await feed.next_frame("depth."))["data"]
        last = int(snap["lastUpdateId"])
        began = trio.current_time()
        for _ in range(3):
            d = (await feed.next_frame("depth.", timeout=5 * period))["data"]
            assert (d["e"], d["s"], d["a"], d["b"], d["U"], d["u"]) == ("depth", SYM, [], [], last, last)
            assert d["T"] >= snap["T"] and d["E"] >= snap["E"]
        assert trio.current_time() - began < 6 * period
        await b.request("orderExecute", limit("Ask", "151", "1"))
        d = (await feed.next_frame("depth."))["data"]
        while not d["a"]:  # heartbeats sent before the order's block
            assert d["U"] == d["u"] == last
            d = (await feed.next_frame("depth."))["data"]
        assert d["U"] == d["u"] == last + 1 and d["a"] == [["151", "1"]]
        d = (await feed.next_frame("depth.", timeout=5 * period))["data"]
        assert (d["a"], d["b"], d["U"], d["u"]) == ([], [], last + 1, last + 1)
        # unsubscribed: the market is no longer visited and nothing more arrives
        await feed.send_raw(orjson.dumps({"method": "UNSUBSCRIBE", "params": [f"depth.{SYM}"]}))
        await feed.request("depth", {"symbol": SYM}, sign=False)  # a round trip: the UNSUBSCRIBE is applied
        assert SYM not in md._depth_watched
        _pending(feed)
        await trio.sleep(3 * period)
        assert not [f for f in _pending(feed) if f.get("stream", "").startswith("depth.")]


def _pending(client) -> list[dict]:
    out = []
    while True:
        try:
            out.append(client.frames.receive_nowait())
        except trio.WouldBlock:
            return out


# ---------------------------------------------------------------- unmodified ccxt.pro against the node


async def _ccxt(rest: str, ws: str, between) -> dict:
    """ccxt.pro in its own asyncio loop (a worker thread): watch_order_book on a quiet book,
    then watch_ohlcv before and after ``between`` (a trio function run on the node's side)."""
    import ccxt.pro

    ex = ccxt.pro.backpack({"enableRateLimit": False})
    # only the base URLs change; ccxt joins them with '/' + 'api/v1/...' (backpack.sign)
    ex.urls["api"] = {"public": rest, "private": rest, "ws": {"public": ws, "private": ws}}
    try:
        began = time.monotonic()
        book = await asyncio.wait_for(ex.watch_order_book("SOL/USDC"), 8)
        synced_s = time.monotonic() - began
        out = {"synced_s": synced_s, "nonce": book["nonce"], "asks": [list(x) for x in book["asks"]],
               "bids": [list(x) for x in book["bids"]]}  # copies: ccxt keeps updating the book in place
        candles = await asyncio.wait_for(ex.watch_ohlcv("SOL/USDC", "1m"), 5)
        out["seeded"] = list(candles[-1])
        trio.from_thread.run(between)  # blocks this loop briefly; ccxt's socket buffers meanwhile
        for _ in range(3):  # a closed candle (X true) may come first when the minute turns
            await asyncio.wait_for(ex.watch_ohlcv("SOL/USDC", "1m"), 5)
            # ccxt's cache, not the watch's answer: the new minute's frame may have been handled
            # in the same read as the closed one, and a next watch would wait for a frame to come
            latest = list(ex.ohlcvs["SOL/USDC"]["1m"][-1])
            if latest[5] in (0.75, 0.25):
                break
        out["updated"] = latest
        return out
    finally:
        await asyncio.wait_for(ex.close(), 5)


async def test_ccxt_watches_order_book_and_ohlcv(nursery, server, traders):
    alice, bob = traders
    rest = await nursery.start(serve, server.gateway, "127.0.0.1", 0)
    async with connect(server.url, alice) as a, connect(server.url, bob) as b:
        await b.request("orderExecute", limit("Ask", "150", "2"))
        await a.request("orderExecute", limit("Bid", "150", "0.5"))  # a trade: the 1m candle is open
        traded_ms = time.time() * 1000
        depth = await a.request("depth", {"symbol": SYM}, sign=False)

        async def second_trade() -> None:
            await a.request("orderExecute", limit("Bid", "150", "0.25"))

        # the book is quiet from here on: only heartbeats can bring ccxt its 11 deltas
        out = await trio.to_thread.run_sync(asyncio.run, _ccxt(rest, server.url, second_trade))
    assert out["synced_s"] < 4, out["synced_s"]  # ~11 heartbeats at 100 ms, then the REST snapshot
    assert out["nonce"] == int(depth["lastUpdateId"])
    assert out["asks"] == [[150.0, 1.5]] and out["bids"] == []
    ts, o, h, low, c, v = out["seeded"]
    assert (o, h, low, c, v) == (150.0, 150.0, 150.0, 150.0, 0.5)
    # ccxt stamps a streamed candle with its end T (as against Backpack): a whole minute after the trade
    assert ts % 60_000 == 0 and traded_ms - 1000 < ts <= traded_ms + 60_000
    ts2, o, h, low, c, v = out["updated"]
    assert c == 150.0 and v in (0.75, 0.25) and (v == 0.75) == (ts2 == ts)
