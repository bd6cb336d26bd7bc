"""Unmodified ccxt 4.5.90 (sync, async and ccxt.pro) against a live node on 127.0.0.1.

The clients are pointed at the node by overriding only their base URLs, as a trader
would. The node runs on this test's trio loop; the sync client runs in a worker thread
and the asyncio ones under ``asyncio.run`` in a worker thread, so both sides are real.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest
import trio

from conftest import start_server
from satchel.rest import serve
from satchel.signing import Keypair

SOL, USDC = 10**9, 10**6


@pytest.fixture
async def node(nursery, tmp_path):
    server = await start_server(nursery, tmp_path)
    rest = await nursery.start(serve, server.gateway, "127.0.0.1", 0)
    alice, bob = Keypair.generate(), Keypair.generate()
    await server.fund(alice, USDC=100_000 * USDC)
    await server.fund(bob, SOL=1_000 * SOL, USDC=10_000 * USDC)
    return server, rest, alice, bob


def client(cls: type, key: Keypair, rest: str, ws: str | None = None) -> Any:
    """A ccxt exchange object for ``key``, its URLs (only) pointed at the node."""
    ex = cls({"apiKey": key.api_key, "secret": key.secret})
    ex.urls["api"] = {"public": rest, "private": rest}
    if ws is not None:
        ex.urls["api"]["ws"] = {"public": ws, "private": ws}
    return ex


async def off_loop(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking (sync ccxt) call in a worker thread while the node serves."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def in_asyncio(scenario: Callable[[], Any]) -> Any:
    """Run an asyncio coroutine function (ccxt async / pro) in a worker thread."""
    return await trio.to_thread.run_sync(lambda: asyncio.run(scenario()))


async def test_sync_rest_trading(node):
    server, rest, alice, bob = node
    a = client(ccxt.backpack, alice, rest)
    b = client(ccxt.backpack, bob, rest)
    markets = await off_loop(a.load_markets)
    assert markets["SOL/USDC"]["id"] == "SOL_USDC" and markets["SOL/USDC"]["precision"]["price"] == 0.01
    assert markets["SOL/USDC:USDC"]["swap"] is True
    await off_loop(b.load_markets)

    # order entry of every kind ccxt offers
    ask = await off_loop(b.create_order, "SOL/USDC", "limit", "sell", 10, 150)
    assert (ask["status"], ask["amount"], ask["price"]) == ("open", 10, 150)
    far = await off_loop(b.create_order, "SOL/USDC", "limit", "sell", 1, 190, {"postOnly": True})
    assert far["postOnly"] is True and far["status"] == "open"
    bought = await off_loop(a.create_order, "SOL/USDC", "market", "buy", 1)
    assert (bought["status"], bought["filled"], bought["cost"]) == ("closed", 1, 150)
    by_cost = await off_loop(a.create_order, "SOL/USDC", "market", "buy", None, None, {"cost": 300})
    assert (by_cost["filled"], by_cost["cost"]) == (2, 300)
    ioc = await off_loop(a.create_order, "SOL/USDC", "limit", "buy", 20, 150, {"timeInForce": "IOC"})
    assert (ioc["filled"], ioc["status"]) == (7, "canceled")  # the rest of the 10 at 150, then expired
    mine = await off_loop(a.create_order, "SOL/USDC", "limit", "buy", 2, 140, {"clientOrderId": 4242})
    assert mine["clientOrderId"] == "4242"
    with pytest.raises(ccxt.InsufficientFunds):
        await off_loop(a.create_order, "SOL/USDC", "limit", "buy", 100_000, 140)
    batch = await off_loop(a.create_orders, [
        {"symbol": "SOL/USDC", "type": "limit", "side": "buy", "amount": 1, "price": 141},
        {"symbol": "SOL/USDC", "type": "limit", "side": "buy", "amount": 2, "price": 139, "params": {"clientOrderId": 9}},
    ])
    assert [(o["price"], o["amount"], o["status"]) for o in batch] == [(141, 1, "open"), (139, 2, "open")]

    # what the market shows
    ticker = await off_loop(a.fetch_ticker, "SOL/USDC")
    assert (ticker["last"], ticker["high"], ticker["low"], ticker["baseVolume"]) == (150, 150, 150, 10)
    book = await off_loop(a.fetch_order_book, "SOL/USDC")
    assert book["asks"] == [[190, 1]] and book["bids"][0] == [141, 1] and book["nonce"] > 0
    trades = await off_loop(a.fetch_trades, "SOL/USDC")
    assert sum(t["amount"] for t in trades) == 10 and {t["side"] for t in trades} == {"buy"}
    tickers = await off_loop(a.fetch_tickers, ["SOL/USDC"])
    assert tickers["SOL/USDC"]["last"] == 150
    since = int(time.time() // 60 * 60_000) - 120_000
    candles = await off_loop(a.fetch_ohlcv, "SOL/USDC", "1m", since)
    assert candles and candles[-1][1:] == [150, 150, 150, 150, 10]

    # the account's view
    balance = await off_loop(a.fetch_balance)
    assert balance["SOL"]["free"] == 10
    assert balance["USDC"]["used"] == pytest.approx((2 * 140 + 141 + 2 * 139) * 1.0005)  # with the taker fee held
    opened = await off_loop(a.fetch_open_orders, "SOL/USDC")
    assert sorted(o["price"] for o in opened) == [139, 140, 141]
    one = await off_loop(a.fetch_order, mine["id"], "SOL/USDC")
    assert (one["id"], one["status"], one["clientOrderId"]) == (mine["id"], "open", "4242")
    gone = await off_loop(a.cancel_order, mine["id"], "SOL/USDC")
    assert gone["status"] == "canceled"
    assert (await off_loop(a.fetch_order, ioc["id"], "SOL/USDC"))["filled"] == 7  # from the history, kept
    cancelled = await off_loop(a.cancel_all_orders, "SOL/USDC")
    assert len(cancelled) == 2 and await off_loop(a.fetch_open_orders, "SOL/USDC") == []
    fills = await off_loop(a.fetch_my_trades, "SOL/USDC")
    assert sorted(f["amount"] for f in fills) == [1, 2, 7]
    assert {f["takerOrMaker"] for f in fills} == {"taker"} and all(f["fee"]["currency"] == "USDC" for f in fills)
    assert (await off_loop(a.fetch_order, ioc["id"], "SOL/USDC"))["status"] == "canceled"


class _Tampering(ccxt.backpack):
    """Changes an order's quantity after signing it, as a man in the middle would."""

    def sign(self, path, api="public", method="GET", params={}):
        req = super().sign(path, api, method, params)
        if req["body"]:
            req["body"] = req["body"].replace('"quantity":"1"', '"quantity":"5"')
        return req


