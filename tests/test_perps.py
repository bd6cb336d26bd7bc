"""Perpetual futures in the engine: margin, reduce-only, stale index, funding, PnL
settlement, tiered liquidation and triggers -- driven block by block, no network."""

from __future__ import annotations

import msgspec
import pytest
import trio

from conftest import ADMIN, Exchange, cancel, cancel_all, order
from satchel import config
from satchel.core.engine import Engine
from satchel.core.messages import (
    ASK, BID, BY_MARK, IOC, MARKET, PPB, CollateralOf, Deposit, FundingPaid, FundingPayment, HistoryOf,
    Liquidation, MarkPrice, OrderDone, PlaceOrder, PositionChanged, PositionsOf, SetIndex, SetLeverage, TriggerPlaced,
)

P = "SOL_USDC_PERP"
USDC = 10**6
SECOND = 1_000_000
T0 = 1_700_000_000 * SECOND


def perp_config(backstop: str = "", **perp: str | int) -> config.Config:
    """The default config with SOL_USDC_PERP's parameters overridden (mark = index unless
    ``mark_band`` is given) and an optional backstop account."""
    cfg = config.load()
    perp.setdefault("mark_band", "0")
    markets = [msgspec.structs.replace(m, perp=msgspec.structs.replace(m.perp, **perp)) if m.symbol == P else m
               for m in cfg.markets]
    return msgspec.structs.replace(cfg, markets=markets, margin=msgspec.structs.replace(cfg.margin, backstop=backstop))


def buy(account: str, price: float, qty: float, **kw) -> PlaceOrder:
    return order(account, BID, round(price * 100), round(qty * 100), symbol=P, **kw)


def sell(account: str, price: float, qty: float, **kw) -> PlaceOrder:
    return order(account, ASK, round(price * 100), round(qty * 100), symbol=P, **kw)


def index(price: float, symbol: str = P) -> SetIndex:
    return SetIndex(ADMIN, symbol, round(price * 100))


class Perps(Exchange):
    async def at(self, seconds: float, txs: list) -> list:
        """A block at T0 + seconds."""
        self.ts = T0 + int(seconds * SECOND) - 1000
        return await self.block(txs)

    async def position(self, account: str) -> int:
        view = await self.engine.risk.call(PositionsOf(account))
        return sum(p.size for p in view.positions if p.symbol == P)

    async def collateral(self, account: str):
        return await self.engine.risk.call(CollateralOf(account))

    async def conserved(self) -> None:
        totals = await self.totals()
        deposits = await self.deposits()
        assert {a: totals.get(a, 0) for a in deposits} == deposits
        state = (await self.engine.canonical()).risk.margin
        longs = sum(p.size for p in state.positions if p.size > 0 and p.symbol == P)
        shorts = -sum(p.size for p in state.positions if p.size < 0 and p.symbol == P)
        assert longs == shorts


@pytest.fixture
async def px(nursery):
    return await start(nursery, perp_config())


async def start(nursery, cfg: config.Config) -> Perps:
    ex = Perps(Engine(nursery))
    ex.ts = T0 - 10_000
    await ex.block(config.genesis(cfg, ADMIN))
    return ex


def of(events: list, cls: type) -> list:
    return [e for e in events if e.__class__ is cls]


def reasons(events: list) -> list[str]:
    return [e.reason for e in of(events, OrderDone) if e.status in ("Rejected", "Expired")]


