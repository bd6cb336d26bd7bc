"""Accounts lending and borrowing through the margin engine: borrowLendExecute, the
borrow limit, interest through the indices, the auto-lend sweep, spot-margin order flags,
and conservation with interest over generated workloads (replay gives the same hashes)."""

from __future__ import annotations

import msgspec
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ADMIN, Exchange, order
from satchel import config
from satchel.core import lending as pools
from satchel.core.engine import Engine
from satchel.core.messages import (
    ASK, AUTO_BORROW, AUTO_BORROW_REPAY, AUTO_LEND_REDEEM, BID, BORROW, IOC, LEND, BalancesOf, BorrowLend, CollateralOf,
    BadDebt, Deposit, LendingOf, LendMoved, Liquidation, PoolsOf, SetIndex, SetLeverage, StateOf, TxRejected,
)

USDC = 10**6
SOL = 10**9
DAY = 86_400 * 10**6
PERP = "SOL_USDC_PERP"


async def start(nursery) -> Exchange:
    ex = Exchange(Engine(nursery))
    await ex.block(config.genesis(config.load(), ADMIN))
    await ex.block([SetIndex(ADMIN, PERP, 15_000)])  # SOL at $150.00: SOL collateral has a value
    return ex


async def pool(ex: Exchange, asset: str) -> pools.Pool:
    return next(p for p in await ex.engine.lending.call(PoolsOf()) if p.spec.asset == asset)


async def position(ex: Exchange, account: str, asset: str) -> tuple[int, int]:
    for p in await ex.engine.risk.call(LendingOf(account)):
        if p.asset == asset:
            return p.lent, p.borrowed
    return 0, 0


async def later(ex: Exchange, us: int, txs: list | None = None) -> list:
    ex.ts += us
    return await ex.block(txs or [])


async def idle(ex: Exchange) -> None:
    """Two sweeps: balances untouched for a whole interval are lent (auto-lend)."""
    await later(ex, 10**6)
    await later(ex, 10**6)


def rejected(events: list) -> list[str]:
    return [e.code for e in events if e.__class__ is TxRejected]


async def conserved(ex: Exchange) -> None:
    """Balances + fees + pools' cash (+ insurance - unsettled) = deposits, every pool solvent."""
    assert await ex.totals() == await ex.deposits()
    for p in await ex.engine.lending.call(PoolsOf()):
        assert pools.solvent(p), p


