"""Platform statistics (``satchel.api.stats``): the ``platformStats`` stream one frame per
second of sequenced time, figures that agree with the ledger's own (24 h volumes, open
interest, assets under custody), the request and ``GET /api/v1/stats``, and ``satchel
stats`` against a ``satchel serve`` process."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import httpx
import orjson
import trio

from conftest import LISTING, start_node, wait_ready
from satchel.api.format import Formatter
from satchel.api.marketdata import MarketData
from satchel.api.stats import STREAM, PlatformStats
from satchel.core.messages import (
    BID, BlockHeader, Deposited, Fill, LedgerOf, MarksOf, PerpPrices, PoolsOf, PositionsOf, SetIndex,
)
from satchel.rest import serve
from satchel.signing import Keypair, load_key
from satchel.tools.client import connect, free_port

USDC = 10**6
SOL = 10**9
PERP = "SOL_USDC_PERP"
SECOND = 1_000_000
T0 = 1_754_064_000_000_000  # µs


# ---------------------------------------------------------------- the component alone, block by block


class Sink:
    def __init__(self) -> None:
        self.frames: list[str] = []

    def push(self, frame: str) -> None:
        self.frames.append(frame)

    def take(self) -> list[dict]:
        out, self.frames = self.frames, []
        return [orjson.loads(f) for f in out]


class Reads:
    """``sequencer.read`` held by the test: a read waits until ``answer``."""

    def __init__(self) -> None:
        self.queue: list = []

    def __call__(self, query, callback) -> None:
        self.queue.append((query, callback))

    def answer(self, marks: dict, ledger: dict | None = None, pools: list | None = None) -> None:
        queued, self.queue = self.queue, []
        for query, callback in queued:
            message = query.message
            callback(ledger if isinstance(message, LedgerOf) else pools or [] if isinstance(message, PoolsOf) else marks)


def header(height: int, ts: int) -> BlockHeader:
    return BlockHeader(height, height, ts, b"", 1, 0, b"", b"")


def sol_fill(price: int, qty: int, symbol: str = "SOL_USDC") -> Fill:
    # SOL markets: price in 0.01 USDC ticks, quantity in 0.01 SOL lots: notional = price x qty x 100 USDC units
    return Fill(1, symbol, 1, price, qty, price * qty * 100, 2, 1, "taker", "maker", BID, 0, 0, 0, 0)


def marks(oi: int = 0, mark: int = 0) -> dict:
    return {PERP: PerpPrices(mark, mark, mark, 0, 0, oi)} if mark else {}


def test_one_frame_per_second_of_sequenced_time():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    reads = Reads()
    stats = PlatformStats(md.fmt, md, reads, height=10, timestamp=T0)
    sink = Sink()
    md.subscribe(STREAM, sink)
    assert sink.take() == []  # no figures yet: no snapshot

    stats.start()  # the first read asks the ledger's deposits too
    assert [type(q.message) for q, _ in reads.queue] == [MarksOf, PoolsOf, LedgerOf]
    # a block published while that read waits is inside its answer: not counted twice
    stats.publish(header(11, T0 + 100), [Deposited(1, "a", "USDC", 5 * USDC)])
    reads.answer({}, {"USDC": (105 * USDC, 0, 0, 105 * USDC), "SOL": (0, 0, 0, 0)})
    [f] = sink.take()
    assert f["stream"] == STREAM and f["data"]["e"] == STREAM
    assert (f["data"]["E"], f["data"]["blockHeight"]) == (T0 + 100, 11)
    custody = {a["symbol"]: a["custody"] for a in f["data"]["assets"]}
    assert (custody["USDC"], custody["SOL"]) == ("105", "0")

    # within the second: no read, no frame; deposits are counted from the events
    ts = T0 + 100
    for dt in (300_000, 999_999):
        md.publish(header(12, ts + dt), [])
        stats.publish(header(12, ts + dt), [Deposited(1, "b", "SOL", 2 * SOL)])
    assert reads.queue == [] and sink.take() == []
    # a second of sequenced time later: one read (MarksOf and PoolsOf), one frame
    md.publish(header(13, ts + SECOND), [sol_fill(15_000, 1_000)])  # 10 SOL at 150 on the spot market
    stats.publish(header(13, ts + SECOND), [])
    assert [type(q.message) for q, _ in reads.queue] == [MarksOf, PoolsOf]
    # blocks keep coming while the read waits: its answer describes the last of them
    for h, dt in ((14, SECOND + 400_000), (15, 2 * SECOND + 300_000)):
        md.publish(header(h, ts + dt), [sol_fill(15_000, 100, PERP)])  # 1 SOL at 150 on the perp
        stats.publish(header(h, ts + dt), [])
    assert len(reads.queue) == 2
    reads.answer(marks(oi=200, mark=15_000))
    [f] = sink.take()
    d = f["data"]
    assert (d["E"], d["blockHeight"]) == (ts + 2 * SECOND + 300_000, 15)
    rows = {m["symbol"]: m for m in d["markets"]}
    assert (rows["SOL_USDC"]["volume"], rows["SOL_USDC"]["quoteVolume"], rows["SOL_USDC"]["lastPrice"]) == ("10", "1500", "150")
    assert (rows[PERP]["volume"], rows[PERP]["quoteVolume"], rows[PERP]["marketType"]) == ("2", "300", "PERP")
    assert d["volume24h"] == "1800"
    [oi] = [r for r in d["openInterest"] if r["symbol"] == PERP]
    assert (oi["openInterest"], oi["markPrice"], oi["notional"], oi["notionalValue"]) == ("2", "150", "300", "300")
    assert d["openInterestValue"] == "300"
    assets = {a["symbol"]: a for a in d["assets"]}
    # 105 USDC + 4 SOL at the perp's mark
    assert (assets["SOL"]["custody"], assets["SOL"]["price"], assets["SOL"]["custodyValue"]) == ("4", "150", "600")
    assert (assets["USDC"]["custody"], assets["USDC"]["custodyValue"]) == ("105", "105")
    assert assets["BTC"]["price"] is None and assets["BTC"]["custodyValue"] is None  # no price: left out of the total
    assert d["custodyValue"] == "705"
    assert all(a["lent"] == a["borrowed"] == "0" for a in d["assets"]) and d["lentValue"] == d["borrowedValue"] == "0"

    # the next frame waits for a block a full second after this one's E, not the next whole second
    e = d["E"]
    for h, t in ((16, e + SECOND - 1), (17, e + SECOND)):
        md.publish(header(h, t), [])
        stats.publish(header(h, t), [])
        if h == 16:
            assert reads.queue == []
    reads.answer(marks(oi=200, mark=15_000))
    [f] = sink.take()
    assert f["data"]["E"] == e + SECOND

    # a late subscriber's snapshot is the stream's last frame, the same string
    last = sink.frames[-1] if sink.frames else None
    assert last is None
    md.publish(header(18, e + 2 * SECOND), [])
    stats.publish(header(18, e + 2 * SECOND), [])
    reads.answer(marks(oi=200, mark=15_000))
    [raw] = sink.frames
    late = Sink()
    md.subscribe(STREAM, late)
    assert late.frames == [raw]


def test_a_request_refreshes_the_figures_without_a_frame():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    reads = Reads()
    stats = PlatformStats(md.fmt, md, reads, height=1, timestamp=T0)
    sink = Sink()
    md.subscribe(STREAM, sink)
    answers: list[dict] = []
    stats.when_ready(answers.append)  # nothing taken yet: waits for the read it starts
    stats.when_ready(answers.append)  # ... and a second request shares it
    assert len(reads.queue) == 3 and answers == []  # MarksOf + PoolsOf + LedgerOf
    reads.answer({}, {"USDC": (7 * USDC, 0, 0, 7 * USDC)})
    assert len(answers) == 2 and answers[0] is answers[1] and len(sink.take()) == 1
    stats.when_ready(answers.append)  # nothing published since: answered at once
    assert len(answers) == 3 and reads.queue == []
    # a block within the second: a request takes fresh figures, the stream stays quiet
    stats.publish(header(2, T0 + 500_000), [Deposited(1, "a", "USDC", 3 * USDC)])
    assert reads.queue == []
    stats.when_ready(answers.append)
    reads.answer({})
    assert answers[-1]["E"] == T0 + 500_000 and sink.take() == []
    assert {a["symbol"]: a["custody"] for a in answers[-1]["assets"]}["USDC"] == "10"
    # the stream's second is counted from its last frame (T0), not from the refresh
    stats.publish(header(3, T0 + SECOND), [])
    reads.answer({})
    assert [f["data"]["E"] for f in sink.take()] == [T0 + SECOND]


def test_the_stream_is_public_and_symbolless():
    md = MarketData(Formatter(LISTING.markets, LISTING.assets))
    assert not md.valid_public(STREAM)  # until the stats register it
    PlatformStats(md.fmt, md, Reads())
    assert md.valid_public(STREAM)
    assert not md.valid_public(f"{STREAM}.SOL_USDC")


# ---------------------------------------------------------------- a live node


def perp(side: str, qty: str) -> dict:
    return {"symbol": PERP, "side": side, "orderType": "Limit", "price": "150", "quantity": qty}


def spot(side: str, qty: str) -> dict:
    return {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": "150", "quantity": qty}


def unswept(d: dict) -> dict:
    """A frame's figures without the lending ones (an auto-lend sweep moves them)."""
    out = {k: v for k, v in figures(d).items() if k not in ("lentValue", "borrowedValue")}
    out["assets"] = [{k: v for k, v in a.items() if k not in ("lent", "borrowed", "lentValue", "borrowedValue")}
                     for a in d["assets"]]
    return out


