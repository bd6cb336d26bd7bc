"""Invariants over generated workloads: conservation, an uncrossed book, price-time
priority, and replay determinism."""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ADMIN, Exchange
from satchel import config
from satchel.engine import Engine, events_hash
from satchel.messages import (
    ASK, BID, FOK, GTC, IOC, LIMIT, MARKET, CancelAll, CancelOrder, Deposit, Fill, OrderAccepted, OrderDone, PlaceOrder, SetFees, SetTrading,
)

ACCOUNTS = ["a0", "a1", "a2", "a3", "a4"]
SYMBOLS = ["SOL_USDC", "BTC_USDC"]

order_st = st.builds(
    lambda acct, sym, side, kind, tif, post, price, qty, quote, stp, cid: PlaceOrder(
        acct, sym, side, kind, tif if kind == LIMIT else IOC, post and kind == LIMIT,
        (14_900 + price if sym == "SOL_USDC" else 899_000 + price * 10) if kind == LIMIT else 0,
        qty if (kind == LIMIT or quote == 0) else 0,
        0 if (kind == LIMIT or quote == 0) else quote * 1_000_000, cid, stp),
    st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS), st.sampled_from([BID, ASK]),
    st.sampled_from([LIMIT, LIMIT, LIMIT, MARKET]), st.sampled_from([GTC, GTC, IOC, FOK]), st.booleans(),
    st.integers(0, 200), st.integers(1, 400), st.integers(0, 500), st.integers(0, 2),
    st.one_of(st.none(), st.integers(0, 5)),
)
cancel_st = st.one_of(
    st.builds(lambda a, s, k: ("cancel", a, s, k), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS), st.integers(0, 10_000)),
    st.builds(lambda a, s: CancelAll(a, s), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS)),
)
deposit_st = st.builds(lambda a, asset, n: Deposit(ADMIN, a, asset, n), st.sampled_from(ACCOUNTS),
                       st.sampled_from(["USDC", "SOL", "BTC"]), st.integers(1, 10**13))
admin_st = st.one_of(
    st.builds(lambda a, s, on: SetTrading(ADMIN, a, s, on), st.one_of(st.none(), st.sampled_from(ACCOUNTS)),
              st.sampled_from(SYMBOLS), st.booleans()),
    st.builds(lambda s, m, t: SetFees(ADMIN, s, max(m, -t), t), st.sampled_from(SYMBOLS), st.integers(-5, 20), st.integers(0, 50)),
)
tx_st = st.one_of(order_st, order_st, order_st, order_st, cancel_st, deposit_st, admin_st)
workload_st = st.lists(st.lists(tx_st, min_size=1, max_size=25), min_size=1, max_size=12)


def concretize(blocks: list, first_seq: int) -> list:
    """Turn ("cancel", acct, sym, k) into a cancel of some earlier sequence number."""
    out, seq = [], first_seq
    for block in blocks:
        txs = []
        for tx in block:
            if isinstance(tx, tuple):
                _, acct, sym, k = tx
                tx = CancelOrder(acct, sym, first_seq + k % max(1, seq - first_seq + 1), None)
            txs.append(tx)
            seq += 1
        out.append(txs)
    return out


async def run_workload(blocks: list) -> tuple[Exchange, list, str]:
    async with trio.open_nursery() as nursery:
        ex = Exchange(Engine(nursery))
        await ex.block(config.genesis(config.load(), ADMIN))
        hashes = []
        for txs in concretize(blocks, ex.seq):
            events = await ex.block(txs)
            hashes.append(events_hash(events))
            totals = await ex.totals()
            deposits = await ex.deposits()
            for asset, total in totals.items():
                assert total == deposits.get(asset, 0), (asset, total, deposits)
            for sym in SYMBOLS:
                bids, asks = await ex.depth(sym)
                assert all(q > 0 for _, q in bids + asks)
                if bids and asks:
                    assert bids[0][0] < asks[0][0], "book left crossed"
            for acct in ACCOUNTS:
                for asset in ("USDC", "SOL", "BTC"):
                    free, held = await ex.balance(acct, asset)
                    assert free >= 0 and held >= 0
        state = await ex.engine.state_hash()
        nursery.cancel_scope.cancel()
    return ex, hashes, state


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(workload_st)
def test_conservation_and_uncrossed_book(blocks):
    trio.run(run_workload, blocks)


@PROPS
@given(workload_st)
def test_replays_are_identical(blocks):
    _, hashes1, state1 = trio.run(run_workload, blocks)
    ex2, hashes2, state2 = trio.run(run_workload, blocks)
    assert hashes1 == hashes2
    assert state1 == state2


@PROPS
@given(workload_st)
def test_price_time_priority(blocks):
    """Each fill takes the best-priced, then oldest, eligible resting order on the other side.

    The resting book is rebuilt from events alone: an accepted GTC limit joins it (its own
    fills come after its acceptance and are excluded as same-side), fills reduce makers,
    and a done order leaves it. Own orders are not eligible (self-trade prevention).
    """
    ex, _, _ = trio.run(run_workload, blocks)
    book: dict[int, tuple] = {}  # order id (= time priority) -> (symbol, side, price, account)
    fills = 0
    for ev in ex.events:
        if isinstance(ev, Fill):
            fills += 1
            eligible = [(oid, o) for oid, o in book.items()
                        if o[0] == ev.symbol and o[1] != ev.taker_side and o[3] != ev.taker_account]
            sign = 1 if ev.taker_side == BID else -1
            best = min(eligible, key=lambda x: (sign * x[1][2], x[0]))
            assert best[0] == ev.maker_order, (best, ev)
            assert best[1][2] == ev.price
            if not ev.maker_left:
                del book[ev.maker_order]
        elif isinstance(ev, OrderDone):
            book.pop(ev.order_id, None)
        elif isinstance(ev, OrderAccepted) and ev.order_type == LIMIT and ev.tif == GTC:
            book[ev.order_id] = (ev.symbol, ev.side, ev.price, ev.account)
