"""Sequencer -> journal (fsync) -> all core actors, no network: transactions/s, spot and perps.

A node runs in this process on a temporary data directory (real segment files, real
fsync per group commit). Each transaction carries a signed-request record of realistic
size, as a gateway would submit it. Transactions are submitted as fast as the sequencer
takes them; the clock stops when the last one's block is durable and its callback has run.

* spot -- the matching benchmark's mix (resting limits near the touch, cancels, crossing
  limits, market orders) spread over the three spot markets, 200 accounts holding every
  asset. A cancel names the order it cancels: its owner, its market, its order id.
* perps -- the same mix on the three perps, priced around each market's index price,
  after 1,000 accounts opened 1,000 positions (``perps_workload``: some at high leverage),
  with an oracle ``SetIndex`` every ``--index-every`` transactions -- by default the mean
  block size measured under load in a pilot run, so about one mark update per block. The
  index walks up, crashes and walks at the bottom: accounts are liquidated during the run.

With both (the default) the runs alternate, spot then perps, so that both see the same
machine; the ratio perps / spot is reported against the 60% target.

* rewards -- the spot stream without and with a points season (``rewards_workload``), and
  one block's accrual in the rewards actor alone for 10 to 10,000 fills.
* lending -- the engine alone, driven block by block (``lending_workload``): the spot stream
  with the traders' auto-lend off, on, and beside ``--lenders`` accounts lending and
  borrowing; and the cost of a block's interest accrual at 100, 1,000 and 10,000 lending
  accounts, which must not grow with them (indices, not per-account loops).

Usage: python -m benchmarks.engine [--txs N] [--runs R] [--workload spot|perps|both|lending|rewards] [--index-every N]
       [--lenders N] [--accrual-blocks N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import trio

from benchmarks import perps_workload as perps
from benchmarks._stats import submit_all
from benchmarks.matching import generate
from satchel import config
from satchel.tools.cli import setup_logging
from satchel.core.messages import Entry, Auth, CancelOrder, Deposit, PlaceOrder, SetIndex, StateOf
from satchel.node import Node

SYMBOLS = ("SOL_USDC", "ETH_USDC", "BTC_USDC")
PRICE_SCALE = {"SOL_USDC": 1, "ETH_USDC": 20, "BTC_USDC": 60}
PERP_SCALE = {"SOL_USDC_PERP": 1, "ETH_USDC_PERP": 20, "BTC_USDC_PERP": 60}
GEN_MID = 15_000  # the matching generator's mid price
GEN_SEED = 11
PERPS_TARGET = 0.60  # perps tx/s >= 60% of spot


def signed_like_clients(txs: list, first_seq: int = 1, admin: str | None = None) -> list:
    """Attach an Auth of realistic size (five signed parameters, 64 B signature) to each.

    The engine does not verify signatures (the gateway does, before sequencing), but it
    journals them and runs the window and replay guard, so the benchmark carries them.
    A cancel's order id is the 1-based position of its order in ``txs``: it is made the
    order's id on the node, whose first transaction gets sequence number ``first_seq``.
    ``admin`` is put into ``SetIndex`` transactions.
    """
    now = int(time.time() * 1000)
    shift = first_seq - 1
    out = []
    replace = msgspec.structs.replace
    for i, tx in enumerate(txs):
        params = (("orderType", "Limit"), ("price", "150.25"), ("quantity", "1.5"), ("side", "Bid"), ("symbol", tx.symbol))
        auth = Auth(params, False, i.to_bytes(8, "big") * 8, now, 60_000)
        cls = tx.__class__
        if cls is CancelOrder and shift:
            out.append(replace(tx, order_id=tx.order_id + shift, auth=auth))
        elif cls is SetIndex and admin is not None:
            out.append(replace(tx, admin=admin, auth=auth))
        else:
            out.append(replace(tx, auth=auth))
    return out


def trading_stream(n: int, symbols: tuple, scale: dict, mid: Callable[[str], int],
                   between: Callable[[list, float], None] | None = None) -> list:
    """``generate(n)``'s mix: its sequence number picks the market (``symbols[seq % 3]``), its
    price's offset from the generator's mid, x ``scale``, is taken around ``mid(symbol)``.
    A cancel names its order's owner and market and, as order id, the order's 1-based
    position in the list. ``between(txs, f)``, called before each generated transaction
    (``f``: the share of them done), may append others."""
    txs: list = []
    placed: dict[int, tuple[int, str, str]] = {}  # generator seq -> (position, account, symbol)
    for batch in generate(n, seed=GEN_SEED):
        for item in batch:
            seq, tx = (item.seq, item.tx) if isinstance(item, Entry) else item
            if between is not None:
                between(txs, (seq - 1) / n)
            if isinstance(tx, PlaceOrder):
                sym = symbols[seq % 3]
                price = mid(sym) + (tx.price - GEN_MID) * scale[sym] if tx.price else 0
                placed[seq] = (len(txs) + 1, tx.account, sym)
                txs.append(PlaceOrder(tx.account, sym, tx.side, tx.order_type, tx.tif, tx.post_only, price,
                                      tx.quantity, tx.quote_quantity, tx.client_id, tx.stp))
            else:
                position, account, sym = placed[tx.order_id]
                txs.append(CancelOrder(account, sym, position, None))
    return txs


def workload(n: int) -> list:
    """The spot stream (cancel ids relative to the stream: see ``signed_like_clients``)."""
    return trading_stream(n, SYMBOLS, PRICE_SCALE, lambda sym: GEN_MID * PRICE_SCALE[sym])


def perps_stream(n: int, every: int) -> tuple[list, int]:
    """The perps stream with a ``SetIndex`` (admin filled in at run time) as every
    ``every``-th transaction; and how many there are."""
    path = perps.IndexPath()

    def between(txs: list, f: float) -> None:
        if len(txs) % every == every - 1:
            symbol, price = path.next(f)
            txs.append(SetIndex("", symbol, price))

    txs = trading_stream(n, perps.SYMBOLS, PERP_SCALE, lambda sym: path.index[sym], between)
    return txs, path.updates


@dataclass
class Result:
    rate: float  # tx/s
    cpu_rate: float  # tx per CPU second of this process (time other work takes the core away is not counted)
    txs: int
    blocks: int
    counts: perps.Counts | None = None
    positions: tuple[int, int] = (0, 0)  # open (after the opening orders, at the end)
    index_txs: int = 0
    every: int = 0  # a SetIndex at every position p (0-based) of the stream with p % every == every - 1


async def _timed(node: Node, txs: list, counts: perps.Counts) -> tuple[float, float, int]:
    counts.first_seq = node.sequencer.next_seq
    if counts not in node.subscribers:
        node.subscribers.append(counts)
    h = node.chain.height
    t, c = time.perf_counter(), time.process_time()
    await submit_all(node, txs)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    return dt, dc, node.chain.height - h


async def run_spot(stream: list) -> Result:
    with tempfile.TemporaryDirectory() as d:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(d).run)
            admin = node.admin.api_key
            for i in range(200):
                for asset in ("USDC", "SOL", "ETH", "BTC"):
                    node.submit(Deposit(admin, f"acct{i}", asset, 10**16))
            await node.submit_wait(Deposit(admin, "x", "USDC", 1))
            txs = signed_like_clients(stream, node.sequencer.next_seq)
            counts = perps.Counts()
            dt, dc, blocks = await _timed(node, txs, counts)
            node.shutdown()
    return Result(len(txs) / dt, len(txs) / dc, len(txs), blocks, counts)


async def _open_positions(node: Node) -> int:
    state = await node.ask("risk", StateOf())
    return sum(1 for p in state.margin.positions if p.size)


async def run_perps(stream: list, index_txs: int, every: int) -> Result:
    with tempfile.TemporaryDirectory() as d:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(d).run)
            admin = node.admin.api_key
            counts = perps.Counts()
            node.subscribers.append(counts)  # from here: it learns the marks before the stream
            funding, opening = perps.setup(admin)
            for tx in funding[:-1]:
                node.submit(tx)
            await node.submit_wait(funding[-1])  # the index prices are marks after this block
            for tx in opening[:-1]:
                node.submit(tx)
            await node.submit_wait(opening[-1])
            opened = await _open_positions(node)
            txs = signed_like_clients(stream, node.sequencer.next_seq, admin)
            dt, dc, blocks = await _timed(node, txs, counts)
            at_end = await _open_positions(node)
            node.shutdown()
    return Result(len(txs) / dt, len(txs) / dc, len(txs), blocks, counts, (opened, at_end), index_txs, every)


def measure_block_size(n: int) -> float:
    """Mean size of the full blocks the node cuts under the perps load (a pilot run)."""
    every = config.load().node.block_max_txs
    stream, updates = perps_stream(n, every)
    r = trio.run(run_perps, stream, updates, every)
    sizes = [c for _, c in r.counts.blocks[1:-1]] or [c for _, c in r.counts.blocks]  # not the partial first and last
    return statistics.mean(sizes)


def index_per_block(r: Result) -> Counter:
    """How many blocks of the stream carried 0, 1, 2... SetIndex transactions."""
    out: Counter = Counter()
    for first, count in r.counts.blocks:
        lo = first - r.counts.first_seq  # stream positions lo .. lo + count - 1
        out[(lo + count) // r.every - lo // r.every if r.every else 0] += 1
    return out


def describe_perps(r: Result) -> str:
    c = r.counts
    per_block = " ".join(f"{k}:{v}" for k, v in sorted(index_per_block(r).items()))
    tiers = " ".join(f"t{t}:{n}" for t, n in sorted(c.liquidations.items())) or "-"
    return (f"{r.blocks} blocks (mean {r.txs / r.blocks:,.0f} txs), {r.index_txs / r.blocks:.2f} SetIndex/block "
            f"(blocks by SetIndex count {per_block}), a mark moved in {c.marked_blocks}/{len(c.blocks)} blocks "
            f"({c.mark_moves} moves in {c.mark_events} MarkPrice); "
            f"liquidation steps {sum(c.liquidations.values())} ({tiers}) over {len(c.liquidated)} accounts; "
            f"positions open {r.positions[0]} -> {r.positions[1]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--txs", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workload", choices=("spot", "perps", "both", "lending", "rewards"), default="both")
    ap.add_argument("--index-every", type=int, default=0,
                    help="a SetIndex every N transactions of the perps stream (0: the measured mean block size)")
    ap.add_argument("--lenders", type=int, default=10_000, help="lending accounts beside the spot stream (--workload lending)")
    ap.add_argument("--accrual-blocks", type=int, default=300,
                    help="blocks timed per account count for the accrual cost (--workload lending)")
    args = ap.parse_args()
    setup_logging(level=30)
    if args.workload == "rewards":
        from benchmarks import rewards_workload

        rewards_workload.main(workload(args.txs), signed_like_clients, args.runs)
        return
    if args.workload == "lending":
        from benchmarks import lending_workload  # it builds on this module's stream and signatures

        lending_workload.main(workload(args.txs), signed_like_clients, args.runs, args.lenders, args.accrual_blocks)
        return
    do_spot = args.workload in ("spot", "both")
    do_perps = args.workload in ("perps", "both")
    spot_txs = perps_txs = None
    if do_spot:
        spot_txs = workload(args.txs)
        print(f"spot: {len(spot_txs):,} transactions over {len(SYMBOLS)} markets, journal fsync per group commit")
    if do_perps:
        every = args.index_every
        if every <= 0:
            size = measure_block_size(min(args.txs, 40_000))
            every = max(1, round(size))
            print(f"perps pilot: mean block under load {size:,.0f} txs -> a SetIndex every {every:,} transactions")
        perps_txs, updates = perps_stream(args.txs, every)
        print(f"perps: {len(perps_txs):,} transactions over {len(perps.SYMBOLS)} perps ({updates} SetIndex), "
              f"{perps.ACCOUNTS:,} accounts with a position each")
    spot: list[Result] = []
    perp: list[Result] = []
    for i in range(args.runs):
        if do_spot:
            r = trio.run(run_spot, spot_txs)
            spot.append(r)
            print(f"  run {i + 1} spot : {r.rate:,.0f} tx/s ({r.cpu_rate:,.0f} per CPU-s); {r.blocks} blocks, "
                  f"mean {r.txs / r.blocks:,.0f} txs", flush=True)
        if do_perps:
            r = trio.run(run_perps, perps_txs, updates, every)
            perp.append(r)
            ratio = f" = {r.rate / spot[-1].rate:.0%} of spot" if do_spot else ""
            print(f"  run {i + 1} perps: {r.rate:,.0f} tx/s{ratio} ({r.cpu_rate:,.0f} per CPU-s); {describe_perps(r)}",
                  flush=True)

    def med(results: list[Result]) -> tuple[float, float]:
        return statistics.median(r.rate for r in results), statistics.median(r.cpu_rate for r in results)

    if do_spot:
        s_rate, s_cpu = med(spot)
        print(f"engine spot : median {s_rate:,.0f} tx/s ({s_cpu:,.0f} per CPU-s) over {args.runs} runs; "
              f"target 100,000 tx/s: {s_rate / 100_000:.2f}x")
    if do_perps:
        p_rate, p_cpu = med(perp)
        steps = [sum(r.counts.liquidations.values()) for r in perp]
        accounts = [len(r.counts.liquidated) for r in perp]
        print(f"engine perps: median {p_rate:,.0f} tx/s ({p_cpu:,.0f} per CPU-s) over {args.runs} runs; "
              f"liquidation steps per run {steps} over {accounts} accounts; positions open at the end "
              f"{[r.positions[1] for r in perp]}")
    if do_spot and do_perps:
        ratio = p_rate / s_rate
        verdict = "meets" if ratio >= PERPS_TARGET else "below"
        print(f"perps / spot: {ratio:.0%} of spot's median tx/s ({p_cpu / s_cpu:.0%} per CPU-s): {verdict} the "
              f"{PERPS_TARGET:.0%} target")


if __name__ == "__main__":
    main()
