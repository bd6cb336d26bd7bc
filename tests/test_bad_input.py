"""Every bad-input and auth case gets its stable error code, changes nothing, and the
connection stays usable."""

from __future__ import annotations

import time

import orjson
import pytest

from conftest import start_server
from satchel.tools.client import connect
from satchel.signing import Keypair, sign_request

USDC = 10**6


def order(**over) -> dict:
    p = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "140", "quantity": "1"}
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def signed_frame(key: Keypair, params: dict, req_id=1, method="orderExecute", **sign_kw) -> bytes:
    _, sig = sign_request(key, method, params, **sign_kw)
    return orjson.dumps({"id": req_id, "method": method, "params": params, "signature": sig})


async def state(server, key):
    return (await server.balances(key), await server.open_orders(key), server.node.chain.txs)


async def assert_error(server, client, key, frame, code, req_id=1):
    before = await state(server, key)
    await client.send_raw(frame)
    while True:
        reply = await client.next_frame()
        if reply.get("id") == req_id or reply.get("id") is None:
            break
    assert reply["error"]["code"] == code, reply
    # still usable, nothing changed
    assert (await client.request("depth", {"symbol": "SOL_USDC"}, sign=False))["lastUpdateId"] is not None
    assert await state(server, key) == before


@pytest.fixture
async def alice(server):
    key = Keypair.generate()
    await server.fund(key, USDC=1_000 * USDC)
    return key


CASES = {
    "malformed_json": (lambda k: b'{"id": 1, "method": "orderExecute", "params": {', "INVALID_JSON"),
    "not_an_object": (lambda k: b"[1,2,3]", "INVALID_CLIENT_REQUEST"),
    "unknown_method": (lambda k: b'{"id": 1, "method": "orderTeleport", "params": {}}', "UNKNOWN_METHOD"),
    "missing_field": (lambda k: signed_frame(k, order(side=None)), "INVALID_CLIENT_REQUEST"),
    "mistyped_field": (lambda k: orjson.dumps({"id": 1, "method": "orderExecute", "params": {**order(), "quantity": {"a": 1}}, "signature": sign_request(k, "orderExecute", order())[1]}), "INVALID_CLIENT_REQUEST"),
    "bad_side": (lambda k: signed_frame(k, order(side="Buy")), "INVALID_CLIENT_REQUEST"),
    "bad_decimal": (lambda k: signed_frame(k, order(price="1.2.3")), "INVALID_DECIMAL"),
    "negative_decimal": (lambda k: signed_frame(k, order(quantity="-1")), "INVALID_DECIMAL"),
    "off_tick": (lambda k: signed_frame(k, order(price="140.001")), "INVALID_PRICE"),
    "off_step": (lambda k: signed_frame(k, order(quantity="1.005")), "INVALID_QUANTITY"),
    "unknown_symbol": (lambda k: signed_frame(k, order(symbol="DOGE_USDC")), "INVALID_SYMBOL"),
    "oversize": (lambda k: orjson.dumps({"id": None, "method": "orderExecute", "params": {"pad": "x" * 20_000}}), "PAYLOAD_TOO_LARGE"),
    "missing_signature": (lambda k: orjson.dumps({"id": 1, "method": "orderExecute", "params": order()}), "UNAUTHORIZED"),
    "bad_signature": (lambda k: signed_frame(k, order(price="141")).replace(b'"141"', b'"142"'), "INVALID_SIGNATURE"),
    "wrong_key": (lambda k: orjson.dumps({"id": 1, "method": "orderExecute", "params": order(),
                  "signature": [k.api_key] + sign_request(Keypair.generate(), "orderExecute", order())[1][1:]}), "INVALID_SIGNATURE"),
    "garbage_signature": (lambda k: orjson.dumps({"id": 1, "method": "orderExecute", "params": order(), "signature": [k.api_key, "!!", "1", "5000"]}), "INVALID_SIGNATURE"),
    "expired": (lambda k: signed_frame(k, order(), timestamp=int(time.time() * 1000) - 60_000), "EXPIRED"),
    "future": (lambda k: signed_frame(k, order(), timestamp=int(time.time() * 1000) + 60_000), "EXPIRED"),
    "window_too_large": (lambda k: signed_frame(k, order(), window=600_000), "INVALID_CLIENT_REQUEST"),
    "window_negative": (lambda k: orjson.dumps({"id": 1, "method": "orderExecute", "params": order(), "signature":
                        sign_request(k, "orderExecute", order())[1][:3] + ["-1"]}), "INVALID_CLIENT_REQUEST"),
    "limit_zero": (lambda k: signed_frame(k, {"limit": "0"}, method="orderQueryAll"), "INVALID_CLIENT_REQUEST"),
    "history_limit_zero": (lambda k: signed_frame(k, {"limit": "0"}, method="orderHistoryQueryAll"),
                           "INVALID_CLIENT_REQUEST"),
    "reduce_only_spot": (lambda k: signed_frame(k, order(reduceOnly=True)), "INVALID_CLIENT_REQUEST"),
    "deposit_not_admin": (lambda k: signed_frame(k, {"account": k.api_key, "asset": "USDC", "quantity": "5"}, method="deposit"), "UNAUTHORIZED"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input(server, alice, case):
    make, code = CASES[case]
    frame = make(alice)
    req_id = None if case in ("malformed_json", "not_an_object", "oversize") else 1
    async with connect(server.url, alice) as c:
        await assert_error(server, c, alice, frame, code, req_id)


async def test_replayed_request_rejected(server, alice):
    frame = signed_frame(alice, order())
    async with connect(server.url, alice) as c:
        first = await c.exchange(1, frame)
        assert first["status"] == "New"
        before = await state(server, alice)
        reply = await c.exchange(1, frame, raw=True)
        assert reply["error"]["code"] == "DUPLICATE_REQUEST"
        after = await state(server, alice)
        assert after[:2] == before[:2]  # the duplicate is journaled as a rejection, nothing else


async def test_rate_limit(nursery, tmp_path):
    server = await start_server(nursery, tmp_path, rate_per_second=1.0, rate_burst=5.0)
    async with connect(server.url) as c:
        codes = []
        for i in range(8):
            r = await c.exchange(i, orjson.dumps({"id": i, "method": "depth", "params": {"symbol": "SOL_USDC"}}), raw=True)
            codes.append(r.get("error", {}).get("code"))
        assert codes[:5] == [None] * 5
        assert set(codes[5:]) == {"TOO_MANY_REQUESTS"}


async def test_absurd_sizes_refused(server, alice):
    async with connect(server.url, alice) as c:
        for params, code in ((order(quantity="9" * 30), "INVALID_QUANTITY"), (order(price="9" * 30), "INVALID_PRICE")):
            r = await c.exchange(1, signed_frame(alice, params), raw=True)
            assert r["error"]["code"] == code


async def test_overloaded_node_refuses_signed_requests(nursery, tmp_path):
    server = await start_server(nursery, tmp_path, max_backlog=-1)  # always "overloaded"
    key = Keypair.generate()
    async with connect(server.url, key) as c:
        r = await c.exchange(1, signed_frame(key, order()), raw=True)
        assert r["error"] == {"code": "TOO_MANY_REQUESTS", "message": "Node is busy; retry shortly"}
        assert (await c.request("depth", {"symbol": "SOL_USDC"}, sign=False))["lastUpdateId"] == "0"
