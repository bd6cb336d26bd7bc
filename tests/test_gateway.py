"""Order entry, queries and streams over a real WebSocket connection."""

from __future__ import annotations

import orjson
import pytest
import trio

from satchel.tools.client import ReplyError, connect
from satchel.signing import Keypair, sign_request, signing_string

USDC = 10**6
SOL = 10**9


def limit(side: str, price: str, qty: str, **extra) -> dict:
    return {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": qty, **extra}


async def test_order_lifecycle(server, traders):
    alice, bob = traders
    async with connect(server.url, alice) as a, connect(server.url, bob) as b:
        rest = await b.request("orderExecute", limit("Ask", "150", "2", clientId=11))
        assert rest["status"] == "New" and rest["clientId"] == 11 and rest["price"] == "150"
        taken = await a.request("orderExecute", limit("Bid", "150.5", "0.5"))
        assert taken["status"] == "Filled"
        assert taken["executedQuantity"] == "0.5" and taken["executedQuoteQuantity"] == "75"
        assert taken["fills"] == [{"tradeId": 1, "price": "150", "quantity": "0.5", "fee": "0.0375", "feeSymbol": "USDC", "isMaker": False}]
        q = await b.request("orderQuery", {"symbol": "SOL_USDC", "clientId": 11})
        assert (q["status"], q["executedQuantity"]) == ("PartiallyFilled", "0.5")
        assert [o["id"] for o in await b.request("orderQueryAll", {"symbol": "SOL_USDC"})] == [rest["id"]]
        bal = await a.request("balanceQuery")
        assert bal["SOL"] == {"available": "0.5", "locked": "0", "staked": "0"}
        cancelled = await b.request("orderCancel", {"symbol": "SOL_USDC", "orderId": rest["id"]})
        assert (cancelled["status"], cancelled["id"]) == ("Cancelled", rest["id"])
        with pytest.raises(ReplyError) as e:
            await b.request("orderQuery", {"symbol": "SOL_USDC", "orderId": rest["id"]})
        assert e.value.code == "RESOURCE_NOT_FOUND"
        await b.request("orderExecute", limit("Ask", "151", "1"))
        await b.request("orderExecute", limit("Ask", "152", "1"))
        assert len(await b.request("orderCancelAll", {"symbol": "SOL_USDC"})) == 2
        assert await server.open_orders(bob) == []


async def test_market_orders_and_flags(server, traders):
    alice, bob = traders
    async with connect(server.url, alice) as a, connect(server.url, bob) as b:
        await b.request("orderExecute", limit("Ask", "150", "10"))
        m = await a.request("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Market", "quoteQuantity": "300"})
        assert (m["status"], m["executedQuoteQuantity"]) == ("Filled", "300")
        m = await a.request("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Market", "quantity": "1"})
        assert (m["status"], m["executedQuantity"]) == ("Filled", "1")
        r = await a.request("orderExecute", limit("Bid", "150", "1", postOnly=True))
        assert (r["status"], r["reason"]) == ("Rejected", "PostOnlyWouldTake")
        r = await a.request("orderExecute", limit("Bid", "150", "100", timeInForce="FOK"))
        assert r["status"] == "Expired" and r["executedQuantity"] == "0"
        r = await a.request("orderExecute", limit("Bid", "150", "100", timeInForce="IOC"))
        assert r["status"] == "Expired" and r["executedQuantity"] == "7"
        await b.request("orderExecute", limit("Bid", "140", "1"))  # bob has no USDC
        r = await b.request("orderExecute", limit("Bid", "140", "100"))
        assert (r["status"], r["reason"]) == ("Rejected", "InsufficientFunds")


async def test_client_id_as_string_unknown_params_and_percent_encoded_signature(server, traders):
    alice, _ = traders
    async with connect(server.url, alice) as a:
        r = await a.request("orderExecute", limit("Bid", "140", "1", clientId="77", brokerNote="x y/z"))
        assert r["clientId"] == 77
        # ccxt percent-encodes values before signing (quote(safe="")): "x y/z" -> "x%20y%2Fz"
        params = limit("Bid", "140", "1", clientId=78, brokerNote="x y/z")
        texts = {k: ("true" if v is True else str(v)) for k, v in params.items()}
        msg = signing_string("orderExecute", texts, 1, 5000, encoded=True)
        assert b"x%20y%2Fz" in msg
        import base64, time
        ts = int(time.time() * 1000)
        msg = signing_string("orderExecute", texts, ts, 5000, encoded=True)
        sig = [alice.api_key, base64.b64encode(alice.sign(msg)).decode(), str(ts), "5000"]
        frame = orjson.dumps({"id": "enc", "method": "orderExecute", "params": params, "signature": sig})
        r = await a.exchange("enc", frame)
        assert r["clientId"] == 78 and r["status"] == "New"
        # a float sent as a JSON number is signed as its literal text
        frame_text = '{"id":9,"method":"orderExecute","params":{"symbol":"SOL_USDC","side":"Bid","orderType":"Limit","price":139.50,"quantity":"1"},"signature":%s}'
        ts = int(time.time() * 1000)
        msg = f"instruction=orderExecute&orderType=Limit&price=139.50&quantity=1&side=Bid&symbol=SOL_USDC&timestamp={ts}&window=5000".encode()
        sig = [alice.api_key, base64.b64encode(alice.sign(msg)).decode(), str(ts), "5000"]
        r = await a.exchange(9, frame_text % orjson.dumps(sig).decode())
        assert r["price"] == "139.5"


