"""Sequencer -> journal (fsync) -> all core actors, no network: transactions/s.

A node runs in this process on a temporary data directory (real segment files, real
fsync per group commit). Each transaction carries a signed-request record of realistic
size, as a gateway would submit it. Transactions -- the matching benchmark's mix spread over all
three markets -- are submitted as fast as the sequencer takes them; the clock stops
when the last one's block is durable and its callback has run.
Usage: python -m benchmarks.engine [--txs N] [--runs R]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import msgspec
import trio

from benchmarks._stats import median_of, submit_all
from benchmarks.matching import generate
from satchel.tools.cli import setup_logging
from satchel.core.messages import Entry, Auth, CancelOrder, Deposit, PlaceOrder
from satchel.node import Node

SYMBOLS = ("SOL_USDC", "ETH_USDC", "BTC_USDC")
PRICE_SCALE = {"SOL_USDC": 1, "ETH_USDC": 20, "BTC_USDC": 60}


def signed_like_clients(txs: list) -> list:
    """Attach an Auth of realistic size (five signed parameters, 64 B signature) to each.

    The engine does not verify signatures (the gateway does, before sequencing), but it
    journals them and runs the window and replay guard, so the benchmark carries them.
    """
    now = int(time.time() * 1000)
    out = []
    for i, tx in enumerate(txs):
        params = (("orderType", "Limit"), ("price", "150.25"), ("quantity", "1.5"), ("side", "Bid"), ("symbol", tx.symbol))
        sig = i.to_bytes(8, "big") * 8
        out.append(msgspec.structs.replace(tx, auth=Auth(params, False, sig, now, 60_000)))
    return out


def workload(n: int) -> list:
    txs = []
    for batch in generate(n, seed=11):
        for item in batch:
            if isinstance(item, Entry):
                seq, tx = item.seq, item.tx
            else:
                seq, tx = item
            sym = SYMBOLS[seq % 3]
            if isinstance(tx, PlaceOrder):
                tx = PlaceOrder(tx.account, sym, tx.side, tx.order_type, tx.tif, tx.post_only, tx.price * PRICE_SCALE[sym],
                                tx.quantity, tx.quote_quantity, tx.client_id, tx.stp)
            else:
                tx = CancelOrder(tx.account, sym, tx.order_id, None)
            txs.append(tx)
    return txs


async def run_once(txs: list) -> float:
    txs = signed_like_clients(txs)
    with tempfile.TemporaryDirectory() as d:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(d).run)
            admin = node.admin.api_key
            for i in range(200):
                for asset in ("USDC", "SOL", "ETH", "BTC"):
                    node.submit(Deposit(admin, f"acct{i}", asset, 10**16))
            await node.submit_wait(Deposit(admin, "x", "USDC", 1))
            t = time.perf_counter()
            await submit_all(node, txs)
            dt = time.perf_counter() - t
            node.shutdown()
    return len(txs) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--txs", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    setup_logging(level=30)
    txs = workload(args.txs)
    print(f"engine: {len(txs):,} transactions over {len(SYMBOLS)} markets, journal fsync per group commit")
    med = median_of(args.runs, lambda: trio.run(run_once, txs), "engine", "tx/s")
    print(f"target 100,000 tx/s: {med / 100_000:.2f}x")


if __name__ == "__main__":
    main()
