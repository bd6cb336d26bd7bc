"""Perp invariants over generated workloads with random price paths: money conserved
(funding, fees, insurance fund and ADL included), long open interest = short, no account
left below zero without an insurance-fund or ADL step, and replay determinism."""

from __future__ import annotations

import msgspec
import trio
from hypothesis import HealthCheck, given, settings, strategies as st, target

from conftest import ADMIN
from satchel import config
from satchel.core.engine import Engine, events_hash
from satchel.core.messages import (
    ASK, BID, IOC, LIMIT, MARKET, CollateralOf, Deposit, Fill, Liquidation, PlaceOrder, SetIndex,
)
from test_perps import P, T0, USDC, Perps, perp_config

TRADERS = ("a", "b", "c", "d", "e")
BACKSTOP = "bs"


def property_config() -> config.Config:
    cfg = perp_config(backstop=BACKSTOP, mark_band="0.02", funding_interval_s=60)
    return msgspec.structs.replace(cfg, margin=msgspec.structs.replace(cfg.margin, settle_interval_s=5))


# one block: seconds to advance, an index move (per mille), and orders
order_st = st.tuples(
    st.sampled_from(TRADERS), st.sampled_from((BID, ASK)), st.integers(-30, 30),  # price offset from mark, per mille
    st.integers(1, 400), st.sampled_from(("gtc", "ioc", "market", "reduce", "cross", "cross")),
)
block_st = st.tuples(st.sampled_from((0.3, 1, 4, 11, 61)), st.integers(-80, 60), st.lists(order_st, max_size=6))
workload_st = st.tuples(
    st.lists(st.integers(20, 3000), min_size=len(TRADERS), max_size=len(TRADERS)),  # collateral, USDC
    st.integers(0, 200),  # insurance fund seed
    st.lists(block_st, min_size=1, max_size=25),
)


def orders_for(block: tuple, price: int) -> list:
    _, _, orders = block
    out = []
    for account, side, offset, qty, kind in orders:
        limit = max(price + price * offset // 1000, 1)
        if kind == "cross":  # a resting order and the next trader taking it: positions open
            other = TRADERS[(TRADERS.index(account) + 1) % len(TRADERS)]
            out.append(PlaceOrder(account, P, side, LIMIT, 0, False, limit, qty, 0, None, 0))
            out.append(PlaceOrder(other, P, 1 - side, LIMIT, IOC, False, limit, qty, 0, None, 0))
        elif kind == "market":
            out.append(PlaceOrder(account, P, side, MARKET, 0, False, 0, qty, 0, None, 0))
        else:
            out.append(PlaceOrder(account, P, side, LIMIT, IOC if kind != "gtc" else 0, False, limit, qty, 0, None, 0,
                                  kind == "reduce"))
    return out


async def run(workload: tuple) -> tuple[Perps, list[bytes], str, int]:
    collateral, seed, blocks = workload
    async with trio.open_nursery() as nursery:
        ex = Perps(Engine(nursery))
        ex.ts = T0 - 10_000
        await ex.block(config.genesis(property_config(), ADMIN))
        funding = [Deposit(ADMIN, a, "USDC", c * USDC) for a, c in zip(TRADERS, collateral)]
        funding += [Deposit(ADMIN, BACKSTOP, "USDC", 5_000 * USDC)]
        if seed:
            funding.append(Deposit(ADMIN, "@insurance", "USDC", seed * USDC))
        await ex.block(funding)
        price = 15_000
        now = 0.0
        await ex.at(now, [SetIndex(ADMIN, P, price)])
        hashes = []
        rescued: set[str] = set()
        for block in blocks:
            advance, move, _ = block
            now += advance
            price = max(price + price * move // 1000, 100)
            events = await ex.at(now, [SetIndex(ADMIN, P, price), *orders_for(block, price)])
            hashes.append(events_hash(events))
            rescued.update(e.account for e in events if e.__class__ is Liquidation and e.tier in (4, 5))
            await ex.conserved()
            for account in (*TRADERS, BACKSTOP):
                view = await ex.engine.risk.call(CollateralOf(account))
                # a close-out leaves at most a rounding unit per position behind
                assert view.equity >= -2 or account in rescued, (account, view)
        state = await ex.engine.state_hash()
        fills = sum(1 for e in ex.events if e.__class__ is Fill and e.symbol == P)
        nursery.cancel_scope.cancel()
    return ex, hashes, state, fills


PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(workload_st)
def test_money_is_conserved_and_open_interest_balances(workload):
    ex, _, _, fills = trio.run(run, workload)
    target(fills)
    target(len({e.tier for e in ex.events if e.__class__ is Liquidation}), label="liquidation tiers reached")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload_st)
def test_two_replays_agree_block_by_block(workload):
    _, hashes1, state1, _ = trio.run(run, workload)
    _, hashes2, state2, _ = trio.run(run, workload)
    assert hashes1 == hashes2 and state1 == state2