def figures(d: dict) -> dict:
    """A frame's figures without its time and height."""
    return {k: v for k, v in d.items() if k not in ("E", "blockHeight")}


async def test_live_figures_agree_with_the_ledger(nursery, server, traders):
    alice, bob = traders  # 100,000 USDC; 1,000 SOL
    carol, dave = Keypair.generate(), Keypair.generate()
    await server.fund(carol, USDC=1_000 * USDC)
    await server.fund(dave, USDC=1_000 * USDC)
    node = server.node
    admin = node.admin.api_key
    await node.submit_wait(SetIndex(admin, PERP, 15_000))
    await node.submit_wait(SetIndex(admin, PERP, 15_000))  # the mark is set by the periodic phase
    rest = await nursery.start(serve, server.gateway, "127.0.0.1", 0)
    async with connect(server.url, alice) as a, connect(server.url, bob) as b, connect(server.url, carol) as c, \
            connect(server.url, dave) as d, connect(server.url) as watcher:
        await watcher.subscribe([STREAM])
        first = await watcher.next_frame(STREAM)  # the snapshot on subscribe
        assert first["data"]["volume24h"] == "0"
        assert (await b.request("orderExecute", spot("Ask", "10")))["status"] == "New"
        assert (await a.request("orderExecute", spot("Bid", "10")))["status"] == "Filled"
        assert (await c.request("orderExecute", perp("Ask", "2")))["status"] == "New"
        assert (await d.request("orderExecute", perp("Bid", "2")))["status"] == "Filled"

        # blocks every 0.1 s for 2.6 s: sequenced time moves on, the frames follow it
        frames = [first]
        with trio.move_on_after(2.6):
            while True:
                await node.submit_wait(SetIndex(admin, PERP, 15_000))
                await trio.sleep(0.1)
        await trio.sleep(0.2)
        while True:
            try:
                frames.append(watcher.frames.receive_nowait())
            except trio.WouldBlock:
                break
        times = [f["data"]["E"] for f in frames]
        assert len(frames) >= 3, times
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        assert all(g >= SECOND for g in gaps), gaps
        assert all(g < 2 * SECOND for g in gaps[1:]), gaps  # blocks every 0.1 s: never a second skipped for long
        last = frames[-1]["data"]

        # 24 h volumes
        rows = {m["symbol"]: m for m in last["markets"]}
        assert (rows["SOL_USDC"]["volume"], rows["SOL_USDC"]["quoteVolume"], rows["SOL_USDC"]["trades"]) == ("10", "1500", "1")
        assert (rows[PERP]["volume"], rows[PERP]["quoteVolume"], rows[PERP]["trades"]) == ("2", "300", "1")
        assert rows["SOL_USDC"]["lastPrice"] == "150" and rows["SOL_USDC"]["priceChangePercent"] == "0.000000"
        assert all(m["volume"] == "0" for s, m in rows.items() if s not in ("SOL_USDC", PERP))
        assert set(rows) == set(LISTING.markets)
        assert last["volume24h"] == "1800" and last["valuationAsset"] == "USDC"
        for s in rows:  # market data's own ticker, as GET /api/v1/ticker shows it
            ticker = server.gateway.marketdata.rest_ticker(s)
            assert {k: rows[s][k] for k in ticker if k != "symbol"} == {k: v for k, v in ticker.items() if k != "symbol"}

        # open interest: the node's openInterest, the positions, at the mark
        [oi] = [r for r in last["openInterest"] if r["symbol"] == PERP]
        [node_oi] = await watcher.request("openInterest", {"symbol": PERP}, sign=False)
        [mark] = await watcher.request("markPrices", {"symbol": PERP}, sign=False)
        assert oi["openInterest"] == node_oi["openInterest"] == "2"
        longs = (await node.ask("risk", PositionsOf(dave.api_key))).positions
        assert [(p.symbol, p.size) for p in longs] == [(PERP, 200)]
        assert oi["markPrice"] == mark["markPrice"]
        assert Decimal(oi["notional"]) == Decimal(oi["openInterest"]) * Decimal(oi["markPrice"]) == Decimal(last["openInterestValue"])
        assert all(r["openInterest"] == "0" for r in last["openInterest"] if r["symbol"] != PERP)

        # assets under custody: the ledger's deposits, exactly what was funded
        ledger = await watcher.request("ledgerTotals", sign=False)
        assets = {x["symbol"]: x for x in last["assets"]}
        assert {s: x["custody"] for s, x in assets.items()} == {s: t["deposits"] for s, t in ledger.items()}
        assert (assets["USDC"]["custody"], assets["SOL"]["custody"], assets["BTC"]["custody"]) == ("102000", "1000", "0")
        assert assets["SOL"]["price"] == mark["markPrice"]  # valued at the perp's mark
        assert Decimal(last["custodyValue"]) == 102_000 + 1_000 * Decimal(mark["markPrice"])
        # lent and borrowed: the pools' totals (auto-lend has swept idle balances into them).
        # Compared with a fresh answer, not the last frame: a sweep in the blocks after that
        # frame (less than a second of sequenced time, so no frame of their own) moves them.
        fresh = {x["symbol"]: x for x in (await watcher.request("platformStats", sign=False))["assets"]}
        pools = {p["symbol"]: p for p in await watcher.request("borrowLendMarkets", sign=False)}
        assert {s: (x["lent"], x["borrowed"]) for s, x in fresh.items() if s in pools} == {
            s: (p["lentQuantity"], p["borrowedQuantity"]) for s, p in pools.items()}
        assert Decimal(fresh["USDC"]["lent"]) > 0 and last["borrowedValue"] == "0"
        assert Decimal(last["lentValue"]) == sum(Decimal(x["lentValue"]) for x in assets.values() if x["lentValue"])

        # the request and REST answer the same figures, as of the last block: the last
        # frame's, but for what a sweep in the blocks after it moved
        answer = await watcher.request("platformStats", sign=False)
        assert answer["E"] >= last["E"] and unswept(answer) == unswept(last)
        async with httpx.AsyncClient(base_url=rest) as http:
            r = await http.get("/api/v1/stats")
            assert r.status_code == 200 and figures(r.json()) == figures(answer)

        # a new subscriber's snapshot is the latest figures
        async with connect(server.url) as late:
            await late.subscribe([STREAM])
            snap = await late.next_frame(STREAM)
            assert figures(snap["data"]) == figures(last) and snap["data"]["E"] >= last["E"]
            await late.subscribe([f"{STREAM}.SOL_USDC"])
            while "error" not in (err := await late.next_frame()):
                pass
            assert err["error"]["code"] == 4006


