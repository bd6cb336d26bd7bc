"""Order types, flags, self-trade prevention, filters, fees and cancels, through the engine."""

from __future__ import annotations

from conftest import ASK, BID, cancel, cancel_all, order
from satchel.core.messages import (
    FOK, IOC, MARKET, REJECT_BOTH, REJECT_MAKER, DepthDelta, Fill, OrderAccepted, OrderDone, TxRejected,
)

USDC = 10**6
SOL = 10**9


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def done(events, order_id):
    return next(e for e in of(events, OrderDone) if e.order_id == order_id)


async def funded(ex):
    await ex.deposit("alice", "USDC", 100_000 * USDC)
    await ex.deposit("bob", "SOL", 1_000 * SOL)
    await ex.deposit("carol", "SOL", 1_000 * SOL)
    await ex.deposit("carol", "USDC", 100_000 * USDC)


async def test_limit_rests_and_shows_in_depth(ex):
    await funded(ex)
    ev = await ex.block([order("bob", ASK, 15000, 200)])
    assert of(ev, OrderAccepted)[0].order_id == ex.seq - 1
    assert not of(ev, OrderDone)
    assert of(ev, DepthDelta)[0].asks == [(15000, 200)]
    assert await ex.depth("SOL_USDC") == ([], [(15000, 200)])
    assert await ex.balance("bob", "SOL") == (998 * SOL, 2 * SOL)


async def test_cross_fills_at_maker_price_with_fees(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100)])
    ev = await ex.block([order("alice", BID, 15100, 100)])
    (fill,) = of(ev, Fill)
    assert (fill.price, fill.quantity, fill.quote) == (15000, 100, 150 * USDC)
    assert fill.taker_fee == 150 * USDC * 5 // 10_000  # 5 bps taker
    assert fill.maker_fee == -(150 * USDC // 10_000)  # 1 bp maker rebate
    assert done(ev, fill.taker_order).status == "Filled"
    assert done(ev, fill.maker_order).status == "Filled"
    assert await ex.balance("alice", "SOL") == (1 * SOL, 0)
    assert await ex.balance("alice", "USDC") == (100_000 * USDC - 150 * USDC - fill.taker_fee, 0)
    assert await ex.balance("bob", "USDC") == (150 * USDC - fill.maker_fee, 0)
    assert (await ex.totals())["USDC"] == (await ex.deposits())["USDC"]


async def test_price_time_priority(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15010, 100), order("carol", ASK, 15000, 100), order("bob", ASK, 15000, 100)])
    first = ex.seq - 3  # order ids: bob's 150.10, carol's 150.00, bob's 150.00
    ev = await ex.block([order("alice", BID, 15010, 250)])
    fills = of(ev, Fill)
    # the best price first and, at one price, the older order: (maker order, account, price, quantity, maker left)
    assert [(f.maker_order, f.maker_account, f.price, f.quantity, f.maker_left) for f in fills] == [
        (first + 1, "carol", 15000, 100, 0), (first + 2, "bob", 15000, 100, 0), (first, "bob", 15010, 50, 50)]
    assert {f.taker_order for f in fills} == {ex.seq - 1} and done(ev, ex.seq - 1).status == "Filled"
    assert await ex.depth("SOL_USDC") == ([], [(15010, 50)])  # what is left of bob's 150.10


async def test_partial_fill_rests_remainder(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100)])
    ev = await ex.block([order("alice", BID, 15000, 300)])
    assert sum(f.quantity for f in of(ev, Fill)) == 100
    assert not [e for e in of(ev, OrderDone) if e.account == "alice"]
    assert await ex.depth("SOL_USDC") == ([(15000, 200)], [])


async def test_ioc_expires_remainder_and_releases_hold(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100)])
    ev = await ex.block([order("alice", BID, 15000, 300, tif=IOC)])
    d = done(ev, ex.seq - 1)
    assert (d.status, d.executed_quantity) == ("Expired", 100)
    assert (await ex.balance("alice", "USDC"))[1] == 0
    assert await ex.depth("SOL_USDC") == ([], [])


async def test_fok_all_or_nothing(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100), order("bob", ASK, 15010, 100)])
    ev = await ex.block([order("alice", BID, 15010, 300, tif=FOK)])
    assert not of(ev, Fill) and done(ev, ex.seq - 1).status == "Expired"
    ev = await ex.block([order("alice", BID, 15010, 200, tif=FOK)])
    assert sum(f.quantity for f in of(ev, Fill)) == 200 and done(ev, ex.seq - 1).status == "Filled"


async def test_post_only(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100)])
    ev = await ex.block([order("alice", BID, 15000, 100, post_only=True)])
    d = done(ev, ex.seq - 1)
    assert (d.status, d.reason) == ("Rejected", "PostOnlyWouldTake")
    ev = await ex.block([order("alice", BID, 14990, 100, post_only=True)])
    assert of(ev, OrderAccepted) and not of(ev, OrderDone)


async def test_market_by_quantity_walks_levels(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100), order("bob", ASK, 15010, 100)])
    ev = await ex.block([order("alice", BID, qty=150, type=MARKET)])
    assert [(f.price, f.quantity) for f in of(ev, Fill)] == [(15000, 100), (15010, 50)]
    assert done(ev, ex.seq - 1).status == "Filled"
    assert (await ex.balance("alice", "USDC"))[1] == 0


async def test_market_by_quote_quantity(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 1000)])
    ev = await ex.block([order("alice", BID, type=MARKET, quote_qty=300 * USDC)])
    assert sum(f.quote for f in of(ev, Fill)) == 300 * USDC
    assert done(ev, ex.seq - 1).status == "Filled"
    # a market sell by quote quantity
    await ex.block([order("alice", BID, 14000, 1000)])
    ev = await ex.block([order("carol", ASK, type=MARKET, quote_qty=70 * USDC)])
    assert sum(f.quote for f in of(ev, Fill)) == 70 * USDC


