"""The REST API on a live node: public endpoints, signed order entry through the same API
as the WebSocket, and errors with HTTP statuses."""

from __future__ import annotations

import time

import httpx
import msgspec
import pytest
import trio

from satchel.rest import serve
from satchel.signing import Keypair, sign_request

USDC = 10**6


@pytest.fixture
async def rest(nursery, server):
    return await nursery.start(serve, server.gateway, "127.0.0.1", 0)


def signed_headers(key: Keypair, instruction: str, params: dict, ts: int | None = None, window: int = 5000) -> dict:
    _, (api_key, sig, ts_text, window_text) = sign_request(key, instruction, params, window, ts)
    return {"X-API-Key": api_key, "X-Signature": sig, "X-Timestamp": ts_text, "X-Window": window_text,
            "X-Broker-Id": "1500"}


async def test_public_endpoints(rest):
    async with httpx.AsyncClient(base_url=rest) as c:
        assert (await c.get("/api/v1/ping")).text == "pong"
        assert int((await c.get("/api/v1/time")).text) > 1_700_000_000_000
        assert (await c.get("/api/v1/status")).json()["status"] == "Ok"
        markets = {m["symbol"]: m for m in (await c.get("/api/v1/markets")).json()}
        assert markets["SOL_USDC"]["filters"]["price"]["tickSize"] == "0.01"
        assert markets["SOL_USDC_PERP"]["marketType"] == "PERP"
        assert {a["symbol"] for a in (await c.get("/api/v1/assets")).json()} >= {"USDC", "SOL"}
        depth = (await c.get("/api/v1/depth", params={"symbol": "SOL_USDC"})).json()
        assert set(depth) >= {"asks", "bids", "lastUpdateId", "timestamp"}
        assert (await c.get("/api/v1/ticker", params={"symbol": "SOL_USDC"})).json()["symbol"] == "SOL_USDC"
        bad = await c.get("/api/v1/ticker", params={"symbol": "NOPE"})
        assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_SYMBOL")