async def test_depth_method_and_streams(server, traders):
    alice, bob = traders
    async with connect(server.url, alice) as a, connect(server.url, bob) as b, connect(server.url) as feed:
        await b.request("orderExecute", limit("Ask", "150", "2"))
        await feed.subscribe(["depth.SOL_USDC", "trade.SOL_USDC", "bookTicker.SOL_USDC", "ticker.SOL_USDC"])
        snap = await feed.next_frame("depth.")
        assert snap["data"]["e"] == "depthSnapshot" and snap["data"]["asks"] == [["150", "2"]]
        last = int(snap["data"]["lastUpdateId"])
        assert (await a.request("depth", {"symbol": "SOL_USDC"}, sign=False))["lastUpdateId"] == str(last)
        await a.request("orderExecute", limit("Bid", "150", "0.5"))
        await a.request("orderExecute", limit("Bid", "149", "1"))
        seen = {}
        while len(seen) < 4 or seen.get("depth", 0) < 2:
            f = await feed.next_frame()
            kind = f["stream"].split(".")[0]
            d = f["data"]
            if kind == "depth" and not d["a"] and not d["b"]:
                assert d["U"] == d["u"] == last  # a heartbeat: the book was quiet for depth_heartbeat_ms
                continue
            seen[kind] = seen.get(kind, 0) + 1
            if kind == "depth":
                assert d["U"] == last + 1 and d["u"] == d["U"]
                last = d["u"]
            elif kind == "trade":
                assert (d["p"], d["q"], d["m"]) == ("150", "0.5", False)
            elif kind == "ticker":
                assert (d["o"], d["c"], d["v"], d["V"], d["n"]) == ("150", "150", "0.5", "75", 1)
        bt = (await a.request("depth", {"symbol": "SOL_USDC"}, sign=False))
        assert bt["asks"] == [["150", "1.5"]] and bt["bids"] == [["149", "1"]]


async def test_private_streams(server, traders):
    alice, bob = traders
    async with connect(server.url, alice) as a, connect(server.url, bob) as b:
        await a.subscribe(["account.orderUpdate", "account.balanceUpdate", "account.rfqUpdate"], private=True)
        await b.request("orderExecute", limit("Ask", "150", "1"))
        await b.request("balanceQuery")  # a round trip, so the subscription is in place
        await a.request("orderExecute", limit("Bid", "150", "1"))
        events = []
        while "orderFill" not in events or "balanceUpdate" not in events:
            f = await a.next_frame("account.")
            events.append(f["data"]["e"])
            if f["data"]["e"] == "orderFill":
                assert (f["data"]["X"], f["data"]["l"], f["data"]["n"], f["data"]["m"]) == ("Filled", "1", "0.075", False)
        assert events[0] == "orderAccepted"
        assert not a.errors
        # cancelled, expired and rejected orders are reported too, with reasons
        rest = await a.request("orderExecute", limit("Bid", "140", "1"))
        await a.request("orderCancel", {"symbol": "SOL_USDC", "orderId": rest["id"]})
        await a.request("orderExecute", limit("Bid", "141", "1", timeInForce="IOC"))
        await a.request("orderExecute", limit("Bid", "140", "100000"))
        wanted = {"orderCancelled": None, "orderExpired": None, "orderRejected": "InsufficientFunds"}
        while wanted:
            d = (await a.next_frame("account.orderUpdate"))["data"]
            if d["e"] in wanted:
                assert d.get("R") == wanted.pop(d["e"])


async def test_invalid_stream_error(server):
    async with connect(server.url) as c:
        await c.subscribe(["nope.SOL_USDC"])
        f = await c.next_frame()
        assert f == {"id": None, "error": {"code": 4006, "message": "Invalid stream"}}
        await c.subscribe(["depth.DOGE_USDC"])
        assert (await c.next_frame())["error"]["code"] == 4006


@pytest.mark.parametrize("processes", [0, 2])
async def test_verifier_modes(nursery, tmp_path, processes):
    """Threads (0) and several worker processes verify the same way, in arrival order."""
    from conftest import start_server

    server = await start_server(nursery, tmp_path, verify_processes=processes)
    alice = Keypair.generate()
    await server.fund(alice, USDC=100_000 * USDC)
    async with connect(server.url, alice) as a:
        ids: dict[int, int] = {}

        async def place(i: int) -> None:
            ids[i] = int((await a.request("orderExecute", limit("Bid", "140", "0.1", clientId=i)))["id"])

        async with trio.open_nursery() as n:
            for i in range(40):
                n.start_soon(place, i)
        assert len(set(ids.values())) == 40
        forged = Keypair.generate()
        _, sig = sign_request(forged, "balanceQuery", {})
        sig[0] = alice.api_key
        r = await a.exchange("x", orjson.dumps({"id": "x", "method": "balanceQuery", "signature": sig}), raw=True)
        assert r["error"]["code"] == "INVALID_SIGNATURE"
