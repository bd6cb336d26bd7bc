"""What a chain adapter's report adds to the block it rides along in.

A node runs in this process on a temporary data directory. Orders go in one at a time
(2 ms apart, so each is a block of its own on an idle pipeline); every other one has a
``depositConfirmed`` report of ``--per`` deposits (signed beforehand) submitted just
before it, which the sequencer adds to the order's block (a background transaction rides
along, ``ledger.sequencer``). The report prints the medians, for blocks with and without
a report, of the order's durable-ack latency and of its block's engine stage (cut to
applied) and journal stage (applied to durable), and the difference: the price every
order sharing a block with deposits pays for them (``benchmarks.deposits`` measures the
same beside a whole chain).

Usage: python -m benchmarks.ridealong [--per 1 4 8] [--blocks 1500]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import trio

from benchmarks.deposits import Direct, bench_config
from satchel.core.messages import ASK, BID, GTC, IOC, LIMIT, REJECT_TAKER, Deposit, PlaceOrder
from satchel.node import Node
from satchel.tools.cli import setup_logging

USDC = 10**6


async def measure(per: list[int], blocks: int) -> dict[int, dict[str, tuple[float, float, float]]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(tmp, bench_config()).run)
            admin = node.admin.api_key
            for i in range(10):
                await node.submit_wait(Deposit(admin, f"mm{i}", "USDC", 10**7 * USDC))
                await node.submit_wait(Deposit(admin, f"mm{i}", "SOL", 10**15))
            first_id = 0
            for n in per:
                # the reports of a ``Direct`` feed (the adapter's, signed beforehand), ``n`` deposits each
                feed = Direct(node, blocks // 2 * n, 500, 1.0, per_report=n)
                reports = iter(feed.signed(first_id))
                first_id += feed.deposits
                rows: dict[str, list[tuple[float, float, float]]] = {"alone": [], "with": []}
                report_block: list = []  # the block each report went out in (its stage times)
                for i in range(blocks):
                    kind = "with" if i % 2 else "alone"
                    if kind == "with":
                        node.submit(next(reports), lambda events: report_block.append(node.block_times))
                    order = PlaceOrder(f"mm{i % 10}", "SOL_USDC", BID if i % 4 < 2 else ASK, LIMIT,
                                       GTC if i % 8 < 4 else IOC, False, 10_000, 100, 0, None, REJECT_TAKER)
                    start = time.perf_counter()
                    await node.submit_wait(order)
                    latency = time.perf_counter() - start
                    cut, applied, durable = node.block_times
                    if kind == "with" and report_block.pop() is not node.block_times:
                        raise RuntimeError("a report did not ride along in the order's block")
                    rows[kind].append((latency * 1e6, (applied - cut) * 1e6, (durable - applied) * 1e6))
                    await trio.sleep(0.002)
                out[n] = {k: tuple(statistics.median(x[j] for x in v) for j in range(3)) for k, v in rows.items()}
            node.shutdown()
            nursery.cancel_scope.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per", type=int, nargs="+", default=[1, 4, 8], help="deposits a report (8 at most: the "
                    "sequencer's background budget a block; a larger report would not ride along)")
    ap.add_argument("--blocks", type=int, default=1500, help="blocks per size, half of them with a report")
    args = ap.parse_args()
    setup_logging(logging.WARNING)
    r = trio.run(measure, args.per, args.blocks)
    print("one order a block, every other block with a report riding along; medians, us:")
    print(f"{'deposits a report':>18} | {'latency alone / with / +':>26} | {'engine stage':>22} | {'journal stage':>22}")
    for n, row in r.items():
        a, w = row["alone"], row["with"]
        cells = [f"{a[j]:6.0f} / {w[j]:6.0f} / {w[j] - a[j]:+5.0f}" for j in range(3)]
        print(f"{n:>18} | {cells[0]:>26} | {cells[1]:>22} | {cells[2]:>22}")


if __name__ == "__main__":
    main()
