"""The history read model (``satchel.history``): order and fill history, public trades and
klines over REST on a live node; rebuilt from the journal when the database is deleted
or behind; the same rows whatever order blocks are written in."""

from __future__ import annotations

import re
import threading
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec
import pytest
import structlog
import trio

from satchel import config
from satchel.api.format import Formatter
from satchel.api.klines import bucket, clock_text
from satchel.core.engine import Engine
from satchel.core.messages import (
    ASK, BID, BY_MARK, GTC, LIMIT, MARKET, REJECT_TAKER, BlockHeader, Deposit, PlaceOrder, SetIndex,
)
from satchel.history import queries, rebuild, views
from satchel.history.schema import Ranges
from satchel.history.store import Store
from satchel.rest import serve
from satchel.signing import Keypair, sign_request

from conftest import ADMIN, Exchange, cancel as cancel_tx, order

USDC = 10**6
SOL = 10**9
PERP = "SOL_USDC_PERP"
T0 = 1_700_000_000_000_000
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")


def signed_headers(key: Keypair, instruction: str, params: dict) -> dict:
    _, (api_key, sig, ts, window) = sign_request(key, instruction, params)
    return {"X-API-Key": api_key, "X-Signature": sig, "X-Timestamp": ts, "X-Window": window}


async def place(c: httpx.AsyncClient, key: Keypair, side: str, price: str, qty: str, **extra) -> dict:
    body = {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": qty, **extra}
    r = await c.post("/api/v1/order", json=body, headers=signed_headers(key, "orderExecute", body))
    assert r.status_code == 200, r.text
    await trio.sleep(0.002)  # the next order in a later millisecond (from/to are ms)
    return r.json()


async def cancel(c: httpx.AsyncClient, key: Keypair, order_id: str) -> dict:
    body = {"symbol": "SOL_USDC", "orderId": order_id}
    r = await c.request("DELETE", "/api/v1/order", json=body, headers=signed_headers(key, "orderCancel", body))
    assert r.status_code == 200, r.text
    return r.json()


async def signed_get(c: httpx.AsyncClient, key: Keypair, path: str, instruction: str, params: dict,
                     status: int = 200) -> object:
    r = await c.get(path, params=params, headers=signed_headers(key, instruction, params))
    assert r.status_code == status, r.text
    return r.json()


async def orders_of(c: httpx.AsyncClient, key: Keypair, **params) -> list[dict]:
    return await signed_get(c, key, "/wapi/v1/history/orders", "orderHistoryQueryAll", params)


async def fills_of(c: httpx.AsyncClient, key: Keypair, **params) -> list[dict]:
    return await signed_get(c, key, "/wapi/v1/history/fills", "fillHistoryQueryAll", params)


@pytest.fixture
async def rest(nursery, server):
    return await nursery.start(serve, server.gateway, "127.0.0.1", 0)


# ---------------------------------------------------------------- orders and fills


async def test_order_history_keeps_what_a_cancelled_order_executed(rest, traders):
    alice, bob = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        ask = await place(c, bob, "Ask", "150", "2", clientId=7)
        b1 = await place(c, alice, "Bid", "150", "0.5")
        b2 = await place(c, alice, "Bid", "150", "0.3", clientId=9)
        assert await cancel(c, bob, ask["id"])
        # read at once after the cancel, as ccxt's fetch_order does
        [cancelled] = await orders_of(c, bob, symbol="SOL_USDC", orderId=ask["id"])
        assert cancelled["id"] == ask["id"] and cancelled["status"] == "Cancelled"
        assert (cancelled["executedQuantity"], cancelled["executedQuoteQuantity"]) == ("0.8", "120")
        assert (cancelled["quantity"], cancelled["price"], cancelled["side"], cancelled["clientId"]) == ("2", "150", "Ask", 7)
        assert cancelled["createdAt"] == ask["createdAt"]
        # an order read right after it was placed
        rest_bid = await place(c, alice, "Bid", "140", "1", timeInForce="GTC", postOnly=True)
        [fresh] = await orders_of(c, alice, orderId=rest_bid["id"])
        assert (fresh["status"], fresh["executedQuantity"], fresh["postOnly"]) == ("New", "0", True)
        mine = await orders_of(c, alice, symbol="SOL_USDC")
        assert [o["id"] for o in mine] == [rest_bid["id"], b2["id"], b1["id"]]  # newest first
        assert [o["status"] for o in mine] == ["New", "Filled", "Filled"]
        assert mine[1]["executedQuoteQuantity"] == "45" and mine[1]["clientId"] == 9
        # a partly filled resting order
        part = await place(c, bob, "Ask", "141", "3")
        await place(c, alice, "Bid", "141", "1")
        [p] = await orders_of(c, bob, orderId=part["id"])
        assert (p["status"], p["executedQuantity"]) == ("PartiallyFilled", "1")


async def test_order_history_paging(rest, traders):
    alice, _ = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        placed = [await place(c, alice, "Bid", f"{100 + i}", "1") for i in range(5)]
        ids = [o["id"] for o in reversed(placed)]  # newest first
        assert [o["id"] for o in await orders_of(c, alice)] == ids
        assert [o["id"] for o in await orders_of(c, alice, limit="2")] == ids[:2]
        assert [o["id"] for o in await orders_of(c, alice, limit="2", offset="2")] == ids[2:4]
        assert await orders_of(c, alice, offset="5") == []
        created = [o["createdAt"] for o in placed]
        assert len(set(created)) == 5
        window = await orders_of(c, alice, **{"from": str(created[1]), "to": str(created[3])})
        assert [o["id"] for o in window] == ids[1:4]
        assert [o["id"] for o in await orders_of(c, alice, **{"from": str(created[4])})] == ids[:1]
        # unknown parameters are accepted (they are signed); bad ones are refused
        assert len(await orders_of(c, alice, marketType="SPOT", sortDirection="Desc")) == 5
        for bad in ({"limit": "1001"}, {"offset": "-1"}, {"from": "x"}, {"symbol": "NOPE_USDC"}):
            err = await signed_get(c, alice, "/wapi/v1/history/orders", "orderHistoryQueryAll", bad, status=400)
            assert err["code"] in ("INVALID_CLIENT_REQUEST", "INVALID_SYMBOL"), err
        r = await c.get("/wapi/v1/history/orders")
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")
        # another account's orders are not visible
        assert await orders_of(c, Keypair.generate()) == []


async def test_fill_history(rest, traders):
    alice, bob = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        ask = await place(c, bob, "Ask", "150", "2")
        b1 = await place(c, alice, "Bid", "150", "0.5", clientId=11)
        b2 = await place(c, alice, "Bid", "150", "0.25")
        mine = await fills_of(c, alice, fillType="User", symbol="SOL_USDC")
        assert [f["orderId"] for f in mine] == [b2["id"], b1["id"]]  # newest first
        f = mine[1]
        assert set(f) >= {"tradeId", "orderId", "symbol", "side", "price", "quantity", "fee", "feeSymbol", "isMaker",
                          "timestamp", "clientId"}
        assert (f["side"], f["price"], f["quantity"], f["feeSymbol"], f["isMaker"], f["clientId"]) == \
            ("Bid", "150", "0.5", "USDC", False, 11)
        assert isinstance(f["tradeId"], int) and ISO_MS.match(f["timestamp"]), f
        assert f["fee"] == b1["fills"][0]["fee"]  # as the order's own reply said
        theirs = await fills_of(c, bob)
        assert [(x["orderId"], x["side"], x["isMaker"], x["quantity"]) for x in theirs] == \
            [(ask["id"], "Ask", True, "0.25"), (ask["id"], "Ask", True, "0.5")]
        assert [x["tradeId"] for x in theirs] == [x["tradeId"] for x in mine]
        assert [x["quantity"] for x in await fills_of(c, alice, orderId=b1["id"])] == ["0.5"]
        assert len(await fills_of(c, alice, limit="1", offset="1")) == 1
        assert await fills_of(c, alice, fillType="Adl") == []
        assert await fills_of(c, alice, fillType="Liquidation") == []
        err = await signed_get(c, alice, "/wapi/v1/history/fills", "fillHistoryQueryAll", {"fillType": "Bogus"},
                               status=400)
        assert err["code"] == "INVALID_CLIENT_REQUEST"
        assert await fills_of(c, alice, **{"from": "0", "to": "1"}) == []


async def test_history_over_websocket(server, traders):
    from satchel.tools.client import connect

    alice, bob = traders
    async with connect(server.url, bob) as ws:
        placed = await ws.request("orderExecute", {"symbol": "SOL_USDC", "side": "Ask", "orderType": "Limit",
                                                   "price": "150", "quantity": "1"})
        [o] = await ws.request("orderHistoryQueryAll", {"orderId": placed["id"]})
        assert (o["id"], o["status"]) == (placed["id"], "New")
        assert await ws.request("fillHistoryQueryAll", {}) == []


# ---------------------------------------------------------------- public trades and klines


async def trade_at_prices(c: httpx.AsyncClient, alice: Keypair, bob: Keypair) -> None:
    """Four trades: 150, 151, 152 (alice buys from bob), then 149 (bob sells into alice's bid)."""
    for price in ("150", "151", "152"):
        await place(c, bob, "Ask", price, "1")
    await place(c, alice, "Bid", "150", "1")
    await place(c, alice, "Bid", "152", "2")
    await place(c, alice, "Bid", "149", "0.5")
    await place(c, bob, "Ask", "149", "0.5")


async def test_trades_history_and_klines(rest, traders):
    alice, bob = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        await trade_at_prices(c, alice, bob)
        trades = (await c.get("/api/v1/trades/history", params={"symbol": "SOL_USDC"})).json()
        assert [(t["price"], t["quantity"], t["isBuyerMaker"]) for t in trades] == \
            [("150", "1", False), ("151", "1", False), ("152", "1", False), ("149", "0.5", True)]
        assert trades == (await c.get("/api/v1/trades", params={"symbol": "SOL_USDC"})).json()  # same shape
        assert trades[0]["quoteQuantity"] == "150" and isinstance(trades[0]["timestamp"], int)
        page = (await c.get("/api/v1/trades/history", params={"symbol": "SOL_USDC", "limit": "2", "offset": "1"})).json()
        assert page == trades[1:3]
        assert (await c.get("/api/v1/trades/history", params={"symbol": "SOL_USDC", "limit": "1001"})).status_code == 400
        start = trades[0]["timestamp"] // 1000 - 60
        for interval in ("1s", "1m", "1h", "1w", "1month"):
            got = (await c.get("/api/v1/klines", params={"symbol": "SOL_USDC", "interval": interval,
                                                           "startTime": str(start)})).json()
            assert got == expected_klines(trades, interval), interval
        [day] = (await c.get("/api/v1/klines", params={"symbol": "SOL_USDC", "interval": "1d",
                                                       "startTime": str(start), "endTime": str(start + 120)})).json()
        assert (day["open"], day["high"], day["low"], day["close"], day["volume"], day["trades"]) == \
            ("150", "152", "149", "149", "3.5", "4")
        assert day["quoteVolume"] == "527.5"
        later = (await c.get("/api/v1/klines", params={"symbol": "SOL_USDC", "interval": "1m",
                                                       "startTime": str(start + 86_400 * 400)})).json()
        assert later == []
        for bad in ({"interval": "7m", "startTime": "0"}, {"interval": "1m"}, {"interval": "1m", "startTime": "x"},
                    {"interval": "1m", "startTime": "0", "priceType": "Mark"}):
            r = await c.get("/api/v1/klines", params={"symbol": "SOL_USDC", **bad})
            assert (r.status_code, r.json()["code"]) == (400, "INVALID_CLIENT_REQUEST"), bad


def expected_klines(trades: list[dict], interval: str) -> list[dict]:
    """Candles computed from the trades, independently of the store's SQL."""
    candles: dict[int, list[dict]] = {}
    for t in trades:
        candles.setdefault(bucket(t["timestamp"] * 1000, interval)[0], []).append(t)
    out = []
    for start, ts in sorted(candles.items()):
        prices = [Decimal(t["price"]) for t in ts]
        out.append({
            "start": clock_text(start), "end": clock_text(bucket(start, interval)[1]),
            "open": ts[0]["price"], "high": _text(max(prices)), "low": _text(min(prices)), "close": ts[-1]["price"],
            "volume": _text(sum(Decimal(t["quantity"]) for t in ts)),
            "quoteVolume": _text(sum(Decimal(t["quoteQuantity"]) for t in ts)), "trades": str(len(ts)),
        })
    return out


def _text(d: Decimal) -> str:
    return format(d.normalize(), "f")


# ---------------------------------------------------------------- rebuilt from the journal


@asynccontextmanager
async def session(data: Path, cfg=None, *, history: bool = True):
    """A node with a gateway and REST on ``data``, stopped cleanly (gateway first) at exit."""
    from satchel.gateway import Gateway
    from satchel.node import Node

    async with trio.open_nursery() as outer:
        node = await outer.start(Node(data, cfg).run)
        async with trio.open_nursery() as edges:
            gateway = await edges.start(Gateway(node, "127.0.0.1", 0, history=history).run)
            url = await edges.start(serve, gateway, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=url) as c:
                yield node, gateway, c
            edges.cancel_scope.cancel()
        node.shutdown()


async def caught_up(gateway, node) -> None:
    """Until the history holds every block the node has published."""
    with trio.fail_after(10):
        while await gateway.history.gaps(node.chain.height):
            await trio.sleep(0.01)


async def rebuilt(logs: list[dict]) -> dict:
    """The catch-up's end, as logged (``logs`` from ``structlog.testing.capture_logs``)."""
    with trio.fail_after(10):
        while not (done := [e for e in logs if e["event"] == "history.rebuild_finished"]):
            await trio.sleep(0.01)
    [event] = done
    return event


async def answers(c: httpx.AsyncClient, keys: list[Keypair], start_s: int) -> list:
    """Everything the history answers for ``keys``: orders, fills, trades, candles."""
    out = []
    for key in keys:
        out.append(await orders_of(c, key, limit="1000"))
        out.append(await fills_of(c, key, limit="1000"))
    out.append((await c.get("/api/v1/trades/history", params={"symbol": "SOL_USDC", "limit": "1000"})).json())
    for interval in ("1s", "1m"):
        out.append((await c.get("/api/v1/klines", params={"symbol": "SOL_USDC", "interval": interval,
                                                           "startTime": str(start_s)})).json())
    return out


async def fund(node, *keys: Keypair) -> None:
    admin = node.admin.api_key
    for key in keys:
        await node.submit_wait(Deposit(admin, key.api_key, "USDC", 100_000 * USDC))
        await node.submit_wait(Deposit(admin, key.api_key, "SOL", 1_000 * SOL))


async def test_rebuilt_from_the_journal_when_deleted(tmp_path, monkeypatch):
    data = tmp_path / "data"
    alice, bob = Keypair.generate(), Keypair.generate()
    async with session(data) as (node, gateway, c):
        await fund(node, alice, bob)
        start = node.chain.last_timestamp // 1_000_000 - 60
        await trade_at_prices(c, alice, bob)
        resting = await place(c, bob, "Ask", "160", "3")
        await place(c, alice, "Bid", "160", "1")
        await cancel(c, bob, resting["id"])
        kept = await place(c, alice, "Bid", "150", "2")
        await caught_up(gateway, node)
        before = await answers(c, [alice, bob], start)
    assert [o["status"] for o in before[2][:2]] == ["Cancelled", "Filled"] and before[2][0]["executedQuantity"] == "1"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{data / 'history.sqlite'}{suffix}").unlink(missing_ok=True)
    monkeypatch.setattr(rebuild, "FOREGROUND_BLOCKS", 0)  # the rebuild runs while the node serves
    with structlog.testing.capture_logs() as logs:
        async with session(data) as (node, gateway, c):
            # a live block (cancelling an order of the first run) while the catch-up may be running
            cancelled = await cancel(c, alice, kept["id"])
            done = await rebuilt(logs)
            await caught_up(gateway, node)
            after = await answers(c, [alice, bob], start)
    assert done["from_snapshot"] == 0 and done["blocks"] == done["missing"] > 10 and not done["stopped"], done
    assert any(e["event"] == "history.rebuild_started" for e in logs)
    [was] = [o for o in after[0] if o["id"] == kept["id"]]
    assert (was["status"], was["createdAt"]) == ("Cancelled", kept["createdAt"]) and cancelled["status"] == "Cancelled"
    was["status"] = "New"
    assert after == before


async def test_catch_up_when_the_database_is_behind(tmp_path):
    data = tmp_path / "data"
    alice, bob = Keypair.generate(), Keypair.generate()
    async with session(data) as (node, gateway, c):
        await fund(node, alice, bob)
        ask = await place(c, bob, "Ask", "150", "2")
        await place(c, alice, "Bid", "150", "0.5")
        await caught_up(gateway, node)
        first_height = node.chain.height
    # the node runs on without a history: blocks the database does not have
    async with session(data, history=False) as (node, gateway, c):
        for _ in range(4):
            await node.submit_wait(PlaceOrder(alice.api_key, "SOL_USDC", BID, LIMIT, GTC, False, 14_000, 100, 0, None,
                                              REJECT_TAKER))
        await place(c, alice, "Bid", "150", "1")  # fills more of bob's ask
        behind_height = node.chain.height
    assert (data / "history.sqlite").exists()
    with structlog.testing.capture_logs() as logs:
        async with session(data) as (node, gateway, c):
            # a few blocks: written before the gateway serves, so the first answers are complete
            [o] = await orders_of(c, bob, orderId=ask["id"])
            assert (o["status"], o["executedQuantity"]) == ("PartiallyFilled", "1.5")  # each fill counted once
            assert [x["quantity"] for x in await fills_of(c, alice)] == ["1", "0.5"]
            assert [x["status"] for x in await orders_of(c, alice)] == ["Filled"] + ["New"] * 4 + ["Filled"]
            done = await rebuilt(logs)
    assert done["blocks"] == done["missing"] == behind_height - first_height, done
    # replayed from the snapshot the first run left at its last block, not from genesis
    assert done["from_snapshot"] == first_height and done["replayed"] == done["blocks"], done


# ---------------------------------------------------------------- the store alone


async def blocks_of(ex: Exchange, plan: list[tuple[float | None, list]]) -> list[tuple[BlockHeader, list]]:
    """Apply each (seconds after T0 or None: 1 ms after the last, transactions) block of
    ``plan`` to the engine; the blocks as the node would publish them."""
    out = []
    for seconds, txs in plan:
        if seconds is not None:
            ex.ts = T0 + int(seconds * 1_000_000) - 1000
        first = ex.seq
        events = await ex.block(txs)
        out.append((BlockHeader(len(out) + 1, first, ex.ts, b"", 0, len(txs), b"", b""), events))
    return out


async def written(path: Path, blocks: list[tuple[BlockHeader, list]], order_of_blocks: list[int],
                  accounts: list[str], symbol: str) -> list:
    """Write ``blocks`` in ``order_of_blocks`` (odd ones live, even ones as a catch-up
    would), then read everything back."""
    store = Store(path)
    async with trio.open_nursery() as n:
        await n.start(store.run)
        stop = threading.Event()
        for i in order_of_blocks:
            header, events = blocks[i]
            if i % 2:
                store.publish(header, events)
            else:
                await trio.to_thread.run_sync(store.write_caught_up, header, events, stop)
        assert await store.gaps(len(blocks)) == []
        out = []
        for account in accounts:
            out.append(await store.fetch(queries.OrderHistory(account)))
            out.append(await store.fetch(queries.FillHistory(account)))
        out.append(await store.fetch(queries.TradeHistory(symbol)))
        out.append(await store.fetch(queries.Klines(symbol, "1s", 0, blocks[-1][0].timestamp)))
        n.cancel_scope.cancel()
    return out


async def test_rows_do_not_depend_on_the_order_blocks_are_written(ex, tmp_path):
    """Blocks written in order, and the same blocks with later ones first (live blocks
    before a catch-up's), give the same answers; a block written twice counts once."""
    await ex.deposit("alice", "USDC", 10**12)
    await ex.deposit("bob", "SOL", 10**13)
    blocks = await blocks_of(ex, [
        (None, [order("bob", ASK, 15_000, 500), order("bob", ASK, 15_100, 300, client_id=4)]),
        (None, [order("alice", BID, 15_000, 200)]),
        (None, [order("alice", BID, 15_100, 700, client_id=5)]),  # sweeps the rest of both asks and rests
        (None, [order("alice", BID, 14_000, 100)]),
    ])
    blocks += await blocks_of(ex, [(None, [cancel_tx("alice", blocks[3][0].first_seq)])])
    blocks = [(msgspec.structs.replace(h, height=i + 1), ev) for i, (h, ev) in enumerate(blocks)]
    args = (["alice", "bob"], "SOL_USDC")
    in_order = await written(tmp_path / "a.sqlite", blocks, [0, 1, 2, 3, 4], *args)
    assert in_order == await written(tmp_path / "b.sqlite", blocks, [4, 2, 3, 0, 1], *args)
    alice = {r.order_id: r for r in in_order[0]}
    assert views.status(alice[blocks[3][0].first_seq]) == "Cancelled"
    assert [views.status(alice[blocks[i][0].first_seq]) for i in (1, 2)] == ["Filled", "PartiallyFilled"]
    assert alice[blocks[2][0].first_seq].executed == 600
    assert sum(r.quantity for r in in_order[1]) == sum(r.quantity for r in in_order[3]) == 800
    # the same blocks again are not counted twice
    assert await written(tmp_path / "a.sqlite", blocks, [0, 1, 2, 3, 4], *args) == in_order


async def test_trigger_orders(nursery, tmp_path):
    cfg = config.load()
    markets = [msgspec.structs.replace(m, perp=msgspec.structs.replace(m.perp, mark_band="0")) if m.symbol == PERP else m
               for m in cfg.markets]  # mark = index: the trigger fires on the index set below
    ex = Exchange(Engine(nursery))
    await ex.block(config.genesis(msgspec.structs.replace(cfg, markets=markets), ADMIN))
    await ex.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 1000 * USDC)])
    stop = PlaceOrder("a", PERP, ASK, MARKET, 0, False, 0, 200, 0, None, 0, True, 14_500, BY_MARK)
    later = PlaceOrder("a", PERP, BID, MARKET, 0, False, 0, 100, 0, 7, 0, False, 16_000, BY_MARK)
    blocks = await blocks_of(ex, [
        (0, [SetIndex(ADMIN, PERP, 15_000)]),
        (1, [order("a", BID, 15_000, 200, symbol=PERP), order("b", ASK, 15_000, 200, symbol=PERP),
             order("b", BID, 14_000, 500, symbol=PERP)]),
        (2, [stop, later]),
        (3, [cancel_tx("a", client_id=7, symbol=PERP)]),
        (4, [SetIndex(ADMIN, PERP, 14_500)]),  # the stop fires and sells into b's bid
    ])
    stop_id, later_id = blocks[2][0].first_seq, blocks[2][0].first_seq + 1
    rows = await written(tmp_path / "a.sqlite", blocks[:3], [0, 1, 2], ["a", "b"], PERP)
    pending = {r.order_id: r for r in rows[0]}
    assert [views.status(pending[i]) for i in (stop_id, later_id)] == ["TriggerPending", "TriggerPending"]
    everything = await written(tmp_path / "b.sqlite", blocks, [4, 3, 2, 1, 0], ["a", "b"], PERP)
    assert everything == await written(tmp_path / "c.sqlite", blocks, [0, 1, 2, 3, 4], ["a", "b"], PERP)
    fmt = Formatter({m.symbol: m for m in cfg.market_specs()}, {a.symbol: a for a in cfg.asset_specs()})
    items = {o["id"]: o for o in views.orders(fmt, everything[0])}
    fired, cancelled = items[str(stop_id)], items[str(later_id)]
    assert (fired["status"], fired["executedQuantity"], fired["triggerPrice"], fired["reduceOnly"]) == \
        ("Filled", "2", "145", True)
    assert fired["createdAt"] == blocks[2][0].timestamp // 1000  # when placed, not when it fired
    assert (cancelled["status"], cancelled["clientId"], cancelled["triggerPrice"]) == ("Cancelled", 7, "160")
    [b_bid] = [o for o in views.orders(fmt, everything[2]) if o["price"] == "140"]
    assert (b_bid["status"], b_bid["executedQuantity"]) == ("PartiallyFilled", "2")