async def test_borrow_against_collateral_interest_and_repay(nursery):
    ex = await start(nursery)
    await ex.block([SetLeverage("lender", 0, auto_lend=0), Deposit(ADMIN, "lender", "USDC", 10_000 * USDC),
                    Deposit(ADMIN, "borrower", "SOL", 100 * SOL)])
    events = await ex.block([BorrowLend("lender", "USDC", LEND, 8_000 * USDC)])
    moved = [e for e in events if e.__class__ is LendMoved]
    assert [(m.kind, m.source, m.amount, m.lent) for m in moved] == [("Lend", "Manual", 8_000 * USDC, 8_000 * USDC)]
    assert await ex.balance("lender", "USDC") == (2_000 * USDC, 0)  # a manual lend is not available
    # 100 SOL at $150 x weight <= 0.8: under $12,000 of collateral. Borrowed cash still counts while
    # it is held, so the limit is equity >= 10% (borrow IMF) of the debt: 200,000 USDC is over it
    before = await ex.engine.risk.call(BalancesOf("borrower"))
    assert rejected(await ex.block([BorrowLend("borrower", "USDC", BORROW, 200_000 * USDC)])) == ["INSUFFICIENT_LIQUIDITY"]
    assert rejected(await ex.block([BorrowLend("borrower", "USDC", BORROW, 7_500 * USDC),
                                    BorrowLend("borrower", "SOL", BORROW, 1)])) == ["INSUFFICIENT_LIQUIDITY"]
    await ex.block([SetLeverage("borrower", 0, auto_lend=0)])
    await ex.block([Deposit(ADMIN, "whale", "USDC", 1_000_000 * USDC)])
    await idle(ex)  # the whale's deposit is swept into the pool (auto-lend is on by default)
    assert (await position(ex, "whale", "USDC"))[0] >= 1_000_000 * USDC - 1  # a claim rounds down
    assert rejected(await ex.block([BorrowLend("borrower", "USDC", BORROW, 200_000 * USDC)])) == ["BORROW_LIMIT"]
    assert (await ex.engine.risk.call(BalancesOf("borrower")))["USDC"][0] == 7_500 * USDC
    assert before["SOL"] == (await ex.engine.risk.call(BalancesOf("borrower")))["SOL"]
    lent, owed = await position(ex, "borrower", "USDC")
    assert lent == 0 and 7_500 * USDC < owed < 7_500 * USDC + USDC // 100  # two seconds of interest
    view = await ex.engine.risk.call(CollateralOf("borrower"))
    assert view.borrow_liability == owed and view.initial >= owed // 10
    await conserved(ex)

    # interest: a day later the debt and the claims grew; the pool's reserve took the difference
    p0 = await pool(ex, "USDC")
    await later(ex, DAY)
    p1 = await pool(ex, "USDC")
    debt = (await position(ex, "borrower", "USDC"))[1]
    assert debt > 7_500 * USDC and p1.borrow_index > p0.borrow_index and p1.lend_index > p0.lend_index
    paid = pools.borrowed_total(p1) - pools.borrowed_total(p0)
    earned = pools.lent_total(p1) - pools.lent_total(p0)
    assert paid == earned + (p1.reserve - p0.reserve) and p1.reserve > p0.reserve
    assert (await position(ex, "lender", "USDC"))[0] > 8_000 * USDC
    await conserved(ex)

    # Lend q repays the whole debt first, then lends the rest
    extra = debt - 7_500 * USDC + 5 * USDC
    await ex.block([Deposit(ADMIN, "borrower", "USDC", extra)])
    events = await ex.block([BorrowLend("borrower", "USDC", LEND, debt + 5 * USDC)])
    assert [(m.kind, m.amount) for m in events if m.__class__ is LendMoved] == [("BorrowRepay", debt), ("Lend", 5 * USDC)]
    lent, owed = await position(ex, "borrower", "USDC")
    assert owed == 0 and 5 * USDC - 1 <= lent <= 5 * USDC
    await conserved(ex)


async def test_redeem_at_full_utilization_is_refused_and_changes_nothing(nursery):
    ex = await start(nursery)
    await ex.block([SetLeverage("l", 0, auto_lend=0), SetLeverage("b", 0, auto_lend=0),
                    Deposit(ADMIN, "l", "USDC", 100 * USDC), Deposit(ADMIN, "b", "SOL", 100 * SOL)])
    await ex.block([BorrowLend("l", "USDC", LEND, 100 * USDC)])
    # a borrow stops at the pool's max utilization (95%); the lender redeeming the rest empties it
    assert rejected(await ex.block([BorrowLend("b", "USDC", BORROW, 96 * USDC)])) == ["INSUFFICIENT_LIQUIDITY"]
    await ex.block([BorrowLend("b", "USDC", BORROW, 95 * USDC)])
    await ex.block([BorrowLend("l", "USDC", BORROW, 5 * USDC)])  # Borrow redeems a lend first
    assert pools.pool_utilization(await pool(ex, "USDC")) == 10**9

    async def scaled() -> tuple:  # what interest does not move
        p = await pool(ex, "USDC")
        return (await ex.engine.risk.call(BalancesOf("l")), (await ex.engine.risk.call(StateOf())).margin.loans.loans,
                p.cash, p.lent_scaled, p.borrowed_scaled)

    state = await scaled()
    events = await ex.block([BorrowLend("l", "USDC", BORROW, 1 * USDC)])
    assert rejected(events) == ["INSUFFICIENT_LIQUIDITY"] and not [e for e in events if e.__class__ is LendMoved]
    assert state == await scaled()
    assert rejected(await ex.block([BorrowLend("l", "USDC", LEND, 6 * USDC)])) == ["INSUFFICIENT_FUNDS"]
    assert rejected(await ex.block([BorrowLend("l", "NOPE", LEND, 1)])) == ["INVALID_ASSET"]
    await conserved(ex)


