"""The outside audit's findings (issue 7), one test each: no input stops the node."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from conftest import ADMIN, order, start_server
from satchel.actors import book as book_mod
from satchel.tools.client import ReplyError, connect
from satchel.core.messages import ASK, BID, FOK, MARKET, StateHashOf
from satchel.signing import Keypair, signing_string

USDC = 10**6
SOL = 10**9


def limit(side: str, price: str, qty: str, **extra) -> dict:
    return {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": qty, **extra}


async def state(server) -> tuple:
    return await server.node.ask("engine", StateHashOf()), server.node.chain.txs


async def raw_reply(ws, frame: str | bytes) -> dict:
    await ws.send_message(frame)
    with trio.fail_after(5):
        return orjson.loads(await ws.get_message())


# ------------------------------------------------------------------ 1: one frame must not kill the node


async def test_deep_nesting_and_binary_garbage_get_errors_and_the_node_goes_on(server):
    before = await state(server)
    deep = '{"id":1,"method":"depth","params":' + "[" * 1000 + "]" * 1000 + "}"
    deep_value = '{"id":2,"method":"orderExecute","params":{"symbol":' + "[" * 5000 + "]" * 5000 + "}}"
    deep_top = "[" * 30_000 + "]" * 30_000  # 60 KB: under 4 x max_frame_bytes, answered
    async with open_websocket_url(server.url, max_message_size=1 << 22) as ws:
        assert (await raw_reply(ws, deep))["error"]["code"] in ("INVALID_JSON", "INVALID_CLIENT_REQUEST")
        assert (await raw_reply(ws, deep_value))["error"]["code"] in ("INVALID_JSON", "INVALID_CLIENT_REQUEST")
        r = await raw_reply(ws, deep_top)
        assert r["error"]["code"] in ("INVALID_JSON", "PAYLOAD_TOO_LARGE")
        assert (await raw_reply(ws, b"\xff\xfe{\x80}"))["error"]["code"] == "INVALID_JSON"
        # a binary frame holding valid UTF-8 JSON is served like text
        r = await raw_reply(ws, b'{"id":3,"method":"depth","params":{"symbol":"SOL_USDC"}}')
        assert r["id"] == 3 and "bids" in r["result"]
        assert "result" in await raw_reply(ws, '{"id":4,"method":"depth","params":{"symbol":"SOL_USDC"}}')
    async with open_websocket_url(server.url, max_message_size=1 << 22) as ws:
        with pytest.raises(ConnectionClosed) as closed:  # over 4 x max_frame_bytes: the connection is closed
            await raw_reply(ws, "[" * 100_000 + "]" * 100_000)
        assert closed.value.reason.code == 1009
    assert await state(server) == before


async def test_an_unexpected_failure_is_answered_counted_and_logged_once(server, monkeypatch):
    from satchel.gateway import session

    def broken(self, req):
        raise KeyError("boom")

    monkeypatch.setitem(session._METHODS, "depth", broken)
    async with open_websocket_url(server.url) as ws:
        for i in range(3):
            r = await raw_reply(ws, orjson.dumps({"id": i, "method": "depth", "params": {"symbol": "SOL_USDC"}}).decode())
            assert r == {"id": i, "error": {"code": "INTERNAL_ERROR", "message": "The request could not be handled"}}
        assert "result" in await raw_reply(ws, '{"id":9,"method":"ledgerTotals"}')
    assert server.gateway.handler_errors == 3
    assert len(server.gateway.logged_failures) == 1


# ------------------------------------------------------------------ 2, 3: what was signed survives the journal


def signed_frame(key: Keypair, req_id, params: dict, *, encoded: bool) -> bytes:
    ts = int(time.time() * 1000)
    texts = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in params.items()}
    msg = signing_string("orderExecute", texts, ts, 5000, encoded=encoded)
    sig = [key.api_key, base64.b64encode(key.sign(msg)).decode(), str(ts), "5000"]
    return orjson.dumps({"id": req_id, "method": "orderExecute", "params": params, "signature": sig})


async def test_values_with_reserved_characters_are_journaled_so_a_validator_agrees(server, traders, tmp_path):
    from satchel.verify.validator import Validator

    alice, _ = traders
    async with connect(server.url, alice) as a:
        r = await a.request("orderExecute", limit("Bid", "140", "1", note="a&b"))
        assert r["status"] == "New"
        r = await a.request("orderExecute", limit("Bid", "139", "1", note="k=v&x=&timestamp=1"))
        assert r["status"] == "New"
        # ccxt signs percent-encoded values (quote(safe='')): the raw form fails, the encoded one passes
        r = await a.exchange("enc", signed_frame(alice, "enc", limit("Bid", "138", "1", clientId=5, zNote="x y/z:%"), encoded=True))
        assert r["clientId"] == 5 and r["status"] == "New"
        bad = await a.exchange("raw", signed_frame(alice, "raw", limit("Bid", "137", "1", zNote="x y/z:%"), encoded=False))
        assert bad["status"] == "New"  # the raw form of the same values verifies too
    server.node.shutdown()
    await server.node.wait_stopped()
    v = Validator(tmp_path / "validator")
    height = await v.check_journal(server.node.data / "journal")
    assert height == server.node.chain.height and v.verified_signatures >= 4


async def test_strict_client_ids_and_canonical_keys(server, traders):
    alice, _ = traders
    async with connect(server.url, alice) as a:
        for cid in ("1e3", 1.0, -1, 2**32, "0x1"):
            with pytest.raises(ReplyError) as err:
                await a.request("orderExecute", limit("Bid", "140", "1", clientId=cid))
            assert err.value.code == "INVALID_CLIENT_REQUEST", cid
        assert (await a.request("orderExecute", limit("Bid", "140", "1", clientId="4294967295")))["clientId"] == 2**32 - 1
    # the same public key spelled with other padding bits is no key at all
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    k = alice.api_key
    respelled = k[:42] + alphabet[alphabet.index(k[42]) + 1] + "="
    frame = orjson.loads(signed_frame(alice, 7, limit("Bid", "140", "1"), encoded=False))
    frame["signature"][0] = respelled
    async with open_websocket_url(server.url) as ws:
        r = await raw_reply(ws, orjson.dumps(frame).decode())
    assert r["id"] == 7 and r["error"]["code"] == "INVALID_SIGNATURE"


# ------------------------------------------------------------------ 4: fill-or-kill for every order type


async def taker_status(ex, tx) -> str:
    seq = ex.seq
    events = await ex.block([tx])
    return next(e.status for e in events if e.__class__.__name__ == "OrderDone" and e.order_id == seq)


async def test_fill_or_kill_market_orders_fill_completely_or_not_at_all(ex):
    await ex.deposit("buyer", "USDC", 10**12)
    await ex.deposit("seller", "SOL", 10**13)
    await ex.block([order("seller", ASK, 15_000, 350)])  # 3.5 SOL at 150
    events = await ex.block([order("buyer", BID, 0, 5_000, type=MARKET, tif=FOK)])
    done = [e for e in events if e.__class__.__name__ == "OrderDone"]
    assert [(d.status, d.reason, d.executed_quantity) for d in done] == [("Expired", "FillOrKill", 0)]
    assert not [e for e in events if e.__class__.__name__ == "Fill"]
    # by quote: 600 USDC cannot be spent against 3.5 SOL at 150 (525 USDC)
    assert await taker_status(ex, order("buyer", BID, type=MARKET, tif=FOK, quote_qty=600 * USDC)) == "Expired"
    assert await taker_status(ex, order("buyer", BID, type=MARKET, tif=FOK, quote_qty=300 * USDC)) == "Filled"
    assert await taker_status(ex, order("buyer", BID, 0, 200, type=MARKET, tif=FOK)) == "Expired"
    assert await taker_status(ex, order("buyer", BID, 0, 150, type=MARKET, tif=FOK)) == "Filled"
    # an ask sized in quote, and one sized in base
    await ex.block([order("buyer", BID, 14_000, 100)])
    assert await taker_status(ex, order("seller", ASK, type=MARKET, tif=FOK, quote_qty=141 * USDC)) == "Expired"
    assert await taker_status(ex, order("seller", ASK, 0, 101, type=MARKET, tif=FOK)) == "Expired"
    assert await taker_status(ex, order("seller", ASK, 0, 100, type=MARKET, tif=FOK)) == "Filled"
    assert (await ex.depth("SOL_USDC"))[1] == []
    totals = await ex.totals()
    assert totals["SOL"] == 10**13 and totals["USDC"] == 10**12


# ------------------------------------------------------------------ 5: bounded output, bounded replies


async def test_open_orders_per_market_are_capped(ex, monkeypatch):
    monkeypatch.setattr(book_mod, "MAX_OPEN_ORDERS", 3)
    await ex.deposit("a", "USDC", 10**12)
    events = await ex.block([order("a", BID, 14_000 + i, 100) for i in range(4)])
    done = [e for e in events if e.__class__.__name__ == "OrderDone"]
    assert [(d.status, d.reason) for d in done] == [("Rejected", "TooManyOpenOrders")]
    events = await ex.block([order("a", BID, 300_000, 100, symbol="ETH_USDC")])  # per market
    assert not [e for e in events if e.__class__.__name__ == "OrderDone"]


async def test_order_lists_are_paged_and_orders_carry_created_at(server, traders):
    alice, bob = traders
    async with connect(server.url, alice) as a:
        ids = [(await a.request("orderExecute", limit("Bid", str(100 + i), "0.1")))["id"] for i in range(12)]
        page = await a.request("orderQueryAll", {"symbol": "SOL_USDC", "limit": 5, "offset": 10})
        assert [o["id"] for o in page] == ids[10:]
        assert [o["id"] for o in await a.request("orderQueryAll", {"limit": "3"})] == ids[:3]
        with pytest.raises(ReplyError) as err:
            await a.request("orderQueryAll", {"limit": 1001})
        assert err.value.code == "INVALID_CLIENT_REQUEST"
        now_ms = time.time() * 1000
        q = await a.request("orderQuery", {"symbol": "SOL_USDC", "orderId": ids[0]})
        assert 0 < now_ms - q["createdAt"] < 60_000
        assert all(o["createdAt"] == q["createdAt"] for o in page[:0]) and page[0]["createdAt"] > 0
        c = await a.request("orderCancel", {"symbol": "SOL_USDC", "orderId": ids[0]})
        assert c["createdAt"] == q["createdAt"]
        rejected = await a.request("orderExecute", limit("Bid", "140", "1000000"))
        assert (rejected["status"], rejected["price"]) == ("Rejected", "140")
        assert rejected["createdAt"] > 0


async def test_a_client_that_never_reads_is_dropped_by_bytes(nursery, tmp_path):
    server = await start_server(nursery, tmp_path, send_buffer_bytes=256 << 10, rate_burst=1e9, rate_per_second=1e9)
    node = server.node
    from satchel.core.messages import Deposit
    from conftest import order as mk

    await node.submit_wait(Deposit(node.admin.api_key, "mm", "USDC", 10**15))
    for i in range(200):  # a deep book makes each depth reply ~10 KB
        node.submit(mk("mm", BID, 10_000 + i, 100))
    await node.submit_wait(Deposit(node.admin.api_key, "mm", "SOL", 1))
    frame = '{"id":1,"method":"depth","params":{"symbol":"SOL_USDC"}}'
    async with open_websocket_url(server.url) as ws:
        stream = ws._stream  # stop reading at the TCP level: replies pile up in the node
        with trio.fail_after(30):
            while server.gateway.slow_consumers == 0:
                await stream.send_all(ws._wsproto.send(__import__("wsproto").events.TextMessage(data=frame)))
                await trio.sleep(0)
    assert server.gateway.slow_consumers == 1
    async with connect(server.url) as c:  # everyone else is served
        assert (await c.request("depth", {"symbol": "SOL_USDC"}, sign=False))["bids"]


async def test_unresponsive_connections_are_closed(nursery, tmp_path):
    server = await start_server(nursery, tmp_path, ping_interval_s=0.2, ping_timeout_s=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.gateway.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    # announce a 100 MB frame and send nothing more: no pong can follow it
    await stream.send_all(bytes([0x81, 0xFF]) + (100 << 20).to_bytes(8, "big") + b"\0\0\0\0")
    with trio.fail_after(5):
        while await stream.receive_some(65536):
            pass  # the server closes the TCP connection
        while server.gateway.sessions:
            await trio.sleep(0.01)


# ------------------------------------------------------------------ low: ids, fees, totals


async def test_error_replies_name_the_request_and_totals_show_the_fee_pool(server, traders):
    alice, bob = traders
    async with open_websocket_url(server.url) as ws:
        assert (await raw_reply(ws, '{"id":11,"method":"orderExecute","signature":5}'))["id"] == 11
        assert (await raw_reply(ws, '{"id":12,"method":"SUBSCRIBE","params":["nope.X"]}'))["id"] == 12
        big = '{"id":13,"method":"depth","pad":"' + "x" * 20_000 + '"}'
        r = await raw_reply(ws, big)
        assert (r["id"], r["error"]["code"]) == (13, "PAYLOAD_TOO_LARGE")
    async with connect(server.url, alice) as a, connect(server.url, bob) as b:
        await b.request("orderExecute", limit("Ask", "150", "2"))
        await a.request("orderExecute", limit("Bid", "150", "2"))
        totals = await a.request("ledgerTotals", sign=False)
    from decimal import Decimal

    assert Decimal(totals["USDC"]["fees"]) > 0
    for asset, t in totals.items():
        assert Decimal(t["deposits"]) - Decimal(t["withdrawals"]) == Decimal(t["balances"]) + Decimal(t["fees"]), asset


__all__ = ["ADMIN"]


async def test_found_by_the_fuzzer_ids_beyond_64_bits_and_unsigned_stats_resets(server, traders):
    """The frame fuzzer found: ids of 400 digits echoed back (unreadable for int64
    clients), and anyone could wipe the node's latency statistics."""
    alice, _ = traders
    async with open_websocket_url(server.url) as ws:
        r = await raw_reply(ws, '{"id":' + "9" * 400 + ',"method":"depth","params":{"symbol":"SOL_USDC"}}')
        assert r["id"] is None and r["error"]["code"] == "INVALID_CLIENT_REQUEST"
        r = await raw_reply(ws, '{"id":9223372036854775807,"method":"depth","params":{"symbol":"SOL_USDC"}}')
        assert r["id"] == 2**63 - 1 and "result" in r
    async with connect(server.url, alice) as a:
        await a.request("orderExecute", limit("Bid", "140", "1"))
        with pytest.raises(ReplyError) as err:
            await a.request("nodeStats", {"reset": True}, sign=False)
        assert err.value.code == "UNAUTHORIZED"
        with pytest.raises(ReplyError) as err:
            await a.request("nodeStats", {"reset": True})  # signed, but not by the admin
        assert err.value.code == "UNAUTHORIZED"
        stats = await a.request("nodeStats", sign=False)
        assert stats["stages"]["total"]["count"] >= 1
    async with connect(server.url, server.node.admin) as admin:
        await admin.request("nodeStats", {"reset": True})
    server.node.latency.reset()  # the cached summary is gone with the reset
    assert server.node.latency.summary()["total"]["count"] == 0
