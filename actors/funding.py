"""The funding-rate calculator: index and mark prices, premium samples, hourly funding.

One record per perpetual market. Inputs, all sequenced, once per block in the periodic
phase (``Mark``): the block's oracle index prices (the last one per market wins; its time
is the block's), the block's time and the tops of the perp books. Integers only (prices in
price units, fractions in PPB); every division below is Python's floor division unless
it says otherwise.

Mark price. At each sample (every ``sample_interval`` of sequenced time) the book's
reference price is taken -- the mid of best bid and best ask; with one side missing the
median of (bid, ask, last) that exist; with an empty book no sample of the basis -- and
the basis ``b`` (EWMA of reference - index, 60 samples, alpha = 2/61) moves toward it:
``b += (x - b) * 2 // 61``, once per sample slot crossed (at most 240 at once). The mark is
``index + clamp(b, -index * mark_band, +index * mark_band)``; with no index yet it is the
reference price (or the last trade). It is recomputed at every sample and whenever the
index changes.

Funding. Each sample adds ``premium = (mark - index) * PPB / index`` (rounded toward
zero) to the interval's sum, once per slot crossed. When a block's time reaches the
interval end, with ``P`` the mean premium (toward zero) and ``I`` the interest term
0.03% x interval hours / 24:

    rate = clamp((P + clamp(I - P, -0.05%, +0.05%)) / 8, funding_floor, funding_cap)

(the division toward zero), and the market's cumulative funding index grows by
``rate * mark * notional_mult`` (quote units x PPB per quantity unit). The margin
engine charges each position ``size * delta / PPB``: a payer's share rounded up, a
receiver's rounded down, the difference to the insurance fund -- so funding is
zero-sum between longs and shorts except for a remainder the fund keeps (never negative).
A positive rate: longs pay shorts. An interval with no samples pays the interest term alone.
APR (rate x 8760 for hourly funding) is shown to users, never kept.
"""

from __future__ import annotations

from satchel.core.actor import dispatcher
from satchel.core.margin import div0
from satchel.core.messages import (
    PPB,
    FundingPaid,
    ListMarginSpec,
    ListMarketSpec,
    Mark,
    Marked,
    MarketSpec,
    MarkPrice,
    MarkView,
    Restore,
    StateOf,
)
from satchel.core.state import FundingMarketState, FundingState

_EWMA_SPAN = 61  # alpha = 2 / 61: a one-minute EWMA at one sample per second
_MAX_STEPS = 240
_INTEREST_PER_DAY = 300_000  # 0.03% in PPB
_PREMIUM_BOUND = 500_000  # 0.05%
_DAY_US = 86_400_000_000


def funding_rate(premium_sum: int, samples: int, interval_us: int, floor: int, cap: int) -> int:
    """The funding rate (PPB per interval) for an interval's premium samples."""
    mean = div0(premium_sum, samples) if samples else 0
    interest = _INTEREST_PER_DAY * interval_us // _DAY_US
    raw = div0(mean + max(-_PREMIUM_BOUND, min(_PREMIUM_BOUND, interest - mean)), 8)
    return max(floor, min(cap, raw))