async def test_a_trade_opens_opposite_positions_and_pnl_is_realized_every_settle_interval(px):
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 1000 * USDC)])
    await px.at(0, [index(150)])
    ev = await px.at(1, [buy("a", 150, 10), sell("b", 150, 10)])
    pos = {e.account: e for e in of(ev, PositionChanged)}
    assert pos["a"].size == 1000 and pos["b"].size == -1000
    assert pos["a"].net_cost == 1500 * USDC == -pos["b"].net_cost
    await px.conserved()
    # the mark moves; PnL is realized at the next 10 s boundary of sequenced time
    ev = await px.at(5, [index(160)])
    assert not of(ev, PositionChanged)
    ev = await px.at(10, [])
    pos = {e.account: e for e in of(ev, PositionChanged)}
    assert pos["a"].realized == 100 * USDC and pos["b"].realized == -100 * USDC
    assert pos["a"].net_cost == 1600 * USDC  # entry reset to the mark
    assert (await px.balance("a", "USDC"))[0] == 1000 * USDC - 300_000 + 100 * USDC  # maker fee 2 bps
    await px.conserved()
    # closing realizes the rest at the fill price
    await px.at(11, [sell("a", 155, 10), buy("b", 155, 10)])
    assert await px.position("a") == 0 and await px.position("b") == 0
    await px.conserved()


async def test_initial_margin_is_checked_with_open_orders(px):
    await px.block([Deposit(ADMIN, "a", "USDC", 100 * USDC)])
    await px.at(0, [index(150)])
    # 100 USDC at 50x (IMF 2%) carries 5,000 USDC of exposure: 33 SOL at 150
    ev = await px.at(1, [buy("a", 150, 30)])
    assert not reasons(ev)
    ev = await px.at(2, [buy("a", 149, 5)])  # the resting 30 count: 35 x 150 x 2% > 100
    assert reasons(ev) == ["InsufficientMargin"]
    ev = await px.at(3, [sell("a", 151, 5)])  # the other side adds no risk beyond the bids
    assert not reasons(ev)
    await px.at(4, [SetLeverage("a", 10)])  # IMF 10%: the open bids already need 450
    ev = await px.at(5, [buy("a", 149, 1)])
    assert reasons(ev) == ["InsufficientMargin"]


async def test_reduce_only_orders_together_close_at_most_the_position(px):
    """An outside test flipped a 1 SOL long to a 37.6 short with 40 reduce-only asks in one
    batch (each was capped at the whole position), and three reduce-only stops firing in
    one block left a user short. What the account's other reduce-only orders on the side
    may close is now spoken for: resting or earlier in the block."""
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 10_000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [buy("a", 150, 1), sell("b", 150, 1)])
    await px.at(2, [buy("b", 149, 50)])  # a deep bid: every ask below would fill
    ev = await px.at(3, [sell("a", 149, 1, reduce_only=True, tif=IOC) for _ in range(5)])
    assert reasons(ev) == ["ReduceOnly"] * 4
    assert await px.position("a") == 0
    await px.conserved()
    # a resting reduce-only order speaks for its part: the next may close only the rest
    await px.at(4, [buy("a", 150, 2), sell("b", 150, 2)])
    await px.at(5, [sell("a", 160, 1.5, reduce_only=True)])  # rests above the bids
    ev = await px.at(6, [sell("a", 149, 2, reduce_only=True, tif=IOC)])
    assert await px.position("a") == 150  # capped at 0.5: the 1.5 resting closes the rest
    ev = await px.at(7, [sell("a", 149, 1, reduce_only=True, tif=IOC)])
    assert reasons(ev) == ["ReduceOnly"] and await px.position("a") == 150
    await px.at(8, [cancel_all("a", P)])  # cancelled, it speaks for nothing any more
    ev = await px.at(9, [sell("a", 149, 1.5, reduce_only=True, tif=IOC)])
    assert not reasons(ev) and await px.position("a") == 0
    await px.conserved()


async def test_reduce_only_expires_when_it_would_grow_the_position(px):
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 1000 * USDC)])
    await px.at(0, [index(150)])
    ev = await px.at(1, [buy("a", 150, 1, reduce_only=True)])
    assert reasons(ev) == ["ReduceOnly"]
    assert of(ev, OrderDone)[0].status == "Expired"
    await px.at(2, [buy("a", 150, 2), sell("b", 150, 2)])
    ev = await px.at(3, [buy("a", 150, 1, reduce_only=True)])  # same side as the long
    assert reasons(ev) == ["ReduceOnly"]
    # an ask reduces: capped at the position's size
    await px.at(4, [buy("b", 149, 5)])
    ev = await px.at(5, [sell("a", 149, 5, reduce_only=True, tif=IOC)])
    assert await px.position("a") == 0
    assert sum(f.quantity for f in ev if f.__class__.__name__ == "Fill") == 200


