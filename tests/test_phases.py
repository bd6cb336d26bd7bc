"""The engine's phase table: a periodic actor is ticked once per block, and the orders it
generates go through pre-trade, matching and settlement again within the same block."""

from __future__ import annotations

import trio

from conftest import ADMIN, Exchange, order
from satchel import config
from satchel.core.actor import dispatcher
from satchel.core.engine import INTERNAL_SEQ_BASE, Engine
from satchel.core.messages import (
    ASK, BID, MARKET, BalanceChanged, Fill, Restore, StateOf, Tick, Ticked,
)

SECOND = 1_000_000


class Keeper:
    """A stand-in periodic actor: at each whole second it buys 1 SOL at market, as a
    liquidation engine would close a position."""

    def __init__(self) -> None:
        self.fired = 0

    def _tick(self, msg: Tick) -> Ticked:
        if msg.timestamp // SECOND == msg.previous // SECOND:
            return Ticked()
        self.fired += 1
        return Ticked(orders=[order("keeper", BID, 0, 100, type=MARKET)])

    def _state(self, msg: StateOf) -> list:
        return [self.fired]

    def _restore(self, msg: Restore) -> None:
        (self.fired,) = msg.state

    handle = dispatcher({Tick: _tick, StateOf: _state, Restore: _restore})


async def run(blocks: list[tuple[int, list]]) -> tuple[list, str, dict]:
    async with trio.open_nursery() as nursery:
        ex = Exchange(Engine(nursery, periodic={"keeper": Keeper()}))
        await ex.block(config.genesis(config.load(), ADMIN))
        await ex.deposit("keeper", "USDC", 10**12)
        await ex.deposit("maker", "SOL", 10**13)
        out = []
        for ts, txs in blocks:
            ex.ts = ts - 1000  # Exchange.block adds 1 ms
            out.append(await ex.block(txs))
        state = await ex.engine.state_hash()
        totals = await ex.totals()
        nursery.cancel_scope.cancel()
    return out, state, totals


async def test_generated_orders_trade_within_the_block_that_generated_them():
    t0 = 1_700_000_000 * SECOND + 500_000
    blocks = [(t0, [order("maker", ASK, 15_000, 1_000)]), (t0 + 200_000, []), (t0 + 600_000, []), (t0 + 700_000, [])]
    out, state, totals = await run(blocks)
    quiet, _, crossing, after = out
    assert not [e for e in quiet if e.__class__ is Fill]  # same second: nothing generated
    fills = [e for e in crossing if e.__class__ is Fill]
    assert [(f.taker_account, f.maker_account, f.quantity, f.price) for f in fills] == [("keeper", "maker", 100, 15_000)]
    assert fills[0].seq > INTERNAL_SEQ_BASE  # numbered apart from the journal's sequence numbers
    # settled in the same block: the keeper's SOL balance changed there
    assert any(e.__class__ is BalanceChanged and e.account == "keeper" and e.asset == "SOL" and e.free == 100 * 10**7
               for e in crossing)
    assert not [e for e in after if e.__class__ is Fill]
    assert totals["USDC"] == 10**12 and totals["SOL"] == 10**13  # conserved, fees included


async def test_periodic_phase_replays_identically():
    t0 = 1_700_000_000 * SECOND
    blocks = [(t0 + i * 400_000, [order("maker", ASK, 15_000 + i, 100)]) for i in range(10)]
    first = await run(blocks)
    second = await run(blocks)
    assert first[1] == second[1]
    assert [len(b) for b in first[0]] == [len(b) for b in second[0]]