async def test_auto_lend_sweeps_idle_balances_and_orders_redeem(nursery):
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, "a", "USDC", 1_000 * USDC)])
    await idle(ex)
    assert await position(ex, "a", "USDC") == (1_000 * USDC, 0)
    assert await ex.balance("a", "USDC") == (1_000 * USDC, 0)  # shown as available: orders redeem by themselves
    events = await ex.block([order("a", BID, 10_000, 5 * 100)])  # 5 SOL at $100.00
    assert [(m.kind, m.source) for m in events if m.__class__ is LendMoved] == [("LendRedeem", "AutoLendRedeem")]
    free, held = await ex.balance("a", "USDC")
    assert held > 500 * USDC and free + held == 1_000 * USDC
    assert (await position(ex, "a", "USDC"))[0] >= free - 1  # only what the hold lacked was redeemed
    # auto-lend off: the lend comes back, so what the account sees does not change
    events = await ex.block([SetLeverage("a", 0, auto_lend=0)])
    assert [(m.kind, m.source) for m in events if m.__class__ is LendMoved] == [("LendRedeem", "AutoLendRedeem")]
    assert await position(ex, "a", "USDC") == (0, 0)
    assert (await ex.balance("a", "USDC"))[1] == held and (await ex.balance("a", "USDC"))[0] >= free - 1
    await idle(ex)
    assert await position(ex, "a", "USDC") == (0, 0)  # and the sweep leaves it alone
    await conserved(ex)


async def test_auto_borrow_on_a_spot_bid_and_repay_from_proceeds(nursery):
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, "whale", "USDC", 100_000 * USDC), Deposit(ADMIN, "b", "SOL", 100 * SOL),
                    Deposit(ADMIN, "seller", "SOL", 100 * SOL), SetLeverage("b", 0, auto_lend=0)])
    await idle(ex)  # the whale's USDC is lent: the pool has cash
    bid = msgspec.structs.replace(order("b", BID, 15_000, 10 * 100), auto=AUTO_BORROW)
    events = await ex.block([bid])
    assert [(m.kind, m.source, m.amount) for m in events if m.__class__ is LendMoved][0][:2] == ("Borrow", "SpotMargin")
    assert (await position(ex, "b", "USDC"))[1] >= 1_500 * USDC
    # without the flag the same bid is refused for want of funds
    assert [e.reason for e in await ex.block([order("b", BID, 15_000, 100)]) if getattr(e, "reason", "")] == ["InsufficientFunds"]
    await ex.block([order("seller", ASK, 15_000, 10 * 100, tif=IOC)])
    debt = (await position(ex, "b", "USDC"))[1]
    assert debt > 0 and (await ex.balance("b", "SOL"))[0] == 110 * SOL
    # an ask flagged autoBorrowRepay: its proceeds repay the debt when its block ends
    await ex.block([order("whale", BID, 15_000, 20 * 100)])
    ask = msgspec.structs.replace(order("b", ASK, 15_000, 20 * 100, tif=IOC), auto=AUTO_BORROW_REPAY)
    events = await ex.block([ask])
    repaid = [m for m in events if m.__class__ is LendMoved and m.kind == "BorrowRepay"]
    assert repaid and repaid[0].source == "AutoBorrowRepay" and repaid[-1].borrowed == 0
    assert await position(ex, "b", "USDC") == (0, 0)
    await conserved(ex)


