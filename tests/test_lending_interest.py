"""Interest history (``interestHistoryQueryAll``, ``GET /wapi/v1/history/interest``): one
row per lend or borrow position and hour of sequenced time, derived by the history read
model from the movements and the pools' hourly index marks. The engine is driven over
several hours of sequenced time (``Exchange``, its clock set per block), its blocks written
to the history store; a live node answers over REST and WebSocket with the sequencer's
clock moved forward."""

from __future__ import annotations

import threading
from decimal import Decimal

import httpx
import pytest
import trio

from conftest import ADMIN, LISTING, Exchange
from satchel.api.format import Formatter, fraction
from satchel.core import lending as pools
from satchel.core.messages import (
    BORROW, LEND, BadDebt, BlockHeader, BorrowLend, Deposit, LendingOf, LendMoved, PoolUpdate, PoolsOf, SetLeverage,
)
from satchel.history import queries, views
from satchel.history.schema import SCHEMA_VERSION, open_db
from satchel.history.store import Store
from satchel.history.writes import HOUR_US, Batch
from satchel.rest import serve
from satchel.signing import Keypair, sign_request
from satchel.tools.client import connect

USDC = 10**6
MINUTE = 60_000_000
# the first hour boundary after conftest's ``Exchange`` clock starts
BASE = -(-1_700_000_000_000_000 // HOUR_US) * HOUR_US
H0 = BASE // HOUR_US


async def at(ex: Exchange, us: int, txs: list | None = None) -> list:
    """A block at ``BASE + us`` of sequenced time."""
    ex.ts = BASE + us - 1000  # ``Exchange.block`` adds a millisecond
    return await ex.block(txs or [])


async def positions(ex: Exchange, account: str) -> dict:
    return {p.asset: p for p in await ex.engine.risk.call(LendingOf(account))}


async def scenario(ex: Exchange) -> tuple[list[tuple[BlockHeader, list]], dict]:
    """A lender and a borrower of USDC over six hours (and a whale whose lend keeps cash in
    the pool), with movements in between (one in the first block of an hour, before that
    hour's mark), an hour without blocks (hour 5), and the lender's first position closed
    and a second one opened. Returns the blocks as
    the node publishes them and the engine's positions after the last one (the first
    block of hour 6)."""
    blocks: list[tuple[BlockHeader, list]] = []

    async def block(us: int, txs: list | None = None) -> list:
        first = ex.seq
        events = await at(ex, us, txs)
        blocks.append((BlockHeader(len(blocks) + 2, first, ex.ts, b"", 0, len(txs or []), b"", b""), events))
        return events

    await block(-30 * MINUTE, [*(SetLeverage(a, 0, auto_lend=0) for a in ("lender", "borrower", "whale")),
                               Deposit(ADMIN, "lender", "USDC", 20_000 * USDC),
                               Deposit(ADMIN, "borrower", "USDC", 2_000 * USDC),
                               Deposit(ADMIN, "whale", "USDC", 10_000 * USDC)])
    await block(5 * MINUTE, [BorrowLend("lender", "USDC", LEND, 10_000 * USDC),
                             BorrowLend("whale", "USDC", LEND, 10_000 * USDC),
                             BorrowLend("borrower", "USDC", BORROW, 5_000 * USDC)])
    await block(40 * MINUTE)
    await block(60 * MINUTE + 500_000, [BorrowLend("borrower", "USDC", LEND, 1_000 * USDC)])  # repays, before the mark
    await block(80 * MINUTE, [BorrowLend("lender", "USDC", LEND, 2_000 * USDC)])
    await block(120 * MINUTE + 10_000_000)
    await block(150 * MINUTE, [BorrowLend("lender", "USDC", BORROW, 3_000 * USDC)])  # redeems
    await block(180 * MINUTE + 1_000_000)
    await block(195 * MINUTE, [BorrowLend("borrower", "USDC", BORROW, 2_000 * USDC)])
    await block(240 * MINUTE + 1_000_000)
    # the lender redeems its whole claim, as the pool will have accrued it at the block's time: closed
    scaled = [ev for _, events in blocks for ev in events if ev.__class__ is LendMoved and ev.account == "lender"][-1]
    pool = next(p for p in await ex.engine.lending.call(PoolsOf()) if p.spec.asset == "USDC")
    claim = pools.claim(pools.accrue(pool, BASE + 245 * MINUTE), scaled.lent_scaled)
    await block(245 * MINUTE, [BorrowLend("lender", "USDC", BORROW, claim)])
    await block(270 * MINUTE, [BorrowLend("lender", "USDC", LEND, 1_000 * USDC)])  # a new position
    # no block in hour 5: its interest is accrued by the first block of hour 6
    await block(360 * MINUTE + 2_000_000)
    return blocks, {a: await positions(ex, a) for a in ("lender", "borrower", "whale")}


def write(path, blocks: list[tuple[BlockHeader, list]]) -> None:
    conn = open_db(path)
    for header, events in blocks:
        batch = Batch()
        batch.add(header, events)
        conn.execute("BEGIN")
        batch.write(conn)
        conn.execute("COMMIT")
    conn.close()


def read(path, query) -> list:
    conn = open_db(path)
    try:
        return query.run(conn)
    finally:
        conn.close()


def remainders(blocks: list[tuple[BlockHeader, list]], account: str, position_id: int) -> int:
    """What the pool kept of the position's movements when it scaled them (the claim or
    debt moved by the amount, less the rounding): the difference between the hours' sum
    and the engine's cumulative interest."""
    total = 0
    scaled = 0
    for header, events in blocks:
        for ix, ev in enumerate(events):
            if ev.__class__ is not LendMoved or ev.account != account:
                continue
            pos = header.height << 32 | ix
            if pos < position_id:
                continue
            up = ev.kind in ("Borrow", "BorrowRepay")
            before = pools.to_amount(scaled, ev.index, up)
            after = ev.borrowed if up else ev.lent
            signed = ev.amount if ev.kind in ("Lend", "Borrow") else -ev.amount
            total += (after - before) - signed
            scaled = ev.borrowed_scaled if up else ev.lent_scaled
            if ev.lent == 0 and ev.borrowed == 0:
                return total
    return total


def marks(blocks: list[tuple[BlockHeader, list]], asset: str = "USDC") -> dict[int, PoolUpdate]:
    """hour -> the pool's first ``PoolUpdate`` in it."""
    out: dict[int, PoolUpdate] = {}
    for header, events in blocks:
        for ev in events:
            if ev.__class__ is PoolUpdate and ev.asset == asset:
                out.setdefault(header.timestamp // HOUR_US, ev)
    return out


def opened(blocks: list[tuple[BlockHeader, list]], account: str) -> list[int]:
    """The ids (``pos``) of the account's positions, in the order they opened."""
    out, open_ = [], False
    for header, events in blocks:
        for ix, ev in enumerate(events):
            if ev.__class__ is LendMoved and ev.account == account:
                if not open_:
                    out.append(header.height << 32 | ix)
                open_ = bool(ev.lent or ev.borrowed)
    return out


async def test_hourly_rows_add_up_to_the_cumulative_interest(ex, tmp_path):
    """Each position's rows, one per hour, add up to the engine's cumulative interest less
    what the pool kept of its movements' rounding (a unit or two per movement)."""
    blocks, engine = await scenario(ex)
    path = tmp_path / "h.sqlite"
    write(path, blocks)
    hour_ends = [(H0 + h + 1) * HOUR_US for h in range(5)]
    by_hour = marks(blocks)
    moves = {a: sum(1 for _, events in blocks for ev in events if ev.__class__ is LendMoved and ev.account == a)
             for a in engine}

    # the borrower: one row per hour 0..4, newest first (hour 4 holds hour 5's interest, accrued by
    # hour 6's first block); hour 6 is not over. The rate: the pool's borrow rate at the hour's mark
    [debt] = opened(blocks, "borrower")
    rows = read(path, queries.InterestHistory("borrower"))
    assert [(r.hour_end, r.asset, r.position_id, r.kind) for r in rows] == [
        (end, "USDC", debt, "Borrow") for end in reversed(hour_ends)]
    assert [r.rate for r in rows] == [by_hour[end // HOUR_US - 1].borrow_rate for end in reversed(hour_ends)]
    assert all(r.quantity > 0 for r in rows)
    owed = -engine["borrower"]["USDC"].interest
    assert sum(r.quantity for r in rows) == owed - remainders(blocks, "borrower", debt)
    assert abs(sum(r.quantity for r in rows) - owed) <= 2 * moves["borrower"]

    # the lender: its first position closed in hour 4, the second opened in it
    first, second = opened(blocks, "lender")
    rows = read(path, queries.InterestHistory("lender"))
    assert [(r.hour_end, r.position_id, r.kind) for r in rows] == [
        (hour_ends[4], second, "Lend"), *((end, first, "Lend") for end in reversed(hour_ends))]
    assert [r.rate for r in rows[1:]] == [by_hour[end // HOUR_US - 1].lend_rate for end in reversed(hour_ends)]
    earned = engine["lender"]["USDC"].interest  # the open position's
    assert rows[0].quantity == earned - remainders(blocks, "lender", second)
    assert abs(rows[0].quantity - earned) <= 2
    # the closed one's: what it took out over what it put in
    moved = [ev for _, events in blocks for ev in events if ev.__class__ is LendMoved and ev.account == "lender"][:-1]
    gain = sum(ev.amount if ev.kind == "LendRedeem" else -ev.amount for ev in moved)
    assert sum(r.quantity for r in rows[1:]) == gain - remainders(blocks, "lender", first)
    assert abs(sum(r.quantity for r in rows[1:]) - gain) <= 2 * len(moved)

    # hours 0 to 5: borrowers' interest = lenders' + what the pool's reserve gained (the whale lent throughout)
    whale = read(path, queries.InterestHistory("whale"))
    assert abs(sum(r.quantity for r in whale) - engine["whale"]["USDC"].interest) <= 2
    reserve = marks(blocks)[H0 + 6].reserve - marks(blocks)[H0].reserve
    paid = sum(r.quantity for r in read(path, queries.InterestHistory("borrower")))
    assert abs(paid - sum(r.quantity for r in whale) - sum(r.quantity for r in rows) - reserve) <= 2 * sum(moves.values())

    # filters: position, asset, the hour's end (from/to), pages, oldest first
    assert read(path, queries.InterestHistory("lender", position_id=second)) == rows[:1]
    assert read(path, queries.InterestHistory("lender", position_id=first)) == rows[1:]
    assert read(path, queries.InterestHistory("lender", position_id=debt)) == []  # the borrower's
    assert read(path, queries.InterestHistory("lender", asset="USDC")) == rows
    assert read(path, queries.InterestHistory("lender", asset="SOL")) == []
    assert read(path, queries.InterestHistory("nobody")) == []
    assert read(path, queries.InterestHistory("lender", since_us=hour_ends[3], until_us=hour_ends[4])) == [rows[2]]
    assert read(path, queries.InterestHistory("lender", since_us=hour_ends[3] + 1)) == rows[:2]
    assert read(path, queries.InterestHistory("lender", until_us=hour_ends[1] + 1)) == rows[-2:]
    assert read(path, queries.InterestHistory("lender", ascending=True)) == sorted(
        rows, key=lambda r: (r.hour_end, r.position_id))
    for offset in range(len(rows) + 1):
        assert read(path, queries.InterestHistory("lender", limit=2, offset=offset)) == rows[offset:offset + 2]
    assert read(path, queries.InterestHistory("lender", limit=0)) == []

    # Backpack's items
    fmt = Formatter(LISTING.markets, LISTING.assets)
    item = views.interest(fmt, rows[:1])[0]
    assert item == {"paymentType": "Lend", "interestRate": fraction(rows[0].rate), "interval": 3_600_000,
                    "positionId": str(second), "quantity": fmt.asset("USDC", rows[0].quantity), "symbol": "USDC",
                    "timestamp": views.iso_ms(hour_ends[4])}
    assert item["timestamp"].endswith(":00:00.000")


async def written(path, blocks: list[tuple[BlockHeader, list]], order: list[int], accounts: list[str]) -> list:
    """Write ``blocks`` in ``order`` through a store (odd ones live, even ones as a catch-up
    would), then read every account's interest."""
    store = Store(path)
    async with trio.open_nursery() as n:
        await n.start(store.run)
        stop = threading.Event()
        for i in order:
            header, events = blocks[i]
            if i % 2:
                store.publish(header, events)
            else:
                await trio.to_thread.run_sync(store.write_caught_up, header, events, stop)
        out = [await store.fetch(queries.InterestHistory(a)) for a in accounts]
        out += [await store.fetch(queries.LendHistory(a)) for a in accounts]
        n.cancel_scope.cancel()
    return out


async def test_rows_do_not_depend_on_the_order_blocks_are_written(ex, tmp_path):
    """Live blocks and a catch-up's interleave in any order: the hour marks converge on each
    hour's first ``PoolUpdate``, and the rows come out the same; so do the rows of one
    batch holding every block."""
    blocks, _ = await scenario(ex)
    accounts = ["lender", "borrower", "whale"]
    n = len(blocks)
    forward = await written(tmp_path / "a.sqlite", blocks, list(range(n)), accounts)
    assert all(forward[:3])
    assert await written(tmp_path / "b.sqlite", blocks, list(reversed(range(n))), accounts) == forward
    shuffled = [i for k in (3, 0, 2, 1) for i in range(k, n, 4)]
    assert await written(tmp_path / "c.sqlite", blocks, shuffled, accounts) == forward
    conn = open_db(tmp_path / "d.sqlite")
    batch = Batch()
    for header, events in reversed(blocks):
        batch.add(header, events)
    conn.execute("BEGIN")
    batch.write(conn)
    conn.execute("COMMIT")
    assert [queries.InterestHistory(a).run(conn) for a in accounts] == forward[:3]
    conn.close()


# ---------------------------------------------------------------- synthetic events: long positions, bad debt

RAY = pools.RAY


def pool_update(asset: str, index: int, rate: int, ts: int) -> PoolUpdate:
    return PoolUpdate(0, asset, 0, 0, 0, 0, 0, rate, rate, index, index, ts)


def moved(account: str, kind: str, amount: int, scaled: int, index: int, ts: int) -> LendMoved:
    up = kind in ("Borrow", "BorrowRepay")
    value = pools.to_amount(scaled, index, up)
    return LendMoved(0, account, "SOL", kind, "Manual", amount, 0 if up else value, value if up else 0, ts,
                     0 if up else scaled, scaled if up else 0, index)


def chain(per_block: list[list]) -> list[tuple[BlockHeader, list]]:
    """Blocks 1, 2, ... holding the events given, each stamped with its first event's time."""
    return [(BlockHeader(h, h, events[0].timestamp, b"", 0, 0, b"", b""), events)
            for h, events in enumerate(per_block, 1)]


async def test_a_long_position_pages_through_its_hours(tmp_path):
    """A lend of constant size over 200 hours: each hour's row is exactly what its claim grew
    by from mark to mark; pages (computed a chunk of hours at a time) cut the same list."""
    base = BASE + 10_000_000
    index = [RAY + h * 10**13 + h * h * 7 for h in range(202)]
    scaled = 123_456_789_012
    per_block = [[pool_update("SOL", index[0], 1000, base)],
                 [moved("a", "Lend", 123_456_789_012, scaled, index[0], base + 1)]]
    per_block += [[pool_update("SOL", index[h], 1000 + h, base + h * HOUR_US)] for h in range(1, 202)]
    path = tmp_path / "h.sqlite"
    write(path, chain(per_block))
    rows = read(path, queries.InterestHistory("a", limit=1000))
    assert [r.hour_end for r in rows] == [(H0 + h + 1) * HOUR_US for h in reversed(range(201))]
    assert [r.quantity for r in rows] == [pools.to_amount(scaled, index[h + 1], False) - pools.to_amount(
        scaled, index[h], False) for h in reversed(range(201))]
    assert [r.rate for r in rows] == [1000 + h for h in reversed(range(201))]
    assert {r.position_id for r in rows} == {2 << 32}
    claim_now = pools.to_amount(scaled, index[201], False)
    assert sum(r.quantity for r in rows) == claim_now - pools.to_amount(scaled, index[0], False)
    for limit, offset in ((7, 0), (7, 30), (50, 100), (100, 150), (1000, 199)):
        assert read(path, queries.InterestHistory("a", limit=limit, offset=offset)) == rows[offset:offset + limit]
        assert read(path, queries.InterestHistory("a", limit=limit, offset=offset, ascending=True)) == \
            rows[::-1][offset:offset + limit]
    window = read(path, queries.InterestHistory("a", since_us=rows[120].hour_end, until_us=rows[80].hour_end))
    assert window == rows[81:121]


async def test_a_written_off_debt_stops_owing_and_closes_its_position(tmp_path):
    """A debt written off as bad debt (``BadDebt``, no ``LendMoved``) closes its position:
    its interest ends with the debt as it was cancelled, and the next borrow opens a new
    position id (in the borrow/lend history too, which does not list the write-off)."""
    base = BASE + 10_000_000
    index = [RAY + h * 10**14 for h in range(6)]
    scaled = 10**12
    debt_at_write_off = pools.to_amount(scaled, index[2] + 5 * 10**13, True)
    per_block = [
        [pool_update("SOL", index[0], 5, base)],
        [moved("b", "Borrow", 10**12, scaled, index[0], base + 1)],
        [pool_update("SOL", index[1], 5, base + HOUR_US)],
        [pool_update("SOL", index[2], 5, base + 2 * HOUR_US)],
        [BadDebt(0, "b", "SOL", debt_at_write_off, 0, debt_at_write_off, base + 2 * HOUR_US + 60_000_000)],
        [pool_update("SOL", index[3], 5, base + 3 * HOUR_US)],
        [moved("b", "Borrow", 10**9, 10**9, index[3], base + 3 * HOUR_US + 1)],
        [pool_update("SOL", index[4], 5, base + 4 * HOUR_US)],
    ]
    path = tmp_path / "h.sqlite"
    write(path, chain(per_block))
    rows = read(path, queries.InterestHistory("b", ascending=True))
    owed = [pools.to_amount(scaled, i, True) for i in index[:3]]
    assert [(r.hour_end, r.position_id, r.quantity) for r in rows] == [
        ((H0 + 1) * HOUR_US, 2 << 32, owed[1] - owed[0]),
        ((H0 + 2) * HOUR_US, 2 << 32, owed[2] - owed[1]),
        ((H0 + 3) * HOUR_US, 2 << 32, debt_at_write_off - owed[2]),  # to the write-off, then nothing
        ((H0 + 4) * HOUR_US, 7 << 32, pools.to_amount(10**9, index[4], True) - pools.to_amount(10**9, index[3], True)),
    ]
    history = read(path, queries.LendHistory("b", ascending=True))
    assert [(m.kind, m.position_id) for m in history] == [("Borrow", 2 << 32), ("Borrow", 7 << 32)]
    assert read(path, queries.OpenLendPositions("b", ("SOL",))) == {"SOL": 7 << 32}


# ---------------------------------------------------------------- a live node: REST and WebSocket


def signed(key: Keypair, instruction: str, params: dict | None = None) -> dict:
    _, (api_key, sig, ts, window) = sign_request(key, instruction, params or {})
    return {"X-API-Key": api_key, "X-Signature": sig, "X-Timestamp": ts, "X-Window": window}


async def signed_get(http: httpx.AsyncClient, key: Keypair, path: str, instruction: str, **params: str) -> httpx.Response:
    return await http.get(path, params=params, headers=signed(key, instruction, params))


async def account(server, http: httpx.AsyncClient, **amounts: int) -> Keypair:
    """A fresh account with auto-lend off (the sweep leaves its balances alone), funded."""
    key = Keypair.generate()
    body = {"autoLend": False}
    r = await http.patch("/api/v1/account", json=body, headers=signed(key, "accountUpdate", body))
    assert r.status_code == 200, r.text
    await server.fund(key, **amounts)
    return key


async def borrow_lend(http: httpx.AsyncClient, key: Keypair, side: str, quantity: str) -> None:
    body = {"symbol": "USDC", "side": side, "quantity": quantity}
    r = await http.post("/api/v1/borrowLend", json=body, headers=signed(key, "borrowLendExecute", body))
    assert r.status_code == 200, r.text


@pytest.fixture
async def rest(nursery, server):
    return await nursery.start(serve, server.gateway, "127.0.0.1", 0)


async def test_rest_and_websocket_answer_backpacks_shape(rest, server):
    async with httpx.AsyncClient(base_url=rest) as http:
        lender = await account(server, http, USDC=10_000 * USDC)
        borrower = await account(server, http, USDC=1_000 * USDC)
        await borrow_lend(http, lender, "Lend", "10000")
        await borrow_lend(http, borrower, "Borrow", "5000")
        # signed transactions are done (the engine checks their window against sequenced time),
        # so the sequencer's clock may now run ahead: the next blocks open the three hours after
        # the borrow's (an admin deposit is not signed)
        node = server.node
        hour = node.block_timestamp // HOUR_US
        for h in (1, 2, 3):
            node.sequencer._clock = lambda h=h: (hour + h) * HOUR_US + 1_000_000
            await node.submit_wait(Deposit(node.admin.api_key, "@nobody", "USDC", 1))

        r = await signed_get(http, borrower, "/wapi/v1/history/interest", "interestHistoryQueryAll")
        assert r.status_code == 200, r.text
        items = r.json()
        assert [i["timestamp"] for i in items] == [views.iso_ms((hour + h) * HOUR_US) for h in (3, 2, 1)]
        [position] = (await signed_get(http, borrower, "/api/v1/borrowLend/positions", "borrowLendPositionQuery")).json()
        for i in items:
            assert set(i) == {"paymentType", "interestRate", "interval", "positionId", "quantity", "symbol", "timestamp"}
            assert (i["paymentType"], i["interval"], i["positionId"], i["symbol"]) == (
                "Borrow", 3_600_000, position["id"], "USDC")
            assert Decimal(i["quantity"]) > 0
        assert Decimal(items[0]["interestRate"]) > 0  # the rate at the hour's start, once the borrow is there
        total = sum(Decimal(i["quantity"]) for i in items)
        assert abs(total + Decimal(position["cumulativeInterest"])) <= Decimal("0.000002")  # a borrow's rounding

        # filters, as the other histories take them
        async def interest(key: Keypair = borrower, **params: str) -> list:
            r = await signed_get(http, key, "/wapi/v1/history/interest", "interestHistoryQueryAll", **params)
            assert r.status_code == 200, r.text
            return r.json()

        assert await interest(sortDirection="Asc") == items[::-1]
        assert await interest(limit="1", offset="1") == items[1:2]
        assert await interest(asset="USDC") == await interest(symbol="USDC") == items
        assert await interest(asset="SOL") == []
        assert await interest(positionId=position["id"]) == items
        assert await interest(source="BorrowLend") == items
        assert await interest(source="UnrealizedPnl") == []
        end_ms = str((hour + 2) * HOUR_US // 1000)
        assert await interest(**{"from": end_ms, "to": end_ms}) == items[1:2]
        [lent] = await interest(lender, limit="1")
        assert (lent["paymentType"], lent["timestamp"]) == ("Lend", items[0]["timestamp"])
        for bad in ({"sortDirection": "Up"}, {"asset": "NOPE"}, {"limit": "1001"}, {"source": "Nope"},
                    {"asset": "USDC", "symbol": "SOL"}, {"positionId": "x"}):
            r = await signed_get(http, borrower, "/wapi/v1/history/interest", "interestHistoryQueryAll", **bad)
            assert r.status_code == 400, (bad, r.text)
        r = await http.get("/wapi/v1/history/interest")
        assert r.status_code == 401

    async with connect(server.url, borrower) as c:
        assert await c.request("interestHistoryQueryAll", {"sortDirection": "Asc"}) == items[::-1]


def test_a_database_of_the_previous_schema_is_replaced(tmp_path):
    """Version 3 kept no scaled positions nor hour marks: such a file is replaced (the
    catch-up then rebuilds it from the journal, ``history.rebuild``)."""
    import sqlite3

    path = tmp_path / "h.sqlite"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
                      "INSERT INTO meta VALUES ('schema', 3);"
                      "CREATE TABLE lend_moves (pos INTEGER PRIMARY KEY, account TEXT);"
                      "INSERT INTO lend_moves VALUES (1, 'a');")
    old.close()
    conn = open_db(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT COUNT(*) FROM lend_moves").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM lend_hours").fetchone() == (0,)
    conn.close()