async def test_a_stale_index_blocks_orders_that_add_risk_but_not_ones_that_reduce(px):
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 1000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [buy("a", 150, 2), sell("b", 150, 2)])
    ev = await px.at(40, [buy("a", 150, 1)])  # no index for 40 s > 30 s
    assert reasons(ev) == ["IndexPriceStale"]
    ev = await px.at(41, [sell("a", 150, 1)])  # reduces the long: allowed
    assert not reasons(ev)
    await px.at(42, [index(150)])
    ev = await px.at(43, [buy("a", 149, 1)])
    assert not reasons(ev)


async def test_bad_perp_input_is_refused_and_changes_nothing(px):
    from satchel.core import instructions
    from satchel.core.errors import RequestError

    listing = px.engine
    cases = [
        ("orderExecute", {"symbol": "DOGE_USDC_PERP", "side": "Bid", "orderType": "Limit", "price": "1", "quantity": "1"},
         "INVALID_SYMBOL"),
        ("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "1", "quantity": "1",
                          "reduceOnly": "true"}, "INVALID_CLIENT_REQUEST"),
        ("accountUpdate", {"leverageLimit": "51"}, "INVALID_LEVERAGE"),
        ("accountUpdate", {"leverageLimit": "0"}, "INVALID_LEVERAGE"),
        ("oracleIndex", {"symbol": "SOL_USDC", "price": "150"}, "INVALID_SYMBOL"),
    ]
    before = await px.engine.state_hash()
    for name, texts, code in cases:
        with pytest.raises(RequestError) as err:
            instructions.build(name, texts, "a", listing)
        assert err.value.code == code, (name, texts)
    assert await px.engine.state_hash() == before


async def test_a_trigger_order_waits_then_fires_on_the_mark(px):
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 1000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [buy("a", 150, 2), sell("b", 150, 2), buy("b", 140, 5)])
    # a stop-loss: sell 2 at market when the mark falls to 145
    stop = PlaceOrder("a", P, ASK, MARKET, 0, False, 0, 200, 0, None, 0, True, 14500, BY_MARK)
    ev = await px.at(2, [stop])
    placed = of(ev, TriggerPlaced)
    assert placed and placed[0].trigger_price == 14500
    ev = await px.at(3, [index(146)])
    assert not of(ev, OrderDone)
    ev = await px.at(4, [index(145)])
    done = [e for e in of(ev, OrderDone) if e.order_id == placed[0].order_id]
    assert done and done[0].executed_quantity == 200  # filled against b's bid at 140, same id
    assert await px.position("a") == 0
    await px.conserved()


async def test_a_pending_trigger_can_be_cancelled(px):
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC)])
    await px.at(0, [index(150)])
    ev = await px.at(1, [PlaceOrder("a", P, BID, MARKET, 0, False, 0, 100, 0, 7, 0, False, 16000, BY_MARK)])
    oid = of(ev, TriggerPlaced)[0].order_id
    ev = await px.at(2, [cancel("a", client_id=7, symbol=P)])
    assert [(e.order_id, e.status) for e in of(ev, OrderDone)] == [(oid, "Cancelled")]
    ev = await px.at(3, [index(161)])
    assert not of(ev, OrderDone)


