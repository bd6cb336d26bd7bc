"""10,000 deposits through the simulated chain with an overloaded provider, beside trading.

A node runs in this process on a temporary data directory, with the embedded simulated
chain (blocks every 50 ms, 3 confirmations) and its adapter. Its first provider is
overloaded (it answers 429 beyond 40 calls/s and takes 20 ms per call), the second is
healthy: the pool fails over. Two runs in one process: trading alone, then trading while
``--deposits`` transfers reach accounts' deposit addresses. Trading is a steady stream
of signed-size orders (resting bids and asks crossing, ``--rate`` a second) whose
durable-ack latency is measured; the report gives its p50 / p99 alone (before and after,
to show the machine's drift) and beside the deposits, and checks that every deposit was credited exactly once (the balances equal what
was sent, and the adapter's count of credits equals the transfers).

Usage: python -m benchmarks.deposits [--deposits 10000] [--accounts 500] [--rate 400] [--seconds 8]
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
from satchel.core.messages import ASK, BID, GTC, IOC, LIMIT, REJECT_TAKER, BalanceOf, Deposit, PlaceOrder
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


async def run(deposits: int, accounts: int, rate: int, seconds: float) -> dict:
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
            for i in range(accounts):  # users asked for their addresses before (each is fsynced once)
                node.addresses.issue("sim", f"user{i}")
            before = await trade(node, rate, seconds)
            sent = {}

            async def deposit_stream() -> None:
                # the users' wallets, outside the exchange: their transfers reach the chain
                # in the block they fall into, so they are handed to it a block at a time
                # (one wake-up per block, not per transfer, on the loop this process shares)
                start = trio.current_time()
                per_block = max(1, round(deposits * sim.block_ms / 1000 / seconds))
                for first in range(0, deposits, per_block):
                    await trio.sleep_until(start + first * seconds / deposits)
                    for i in range(first, min(first + per_block, deposits)):
                        account = f"user{i % accounts}"
                        chains.deposit("sim", account, "USDC", (i % 7 + 1) * USDC)
                        sent[account] = sent.get(account, 0) + (i % 7 + 1) * USDC

            t0 = time.perf_counter()
            node.latency.reset()
            async with trio.open_nursery() as inner:
                inner.start_soon(deposit_stream)
                beside = await trade(node, rate, seconds)
            stages = node.latency.summary()
            adapter = chains.adapters["sim"]
            with trio.move_on_after(120):
                while adapter.credited < deposits:
                    await trio.sleep(0.05)
            credited_s = time.perf_counter() - t0
            after = await trade(node, rate, seconds)  # alone again: the machine's drift, if any
            await trio.sleep(1.0)  # re-reports, if any, would be refused and change nothing
            wrong = 0
            for account, amount in sent.items():
                free, held = await node.ask("risk", BalanceOf(account, "USDC"))
                wrong += free + held != amount
            result = {"before": quantiles(before), "beside": quantiles(beside), "after": quantiles(after), "credited": adapter.credited,
                      "wrong_balances": wrong, "seconds_to_credit_all": credited_s,
                      "provider_errors": chains.adapters["sim"].providers.errors, "overloaded_calls": overloaded.calls, "stages": stages}
            node.shutdown()
            nursery.cancel_scope.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deposits", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--rate", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    setup_logging(logging.WARNING)
    r = trio.run(run, args.deposits, args.accounts, args.rate, args.seconds)
    print(f"orders at {args.rate}/s, durable-ack latency ms (p50 / p99):")
    alone_p99 = (r["before"][1] + r["after"][1]) / 2
    print(f"  trading alone, before   : {r['before'][0]:7.2f} / {r['before'][1]:7.2f}")
    print(f"  beside {args.deposits:,} deposits: {r['beside'][0]:7.2f} / {r['beside'][1]:7.2f}  "
          f"(p99 / mean p99 alone = {r['beside'][1] / alone_p99:.2f})")
    print(f"  trading alone, after    : {r['after'][0]:7.2f} / {r['after'][1]:7.2f}")
    print("the node's stages beside the deposits, us (p50 / p99 / max; apply and durable per block, weighted by its txs):")
    for stage, s in r["stages"].items():
        if s["count"]:
            print(f"  {stage:<9}: {s['p50']:>8,} / {s['p99']:>8,} / {s['max']:>8,}")
    print(f"deposits credited: {r['credited']:,} of {args.deposits:,} in {r['seconds_to_credit_all']:.1f} s; "
          f"accounts whose balance differs from what was sent: {r['wrong_balances']}")
    print(f"overloaded provider: {r['overloaded_calls']:,} calls; failovers after a provider error: {r['provider_errors']:,}")
    if r["credited"] != args.deposits or r["wrong_balances"]:
        raise SystemExit("FAILED: not every deposit was credited exactly once")


if __name__ == "__main__":
    main()
