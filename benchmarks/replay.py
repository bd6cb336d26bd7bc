"""Validator replay rate, with and without signature checks, and restart time.

1. A node in this process journals ``--txs`` orders and cancels from 200 accounts,
   each signed with its account's Ed25519 key, as a gateway would pass them on.
2. ``Validator.check_journal`` replays that journal: re-verifying every signature in
   two worker processes (then in threads, for comparison), and without verification.
3. Restart: a node with a snapshot followed by a ``--tail``-transaction journal tail
   is started; the time until it is ready for submissions is measured.
Usage: python -m benchmarks.replay [--txs N] [--tail N] [--runs R]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import trio

from benchmarks._stats import submit_all
from benchmarks.engine import signed_like_clients, workload
from satchel import config
from satchel.core.amounts import format_units
from satchel.tools.cli import setup_logging
from satchel.core.messages import TIF_NAMES, CancelOrder, Deposit, PlaceOrder
from satchel.node import Node
from satchel.signing import Keypair, auth_for
from satchel.verify.validator import Validator

SIDES = ("Bid", "Ask")


def signed_workload(n: int, keys: dict[str, Keypair], base_seq: int) -> list:
    specs = {s.symbol: s for s in config.load().market_specs()}
    out = []
    for tx in workload(n):
        key = keys[tx.account]
        if isinstance(tx, PlaceOrder):
            spec = specs[tx.symbol]
            params = {"symbol": tx.symbol, "side": SIDES[tx.side], "orderType": "Limit" if tx.price else "Market",
                      "quantity": format_units(tx.quantity, spec.quantity_decimals), "timeInForce": TIF_NAMES[tx.tif]}
            if tx.price:
                params["price"] = format_units(tx.price, spec.price_decimals)
            instruction = "orderExecute"
        else:
            # the generator numbers orders from 1; on the node they start at base_seq
            tx = CancelOrder(tx.account, tx.symbol, tx.order_id + base_seq - 1, None)
            params = {"symbol": tx.symbol, "orderId": tx.order_id}
            instruction = "orderCancel"
        out.append(msgspec.structs.replace(tx, auth=auth_for(key, instruction, params)))
    return out


async def build_journal(data: Path, n: int) -> int:
    keys = {f"acct{i}": Keypair.generate() for i in range(200)}
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(data).run)
        admin = node.admin.api_key
        # accounts are named by their keys in the journal, so rename them
        names = {name: key.api_key for name, key in keys.items()}
        for name in keys:
            for asset in ("USDC", "SOL", "ETH", "BTC"):
                node.submit(Deposit(admin, names[name], asset, 10**16))
        await node.submit_wait(Deposit(admin, "x", "USDC", 1))
        base = node.sequencer.next_seq
        txs = signed_workload(n, keys, base)
        txs = [msgspec.structs.replace(tx, account=names[tx.account]) for tx in txs]
        await submit_all(node, txs)
        node.shutdown()
    return len(txs)


async def validate(journal: Path, processes: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        v = Validator(d, verify_processes=processes)
        t = time.perf_counter()
        await v.check_journal(journal)
        return time.perf_counter() - t, v.verified_signatures


async def restart_time(tail: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(data).run)
            for i in range(200):
                for asset in ("USDC", "SOL", "ETH", "BTC"):
                    node.submit(Deposit(node.admin.api_key, f"acct{i}", asset, 10**16))
            await node.submit_wait(Deposit(node.admin.api_key, "x", "USDC", 1))
            node.shutdown()  # writes the snapshot the restart will start from
        snaps_before = set((data / "snapshots").glob("*.snap"))
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(data).run)
            await submit_all(node, signed_like_clients(workload(tail)))
            node.shutdown()
        for snap in set((data / "snapshots").glob("*.snap")) - snaps_before:
            snap.unlink()  # as after a crash: only the old snapshot, then the tail
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(data).run)
            elapsed = time.perf_counter() - t
            replayed = node.chain.txs
            node.shutdown()
        return elapsed, replayed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--txs", type=int, default=200_000)
    ap.add_argument("--tail", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    setup_logging(level=30)
    work = Path(tempfile.mkdtemp())
    try:
        print(f"replay: journaling {args.txs:,} signed transactions...", flush=True)
        n = trio.run(build_journal, work / "node", args.txs)
        for label, processes in (("with signatures, 2 worker processes", 2), ("with signatures, 2 threads", 0), ("without signatures", -1)):
            rates = []
            for r in range(args.runs):
                secs, sigs = trio.run(validate, work / "node" / "journal", processes)
                rates.append(n / secs)
                print(f"  run {r + 1} {label}: {n / secs:,.0f} tx/s ({sigs:,} signatures verified)", flush=True)
            print(f"validator replay {label}: median {statistics.median(rates):,.0f} tx/s")
        print(f"restart: building a snapshot + {args.tail:,}-transaction journal tail...", flush=True)
        secs, replayed = trio.run(restart_time, args.tail)
        print(f"restart from snapshot + {args.tail:,}-tx tail: {secs:.1f} s until ready (target <= 30 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