class _Late(ccxt.backpack):
    """Signs with a clock a minute behind: outside the 5 s window."""

    def milliseconds(self):
        return super().milliseconds() - 60_000


class _Replaying(ccxt.backpack):
    """Sends the first signed request it made again, byte for byte."""

    first = None

    def sign(self, path, api="public", method="GET", params={}):
        req = super().sign(path, api, method, params)
        if "private" not in api:
            return req
        if self.first is None:
            self.first = req
        return self.first


async def test_authentication_failures_raise_authentication_error(node):
    server, rest, alice, _ = node
    for cls in (_Tampering, _Late, _Replaying):
        ex = client(cls, alice, rest)
        await off_loop(ex.load_markets)
        if cls is _Replaying:
            await off_loop(ex.create_order, "SOL/USDC", "limit", "buy", 1, 140)
        with pytest.raises(ccxt.AuthenticationError, match="INVALID_SIGNATURE|EXPIRED|DUPLICATE_REQUEST"):
            await off_loop(ex.create_order, "SOL/USDC", "limit", "buy", 1, 140)
    assert len(await server.open_orders(alice)) == 1  # the replaying client's first order, only


async def test_async_rest(node):
    server, rest, alice, bob = node

    async def scenario() -> tuple:
        a = client(ccxt_async.backpack, alice, rest)
        b = client(ccxt_async.backpack, bob, rest)
        try:
            await a.load_markets()
            await b.load_markets()
            await b.create_order("SOL/USDC", "limit", "sell", 3, 150)
            bought = await a.create_order("SOL/USDC", "limit", "buy", 2, 150)
            balance = await a.fetch_balance()
            fills = await a.fetch_my_trades("SOL/USDC")
            status = await a.fetch_status()
            return bought, balance, fills, status
        finally:
            await a.close()
            await b.close()

    bought, balance, fills, status = await in_asyncio(scenario)
    assert (bought["status"], bought["filled"]) == ("closed", 2)
    assert balance["SOL"]["free"] == 2 and [f["amount"] for f in fills] == [2]
    assert status["status"] == "ok"


async def test_pro_streams(node):
    """watch_order_book after a burst of trading equals a fresh REST snapshot; trades,
    ticker, orders and balance arrive as the orders trade."""
    server, rest, alice, bob = node
    ws = server.gateway.url

    async def scenario() -> dict:
        a = client(ccxt_pro.backpack, alice, rest, ws)
        b = client(ccxt_pro.backpack, bob, rest, ws)
        out: dict = {}
        try:
            await a.load_markets()
            await b.load_markets()
            await b.create_order("SOL/USDC", "limit", "sell", 5, 150)
            book_task = asyncio.create_task(a.watch_order_book("SOL/USDC"))
            orders_task = asyncio.create_task(a.watch_orders("SOL/USDC"))
            balance_task = asyncio.create_task(a.watch_balance())
            trades_task = asyncio.create_task(a.watch_trades("SOL/USDC"))
            ticker_task = asyncio.create_task(b.watch_ticker("SOL/USDC"))
            await asyncio.sleep(0.5)  # subscribed
            for i in range(30):  # a burst: resting bids and asks, and some that trade
                await b.create_order("SOL/USDC", "limit", "sell", 1, 151 + i % 5)
                await a.create_order("SOL/USDC", "limit", "buy", 1, 149 - i % 5)
            await a.create_order("SOL/USDC", "limit", "buy", 2, 150)
            out["trades"] = await asyncio.wait_for(trades_task, 10)
            out["orders"] = await asyncio.wait_for(orders_task, 10)
            out["balance"] = await asyncio.wait_for(balance_task, 10)
            out["ticker"] = await asyncio.wait_for(ticker_task, 10)
            await asyncio.wait_for(book_task, 10)
            await asyncio.sleep(0.5)  # the last deltas are in
            book = await asyncio.wait_for(a.watch_order_book("SOL/USDC"), 10)
            out["watched"] = ([list(x) for x in book["asks"]], [list(x) for x in book["bids"]], book["nonce"])
            fresh = await a.fetch_order_book("SOL/USDC")
            out["fresh"] = (fresh["asks"], fresh["bids"], fresh["nonce"])
        finally:
            await a.close()
            await b.close()
        return out

    out = await in_asyncio(scenario)
    assert out["watched"] == out["fresh"]
    assert len(out["watched"][0]) == 6 and len(out["watched"][1]) == 5
    assert out["trades"][0]["price"] == 150 and out["trades"][0]["symbol"] == "SOL/USDC"
    assert out["orders"][0]["symbol"] == "SOL/USDC"
    assert "USDC" in out["balance"]
    assert out["ticker"]["symbol"] == "SOL/USDC"