async def test_funding_is_zero_sum_with_the_remainder_to_the_insurance_fund(nursery):
    px = await start(nursery, perp_config(mark_band="0.05"))
    await px.block([Deposit(ADMIN, a, "USDC", 100_000 * USDC) for a in ("a", "b", "c", "d", "mm")])
    await px.at(0, [index(150)])
    await px.at(1, [buy("a", 150, 10), sell("b", 150, 10), buy("c", 150, 3.33), sell("d", 150, 3.33)])
    # a book 0.3 below the index: mark and premium below, funding negative (shorts pay)
    await px.at(2, [buy("mm", 149.69, 1), sell("mm", 149.70, 1)])
    events = []
    for minute in range(1, 50):
        events += await px.at(minute * 60, [index(150)])
    paid = of(events, FundingPaid)
    assert len(paid) == 1 and paid[0].rate < 0
    payments = of(events, FundingPayment)
    assert {p.account for p in payments} == {"a", "b", "c", "d"}
    by = {p.account: p.amount for p in payments}
    assert by["a"] < 0 < by["b"] and by["c"] < 0 < by["d"]  # longs receive, shorts pay
    remainder = sum(by.values())
    assert 0 <= remainder <= len(by)  # rounding only, never negative
    state = (await px.engine.canonical()).risk.margin
    assert state.insurance == remainder
    await px.conserved()


