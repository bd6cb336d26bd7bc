"""Book logic alone: orders/s on a generated mixed stream, with full order state and events.

The stream (fixed seed) is ~55% resting limits near the touch, 25% cancels of live
orders, 15% crossing limits and 5% market orders, fed to one market's book actor state
in block-sized batches of 1,000 exactly as the engine's matching phase does, every
event built. Usage: python -m benchmarks.matching [--orders N] [--runs R]
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks._stats import median_of
from satchel import config
from satchel.actors.book import Book
from satchel.runtime import tune_gc
from satchel.core.messages import Entry, Match, ASK, BID, GTC, IOC, LIMIT, MARKET, REJECT_TAKER, CancelOrder, PlaceOrder


def generate(n: int, seed: int = 7) -> list[list]:
    rng = random.Random(seed)
    accounts = [f"acct{i}" for i in range(200)]
    live: list[int] = []
    batches, batch = [], []
    mid = 15_000
    for seq in range(1, n + 1):
        r = rng.random()
        acct = rng.choice(accounts)
        if r < 0.25 and live:
            oid = live.pop(rng.randrange(len(live)))
            batch.append((seq, CancelOrder(acct, "SOL_USDC", oid, None)))
        else:
            side = BID if rng.random() < 0.5 else ASK
            qty = rng.randint(1, 50) * 10
            if r < 0.80:
                price = mid - rng.randint(1, 40) if side == BID else mid + rng.randint(1, 40)
                tx = PlaceOrder(acct, "SOL_USDC", side, LIMIT, GTC, False, price, qty, 0, None, REJECT_TAKER)
                live.append(seq)
            elif r < 0.95:
                price = mid + rng.randint(0, 10) if side == BID else mid - rng.randint(0, 10)
                tx = PlaceOrder(acct, "SOL_USDC", side, LIMIT, IOC, False, price, qty, 0, None, REJECT_TAKER)
            else:
                tx = PlaceOrder(acct, "SOL_USDC", side, MARKET, IOC, False, 0, qty, 0, None, REJECT_TAKER)
            batch.append(Entry(seq, tx, qty, None))
        if len(batch) == 1000:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def run_once(batches: list[list], spec) -> tuple[float, int]:
    book = Book(spec)
    events = 0
    t = time.perf_counter()
    for batch in batches:
        events += len(book.handle(Match(batch, 0)).events)
    dt = time.perf_counter() - t
    return dt, events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    spec = next(s for s in config.load().market_specs() if s.symbol == "SOL_USDC")
    spec = type(spec)(**{**{f: getattr(spec, f) for f in spec.__struct_fields__}, "price_band_bps": 0})
    tune_gc()  # as the node runs
    batches = generate(args.orders)
    n = sum(len(b) for b in batches)
    print(f"matching: {n:,} commands in blocks of 1,000 (limits, cancels, crossing limits, market orders)")
    ev = []

    def once() -> float:
        dt, events = run_once(batches, spec)
        ev.append(events)
        return n / dt

    med = median_of(args.runs, once, "matching", "orders/s")
    print(f"events per run: {ev[0]:,}; target 500,000 orders/s: {med / 500_000:.2f}x")


if __name__ == "__main__":
    main()
