"""Lending at the edges, on a live node: ``borrowLendExecute`` (REST ``POST /api/v1/borrowLend``
and WebSocket), positions, the account's lending switches, collateral, the borrow/lend
history and the platform statistics' totals; an unmodified ccxt client after auto-lend
has swept its balances."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import ccxt
import ccxt.async_support as ccxt_async
import httpx
import pytest
import trio

from conftest import LISTING
from satchel.api.format import Formatter
from satchel.core.messages import BlockHeader, Deposit, LendingOf, LendMoved, SetIndex
from satchel.history import queries, views
from satchel.history.schema import open_db
from satchel.history.writes import Batch
from satchel.rest import serve
from satchel.signing import Keypair, sign_request
from satchel.tools.client import ReplyError, connect

SOL, USDC = 10**9, 10**6
PERP = "SOL_USDC_PERP"


@pytest.fixture
async def rest(nursery, server):
    admin = server.node.admin.api_key
    for _ in range(2):  # the mark (what values SOL as collateral and as a debt) is set by the periodic phase
        await server.node.submit_wait(SetIndex(admin, PERP, 15_000))
    return await nursery.start(serve, server.gateway, "127.0.0.1", 0)


def signed(key: Keypair, instruction: str, params: dict | None = None) -> dict:
    _, (api_key, sig, ts, window) = sign_request(key, instruction, params or {})
    return {"X-API-Key": api_key, "X-Signature": sig, "X-Timestamp": ts, "X-Window": window}


class Trader:
    """One account's signed REST calls."""

    def __init__(self, http: httpx.AsyncClient, key: Keypair):
        self.http = http
        self.key = key

    async def get(self, path: str, instruction: str, params: dict | None = None) -> httpx.Response:
        return await self.http.get(path, params=params, headers=signed(self.key, instruction, params))

    async def send(self, verb: str, path: str, instruction: str, body: dict) -> httpx.Response:
        return await self.http.request(verb, path, json=body, headers=signed(self.key, instruction, body))

    async def borrow_lend(self, side: str, symbol: str, quantity: str) -> httpx.Response:
        body = {"symbol": symbol, "side": side, "quantity": quantity}
        return await self.send("POST", "/api/v1/borrowLend", "borrowLendExecute", body)

    async def positions(self) -> list[dict]:
        r = await self.get("/api/v1/borrowLend/positions", "borrowLendPositionQuery")
        assert r.status_code == 200, r.text
        return r.json()

    async def history(self, **params: str) -> httpx.Response:
        return await self.get("/wapi/v1/history/borrowLend", "borrowHistoryQueryAll", params)

    async def json(self, path: str, instruction: str) -> dict:
        r = await self.get(path, instruction)
        assert r.status_code == 200, r.text
        return r.json()


async def new_trader(server, http: httpx.AsyncClient, **amounts: int) -> Trader:
    """A fresh account with auto-lend switched off before it holds anything (so the
    once-a-second sweep leaves its balances where the test puts them), then funded."""
    t = Trader(http, Keypair.generate())
    r = await t.send("PATCH", "/api/v1/account", "accountUpdate", {"autoLend": False})
    assert (r.status_code, r.json()) == (200, {"autoLend": False}), r.text
    await server.fund(t.key, **amounts)
    return t