async def test_a_short_squeeze_funding_rate_and_the_clamp(nursery):
    # SOL perp, book 0.2% under the index for an hour: about -170% APR, like Backpack's squeeze
    px = await start(nursery, perp_config(mark_band="0.05"))
    await px.block([Deposit(ADMIN, "mm", "USDC", 100_000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [buy("mm", 149.69, 1), sell("mm", 149.70, 1)])
    events = []
    for minute in range(1, 50):
        events += await px.at(minute * 60, [index(150)])
    rate = of(events, FundingPaid)[0].rate
    apr = rate * 8760 / PPB
    assert -1.76 <= apr <= -1.66, apr
    # the same book 4% under the index: the rate stops at the floor
    px2 = await start(nursery, perp_config(mark_band="0.05", funding_floor="-0.0005"))
    await px2.block([Deposit(ADMIN, "mm", "USDC", 100_000 * USDC)])
    await px2.at(0, [index(150)])
    await px2.at(1, [buy("mm", 144, 1), sell("mm", 144.01, 1)])
    events = []
    for minute in range(1, 50):
        events += await px2.at(minute * 60, [index(150)])
    assert of(events, FundingPaid)[0].rate == -500_000
    marks = of(events, MarkPrice)
    assert min(m.mark for m in marks if m.symbol == P) >= 15000 - 750  # the basis is bounded by mark_band


async def test_a_crash_liquidates_a_leveraged_long_through_every_tier(nursery):
    px = await start(nursery, perp_config(backstop="bs"))
    await px.block([
        Deposit(ADMIN, "long", "USDC", 40 * USDC), Deposit(ADMIN, "short", "USDC", 10_000 * USDC),
        Deposit(ADMIN, "mm", "USDC", 10_000 * USDC), Deposit(ADMIN, "bs", "USDC", 15 * USDC),
        Deposit(ADMIN, "@insurance", "USDC", 1000 * USDC),
    ])
    await px.at(0, [index(150)])
    await px.at(1, [buy("long", 150, 10), sell("short", 150, 10)])
    await px.at(2, [buy("mm", 144, 1), buy("long", 140, 0.01)])  # a thin book; the long also has an order
    ev = await px.at(3, [index(143)])
    tiers = [e.tier for e in of(ev, Liquidation) if e.account == "long"]
    assert tiers == [1, 2, 4, 3, 5]
    liq = {e.tier: e for e in of(ev, Liquidation)}
    assert liq[1].quantity == 1  # one market's orders cancelled
    assert liq[2].equity < liq[2].maintenance
    assert liq[3].counterparty == "bs" and liq[5].counterparty == "short"
    assert liq[3].quantity + liq[5].quantity == 900  # 10 less the 1 unwound in the book
    assert await px.position("long") == 0
    assert (await px.collateral("long")).equity >= -1  # bankruptcy price: nothing left, nothing owed
    assert await px.position("bs") == liq[3].quantity
    history = await px.engine.risk.call(HistoryOf("long", "liquidation"))
    assert [e.tier for e in history] == [5, 3, 4, 2, 1]
    await px.conserved()


async def test_without_a_fund_or_backstop_the_rest_is_auto_deleveraged(px):
    await px.block([Deposit(ADMIN, "long", "USDC", 40 * USDC), Deposit(ADMIN, "s1", "USDC", 10_000 * USDC),
                    Deposit(ADMIN, "s2", "USDC", 10_000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [buy("long", 150, 10), sell("s1", 150, 4), sell("s2", 150, 6)])
    ev = await px.at(2, [index(140)])
    adl = [e for e in of(ev, Liquidation) if e.tier == 5]
    assert sum(e.quantity for e in adl) == 1000
    assert {e.counterparty for e in adl} == {"s1", "s2"}
    assert await px.position("long") == 0 and await px.position("s1") == 0 and await px.position("s2") == 0
    await px.conserved()


async def test_perp_state_survives_a_snapshot_and_replays_identically(nursery):
    async def run() -> tuple[str, object]:
        async with trio.open_nursery() as inner:
            px = await start(inner, perp_config(mark_band="0.05"))
            await px.block([Deposit(ADMIN, a, "USDC", 1000 * USDC) for a in ("a", "b")])
            await px.at(0, [index(150)])
            await px.at(1, [buy("a", 150, 3), sell("b", 150, 3), buy("a", 149, 1)])
            await px.at(2, [PlaceOrder("a", P, ASK, MARKET, 0, False, 0, 100, 0, None, 0, True, 14000, BY_MARK)])
            await px.at(70, [index(148)])
            state = await px.engine.canonical()
            h = await px.engine.state_hash()
            inner.cancel_scope.cancel()
        return h, state

    h1, state = await run()
    h2, _ = await run()
    assert h1 == h2
    async with trio.open_nursery() as inner:
        engine = Engine(inner)
        await engine.restore(state)
        assert await engine.state_hash() == h1
        inner.cancel_scope.cancel()


async def test_reduce_only_stops_firing_together_close_at_most_the_position(px):
    """Three reduce-only stops, each for the whole long, fired in one block: one closes it,
    the others expire (before, the user was left short twice the long)."""
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC), Deposit(ADMIN, "b", "USDC", 10_000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [buy("a", 150, 1.44), sell("b", 150, 1.44), buy("b", 140, 10)])
    stops = [PlaceOrder("a", P, ASK, MARKET, 0, False, 0, 144, 0, None, 0, True, 14500, BY_MARK) for _ in range(3)]
    await px.at(2, stops)
    ev = await px.at(3, [index(145)])
    assert reasons(ev) == ["ReduceOnly"] * 2
    assert await px.position("a") == 0
    await px.conserved()


async def test_the_open_interest_limit_holds_for_a_batch(nursery):
    """Each order was checked against the open interest before the block: a batch of
    50 x 12 BTC passed a 500 BTC limit (an outside test). This block's orders before an
    order now count too."""
    px = await start(nursery, perp_config(open_interest_limit="5"))
    await px.block([Deposit(ADMIN, "a", "USDC", 100_000 * USDC), Deposit(ADMIN, "b", "USDC", 100_000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [sell("b", 150, 5)])
    await px.at(1.5, [sell("b", 150, 5)])  # resting asks are checked as they are placed
    ev = await px.at(2, [buy("a", 150, 1, tif=IOC) for _ in range(8)])
    assert reasons(ev) == ["OpenInterestLimit"] * 3
    assert await px.position("a") == 500
    await px.conserved()


async def test_money_held_for_a_withdrawal_is_no_longer_collateral(nursery):
    """An outside test withdrew all of 100 USDC and, while it was held, opened a 37x long
    on it: the held amount still counted as collateral. It no longer does."""
    from satchel.core.messages import ChainSpec, SetChain, Withdraw

    px = await start(nursery, perp_config())
    await px.block([SetChain(ADMIN, ChainSpec("sim", "ADAPTER", ["USDC"], 3, [("USDC", 10**9 * USDC)]))])
    await px.block([Deposit(ADMIN, "a", "USDC", 100 * USDC), Deposit(ADMIN, "b", "USDC", 10_000 * USDC)])
    await px.at(0, [index(150)])
    await px.at(1, [sell("b", 150, 30)])
    ev = await px.at(2, [Withdraw("a", "sim", "USDC", 100 * USDC, "0xdest")])
    assert not [e for e in ev if e.__class__.__name__ == "TxRejected"]
    view = await px.collateral("a")
    assert view.equity == 0 and [r.total for r in view.assets if r.asset == "USDC"] == [0]  # the row agrees
    ev = await px.at(3, [buy("a", 150, 25, tif=IOC)])
    assert reasons(ev) == ["InsufficientMargin"] and await px.position("a") == 0
    ev = await px.at(4, [buy("a", 150, 0.1, tif=IOC)])
    assert reasons(ev) == ["InsufficientMargin"]


async def test_pending_triggers_are_bounded_and_need_equity(px, monkeypatch):
    """A key never funded placed 100,000 pending triggers (55 MB; 1.1 s for the block they
    fired in). A trigger now needs equity, and an account holds at most as many pending in
    a market as it may rest there."""
    from satchel.actors import margin as margin_mod

    monkeypatch.setattr(margin_mod, "MAX_OPEN_ORDERS", 3)
    await px.block([Deposit(ADMIN, "a", "USDC", 1000 * USDC)])
    await px.at(0, [index(150)])
    stop = PlaceOrder("nobody", P, ASK, MARKET, 0, False, 0, 100, 0, None, 0, False, 14500, BY_MARK)
    ev = await px.at(1, [stop])
    assert reasons(ev) == ["InsufficientMargin"] and not of(ev, TriggerPlaced)
    ev = await px.at(2, [msgspec.structs.replace(stop, account="a") for _ in range(5)])
    assert len(of(ev, TriggerPlaced)) == 3 and reasons(ev) == ["TooManyOpenOrders"] * 2


async def test_an_order_cannot_lose_more_against_the_mark_than_its_margin_allows(px):
    """Two accounts of one owner drained the insurance fund (an outside test: 6,625 USDC in
    one trade): one bought at the band's edge (mark x 1.0999) from the other, at 50x; its
    equity went below zero in the same block and the fund paid. The loss a fill books
    against the mark now counts: a limit order's at its price, and a market order's fills
    stop where its margin is spent."""
    await px.block([Deposit(ADMIN, "a", "USDC", 100 * USDC), Deposit(ADMIN, "b", "USDC", 10_000 * USDC)])
    await px.at(0, [index(150)])
    # 30 SOL at 150 needs 90 USDC at 50x; bought at 164.98 it loses 449 at once
    ev = await px.at(1, [sell("b", 164.98, 30), buy("a", 164.98, 30, tif=IOC)])
    assert reasons(ev) == ["InsufficientMargin"] and await px.position("a") == 0
    ev = await px.at(2, [sell("b", 150, 30), buy("a", 150, 30, tif=IOC)])  # at the mark: as before
    assert not reasons(ev) and await px.position("a") == 3000
    await px.at(3, [buy("b", 150, 30), sell("a", 150, 30, tif=IOC)])
    assert await px.position("a") == 0
    # a market order takes the off-mark ask (still resting) only as far as its margin goes
    ev = await px.at(5, [PlaceOrder("a", P, BID, MARKET, IOC, False, 0, 3000, 0, None, 0)])
    done = [e for e in of(ev, OrderDone) if e.account == "a"]
    assert done and done[0].reason == "InsufficientMargin" and await px.position("a") == 0
    view = await px.collateral("a")
    assert view.equity >= 0
    await px.conserved()