def test_ranges():
    r = Ranges()
    for h in (1, 2, 3, 7, 5, 6):
        r.add(h)
    assert r.pairs == [[1, 3], [5, 7]] and 6 in r and 4 not in r
    assert r.gaps(10) == [(4, 4), (8, 10)] and r.gaps(3) == []
    r.add(4)
    assert r.pairs == [[1, 7]] and r.gaps(7) == [] and r.highest() == 7
    assert Ranges().gaps(2) == [(1, 2)]


async def test_a_second_store_on_the_same_file_is_refused(tmp_path):
    import sqlite3

    first = Store(tmp_path / "h.sqlite")
    async with trio.open_nursery() as n:
        await n.start(first.run)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await Store(tmp_path / "h.sqlite").run()
        n.cancel_scope.cancel()



async def test_funding_rates(tmp_path):
    """Each perp's funding interval (``FundingPaid``) is a ``GET /api/v1/fundingRates`` row,
    newest first; a block written twice counts once."""
    from satchel.core.messages import FundingPaid

    hour = 3_600_000_000
    blocks = [(BlockHeader(h, h, h * hour, b"", 4, 1, b"", b""),
               [FundingPaid(h, "SOL_USDC_PERP", 10_000 * h, 1, 1, 150, h * hour)]) for h in (1, 2, 3)]
    store = Store(tmp_path / "h.sqlite")
    async with trio.open_nursery() as n:
        await n.start(store.run)
        for header, events in blocks + blocks[:1]:
            store.publish(header, events)
        rows = await store.fetch(queries.FundingRates("SOL_USDC_PERP", limit=2))
        assert await store.fetch(queries.FundingRates("BTC_USDC_PERP")) == []
        n.cancel_scope.cancel()
    assert views.funding_rates(rows) == [
        {"symbol": "SOL_USDC_PERP", "intervalEndTimestamp": "1970-01-01T03:00:00", "fundingRate": "0.00003"},
        {"symbol": "SOL_USDC_PERP", "intervalEndTimestamp": "1970-01-01T02:00:00", "fundingRate": "0.00002"},
    ]