async def test_lend_borrow_positions_collateral_and_refusals(rest, server):
    async with httpx.AsyncClient(base_url=rest) as http:
        carol = await new_trader(server, http, USDC=10_000 * USDC, SOL=100 * SOL)
        dave = await new_trader(server, http, USDC=100 * USDC)

        # carol lends 50 SOL: 200 with an empty body, as Backpack answers
        r = await carol.borrow_lend("Lend", "SOL", "50")
        assert (r.status_code, r.content) == (200, b""), r.text
        [pos] = await carol.positions()
        assert {k: pos[k] for k in ("symbol", "netQuantity", "markPrice", "netExposureQuantity",
                                    "netExposureNotional", "cumulativeInterest", "estLiquidationPrice")} == {
            "symbol": "SOL", "netQuantity": "50", "markPrice": "150", "netExposureQuantity": "50",
            "netExposureNotional": "7500", "cumulativeInterest": "0", "estLiquidationPrice": "0"}
        assert pos["id"].isdigit() and pos["imf"] == pos["imfFunction"]["base"]
        assert pos["imfFunction"] == {"type": "sqrt", "base": pos["imf"], "factor": "0"}
        capital = await carol.json("/api/v1/capital", "balanceQuery")
        assert capital["SOL"] == {"available": "50", "locked": "0", "staked": "0"}  # auto-lend off: lent is not available
        collateral = {row["symbol"]: row for row in (await carol.json("/api/v1/capital/collateral", "collateralQuery"))["collateral"]}
        assert (collateral["SOL"]["totalQuantity"], collateral["SOL"]["lendQuantity"],
                collateral["SOL"]["availableQuantity"]) == ("100", "50", "50")

        # dave borrows 2 SOL (300 USDC, initial margin 10% of it) against 100 USDC
        r = await dave.borrow_lend("Borrow", "SOL", "2")
        assert (r.status_code, r.content) == (200, b""), r.text
        [debt] = await dave.positions()
        assert (debt["symbol"], debt["netQuantity"], debt["markPrice"], debt["netExposureNotional"]) == (
            "SOL", "-2", "150", "300")
        account = await dave.json("/api/v1/capital/collateral", "collateralQuery")
        rows = {row["symbol"]: row for row in account["collateral"]}
        assert account["borrowLiability"] == "300"
        assert (rows["SOL"]["totalQuantity"], rows["SOL"]["availableQuantity"], rows["SOL"]["lendQuantity"]) == (
            "0", "2", "0")
        assert (await dave.json("/api/v1/capital", "balanceQuery"))["SOL"]["available"] == "2"

        # refused: nothing changes (but the debt's interest, which accrues by the block)
        before = (await dave.json("/api/v1/capital", "balanceQuery"), len((await dave.history()).json()))
        r = await dave.borrow_lend("Borrow", "SOL", "10")  # the pool has it; dave's margin does not cover it
        assert (r.status_code, r.json()["code"]) == (400, "BORROW_LIMIT"), r.text
        r = await dave.borrow_lend("Borrow", "SOL", "60")  # more than the pool holds
        assert (r.status_code, r.json()["code"]) in ((400, "INSUFFICIENT_LIQUIDITY"), (400, "BORROW_LIMIT")), r.text
        assert (await dave.json("/api/v1/capital", "balanceQuery"), len((await dave.history()).json())) == before
        [still] = await dave.positions()
        assert still["id"] == debt["id"] and -Decimal("2.00001") < Decimal(still["netQuantity"]) <= -2
        r = await carol.borrow_lend("Lend", "SOL", "1000")
        assert (r.status_code, r.json()["code"]) == (400, "INSUFFICIENT_FUNDS")
        r = await carol.borrow_lend("Lend", "NOPE", "1")
        assert (r.status_code, r.json()["code"]) == (400, "INVALID_ASSET")
        r = await carol.borrow_lend("Lend", "SOL", "0.0000000001")  # finer than SOL's 9 decimals
        assert r.status_code == 400
        body = {"symbol": "SOL", "side": "Lend", "quantity": "1"}
        r = await carol.http.post("/api/v1/borrowLend", json=body)
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")

        # dave repays half: the same position, smaller (interest may have added a unit)
        r = await dave.borrow_lend("Lend", "SOL", "1")
        assert r.status_code == 200, r.text
        [smaller] = await dave.positions()
        assert smaller["id"] == debt["id"] and -Decimal("1.00001") < Decimal(smaller["netQuantity"]) <= -1

        # the history: newest first, one position, Backpack's fields
        r = await dave.history()
        assert r.status_code == 200, r.text
        repay, borrow = r.json()
        assert set(borrow) == {"eventType", "positionId", "positionQuantity", "quantity", "source", "symbol",
                               "timestamp", "spotMarginOrderId"}
        assert (borrow["eventType"], borrow["quantity"], borrow["positionQuantity"], borrow["source"],
                borrow["symbol"], borrow["spotMarginOrderId"]) == ("Borrow", "2", "-2", "Manual", "SOL", None)
        assert (repay["eventType"], repay["quantity"], repay["positionQuantity"]) == (
            "BorrowRepay", "1", smaller["netQuantity"])
        assert borrow["positionId"] == repay["positionId"] == debt["id"]
        assert time.strptime(borrow["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")  # naive ISO, like fills
        assert [m["eventType"] for m in (await dave.history(sortDirection="Asc")).json()] == ["Borrow", "BorrowRepay"]
        assert [m["eventType"] for m in (await dave.history(type="Borrow")).json()] == ["Borrow"]
        assert [m["eventType"] for m in (await dave.history(limit="1", offset="1")).json()] == ["Borrow"]
        assert len((await dave.history(sources="Manual,AutoLend", symbol="SOL")).json()) == 2
        assert (await dave.history(sources="AutoLend")).json() == []
        assert (await dave.history(symbol="USDC")).json() == []
        assert len((await dave.history(positionId=debt["id"])).json()) == 2
        assert (await dave.history(positionId=pos["id"])).json() == []  # carol's position, not dave's
        now = int(time.time() * 1000)
        assert (await dave.history(**{"from": str(now + 60_000)})).json() == []
        assert len((await dave.history(**{"from": str(now - 60_000), "to": str(now + 60_000)})).json()) == 2
        for bad in ({"sources": "Nope"}, {"type": "Deposit"}, {"symbol": "NOPE"}, {"sortDirection": "Up"},
                    {"limit": "1001"}):
            r = await dave.history(**bad)
            assert r.status_code == 400, (bad, r.text)
        [lent] = (await carol.history()).json()
        assert (lent["eventType"], lent["quantity"], lent["positionQuantity"], lent["positionId"]) == (
            "Lend", "50", "50", pos["id"])

        # the platform's totals are the pools' (other accounts may be auto-lent: compare with the pools)
        stats = (await http.get("/api/v1/stats")).json()
        pools = {p["symbol"]: p for p in (await http.get("/api/v1/borrowLend/markets")).json()}
        assets = {a["symbol"]: a for a in stats["assets"]}
        for symbol, pool in pools.items():
            assert (assets[symbol]["lent"], assets[symbol]["borrowed"]) == (pool["lentQuantity"], pool["borrowedQuantity"])
        assert Decimal(assets["SOL"]["lent"]) >= 50 and 1 <= Decimal(assets["SOL"]["borrowed"]) < Decimal("1.00001")
        assert Decimal(assets["SOL"]["borrowedValue"]) == (Decimal(assets["SOL"]["borrowed"]) * 150).quantize(
            Decimal("0.000001"), rounding="ROUND_DOWN")
        assert Decimal(stats["borrowedValue"]) == sum(Decimal(a["borrowedValue"] or 0) for a in stats["assets"])


async def test_account_switches(rest, server):
    async with httpx.AsyncClient(base_url=rest) as http:
        t = Trader(http, Keypair.generate())
        account = await t.json("/api/v1/account", "accountQuery")
        assert (account["autoLend"], account["autoRepayBorrows"]) == (True, False)  # the defaults
        # booleans in the body, signed as true/false (as ccxt signs them)
        r = await t.send("PATCH", "/api/v1/account", "accountUpdate", {"autoLend": False, "autoRepayBorrows": True})
        assert (r.status_code, r.json()) == (200, {"autoLend": False, "autoRepayBorrows": True}), r.text
        account = await t.json("/api/v1/account", "accountQuery")
        assert (account["autoLend"], account["autoRepayBorrows"]) == (False, True)
        r = await t.send("PATCH", "/api/v1/account", "accountUpdate", {"leverageLimit": "5"})
        assert r.json() == {"leverageLimit": "5"}
        account = await t.json("/api/v1/account", "accountQuery")
        assert (account["leverageLimit"], account["autoLend"], account["autoRepayBorrows"]) == ("5", False, True)
        r = await t.send("PATCH", "/api/v1/account", "accountUpdate", {"autoLend": "maybe"})
        assert r.status_code == 400
        r = await t.send("PATCH", "/api/v1/account", "accountUpdate", {})
        assert r.status_code == 400


async def test_websocket_borrow_lend(rest, server):
    erin, frank = Keypair.generate(), Keypair.generate()
    async with connect(server.url, erin) as c, connect(server.url, frank) as lender:
        assert await lender.request("accountUpdate", {"autoLend": False}) == {"autoLend": False}
        await server.fund(frank, USDC=20_000 * USDC)  # the pool's cash: a refusal below is the borrow limit's
        await lender.request("borrowLendExecute", {"symbol": "USDC", "side": "Lend", "quantity": "20000"})
        assert await c.request("accountUpdate", {"autoLend": False}) == {"autoLend": False}
        await server.fund(erin, USDC=500 * USDC)
        assert await c.request("borrowLendExecute", {"symbol": "USDC", "side": "Lend", "quantity": "200"}) == {
            "symbol": "USDC", "side": "Lend", "quantity": "200", "netQuantity": "200"}
        # Borrow redeems the lend first, then borrows the rest
        answer = await c.request("borrowLendExecute", {"symbol": "USDC", "side": "Borrow", "quantity": "250"})
        assert answer["netQuantity"] == "-50"
        [pos] = await c.request("borrowLendPositionQuery")
        assert (pos["symbol"], pos["netQuantity"], pos["markPrice"]) == ("USDC", "-50", "1")
        moves = await c.request("borrowHistoryQueryAll", {"sortDirection": "Asc"})
        assert [(m["eventType"], m["quantity"], m["positionQuantity"]) for m in moves] == [
            ("Lend", "200", "200"), ("LendRedeem", "200", "0"), ("Borrow", "50", "-50")]
        # the redeem closed the lend's position; the borrow opened a new one
        assert moves[0]["positionId"] == moves[1]["positionId"] != moves[2]["positionId"] == pos["id"]
        with pytest.raises(ReplyError) as refused:
            await c.request("borrowLendExecute", {"symbol": "USDC", "side": "Borrow", "quantity": "10000"})
        assert refused.value.code == "BORROW_LIMIT"
        [still] = await c.request("borrowLendPositionQuery")  # the same position (its interest aside)
        assert still["id"] == pos["id"] and -Decimal("50.0001") < Decimal(still["netQuantity"]) <= -50


async def test_ccxt_parses_balances_after_the_auto_lend_sweep(rest, server, traders):
    """Auto-lend is on by default: once a balance stayed idle for a second of sequenced
    time, the sweep lends it; ``GET /api/v1/capital`` still shows them available, so an
    unmodified ccxt client sees its balance unchanged and can trade it."""
    alice, bob = traders
    for _ in range(2):  # two sweeps: a balance is lent once it stayed idle a whole interval
        await trio.sleep(1.1)
        await server.node.submit_wait(Deposit(server.node.admin.api_key, "@nobody", "USDC", 1))  # a block: a sweep
    lent = {p.asset: p.lent for p in await server.node.ask("risk", LendingOf(alice.api_key))}
    assert lent == {"USDC": 100_000 * USDC}

    def scenario() -> tuple:
        async def go() -> tuple:
            a = ccxt_async.backpack({"apiKey": alice.api_key, "secret": alice.secret})
            a.urls["api"] = {"public": rest, "private": rest}
            try:
                balance = await a.fetch_balance()
                # everything is auto-lent: a Borrow redeems from the lend first (and REST answers nothing)
                executed = await a.private_post_api_v1_borrowlend({"symbol": "USDC", "side": "Borrow", "quantity": "5"})
                positions = await a.private_get_api_v1_borrowlend_positions()
                bid = await a.create_order("SOL/USDC", "limit", "buy", 1, 100)  # redeems what it holds
                after = await a.fetch_balance()
                switched = await a.private_patch_api_v1_account({"autoLend": False})
                return balance, bid, after, positions, executed, switched
            finally:
                await a.close()

        return asyncio.run(go())

    balance, bid, after, positions, executed, switched = await trio.to_thread.run_sync(scenario)
    assert (balance["USDC"]["free"], balance["USDC"]["used"], balance["USDC"]["total"]) == (100_000, 0, 100_000)
    assert bid["status"] == "open"
    assert after["USDC"]["used"] == pytest.approx(100 * 1.0005) and after["USDC"]["total"] == pytest.approx(100_000)
    [pos] = positions
    assert pos["symbol"] == "USDC" and pos["netQuantity"] in ("99995", "100000")  # the sweep may re-lend the 5
    assert executed in (None, "", {}) and switched == {"autoLend": False}
    sync = ccxt.backpack({"apiKey": alice.api_key, "secret": alice.secret})
    sync.urls["api"] = {"public": rest, "private": rest}
    balance = await trio.to_thread.run_sync(sync.fetch_balance)
    assert balance["USDC"]["used"] == pytest.approx(100 * 1.0005)


# ---------------------------------------------------------------- the history's position ids


def test_position_ids_do_not_depend_on_the_order_blocks_are_written(tmp_path):
    """A position's id is the ``pos`` (height << 32 | event index) of the movement that
    opened it, found on read: a catch-up writing older blocks after newer ones gives the
    same ids."""
    t = 1_754_064_000_000_000

    def moved(seq: int, kind: str, amount: int, lent: int, borrowed: int, source: str = "Manual") -> LendMoved:
        return LendMoved(seq, "a", "SOL", kind, source, amount, lent, borrowed, t + seq)

    blocks = [
        (1, [moved(5, "Lend", 10 * SOL, 10 * SOL, 0)]),
        (2, [moved(6, "LendRedeem", 10 * SOL, 0, 0), moved(6, "Borrow", 3 * SOL, 0, 3 * SOL)]),  # closed, opened
        (3, [LendMoved(7, "b", "SOL", "Lend", "AutoLend", SOL, SOL, 0, t),
             moved(7, "BorrowRepay", SOL, 0, 2 * SOL, "AutoBorrowRepay")]),
    ]
    opened_first, opened_second = 1 << 32, 2 << 32 | 1
    for name, order in (("forward", blocks), ("backward", blocks[::-1])):
        conn = open_db(tmp_path / f"{name}.sqlite")
        for height, events in order:
            batch = Batch()
            batch.add(BlockHeader(height, height, t, b"", 1, 0, b"", b""), events)
            conn.execute("BEGIN")
            batch.write(conn)
            conn.execute("COMMIT")
        rows = queries.LendHistory("a", ascending=True).run(conn)
        assert [(r.kind, r.position_id) for r in rows] == [
            ("Lend", opened_first), ("LendRedeem", opened_first), ("Borrow", opened_second),
            ("BorrowRepay", opened_second)]
        assert queries.OpenLendPositions("a", ("SOL",)).run(conn) == {"SOL": opened_second}
        assert queries.OpenLendPositions("b", ("SOL", "USDC")).run(conn) == {"SOL": 3 << 32}
        assert [r.kind for r in queries.LendHistory("a", position_id=opened_first).run(conn)] == ["LendRedeem", "Lend"]
        assert [r.kind for r in queries.LendHistory("a", position_id=opened_second, ascending=True).run(conn)] == [
            "Borrow", "BorrowRepay"]
        assert queries.LendHistory("a", position_id=3 << 32).run(conn) == []  # b's position
        assert [r.kind for r in queries.LendHistory("a", sources=("AutoBorrowRepay",)).run(conn)] == ["BorrowRepay"]
        conn.close()
    [item] = views.lend_moves(Formatter(LISTING.markets, LISTING.assets), rows[-1:])
    assert item == {"eventType": "BorrowRepay", "positionId": str(opened_second), "positionQuantity": "-2",
                    "quantity": "1", "source": "AutoBorrowRepay", "symbol": "SOL",
                    "timestamp": views.iso_ms(t + 7), "spotMarginOrderId": None}


async def test_lending_streams(rest, server):
    """``account.borrowLendUpdate`` carries each movement; ``borrowLendMarket.<asset>`` the
    pool's figures once per second of sequenced time."""
    gina = Keypair.generate()
    async with connect(server.url, gina) as c:
        await c.request("accountUpdate", {"autoLend": False})
        await server.fund(gina, USDC=300 * USDC)
        await c.subscribe(["account.borrowLendUpdate.USDC"], private=True)
        await c.subscribe(["borrowLendMarket.USDC"])
        await c.request("borrowLendExecute", {"symbol": "USDC", "side": "Lend", "quantity": "120"})
        moved = await c.next_frame("account.borrowLendUpdate")
        assert {k: moved["data"][k] for k in ("e", "s", "q", "Q", "o")} == {
            "e": "lend", "s": "USDC", "q": "120", "Q": "120", "o": "Manual"}
        for _ in range(2):  # a block in the next second of sequenced time carries the figures
            await trio.sleep(1.05)
            await server.node.submit_wait(Deposit(server.node.admin.api_key, "@nobody", "USDC", 1))
        pool = (await c.next_frame("borrowLendMarket.USDC"))["data"]
        assert pool["e"] == "borrowLendMarket" and pool["s"] == "USDC" and Decimal(pool["lentQuantity"]) >= 120
        await c.subscribe(["borrowLendMarket.NOPE"])
        with trio.fail_after(5):
            while not c.errors:
                await trio.sleep(0.01)
        assert c.errors[0]["error"]["code"] == 4006  # not a listed asset
