"""Admin transactions: trading permissions and fee schedules, effective at their sequence number."""

from __future__ import annotations

from conftest import ADMIN, ASK, BID, cancel, order
from satchel.core.messages import ConfigChanged, Fill, OrderDone, SetFees, SetTrading, TxRejected

USDC = 10**6
SOL = 10**9


def reasons(events):
    return [e.reason for e in events if isinstance(e, OrderDone)]


async def funded(ex):
    await ex.deposit("alice", "USDC", 100_000 * USDC)
    await ex.deposit("bob", "SOL", 1_000 * SOL)


async def test_account_trading_switch(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15100, 100)])
    resting = ex.seq - 1
    ev = await ex.block([SetTrading(ADMIN, "bob", None, False), order("bob", ASK, 15000, 100), cancel("bob", resting)])
    assert isinstance(ev[0], ConfigChanged)
    assert reasons(ev) == ["AccountTradingDisabled", ""]  # new orders refused, cancels still work
    ev = await ex.block([SetTrading(ADMIN, "bob", "ETH_USDC", True), order("bob", ASK, 15000, 100)])
    assert reasons(ev) == ["AccountTradingDisabled"]  # re-enabling one market does not lift "all markets"
    ev = await ex.block([SetTrading(ADMIN, "bob", None, True), order("bob", ASK, 15000, 100)])
    assert reasons(ev) == []
    ev = await ex.block([SetTrading(ADMIN, "alice", "SOL_USDC", False), order("alice", BID, 15000, 100),
                         order("alice", BID, 300_000, 100, symbol="ETH_USDC")])
    assert reasons(ev) == ["AccountTradingDisabled"]  # only SOL_USDC is off for alice


async def test_market_trading_switch(ex):
    await funded(ex)
    ev = await ex.block([order("alice", BID, 14900, 100), SetTrading(ADMIN, None, "SOL_USDC", False),
                         order("alice", BID, 14900, 100)])
    assert reasons(ev) == ["MarketTradingDisabled"]  # the first order, before the switch, rests
    ev = await ex.block([SetTrading(ADMIN, None, "SOL_USDC", True), order("alice", BID, 14900, 100)])
    assert reasons(ev) == []


async def test_fee_change_takes_effect_at_its_sequence_number(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 1000)])
    ev = await ex.block([order("alice", BID, 15000, 100), SetFees(ADMIN, "SOL_USDC", 0, 30), order("alice", BID, 15000, 100)])
    fills = [e for e in ev if isinstance(e, Fill)]
    assert [f.taker_fee for f in fills] == [150 * USDC * 5 // 10_000, 150 * USDC * 30 // 10_000]
    assert [f.maker_fee for f in fills] == [-(150 * USDC // 10_000), 0]
    assert (await ex.totals())["USDC"] == (await ex.deposits())["USDC"]


async def test_fee_increase_with_resting_bids_conserves_money(ex):
    await ex.deposit("alice", "USDC", 151 * USDC)  # barely enough for 1 SOL at 150 + 5 bps
    await ex.deposit("bob", "SOL", 10 * SOL)
    await ex.block([order("alice", BID, 15000, 100)])
    ev = await ex.block([SetFees(ADMIN, "SOL_USDC", 1000, 1000), order("bob", ASK, 15000, 100)])
    (fill,) = [e for e in ev if isinstance(e, Fill)]
    assert fill.maker_fee == 15 * USDC  # 10% of 150, more than alice has left
    totals, deposits = await ex.totals(), await ex.deposits()
    assert totals == {**totals, "USDC": deposits["USDC"]}
    assert await ex.balance("alice", "USDC") == (0, 0)


async def test_only_the_admin_may_configure(ex):
    ev = await ex.block([SetTrading("mallory", "bob", None, False), SetFees("mallory", "SOL_USDC", 0, 0)])
    assert [e.code for e in ev if isinstance(e, TxRejected)] == ["UNAUTHORIZED", "UNAUTHORIZED"]
    ev = await ex.block([SetFees(ADMIN, "SOL_USDC", -10, 5), SetTrading(ADMIN, None, "DOGE_USDC", False)])
    assert [e.code for e in ev if isinstance(e, TxRejected)] == ["INVALID_FEES", "INVALID_SYMBOL"]


async def test_admin_transfer_moves_free_balance_and_conserves_money(ex):
    from satchel.core.messages import Transfer, Transferred

    await funded(ex)
    ev = await ex.block([Transfer(ADMIN, "alice", "carol", "USDC", 1_000 * USDC)])
    assert [type(e) for e in ev if isinstance(e, (Transferred, TxRejected))] == [Transferred]
    assert await ex.balance("carol", "USDC") == (1_000 * USDC, 0)
    assert await ex.balance("alice", "USDC") == (99_000 * USDC, 0)
    ev = await ex.block([
        Transfer(ADMIN, "alice", "carol", "USDC", 10**12 * USDC),  # more than alice has
        Transfer(ADMIN, "alice", "alice", "USDC", 1),  # to itself
        Transfer(ADMIN, "alice", "carol", "DOGE", 1),  # unknown asset
        Transfer("mallory", "alice", "mallory", "USDC", 1),  # not the admin
    ])
    assert sorted((e.seq, e.code) for e in ev if isinstance(e, TxRejected)) == [
        (ex.seq - 4, "INSUFFICIENT_FUNDS"), (ex.seq - 3, "INVALID_CLIENT_REQUEST"), (ex.seq - 2, "INVALID_CLIENT_REQUEST"),
        (ex.seq - 1, "UNAUTHORIZED")]
    assert (await ex.totals())["USDC"] == (await ex.deposits())["USDC"]