async def test_auto_repay_setting_repays_from_incoming_funds(nursery):
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, "whale", "USDC", 10_000 * USDC), Deposit(ADMIN, "b", "SOL", 10 * SOL)])
    await idle(ex)
    await ex.block([BorrowLend("b", "USDC", BORROW, 500 * USDC), SetLeverage("b", 0, auto_repay=1)])
    await ex.block([order("b", BID, 100, 100)])  # spends 1 USDC of the borrowed cash, the rest stays free
    await idle(ex)
    lent, owed = await position(ex, "b", "USDC")
    assert lent == 0 and 0 < owed <= 2 * USDC  # the free balance repaid all it could
    await ex.block([Deposit(ADMIN, "b", "USDC", 10 * USDC)])
    await idle(ex)
    lent, owed = await position(ex, "b", "USDC")
    assert owed == 0 and lent > 0  # repaid, and the rest lent (auto-lend is on)
    await conserved(ex)


async def test_a_perp_loss_is_covered_from_a_lend(nursery):
    """A negative settlement balance (a perp loss) is covered by redeeming the lend."""
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, "whale", "USDC", 10_000 * USDC), Deposit(ADMIN, "t", "USDC", 1_000 * USDC),
                    Deposit(ADMIN, "u", "USDC", 1_000 * USDC)])
    await idle(ex)
    assert (await position(ex, "t", "USDC"))[0] == 1_000 * USDC
    await ex.block([order("t", BID, 15_000, 500, symbol=PERP), order("u", ASK, 15_000, 500, symbol=PERP)])
    await later(ex, 10**6, [SetIndex(ADMIN, PERP, 13_000)])  # t's long loses $10 at the next PnL settlement
    for _ in range(15):
        await later(ex, 10**6, [SetIndex(ADMIN, PERP, 13_000)])
    free = (await ex.engine.risk.call(BalancesOf("t")))["USDC"][0]
    assert free < 1_000 * USDC
    lent, _ = await position(ex, "t", "USDC")
    assert lent == free  # no negative balance left beside a lend: the loss was redeemed
    await conserved(ex)


# ---------------------------------------------------------------- generated workloads

ACCOUNTS = ("a", "b", "c", "d")
op_st = st.one_of(
    st.tuples(st.just("deposit"), st.sampled_from(ACCOUNTS), st.sampled_from(("USDC", "SOL")), st.integers(1, 5_000)),
    st.tuples(st.just("lend"), st.sampled_from(ACCOUNTS), st.sampled_from(("USDC", "SOL")), st.integers(1, 3_000)),
    st.tuples(st.just("borrow"), st.sampled_from(ACCOUNTS), st.sampled_from(("USDC", "SOL")), st.integers(1, 3_000)),
    st.tuples(st.just("bid"), st.sampled_from(ACCOUNTS), st.integers(90, 160), st.integers(1, 30)),
    st.tuples(st.just("ask"), st.sampled_from(ACCOUNTS), st.integers(90, 160), st.integers(1, 30)),
    st.tuples(st.just("setting"), st.sampled_from(ACCOUNTS), st.integers(-1, 1), st.integers(-1, 1)),
)
block_st = st.tuples(st.sampled_from((1_000, 400_000, 10**6, 3_600 * 10**6, 5 * DAY)), st.integers(100, 200),
                     st.lists(op_st, max_size=6))
workload_st = st.lists(block_st, min_size=1, max_size=12)
UNITS = {"USDC": USDC, "SOL": SOL // 100}


def txs_for(ops: list) -> list:
    out = []
    for op in ops:
        kind, account = op[0], op[1]
        if kind == "deposit":
            out.append(Deposit(ADMIN, account, op[2], op[3] * UNITS[op[2]]))
        elif kind in ("lend", "borrow"):
            out.append(BorrowLend(account, op[2], LEND if kind == "lend" else BORROW, op[3] * UNITS[op[2]]))
        elif kind in ("bid", "ask"):
            flags = (AUTO_BORROW | AUTO_LEND_REDEEM) if kind == "bid" else AUTO_BORROW_REPAY
            out.append(msgspec.structs.replace(order(account, BID if kind == "bid" else ASK, op[2] * 100, op[3] * 100),
                                               auto=flags))
        else:
            out.append(SetLeverage(account, 0, auto_lend=op[2], auto_repay=op[3]))
    return out


async def replay(workload: list, check: bool) -> list[str]:
    """The workload's state hashes, block by block. Without ``check`` the engine is
    restored from its own snapshot halfway and the rest applied to the copy: the hashes
    must not notice (dict orders, per-block leftovers)."""
    async with trio.open_nursery() as nursery:
        ex = await start(nursery)
        hashes = []
        for n, (gap, price, ops) in enumerate(workload):
            if not check and n == len(workload) // 2:
                copy = Engine(nursery)
                await copy.restore(await ex.engine.canonical())
                ex.engine = copy
            ex.ts += gap
            await ex.block([SetIndex(ADMIN, PERP, price * 100), *txs_for(ops)])
            if check:
                await conserved(ex)
                for p in await ex.engine.lending.call(PoolsOf()):
                    assert 0 <= pools.pool_utilization(p) <= 10**9
            hashes.append(await ex.engine.state_hash())
        nursery.cancel_scope.cancel()
    return hashes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workload_st)
