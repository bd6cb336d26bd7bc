"""The cost of a points season (``python -m benchmarks.engine --workload rewards``).

1. The spot stream through a node (sequencer, journal, every actor), alternating runs
   without a season and with one: 200 traders, 190 of them referred by ten referrers,
   half tagged in a community with a x1.5 multiplier, everyone x2 over a block range. The
   ratio of the medians is the price of points on the whole pipeline.
2. The rewards actor alone: one block's accrual for blocks of 10 to 1,000 fills among
   twice as many accounts, with 2,000 and 200,000 accounts holding points: the cost per
   fill and account touched stays flat -- O(fills + accounts touched), whatever the number
   of accounts with points (the leaderboard's sorted list costs O(log n) per account).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import trio

from satchel.actors.rewards import Rewards
from satchel.core.messages import (
    AccruePoints, AssetSpec, Deposit, Fill, ListAssetSpec, ListMarketSpec, MarketSpec, ReferralCode, RewardsCommand,
    SeasonSpec, SetMultiplier, SetProfile, SetSeason, UseReferral,
)
from satchel.node import Node

TRADERS = 200


def season_txs(admin: str) -> list:
    txs: list = [SetSeason(admin, SeasonSpec(1, "bench", 0, 2**62, "USDC", 100, 50, 1000))]
    txs += [ReferralCode(f"acct{i}", f"code{i}") for i in range(10)]
    txs += [UseReferral(f"acct{i}", f"code{i % 10}") for i in range(10, TRADERS)]
    txs += [SetProfile(admin, f"acct{i}", 0, "", ("community",)) for i in range(0, TRADERS, 2)]
    txs += [SetMultiplier(admin, "tag", "community", 150, 1, 0), SetMultiplier(admin, "all", "", 200, 1, 10**9)]
    return txs


async def run(stream: list, sign: Callable, with_season: bool) -> tuple[float, int]:
    from benchmarks._stats import submit_all

    with tempfile.TemporaryDirectory() as d:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(d).run)
            admin = node.admin.api_key
            for i in range(TRADERS):
                for asset in ("USDC", "SOL", "ETH", "BTC"):
                    node.submit(Deposit(admin, f"acct{i}", asset, 10**16))
            if with_season:
                for tx in season_txs(admin):
                    node.submit(tx)
            await node.submit_wait(Deposit(admin, "x", "USDC", 1))
            txs = sign(stream, node.sequencer.next_seq)
            t = time.perf_counter()
            await submit_all(node, txs)
            dt = time.perf_counter() - t
            node.shutdown()
    return len(txs) / dt, len(txs)


def accrual_cost(fills: int, accounts: int, repeats: int = 30) -> tuple[int, float]:
    """One block's accrual (the actor's handler, called directly) with ``fills`` fills among
    2 x ``fills`` accounts, ``accounts`` accounts already holding points: (accounts
    touched, microseconds per fill + account touched), median of ``repeats`` blocks."""
    r = Rewards()
    r.handle(ListAssetSpec(AssetSpec("USDC", 6)))
    r.handle(ListMarketSpec(MarketSpec("SOL_USDC", "SOL", "USDC", 2, 1, 2, 1, 1, 1, 0, 0, 0, 10**4, 10**7)))
    r.handle(RewardsCommand(1, 1, 0, SetSeason("a", SeasonSpec(1, "b", 0, 2**62, "USDC", 100, 50, 1000))))
    names = [f"acct{i}" for i in range(accounts)]

    def fill(maker: str, taker: str) -> Fill:
        return Fill(1, "SOL_USDC", 1, 15_000, 100, 150 * 10**6, 1, 2, taker, maker, 0, 0, 0, 0, 0)

    r.handle(AccruePoints(2, 1, 1, [fill(names[i], names[(i + 1) % accounts]) for i in range(accounts)]))  # all ranked
    window = min(2 * fills, accounts)
    block = [fill(names[(2 * i) % window], names[(2 * i + 1) % window]) for i in range(fills)]
    touched = len({f.maker_account for f in block} | {f.taker_account for f in block})
    samples = []
    for h in range(repeats):
        t = time.perf_counter()
        r.handle(AccruePoints(3 + h, 2, 1, block))
        samples.append(time.perf_counter() - t)
    return touched, statistics.median(samples) / (fills + touched) * 1e6


def main(stream: list, sign: Callable, runs: int) -> None:
    print(f"rewards: the spot stream ({len(stream):,} transactions, {TRADERS} traders), without and with a season "
          f"(referrals, a tag x1.5, everyone x2), alternating")
    without, with_ = [], []
    for i in range(runs):
        rate, n = trio.run(run, stream, sign, False)
        without.append(rate)
        rate2, _ = trio.run(run, stream, sign, True)
        with_.append(rate2)
        print(f"  run {i + 1}: without {rate:,.0f} tx/s, with a season {rate2:,.0f} tx/s", flush=True)
    a, b = statistics.median(without), statistics.median(with_)
    print(f"engine with points: median {b:,.0f} tx/s vs {a:,.0f} without ({b / a:.0%})")
    print("one block's accrual, the rewards actor alone (median of 30 blocks): us per (fill + account touched)")
    for accounts in (2_000, 200_000):
        costs = []
        for n in (10, 100, 1_000):
            touched, us = accrual_cost(n, accounts)
            costs.append(f"{n:,} fills / {touched:,} accounts {us:.2f}")
        print(f"  {accounts:>7,} accounts with points: " + ", ".join(costs))