# ---------------------------------------------------------------- satchel stats against satchel serve


def satchel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satchel.tools.cli", *args], capture_output=True, text=True)


async def test_satchel_stats_command(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    proc = start_node(data, port, tmp_path / "node.log")
    try:
        await wait_ready(url, proc)
        admin = load_key(data, "admin.key")
        alice, bob = Keypair.generate(), Keypair.generate()
        async with connect(url, admin) as adm, connect(url, alice) as a, connect(url, bob) as b:
            await adm.request("deposit", {"account": alice.api_key, "asset": "USDC", "quantity": "5000"})
            await adm.request("deposit", {"account": bob.api_key, "asset": "SOL", "quantity": "20"})
            assert (await b.request("orderExecute", spot("Ask", "4")))["status"] == "New"
            assert (await a.request("orderExecute", spot("Bid", "3")))["status"] == "Filled"
        # a quiet node (no oracle, no demo): the answer is as of its last block all the same
        r = await trio.to_thread.run_sync(lambda: satchel("stats", "--url", url, "--json"))
        assert r.returncode == 0, r.stderr
        stats = json.loads(r.stdout)
        rows = {m["symbol"]: m for m in stats["markets"]}
        assert (rows["SOL_USDC"]["volume"], rows["SOL_USDC"]["quoteVolume"]) == ("3", "450")
        assert stats["volume24h"] == "450"
        assets = {x["symbol"]: x for x in stats["assets"]}
        assert (assets["USDC"]["custody"], assets["SOL"]["custody"]) == ("5000", "20")
        assert assets["SOL"]["price"] == "150"  # no perp mark on this node: the spot market's last trade
        assert stats["custodyValue"] == "8000"  # 5,000 USDC + 20 SOL at 150
        table = await trio.to_thread.run_sync(lambda: satchel("stats", "--url", url))
        assert table.returncode == 0, table.stderr
        out = table.stdout
        for text in ("24 h volume", "assets under custody", "total lent", "total borrowed", "SOL_USDC", "450",
                     "8000", "open interest"):
            assert text in out, (text, out)
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        # restarted: custody comes from the recovered ledger (the 24 h buckets are this process's own)
        proc = start_node(data, port, tmp_path / "node2.log")
        await wait_ready(url, proc)
        r = await trio.to_thread.run_sync(lambda: satchel("stats", "--url", url, "--json"))
        assets = {x["symbol"]: x["custody"] for x in json.loads(r.stdout)["assets"]}
        assert (assets["USDC"], assets["SOL"]) == ("5000", "20")
    finally:
        proc.kill()
    gone = await trio.to_thread.run_sync(lambda: satchel("stats", "--url", f"ws://127.0.0.1:{free_port()}"))
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