def test_money_and_interest_conserved_and_replay_identical(workload):
    assert trio.run(replay, workload, True) == trio.run(replay, workload, False)


# ---------------------------------------------------------------- liquidation of borrows


async def margin_long(ex: Exchange) -> None:
    """``b`` holds 10 SOL (auto-lent) and buys 5 more at $150 with borrowed USDC."""
    await ex.block([Deposit(ADMIN, "whale", "USDC", 100_000 * USDC), Deposit(ADMIN, "b", "SOL", 10 * SOL),
                    Deposit(ADMIN, "mm", "SOL", 100 * SOL), Deposit(ADMIN, "mm", "USDC", 100_000 * USDC),
                    SetLeverage("mm", 0, auto_lend=0)])
    await idle(ex)
    await ex.block([order("mm", ASK, 15_000, 5 * 100)])
    await ex.block([msgspec.structs.replace(order("b", BID, 15_000, 5 * 100, tif=IOC), auto=AUTO_BORROW)])
    await idle(ex)
    assert (await position(ex, "b", "SOL"))[0] >= 15 * SOL - 1  # everything it holds is lent, and collateral
    assert 750 * USDC <= (await position(ex, "b", "USDC"))[1] < 760 * USDC


async def walk_down(ex: Exchange, price: int) -> None:
    """Trades stepping the SOL_USDC last price down to ``price`` (the spot band is 10% of
    the last trade), then a resting bid there from ``mm``."""
    await ex.block([Deposit(ADMIN, "c", "USDC", 10_000 * USDC)])
    last = 15_000
    while last > price:
        last = max(last * 91 // 100, price)
        await ex.block([order("mm", ASK, last, 100), order("c", BID, last, 100, tif=IOC)])
    await ex.block([order("mm", BID, price, 30 * 100)])


async def test_lent_collateral_is_sold_to_repay_a_borrow(nursery):
    ex = await start(nursery)
    await margin_long(ex)
    # SOL falls to $60: 15 SOL x $60 x 0.8 = $720 against $750 owed, under maintenance
    await walk_down(ex, 6_000)  # a buyer at $60 in the spot book
    events = await later(ex, 10**6, [SetIndex(ADMIN, PERP, 6_000)])
    steps = [(e.tier, e.symbol) for e in events if e.__class__ is Liquidation]
    assert (1, "") in steps and (2, "SOL_USDC") in steps
    moved = [(m.kind, m.source) for m in events if m.__class__ is LendMoved and m.account == "b"]
    assert ("LendRedeem", "Liquidation") in moved and ("BorrowRepay", "Liquidation") in moved
    assert await position(ex, "b", "USDC") == (0, 0)
    sol = (await ex.engine.risk.call(BalancesOf("b")))["SOL"][0]
    assert 0 < sol < 5 * SOL  # sold about $750 / $60 of it, keeps the rest
    assert not (await ex.engine.risk.call(CollateralOf("b"))).liquidating
    await conserved(ex)


async def test_bad_debt_insurance_first_then_the_lenders(nursery):
    ex = await start(nursery)
    await margin_long(ex)
    await ex.block([Deposit(ADMIN, "@insurance", "USDC", 100 * USDC)])
    lent_before = (await position(ex, "whale", "USDC"))[0]
    index_before = (await pool(ex, "USDC")).lend_index
    # SOL crashes to $40 and the only bid is at $40: 15 SOL fetch $600 of the $750+ owed
    await walk_down(ex, 4_000)
    events = await later(ex, 10**6, [SetIndex(ADMIN, PERP, 4_000)])
    bad = [e for e in events if e.__class__ is BadDebt]
    assert len(bad) == 1 and bad[0].asset == "USDC" and bad[0].covered == 100 * USDC
    assert 40 * USDC < bad[0].socialized < 60 * USDC and bad[0].amount == bad[0].covered + bad[0].socialized
    assert any(e.__class__ is Liquidation and e.tier == 4 for e in events)
    assert await position(ex, "b", "USDC") == (0, 0) and (await ex.engine.risk.call(BalancesOf("b"))).get("SOL", (0, 0))[0] == 0
    lent_after = (await position(ex, "whale", "USDC"))[0]
    assert lent_before - lent_after >= bad[0].socialized * 85 // 100  # the whale holds over 90% of the lends
    assert (await pool(ex, "USDC")).lend_index < index_before
    await conserved(ex)


async def test_incident_report_counts_lends_and_debts(nursery):
    """A diverged node that booked a larger lend shows as a gainer by that much."""
    from satchel.verify.incident import compare

    ex = await start(nursery)
    await ex.block([SetLeverage("l", 0, auto_lend=0), Deposit(ADMIN, "l", "USDC", 100 * USDC)])
    await ex.block([BorrowLend("l", "USDC", LEND, 40 * USDC)])
    state = await ex.engine.canonical()
    margin = state.risk.margin
    loans = [msgspec.structs.replace(row, lent=row.lent + 7 * USDC) for row in margin.loans.loans]
    altered = msgspec.structs.replace(state, risk=msgspec.structs.replace(state.risk, margin=msgspec.structs.replace(
        margin, loans=msgspec.structs.replace(margin.loans, loans=loans))))
    report = compare(altered, state)
    assert [(r["account"], r["asset"], r["difference"]) for r in report["gainers"]] == [("l", "USDC", "7")]
    assert report["losers"] == [] and compare(state, state)["gainers"] == []


async def test_only_idle_balances_are_lent_and_a_manual_lend_counts_what_is_lent(nursery):
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, "t", "USDC", 1_000 * USDC), Deposit(ADMIN, "t", "SOL", 10 * SOL),
                    Deposit(ADMIN, "q", "USDC", 1_000 * USDC)])
    moved = []
    for n in range(6):  # t trades every half second: its balances are never idle a whole interval
        ex.ts += 500_000
        events = await ex.block([order("t", BID if n % 2 else ASK, 10_000, 100, tif=IOC)])
        moved += [m for m in events if m.__class__ is LendMoved]
    assert {m.account for m in moved} == {"q"}  # the quiet account's deposit was lent
    # q's 1,000 USDC are lent by the sweep, and shown as available: lending 600 of them is
    # already done, lending 1,200 is more than q has
    assert rejected(await ex.block([BorrowLend("q", "USDC", LEND, 1_200 * USDC)])) == ["INSUFFICIENT_FUNDS"]
    events = await ex.block([BorrowLend("q", "USDC", LEND, 600 * USDC)])
    assert rejected(events) == [] and not [m for m in events if m.__class__ is LendMoved]
    await conserved(ex)