async def test_market_order_never_rests(ex):
    await funded(ex)
    ev = await ex.block([order("alice", BID, qty=100, type=MARKET)])
    assert done(ev, ex.seq - 1).status == "Expired"
    assert await ex.depth("SOL_USDC") == ([], [])
    assert (await ex.balance("alice", "USDC")) == (100_000 * USDC, 0)


async def test_stp_reject_taker(ex):
    await funded(ex)
    await ex.block([order("carol", ASK, 15000, 100)])
    ev = await ex.block([order("carol", BID, 15000, 100)])
    d = done(ev, ex.seq - 1)
    assert (d.status, d.reason) == ("Cancelled", "SelfTradePrevention")
    assert await ex.depth("SOL_USDC") == ([], [(15000, 100)])


async def test_stp_reject_maker(ex):
    await funded(ex)
    await ex.block([order("carol", ASK, 15000, 100), order("bob", ASK, 15000, 100)])
    maker = ex.seq - 2
    ev = await ex.block([order("carol", BID, 15000, 100, stp=REJECT_MAKER)])
    assert done(ev, maker).reason == "SelfTradePrevention"
    assert [f.maker_account for f in of(ev, Fill)] == ["bob"]
    assert done(ev, ex.seq - 1).status == "Filled"


async def test_stp_reject_both(ex):
    await funded(ex)
    await ex.block([order("carol", ASK, 15000, 100)])
    maker = ex.seq - 1
    ev = await ex.block([order("carol", BID, 15000, 100, stp=REJECT_BOTH)])
    assert done(ev, maker).status == "Cancelled"
    assert done(ev, ex.seq - 1).status == "Cancelled"
    assert await ex.depth("SOL_USDC") == ([], [])
    assert await ex.balance("carol", "SOL") == (1000 * SOL, 0)


async def test_cancel_by_id_client_id_and_all(ex):
    await funded(ex)
    await ex.block([order("bob", ASK, 15000, 100, client_id=7), order("bob", ASK, 15100, 100), order("bob", ASK, 15200, 100)])
    first = ex.seq - 3
    ev = await ex.block([cancel("bob", client_id=7)])
    assert done(ev, first).status == "Cancelled"
    ev = await ex.block([cancel("alice", order_id=first + 1)])
    assert of(ev, TxRejected)[0].code == "RESOURCE_NOT_FOUND"  # not alice's order
    ev = await ex.block([cancel("bob", order_id=first + 1)])
    assert done(ev, first + 1).status == "Cancelled"
    ev = await ex.block([cancel_all("bob")])
    assert [e.order_id for e in of(ev, OrderDone)] == [first + 2]
    assert await ex.balance("bob", "SOL") == (1000 * SOL, 0)
    ev = await ex.block([cancel("bob", order_id=first)])
    assert of(ev, TxRejected)[0].code == "RESOURCE_NOT_FOUND"


async def test_filters(ex):
    await funded(ex)
    ev = await ex.block([order("alice", BID, 100, 1)])  # 1.00 x 0.01 = 0.01 USDC < min notional 1
    assert done(ev, ex.seq - 1).reason == "BelowMinNotional"
    ev = await ex.block([order("alice", BID, 15000, 0)])
    assert done(ev, ex.seq - 1).reason == "InvalidQuantity"
    ev = await ex.block([order("alice", BID, 15000, 100, symbol="DOGE_USDC")])
    assert [(e.code, e.seq) for e in ev if e.__class__.__name__ == "TxRejected"] == [("INVALID_SYMBOL", ex.seq - 1)]
    await ex.block([order("bob", ASK, 15000, 100), order("alice", BID, 15000, 100)])  # last price 150
    ev = await ex.block([order("alice", BID, 13400, 100)])  # more than 10% away
    assert done(ev, ex.seq - 1).reason == "PriceOutOfBand"
    ev = await ex.block([order("alice", BID, 13600, 100)])
    assert not of(ev, OrderDone)


async def test_insufficient_funds_and_duplicate_client_id(ex):
    await funded(ex)
    ev = await ex.block([order("bob", BID, 15000, 100)])  # bob has no USDC
    assert done(ev, ex.seq - 1).reason == "InsufficientFunds"
    await ex.block([order("alice", BID, 14000, 100, client_id=5)])
    ev = await ex.block([order("alice", BID, 14000, 100, client_id=5)])
    assert done(ev, ex.seq - 1).reason == "DuplicateClientId"
    assert (await ex.balance("alice", "USDC"))[1] == 140 * USDC + 140 * USDC * 5 // 10_000


def test_guard_forgets_signatures_when_their_window_closes():
    from satchel.core.engine import Guard
    from satchel.core.messages import Auth

    g = Guard()
    now = 1_000_000
    assert g.check(Auth((), False, b"a" * 64, now, 5_000), now, 60_000) is None
    assert g.check(Auth((), False, b"b" * 64, now, 60_000), now, 60_000) is None
    assert g.check(Auth((), False, b"a" * 64, now, 5_000), now + 1, 60_000) == "DUPLICATE_REQUEST"
    g.expire(now + 5_001)
    assert len(g) == 1  # "a" forgotten: a replay of it would now be EXPIRED anyway
    assert g.check(Auth((), False, b"a" * 64, now, 5_000), now + 5_001, 60_000) == "EXPIRED"
    assert g.check(Auth((), False, b"c" * 64, now + 70_000, 5_000), now, 60_000) == "EXPIRED"  # too far ahead
    g.expire(now + 60_001)
    assert len(g) == 0