class _Perp:
    __slots__ = ("spec", "index", "index_time", "mark", "basis", "top", "premium_sum", "samples", "cumulative",
                 "last_sample", "interval_end", "last_rate", "changed")

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.index = 0
        self.index_time = 0
        self.mark = 0
        self.basis = 0
        self.top = (0, 0, 0)
        self.premium_sum = 0
        self.samples = 0
        self.cumulative = 0
        self.last_sample = 0  # slot number; 0 = not started
        self.interval_end = 0
        self.last_rate = 0
        self.changed = False

    def reference(self) -> int:
        """The book's price for the basis: mid, else the median of what exists, else 0."""
        bid, ask, last = self.top
        if bid and ask:
            return (bid + ask) // 2
        known = sorted(p for p in (bid, ask, last) if p)
        return known[len(known) // 2] if known else 0

    def reprice(self) -> None:
        if self.index:
            bound = self.index * self.spec.perp.mark_band // PPB
            self.mark = self.index + max(-bound, min(bound, self.basis))
        else:
            self.mark = self.reference() or self.top[2]

    def sample(self, steps: int) -> None:
        ref = self.reference()
        if self.index and ref:
            x = ref - self.index
            for _ in range(min(steps, _MAX_STEPS)):
                self.basis += (x - self.basis) * 2 // _EWMA_SPAN
        self.reprice()
        if self.index:
            self.premium_sum += div0((self.mark - self.index) * PPB, self.index) * steps
            self.samples += steps

    def estimate(self) -> int:
        perp = self.spec.perp
        return funding_rate(self.premium_sum, self.samples, perp.funding_interval_us, perp.funding_floor, perp.funding_cap)

    def view(self) -> MarkView:
        return MarkView(self.mark, self.index, self.index_time, self.top[2])


class Funding:
    """The actor: ``Mark`` once per block (phase 4)."""

    def __init__(self) -> None:
        self.perps: dict[str, _Perp] = {}  # in listing order
        self.sample_us = 1_000_000

    def _list_market(self, msg: ListMarketSpec) -> None:
        spec = msg.spec
        if spec.perp is None:
            return
        if spec.symbol in self.perps:
            self.perps[spec.symbol].spec = spec
        else:
            self.perps[spec.symbol] = _Perp(spec)

    def _margin(self, msg: ListMarginSpec) -> None:
        self.sample_us = msg.spec.sample_interval_us

    def _mark(self, msg: Mark) -> Marked:
        ts = msg.timestamp
        for tx in msg.indexes:
            p = self.perps[tx.symbol]
            p.index = tx.price
            p.index_time = ts
            p.reprice()
            p.changed = True
        slot = ts // self.sample_us
        events: list = []
        marks: dict = {}
        funding: list = []
        tops = msg.tops
        for symbol, p in self.perps.items():
            top = tops.get(symbol)
            if top is not None and top != p.top:
                last_moved = top[2] != p.top[2]
                p.top = top
                if last_moved:
                    p.changed = True  # last-price triggers need it
                if not p.index and p.mark != (p.reference() or top[2]):
                    p.reprice()
            if p.last_sample == 0:
                p.last_sample = slot
                interval = p.spec.perp.funding_interval_us
                p.interval_end = (ts // interval + 1) * interval
                p.reprice()
                p.changed = True
            elif slot > p.last_sample:
                p.sample(slot - p.last_sample)
                p.last_sample = slot
                p.changed = True
            if ts >= p.interval_end:
                if p.index:
                    funding.append(self._pay(p, msg.last_seq, ts))
                else:  # no index, no premium: the interval passes unpaid
                    interval = p.spec.perp.funding_interval_us
                    p.interval_end = (ts // interval + 1) * interval
            if p.changed and (p.mark or p.index):
                p.changed = False
                marks[symbol] = p.view()
                events.append(MarkPrice(msg.last_seq, symbol, p.mark, p.index, p.estimate(), p.interval_end))
        events.extend(funding)
        return Marked(events, marks, funding)

    def _pay(self, p: _Perp, seq: int, ts: int) -> FundingPaid:
        perp = p.spec.perp
        rate = p.estimate()
        delta = rate * p.mark * p.spec.notional_mult
        p.cumulative += delta
        p.last_rate = rate
        end = p.interval_end
        p.premium_sum = p.samples = 0
        p.interval_end = (ts // perp.funding_interval_us + 1) * perp.funding_interval_us
        p.changed = True
        return FundingPaid(seq, p.spec.symbol, rate, delta, p.cumulative, p.mark, end)

    # ------------------------------------------------------------------ state

    def _state(self, msg: StateOf) -> FundingState:
        return FundingState([
            FundingMarketState(sym, p.index, p.index_time, p.mark, p.basis, p.top, p.premium_sum, p.samples, p.cumulative,
                               p.last_sample, p.interval_end, p.last_rate)
            for sym, p in self.perps.items()
        ])

    def _restore(self, msg: Restore) -> None:
        for row in msg.state.markets:
            p = self.perps[row.symbol]
            (p.index, p.index_time, p.mark, p.basis, p.top, p.premium_sum, p.samples, p.cumulative, p.last_sample,
             p.interval_end, p.last_rate) = (row.index, row.index_time, row.mark, row.basis, tuple(row.top),
                                              row.premium_sum, row.samples, row.cumulative, row.last_sample,
                                              row.interval_end, row.last_rate)

    handle = dispatcher({
        Mark: _mark, ListMarketSpec: _list_market, ListMarginSpec: _margin, StateOf: _state,
        Restore: _restore,
    })