async def test_a_burst_of_idle_accounts_is_swept_over_several_blocks(nursery, monkeypatch):
    from satchel.actors import loans

    monkeypatch.setattr(loans, "SWEEP_MAX", 3)
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, f"acct{n}", "USDC", 10 * USDC) for n in range(7)])
    await later(ex, 10**6)  # a sweep: the deposits are recent
    per_block = []
    for gap in (10**6, 1_000, 1_000, 1_000):  # the next sweep finds seven idle accounts
        events = await later(ex, gap)
        per_block.append(sorted(m.account for m in events if m.__class__ is LendMoved))
        if len(per_block) == 1:  # what is left waits in the state: a restored engine carries on
            copy = Engine(nursery)
            await copy.restore(await ex.engine.canonical())
            ex.engine = copy
    assert per_block == [["acct0", "acct1", "acct2"], ["acct3", "acct4", "acct5"], ["acct6"], []]
    await conserved(ex)


async def test_auto_borrowing_bids_in_one_batch_stay_within_the_borrow_limit(nursery):
    """An outside test sent 50 auto-borrowing bids in one batch: each passed the borrow
    limit against equity before the others' fills, six filled, and the account ended
    with equity below zero (-573 USDC), the lenders' money spent. An open spot bid now
    counts in the initial requirement as the conversion it becomes, so the batch stops
    where bids sent one at a time stop."""
    async def run(batched: bool) -> tuple[int, object]:
        ex = await start(nursery)
        await ex.block([Deposit(ADMIN, "whale", "USDC", 1_000_000 * USDC), Deposit(ADMIN, "a", "USDC", 1_000 * USDC),
                        Deposit(ADMIN, "mm", "SOL", 10_000 * SOL), SetLeverage("a", 0, auto_lend=0),
                        SetLeverage("mm", 0, auto_lend=0)])
        await idle(ex)  # the whale's USDC is lent: the pool has cash
        await ex.block([order("mm", ASK, 15_000, 1_000 * 100)])
        bids = [msgspec.structs.replace(order("a", BID, 15_000, 9 * 100, tif=IOC), auto=AUTO_BORROW) for _ in range(50)]
        if batched:
            await ex.block(bids)
        else:
            for bid in bids:
                await ex.block([bid])
        view = await ex.engine.risk.call(CollateralOf("a"))
        await conserved(ex)
        return (await ex.balance("a", "SOL"))[0], view

    alone, one_by_one = await run(False)
    together, batch = await run(True)
    assert together == alone > 0  # the same bids fill, batched or not
    assert batch.equity >= batch.initial > 0 and one_by_one.equity >= one_by_one.initial


