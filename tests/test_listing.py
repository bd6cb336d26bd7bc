"""The edges learn listings from durable events: a market listed on a running node can be
traded and watched at once; and the API answers without any transport."""

from __future__ import annotations

import orjson
import pytest
import trio

from satchel import config
from satchel.api.handlers import Api
from satchel.core.instructions import market_params
from satchel.core.messages import AssetSpec, ConfigChanged, ListAsset, ListMarket, PoolUpdate
from satchel.signing import Keypair, auth_for
from satchel.tools.client import ReplyError, connect

ADA = AssetSpec("ADA", 6)
ADA_USDC = config.MarketConfig("ADA_USDC", "ADA", "USDC", tick_size="0.0001", step_size="0.1", min_quantity="0.1",
                               min_notional="1", maker_fee_bps=2, taker_fee_bps=5)


async def list_ada(server) -> None:
    node = server.node
    admin = node.admin
    events = await node.submit_wait(ListAsset(admin.api_key, ADA, auth_for(admin, "listAsset", {"symbol": "ADA", "decimals": 6})))
    # a block's periodic events (a pool's once-a-second PoolUpdate) may carry the listing's seq
    events = [e for e in events if e.__class__ is not PoolUpdate]
    assert events == [ConfigChanged(events[0].seq, "asset", "ADA", asset=ADA)]
    spec = config.market_spec(ADA_USDC, {"ADA": 6, "USDC": 6})
    events = await node.submit_wait(ListMarket(admin.api_key, spec, auth_for(admin, "listMarket", market_params(spec))))
    events = [e for e in events if e.__class__ is not PoolUpdate]
    assert events == [ConfigChanged(events[0].seq, "market", "ADA_USDC", market=spec)]


def ada(side: str, price: str, qty: str) -> dict:
    return {"symbol": "ADA_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": qty}


async def test_a_market_listed_on_a_running_node_trades_and_streams(server):
    alice, bob = Keypair.generate(), Keypair.generate()
    gw = server.gateway
    assert gw.listing.markets is not server.node.engine.markets  # a copy, kept by events
    async with connect(server.url, alice) as a, connect(server.url) as feed:
        with pytest.raises(ReplyError) as e:
            await a.request("orderExecute", ada("Bid", "0.5", "10"))
        assert e.value.code == "INVALID_SYMBOL"
        r = await feed.exchange("s", orjson.dumps({"id": "s", "method": "SUBSCRIBE", "params": ["depth.ADA_USDC"]}), raw=True)
        assert r["error"]["code"] == 4006

        await list_ada(server)
        assert "ADA_USDC" in gw.listing.markets and gw.listing.assets["ADA"] == ADA
        await server.fund(alice, USDC=1_000 * 10**6)
        await server.fund(bob, ADA=1_000 * 10**6)

        await feed.subscribe(["depth.ADA_USDC", "trade.ADA_USDC"])
        snap = await feed.next_frame("depth.")
        assert snap["data"]["e"] == "depthSnapshot" and snap["data"]["asks"] == [] and snap["data"]["bids"] == []
        async with connect(server.url, bob) as b:
            rest = await b.request("orderExecute", ada("Ask", "0.5", "100"))
            assert rest["status"] == "New" and rest["price"] == "0.5" and rest["quantity"] == "100"
            delta = await feed.next_frame("depth.")
            while not delta["data"]["a"]:  # heartbeats of the quiet book
                delta = await feed.next_frame("depth.")
            assert delta["data"]["a"] == [["0.5", "100"]] and delta["data"]["U"] == int(snap["data"]["lastUpdateId"]) + 1
            taken = await a.request("orderExecute", ada("Bid", "0.5", "40"))
            assert taken["status"] == "Filled" and taken["executedQuoteQuantity"] == "20"
            assert taken["fills"] == [{"tradeId": taken["fills"][0]["tradeId"], "price": "0.5", "quantity": "40",
                                       "fee": "0.01", "feeSymbol": "USDC", "isMaker": False}]
            trade = await feed.next_frame("trade.")
            assert (trade["data"]["p"], trade["data"]["q"]) == ("0.5", "40")
            delta = await feed.next_frame("depth.")
            while not delta["data"]["a"]:
                delta = await feed.next_frame("depth.")
            assert delta["data"]["a"] == [["0.5", "60"]]
            assert (await a.request("depth", {"symbol": "ADA_USDC"}, sign=False))["asks"] == [["0.5", "60"]]
            assert (await a.request("balanceQuery"))["ADA"]["available"] == "40"
            # a fee change reaches the listing from its event too
            admin = server.node.admin
            async with connect(server.url, admin) as adm:
                await adm.request("adminSetFees", {"symbol": "ADA_USDC", "makerFeeBps": 0, "takerFeeBps": 7})
            assert gw.listing.markets["ADA_USDC"].taker_fee_bps == 7


class Recorded:
    """A transport of one's own: the API's answers, kept."""

    def __init__(self) -> None:
        self.closed = False
        self.answers: list = []
        self.arrived = trio.Event()

    def result(self, req_id, result) -> None:
        self.answers.append((req_id, "result", result))
        self.arrived.set()

    def error(self, req_id, code, message) -> None:
        self.answers.append((req_id, "error", code))
        self.arrived.set()

    def failed(self, req_id, exc) -> None:
        self.answers.append((req_id, "failed", exc))
        self.arrived.set()

    async def next(self):
        while not self.answers:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.answers.pop(0)


async def test_the_api_needs_no_transport(server):
    from satchel.signing import sign_request

    api: Api = server.gateway.api
    rec = Recorded()
    caller = api.caller(rec)
    api.depth(caller, 1, {"symbol": "SOL_USDC"}, None)
    assert (await rec.next())[:2] == (1, "result")
    api.depth(caller, 2, {"symbol": "NOPE"}, None)
    assert await rec.next() == (2, "error", "INVALID_SYMBOL")
    api.balanceQuery(caller, 3, {}, None)
    assert await rec.next() == (3, "error", "UNAUTHORIZED")
    alice = Keypair.generate()
    await server.fund(alice, USDC=10 * 10**6)
    # signed requests are answered in the order they arrived
    params = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "100", "quantity": "0.01", "clientId": "5"}
    api.orderExecute(caller, 4, params, sign_request(alice, "orderExecute", params)[1])
    ref = {"symbol": "SOL_USDC", "clientId": "5"}
    api.orderCancel(caller, 5, ref, sign_request(alice, "orderCancel", ref)[1])
    api.balanceQuery(caller, 6, {}, sign_request(alice, "balanceQuery", {})[1])
    placed, cancelled, balances = await rec.next(), await rec.next(), await rec.next()
    assert placed[:2] == (4, "result") and placed[2]["status"] == "New"
    assert cancelled[:2] == (5, "result") and cancelled[2]["status"] == "Cancelled"
    assert balances[:2] == (6, "result") and balances[2]["USDC"]["available"] == "10"