async def test_signed_orders_over_rest(rest, server, traders):
    alice, bob = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        ask = {"symbol": "SOL_USDC", "side": "Ask", "orderType": "Limit", "price": "150", "quantity": "2"}
        r = await c.post("/api/v1/order", json=ask, headers=signed_headers(bob, "orderExecute", ask))
        assert r.status_code == 200 and r.json()["status"] == "New", r.text
        bid = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150", "quantity": "1"}
        r = await c.post("/api/v1/order", json=bid, headers=signed_headers(alice, "orderExecute", bid))
        assert r.json()["status"] == "Filled"
        q = {"symbol": "SOL_USDC"}
        open_orders = (await c.get("/api/v1/orders", params=q, headers=signed_headers(bob, "orderQueryAll", q))).json()
        assert [o["executedQuantity"] for o in open_orders] == ["1"]
        cap = (await c.get("/api/v1/capital", headers=signed_headers(alice, "balanceQuery", {}))).json()
        assert cap["SOL"]["available"] == "1"
        # a body other than the one signed, an expired window, a replay
        tampered = {**bid, "quantity": "5"}
        r = await c.post("/api/v1/order", json=tampered, headers=signed_headers(alice, "orderExecute", bid))
        assert (r.status_code, r.json()["code"]) == (401, "INVALID_SIGNATURE")
        old = int(time.time() * 1000) - 60_000
        r = await c.post("/api/v1/order", json=bid, headers=signed_headers(alice, "orderExecute", bid, ts=old))
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED") and r.json()["message"].startswith("EXPIRED")
        resting = {**bid, "price": "140"}
        headers = signed_headers(alice, "orderExecute", resting)
        assert (await c.post("/api/v1/order", json=resting, headers=headers)).status_code == 200
        r = await c.post("/api/v1/order", json=resting, headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")
        assert r.json()["message"].startswith("DUPLICATE_REQUEST")
        r = await c.post("/api/v1/order", json=bid)
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")
        trades = (await c.get("/api/v1/trades", params={"symbol": "SOL_USDC", "limit": "5"})).json()
        assert [(t["price"], t["quantity"], t["isBuyerMaker"]) for t in trades] == [("150", "1", False)]
        assert (await c.get("/api/v1/trades", params={"symbol": "SOL_USDC", "limit": "0"})).status_code == 400
        cancel = {"symbol": "SOL_USDC", "orderId": open_orders[0]["id"]}
        r = await c.request("DELETE", "/api/v1/order", json=cancel, headers=signed_headers(bob, "orderCancel", cancel))
        assert r.json()["status"] == "Cancelled"


async def test_metrics(rest, server, traders):
    alice, _ = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        bid = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150", "quantity": "100000"}
        await c.post("/api/v1/order", json=bid, headers=signed_headers(alice, "orderExecute", bid))
        text = (await c.get("/metrics")).text
    assert 'satchel_rejects_total{code="InsufficientFunds"} 1.0' in text
    assert "satchel_blocks_total" in text and "satchel_sequencer_backlog" in text
    buckets = [line for line in text.splitlines() if line.startswith('satchel_stage_latency_seconds_bucket{le=')
               and 'stage="total"' in line]
    counts = [float(line.rsplit(" ", 1)[1]) for line in buckets]
    assert len(counts) == 15 and counts == sorted(counts) and counts[-1] >= 1  # cumulative, up to +Inf
    assert 'satchel_stage_latency_seconds_count{stage="durable"}' in text


async def test_batch_orders_one_signature(rest, server, traders):
    """``POST /api/v1/orders`` as ccxt sends it: items in the body's key order, each
    sorted on its own in the signed string; one answer per item; the journal keeps every
    item's record re-verifiable, and a replay of the batch is refused item by item."""
    import base64

    from satchel.core.instructions import BY_TX
    from satchel.core.messages import PlaceOrder
    from satchel.ledger.chain import decode_block
    from satchel.ledger.journal import read_records
    from satchel.signing import batch_signing_string, signed_message, verify

    alice, _ = traders
    items = [{"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "141", "quantity": "1"},
             {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "140", "quantity": "2", "clientId": 9},
             {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "139", "quantity": "100000"}]
    ts = int(time.time() * 1000)
    texts = [{k: str(v) for k, v in item.items()} for item in items]
    signed = batch_signing_string("orderExecute", texts, ts, 5000)
    assert signed.startswith(b"instruction=orderExecute&orderType=Limit&price=141&quantity=1&side=Bid&symbol=SOL_USDC"
                             b"&instruction=orderExecute&clientId=9&orderType=Limit")
    headers = {"X-API-Key": alice.api_key, "X-Signature": base64.b64encode(alice.sign(signed)).decode(),
               "X-Timestamp": str(ts), "X-Window": "5000"}
    async with httpx.AsyncClient(base_url=rest) as c:
        r = await c.post("/api/v1/orders", json=items, headers=headers)
        assert r.status_code == 200, r.text
        first, second, third = r.json()
        assert (first["operation"], first["price"], first["status"]) == ("Ok", "141", "New")
        assert (second["clientId"], second["quantity"]) == (9, "2")
        assert (third["operation"], third["code"]) == ("Err", "INSUFFICIENT_FUNDS")  # the others stand
        again = (await c.post("/api/v1/orders", json=items, headers=headers)).json()
        assert [(a["operation"], a["code"]) for a in again] == [("Err", "UNAUTHORIZED")] * 3
        assert again[0]["message"].startswith("DUPLICATE_REQUEST")
        bad = [items[0], {**items[1], "price": "140.001"}]
        r = await c.post("/api/v1/orders", json=bad, headers=headers)
        assert r.status_code == 400 and r.json()["message"].startswith("order 1:")
        r = await c.post("/api/v1/orders", json=[{**items[0], "quantity": "3"}, items[1], items[2]], headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "INVALID_SIGNATURE")
    assert len(await server.open_orders(alice)) == 2
    placed = [tx for rec in read_records(server.node.data / "journal") for tx in decode_block(rec).txs
              if isinstance(tx, PlaceOrder) and tx.auth is not None and tx.auth.batch]
    assert [tx.auth.item for tx in placed][:3] == [0, 1, 2]
    for tx in placed[:3]:
        message = signed_message(BY_TX[PlaceOrder].name, tx.auth)
        assert message == signed and verify(alice.public, (message,), tx.auth.signature) is not None
    forged = msgspec.structs.replace(placed[0].auth, params=placed[2].auth.params)
    assert signed_message("orderExecute", forged) == b""


async def test_account_securities_collateral(rest, server, traders):
    alice, _ = traders
    async with httpx.AsyncClient(base_url=rest) as c:
        assert (await c.get("/api/v1/securities")).json() == []
        assert (await c.get("/api/v1/fundingRates", params={"symbol": "SOL_USDC_PERP"})).json() == []  # no interval yet
        assert (await c.get("/api/v1/fundingRates", params={"symbol": "SOL_USDC"})).status_code == 400
        weights = {a["symbol"]: a["haircutFunction"] for a in (await c.get("/api/v1/collateral")).json()}
        assert weights["USDC"] == {"weight": "1", "kind": {"type": "identity"}}
        assert weights["SOL"]["kind"]["type"] == "inverseSqrt"
        account = (await c.get("/api/v1/account", headers=signed_headers(alice, "accountQuery", {}))).json()
        assert int(account["leverageLimit"]) > 3, account  # never set: the markets' maximum
        assert account["liquidating"] is False and "spotTakerFee" in account and "futuresMakerFee" in account
        body = {"leverageLimit": "3"}
        r = await c.patch("/api/v1/account", json=body, headers=signed_headers(alice, "accountUpdate", body))
        assert r.status_code == 200, r.text
        account = (await c.get("/api/v1/account", headers=signed_headers(alice, "accountQuery", {}))).json()
        assert account["leverageLimit"] == "3"


async def test_malformed_bodies_get_errors_and_the_node_keeps_serving(rest, server, traders):
    alice, _ = traders
    odd = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "140", "quantity": "1",
           "zNote": "a&b=c%d é ☃"}
    bodies = [b"\xff\xfe", b"{", b"[[[[]]]]", b'{"a": {"b": 1}}', b"[1, 2]", b'[{"a": [1]}]', b"null", b'"x"',
              b"[" * 5000, b'{"symbol": "SOL_USDC", "quantity": 1e999}']
    async with httpx.AsyncClient(base_url=rest) as c:
        for path in ("/api/v1/order", "/api/v1/orders", "/api/v1/account"):
            for body in bodies:
                headers = {**signed_headers(alice, "orderExecute", odd), "Content-Type": "application/json"}
                r = await c.request("PATCH" if path.endswith("account") else "POST", path, content=body,
                                    headers=headers)
                assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        r = await c.post("/api/v1/order", json=odd, headers=signed_headers(alice, "orderExecute", odd))
        assert r.status_code == 200 and r.json()["status"] == "New", r.text  # odd but valid values are signed as sent
        assert (await c.get("/api/v1/depth", params={"symbol": "SOL_USDC"})).status_code == 200


async def _raw_post(rest: str, head: bytes, body_mb: int) -> tuple[bytes, int]:
    """POST ``head`` (the request line and headers), then up to ``body_mb`` MB of body
    while the server reads it; the first bytes of its answer and the MB it took."""
    port = int(rest.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    sent = 0
    async with stream:
        await stream.send_all(head)
        chunk = b"a" * (1 << 20)
        with trio.move_on_after(10):
            try:
                while sent < body_mb:
                    with trio.move_on_after(1) as stalled:
                        await stream.send_all(chunk)
                    if stalled.cancelled_caught:  # the server stopped reading
                        break
                    sent += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it answered and closed
        with trio.fail_after(5):
            answer = await stream.receive_some(500)
    return answer, sent


async def test_a_large_body_is_refused_before_it_is_read(rest):
    """An outside test held 200 MB in a node with one upload: the body was read whole
    before its size was checked. Now a declared length over 16 KB is refused before any
    of it is read, and an undeclared (chunked) one as soon as it streams past 16 KB."""
    head = b"POST /api/v1/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer, sent = await _raw_post(rest, head + b"Content-Length: 1000000000\r\n\r\n", 64)
    assert answer.startswith(b"HTTP/1.1 413") and b"PAYLOAD_TOO_LARGE" in answer, answer
    assert sent < 64, sent
    answer, sent = await _raw_post(rest, head + b"Transfer-Encoding: chunked\r\n\r\n100000\r\n", 64)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert sent < 64, sent
    async with httpx.AsyncClient(base_url=rest) as c:  # and a body within the limit is read as before
        r = await c.post("/api/v1/order", content=b"{" * 16_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] != "PAYLOAD_TOO_LARGE", r.text
        r = await c.post("/api/v1/order", content=b" " * 16_385, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE", r.text