async def test_a_borrower_cannot_take_a_pools_last_cash(nursery):
    """An outside test borrowed all of a pool's cash and so froze every auto-lent balance
    (auto-lend is on by default): orders and withdrawals could not redeem. An account's
    own borrows now stop at the pool's max utilization (95%), and lenders redeem the rest."""
    ex = await start(nursery)
    await ex.block([Deposit(ADMIN, "victim", "USDC", 1_000 * USDC), Deposit(ADMIN, "x", "SOL", 1_000 * SOL),
                    Deposit(ADMIN, "mm", "SOL", 100 * SOL), SetLeverage("x", 0, auto_lend=0),
                    SetLeverage("mm", 0, auto_lend=0)])
    await idle(ex)
    assert (await position(ex, "victim", "USDC"))[0] >= 1_000 * USDC - 1  # all of it lent
    assert rejected(await ex.block([BorrowLend("x", "USDC", BORROW, 999 * USDC)])) == ["INSUFFICIENT_LIQUIDITY"]
    grab = msgspec.structs.replace(order("x", BID, 15_000, 100 * 100), auto=AUTO_BORROW)  # 15,000 USDC: refused
    assert not [e for e in await ex.block([grab]) if e.__class__ is LendMoved]
    await ex.block([BorrowLend("x", "USDC", BORROW, 940 * USDC)])
    await ex.block([order("mm", ASK, 15_000, 100)])
    # 45 USDC: redeemed from the 5% the borrower had to leave (a pool of many lenders keeps
    # that share of all of their money for whoever redeems first)
    ev = await ex.block([order("victim", BID, 15_000, 30, tif=IOC)])
    assert not [getattr(e, "reason", "") for e in ev if getattr(e, "reason", "")]
    assert (await ex.balance("victim", "SOL"))[0] == 3 * SOL // 10
    view = [m for m in await ex.engine.lending.call(PoolsOf()) if m.spec.asset == "USDC"][0]
    assert view.spec.max_utilization == 950_000_000
    await conserved(ex)
