"""10,000 deposits through the simulated chain with an overloaded provider, beside trading.

A node runs in this process on a temporary data directory, with the embedded simulated
chain (blocks every 50 ms, 3 confirmations) and its adapter. Its first provider is
overloaded (it answers 429 beyond 40 calls/s and takes 20 ms per call), the second is
healthy: the pool fails over. Runs alternate in one process (``--rounds`` pairs):
trading alone, then trading while ``--deposits`` transfers reach accounts' deposit
addresses. Trading is a steady stream of orders (resting bids and asks crossing,
``--rate`` a second) whose durable-ack latency is measured. The report gives its p50 /
p99 alone and beside the deposits per round and their medians (a shared machine drifts:
alternating spreads the drift over both), and checks that every deposit was credited
exactly once (the balances equal what was sent, and the adapter's count of credits
equals the transfers).

Usage: python -m benchmarks.deposits [--deposits 10000] [--accounts 500] [--rate 400] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import msgspec
import trio

from satchel import config
from satchel.chains.embedded import SimChains
from satchel.core.messages import ASK, BID, GTC, IOC, LIMIT, REJECT_TAKER, BalanceOf, Deposit, PlaceOrder, SetLeverage
from satchel.node import Node
from satchel.tools.cli import setup_logging

USDC = 10**6


def quantiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98]


async def trade(node: Node, rate: int, seconds: float) -> list[float]:
    """Orders at ``rate`` a second for ``seconds``: each a durable-ack latency in ms."""
    latencies: list[float] = []
    n = int(rate * seconds)

    async def one(i: int) -> None:
        side = BID if i % 2 else ASK
        tif = GTC if i % 4 < 2 else IOC
        order = PlaceOrder(f"mm{i % 10}", "SOL_USDC", side, LIMIT, tif, False, 10_000, 100, 0, None, REJECT_TAKER)
        start = time.perf_counter()
        await node.submit_wait(order)
        latencies.append((time.perf_counter() - start) * 1000)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i in range(n):
            await trio.sleep_until(start + i / rate)
            nursery.start_soon(one, i)
    return latencies


async def run(deposits: int, accounts: int, rate: int, seconds: float, rounds: int, auto_lend: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load()
        sim = msgspec.structs.replace(cfg.chains["sim"], block_ms=50, confirmations=3)
        cfg = msgspec.structs.replace(cfg, chains={"sim": sim})
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(tmp, cfg).run)
            chains = await nursery.start(SimChains(node).run)
            overloaded = chains.providers["sim"][0]
            overloaded.rate_limit, overloaded.latency = 40, 0.02
            admin = node.admin.api_key
            for i in range(10):
                await node.submit_wait(Deposit(admin, f"mm{i}", "USDC", 10**7 * USDC))
                await node.submit_wait(Deposit(admin, f"mm{i}", "SOL", 10**15))
            chain = chains.sims["sim"]
            wallets = {}  # account -> its deposit address
            for i in range(accounts):  # users asked for their addresses before (each is fsynced once)
                account = f"user{i}"
                wallets[account] = node.addresses.issue("sim", account)
                chain.fund(f"user:{account}", "USDC", 10**9 * USDC)  # the user's own wallet on the chain
                if not auto_lend:
                    await node.submit_wait(SetLeverage(account, 0, auto_lend=0))
            sent: dict[str, int] = {}
            adapter = chains.adapters["sim"]

            async def deposit_stream(first_id: int) -> None:
                # the users' wallets, outside the exchange: their transfers reach the chain
                # in the block they fall into, so they are handed to it a block at a time
                # (one wake-up per block, not per transfer, on the loop this process shares;
                # a wallet knows its destination, so no address is derived per transfer)
                start = trio.current_time()
                per_block = max(1, round(deposits * sim.block_ms / 1000 / seconds))
                for first in range(0, deposits, per_block):
                    await trio.sleep_until(start + first * seconds / deposits)
                    for i in range(first_id + first, first_id + min(first + per_block, deposits)):
                        account = f"user{i % accounts}"
                        chain.transfer("USDC", f"user:{account}", wallets[account], (i % 7 + 1) * USDC)
                        sent[account] = sent.get(account, 0) + (i % 7 + 1) * USDC

            alone, beside, stages, stages_alone, to_credit = [], [], [], [], []
            pooled: dict[str, list[float]] = {"alone": [], "beside": []}  # every order of every round
            for r in range(rounds):
                node.latency.reset()
                latencies = await trade(node, rate, seconds)
                alone.append(quantiles(latencies))
                pooled["alone"] += latencies
                stages_alone.append(node.latency.summary())
                node.latency.reset()
                t0 = time.perf_counter()
                async with trio.open_nursery() as inner:
                    inner.start_soon(deposit_stream, r * deposits)
                    latencies = await trade(node, rate, seconds)
                    beside.append(quantiles(latencies))
                    pooled["beside"] += latencies
                stages.append(node.latency.summary())
                with trio.move_on_after(120):
                    while adapter.credited < (r + 1) * deposits:
                        await trio.sleep(0.05)
                to_credit.append(time.perf_counter() - t0)
            await trio.sleep(1.0)  # re-reports, if any, would be refused and change nothing
            wrong = 0
            for account, amount in sent.items():
                free, held = await node.ask("risk", BalanceOf(account, "USDC"))
                wrong += free + held != amount
            result = {"alone": alone, "beside": beside, "pooled": {k: quantiles(v) for k, v in pooled.items()}, "stages": stages, "stages_alone": stages_alone, "credited": adapter.credited,
                      "wrong_balances": wrong, "seconds_to_credit": to_credit,
                      "provider_errors": adapter.providers.errors, "overloaded_calls": overloaded.calls}
            node.shutdown()
            nursery.cancel_scope.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deposits", type=int, default=10_000, help="deposits per round")
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--rate", type=int, default=400, help="orders a second")
    ap.add_argument("--seconds", type=float, default=8.0, help="each run's length (the deposits spread over it)")
    ap.add_argument("--rounds", type=int, default=3, help="runs alone and beside, alternated")
    ap.add_argument("--no-auto-lend", action="store_true", help="the depositing accounts do not auto-lend")
    args = ap.parse_args()
    setup_logging(logging.WARNING)
    r = trio.run(run, args.deposits, args.accounts, args.rate, args.seconds, args.rounds, not args.no_auto_lend)
    med = statistics.median
    print(f"orders at {args.rate}/s, durable-ack latency ms (p50 / p99), {args.rounds} rounds alternated; "
          f"{args.deposits:,} deposits over {args.seconds:g} s ({args.deposits / args.seconds:,.0f}/s) beside:")
    for i, (a, b) in enumerate(zip(r["alone"], r["beside"])):
        print(f"  round {i + 1}: alone {a[0]:6.2f} / {a[1]:6.2f}   beside the deposits {b[0]:6.2f} / {b[1]:6.2f}   "
              f"credited in {r['seconds_to_credit'][i]:.1f} s")
    alone_p99, beside_p99 = med(a[1] for a in r["alone"]), med(b[1] for b in r["beside"])
    print(f"  median: alone {med(a[0] for a in r['alone']):6.2f} / {alone_p99:6.2f}   beside "
          f"{med(b[0] for b in r['beside']):6.2f} / {beside_p99:6.2f}   p99 ratio beside/alone {beside_p99 / alone_p99:.2f}")
    pa, pb = r["pooled"]["alone"], r["pooled"]["beside"]
    print(f"  every order of the rounds pooled: alone {pa[0]:6.2f} / {pa[1]:6.2f}   beside {pb[0]:6.2f} / {pb[1]:6.2f}   "
          f"p99 ratio beside/alone {pb[1] / pa[1]:.2f}")
    print("the node's stages, us, median of the rounds (p50 / p99; per block, weighted by its txs):")
    for stage in ("apply", "durable"):
        alone_s, beside_s = r["stages_alone"], r["stages"]
        print(f"  {stage:<8}: alone {med(s[stage]['p50'] for s in alone_s):>7,.0f} / "
              f"{med(s[stage]['p99'] for s in alone_s):>7,.0f}   beside {med(s[stage]['p50'] for s in beside_s):>7,.0f} / "
              f"{med(s[stage]['p99'] for s in beside_s):>7,.0f}")
    total = args.deposits * args.rounds
    print(f"deposits credited: {r['credited']:,} of {total:,}; accounts whose balance differs from what was sent: "
          f"{r['wrong_balances']}")
    print(f"overloaded provider: {r['overloaded_calls']:,} calls; failovers after a provider error: {r['provider_errors']:,}")
    if r["credited"] != total or r["wrong_balances"]:
        raise SystemExit("FAILED: not every deposit was credited exactly once")


if __name__ == "__main__":
    main()
