"""The perps workload of ``benchmarks.engine``: accounts, opening positions, the oracle's
index path and what the run counts.

1,000 accounts ``acct0``..``acct999`` hold USDC only. ``acct0``..``acct199`` are the
stream's traders (the matching generator's accounts), funded far beyond any risk; the
other 800 are position holders with little collateral: half at 2-5x, a quarter at
10-15x and a quarter at 25-45x of their position's notional. Before the measured stream,
accounts 2k and 2k+1 open a long and a short against each other in perp k % 3 at the
index price, so 1,000 positions exist over the three markets (about 333 each).

The index path of each perp, by how far the stream has gone (fraction f of it): a walk
drifting up +1.5% until f = 0.45 (the 35x+ shorts fall below maintenance), a crash to
-12% by f = 0.55 (every long above ~8x does: those above ~10x with negative equity, which
takes the insurance fund and auto-deleveraging), then a walk at the bottom; a small
mean-reverting noise (a few bps per update) on top. The stream's orders are priced
around their market's current index, so its mix (resting limits near the touch,
cancels, crossing limits, market orders) is kept through the move.
"""

from __future__ import annotations

import random
from collections import Counter

from satchel.core.instructions import INSURANCE_ACCOUNT
from satchel.core.messages import ASK, BID, GTC, LIMIT, REJECT_TAKER, Deposit, Liquidation, MarkPrice, PlaceOrder, SetIndex

# Same order as the spot symbols: the generator's sequence number picks the market (seq % 3).
SYMBOLS = ("SOL_USDC_PERP", "ETH_USDC_PERP", "BTC_USDC_PERP")
# Starting index, price units (ticks of 0.01, 0.01 and 0.1): SOL 150, ETH 3000, BTC 90000.
START = {"SOL_USDC_PERP": 15_000, "ETH_USDC_PERP": 300_000, "BTC_USDC_PERP": 900_000}
# quote units per (price unit x quantity unit): 10 ** (6 - price decimals - quantity decimals)
NOTIONAL_MULT = {"SOL_USDC_PERP": 100, "ETH_USDC_PERP": 1, "BTC_USDC_PERP": 1}
USDC = 10**6
ACCOUNTS = 1000
TRADERS = 200  # acct0..acct199: the generator's accounts
TRADER_DEPOSIT = 10**9 * USDC
INSURANCE_SEED = 2_000 * USDC  # about one closed-out account's deficit: tier 4, then auto-deleveraging

DRIFT_END, CRASH_END = 0.45, 0.55
UP, DOWN = 0.005, -0.10
NOISE_BPS = 4


def level(f: float) -> float:
    """The index path's shape: the index / its start at fraction ``f`` of the stream."""
    if f < DRIFT_END:
        return 1 + UP * f / DRIFT_END
    if f < CRASH_END:
        return 1 + UP + (DOWN - UP) * (f - DRIFT_END) / (CRASH_END - DRIFT_END)
    return 1 + DOWN


class IndexPath:
    """The next index price of each perp, as the stream goes on."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.noise = {s: 0.0 for s in SYMBOLS}
        self.index = dict(START)
        self.updates = 0

    def next(self, f: float) -> tuple[str, int]:
        symbol = SYMBOLS[self.updates % len(SYMBOLS)]
        self.updates += 1
        self.noise[symbol] = 0.8 * self.noise[symbol] + self.rng.gauss(0, NOISE_BPS / 10_000)
        price = max(1, round(START[symbol] * (level(f) + self.noise[symbol])))
        self.index[symbol] = price
        return symbol, price


def setup(admin: str, seed: int = 3) -> tuple[list, list]:
    """(deposits and the first index prices, the orders opening 1,000 positions)."""
    rng = random.Random(seed)
    funding: list = [Deposit(admin, INSURANCE_ACCOUNT, "USDC", INSURANCE_SEED)]
    opening: list = []
    for k in range(ACCOUNTS // 2):
        symbol = SYMBOLS[k % 3]
        price = START[symbol]
        notional = (5_000 if 2 * k < TRADERS else rng.randint(1_000, 5_000)) * USDC
        qty = notional // (price * NOTIONAL_MULT[symbol])
        for account, side in ((f"acct{2 * k}", BID), (f"acct{2 * k + 1}", ASK)):
            if 2 * k < TRADERS:
                deposit = TRADER_DEPOSIT
            else:
                r = rng.random()
                leverage = rng.randint(2, 5) if r < 0.5 else rng.randint(10, 15) if r < 0.75 else rng.randint(25, 45)
                deposit = notional // leverage + notional * 7 // 10_000  # and the fees
            funding.append(Deposit(admin, account, "USDC", deposit))
            opening.append(PlaceOrder(account, symbol, side, LIMIT, GTC, False, price, qty, 0, None, REJECT_TAKER))
    funding.extend(SetIndex(admin, s, START[s]) for s in SYMBOLS)
    return funding, opening


class Counts:
    """A node subscriber: blocks of the measured stream, the mark updates and liquidation
    steps they carried."""

    def __init__(self) -> None:
        self.first_seq = 1 << 62  # blocks before this sequence number are not counted
        self.blocks: list[tuple[int, int]] = []  # (first_seq, tx_count)
        self.marks: dict[str, int] = {}  # symbol -> the last mark published
        self.mark_events = 0  # MarkPrice events...
        self.mark_moves = 0  # ...that carried a new mark (the others: the last price moved)
        self.marked_blocks = 0  # blocks in which some mark moved
        self.liquidations: Counter = Counter()  # tier -> steps
        self.liquidated: set[str] = set()

    def publish(self, header, events: list) -> None:
        if header.first_seq < self.first_seq:
            for ev in events:
                if ev.__class__ is MarkPrice:
                    self.marks[ev.symbol] = ev.mark
            return
        self.blocks.append((header.first_seq, header.tx_count))
        marked = False
        for ev in events:
            cls = ev.__class__
            if cls is MarkPrice:
                self.mark_events += 1
                if self.marks.get(ev.symbol) != ev.mark:
                    self.marks[ev.symbol] = ev.mark
                    self.mark_moves += 1
                    marked = True
            elif cls is Liquidation:
                self.liquidations[ev.tier] += 1
                self.liquidated.add(ev.account)
        self.marked_blocks += marked
