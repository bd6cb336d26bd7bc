"""Platform statistics: the exchange's headline figures, once per second of sequenced time.

``PlatformStats`` is a node subscriber beside ``MarketData``: fed by durable blocks only,
it takes the figures whenever a block's timestamp is at least one second (sequenced
time, the block stamps; never the wall clock) past the previous frame's, and sends them
on the public ``platformStats`` stream -- one frame encoded once, the same string to
every subscriber. So consecutive frames' ``E`` are at least a second apart, and a node
whose sequenced time stands still (no blocks) sends none. A new subscriber first gets
the stream's last frame. The unsigned ``platformStats`` request (and ``GET /api/v1/stats``)
answers figures as of the last published block: the latest if no block came since,
else fresh ones (one read in flight at a time, shared by every request waiting); such a
refresh within the second goes to no stream.

Every figure of one frame describes the same ledger state: the one after the block
whose timestamp is the frame's ``E``. The figures are taken with one typed read of the
engine (``sequencer.read``), which is queued behind every transaction submitted so far
and answered by the publisher right after the last block cut before it; at that moment
every subscriber, this one and market data included, has seen exactly the blocks the
read's state includes. So:

* **24 h volume and tickers** per market are market data's own 24 h rolling figures
  (``MarketData.rest_ticker`` and ``day``: one-minute buckets of the fills this process
  published). The total is the sum of the markets' quote volumes, each valued in the
  valuation asset (USDC; a market quoted in USDC adds its quote volume unchanged).
* **Open interest** per perp is the margin engine's long open interest (= short) and
  mark from the read (``MarksOf``: O(perps) in the engine, not the 60 s ``OpenInterest``
  events), its notional ``contracts x mark x notional_mult`` in quote units, exact.
* **Assets under custody** per asset are the ledger's deposits - withdrawals. They are
  read once (``LedgerOf``, which sums every account and so costs O(accounts): fine once,
  not every second), then kept from the ``Deposited`` events and the Confirmed
  ``WithdrawalUpdate`` events of each durable block, which are exactly the engine's
  changes of the same counters (the insurance fund's deposits included). A block published while that first read is in flight is already
  in its answer and is not counted twice.
* **Lent and borrowed** per asset are the lending pools' totals (``PoolsOf``, read from
  the lending actor with the same read, so the same state): the lenders' claims and the
  borrowers' debts at the pools' indices, O(pools).

Values in USDC use, for an asset, the mark of a perp on it quoted in USDC (as the margin
engine values collateral), else the last trade of its spot market against USDC; each
value is ``units x price x notional_mult // base_mult``, rounded down per asset. An
asset with neither has no value (``null``) and is left out of the totals.

Market data keeps 24 h of buckets from the blocks this process published, so for 24 h
after a restart the volumes count only the trades since (the same as ``ticker.<sym>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio

from satchel.api.coalesced import ReadPerBlock
from satchel.api.format import Formatter
from satchel.api.marketdata import MarketData
from satchel.core import lending
from satchel.core.messages import (
    REJECTED, BlockHeader, Deposited, LedgerOf, MarketSpec, MarksOf, OrderDone, PoolsOf, Query, TxRejected, WithdrawalUpdate,
)

STREAM = "platformStats"
EVERY_US = 1_000_000  # one frame per second of sequenced time
VALUATION_ASSET = "USDC"

Read = Callable[[Query, Callable[[Any], None]], None]

_encode = msgspec.json.encode


class Rejects:
    """Refusals since the node started, by code (a node subscriber: durable blocks only):
    a transaction's ``TxRejected`` code, or an order's rejection reason."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def publish(self, header: BlockHeader, events: list) -> None:
        counts = self.counts
        for ev in events:
            cls = ev.__class__
            if cls is TxRejected:
                key = str(ev.code)
            elif cls is OrderDone and ev.status == REJECTED:
                key = ev.reason
            else:
                continue
            counts[key] = counts.get(key, 0) + 1


class PlatformStats(ReadPerBlock):
    """The figures of ``STREAM``, taken through ``read`` (``node.sequencer.read``) and
    sent through ``marketdata``'s subscriptions; ``height``/``timestamp`` are the
    recovered chain's, the state before the first published block."""

    def __init__(self, fmt: Formatter, marketdata: MarketData, read: Read, *, height: int = 0, timestamp: int = 0,
                 every_us: int = EVERY_US, valuation: str = VALUATION_ASSET):
        self.fmt = fmt
        self.md = marketdata
        self._read = read
        self.every_us = every_us
        self.valuation = valuation
        ReadPerBlock.__init__(self, height)  # ``latest``: the last figures taken (a request's answer)
        self._frame: str | None = None  # the stream's last frame, encoded once (a new subscriber's snapshot)
        self._ts = timestamp
        self._next = 0  # sequenced time (µs) from which figures taken go out on the stream
        self._deposits: dict[str, int] | None = None  # per asset, once the first read answered
        marketdata.add_feed(STREAM, lambda: [] if self._frame is None else [self._frame])

    # ------------------------------------------------------------------ the node's side

    def start(self) -> None:
        """Take the first figures now (the state the node recovered), so that a quiet node
        answers and a subscriber gets its snapshot before any new block."""
        if not self._pending:
            self._take()

    def publish(self, header: BlockHeader, events: list) -> None:
        """A durable block (a node subscriber): count its deposits; take the figures when
        its timestamp is a second past the last frame's."""
        self._height = header.height
        self._ts = ts = header.timestamp
        deposits = self._deposits
        if deposits is not None:
            for ev in events:
                if ev.__class__ is Deposited:
                    deposits[ev.asset] = deposits.get(ev.asset, 0) + ev.amount
                elif ev.__class__ is WithdrawalUpdate and ev.status == "Confirmed":
                    deposits[ev.asset] = deposits.get(ev.asset, 0) - ev.amount
        if ts >= self._next and not self._pending:
            self._take()

    # ------------------------------------------------------------------ taking the figures

    def _take(self) -> bool:
        """Ask the engine for the figures' state; False if the node is shutting down."""
        queries = [Query("risk", MarksOf()), Query("lending", PoolsOf())]
        if self._deposits is None:
            queries.append(Query("risk", LedgerOf()))
        answers: list = []

        def collect(answer: Any) -> None:
            answers.append(answer)  # reads are answered in the order they were queued
            if len(answers) == len(queries):
                self._taken(answers)

        self._pending = True
        try:
            for q in queries:  # queued back to back: all see the same state
                self._read(q, collect)
        except trio.ClosedResourceError:  # shutting down: no more figures
            self._pending = False
            return False
        return True

    def _taken(self, answers: list) -> None:
        if self._deposits is None:
            self._deposits = {asset: d - w for asset, (d, w, _fees, _balances) in answers[2].items()}
        data = self.figures(answers[0], self.lending_totals(answers[1]))
        if self._ts >= self._next:  # figures a request asked for within the second only refresh ``latest``
            self._next = self._ts + self.every_us
            self._frame = _encode({"stream": STREAM, "data": data}).decode()
            self.md.broadcast(STREAM, self._frame)
        self._answered(data)

    @staticmethod
    def lending_totals(pools: list) -> dict[str, tuple[int, int]]:
        """Per asset: (lent, borrowed) in asset units, from the lending actor's ``PoolsOf``
        answer (``core.lending.Pool``); an asset without a pool is left out (shows "0")."""
        return {pool.spec.asset: (lending.lent_total(pool), lending.borrowed_total(pool)) for pool in pools}

    def figures(self, marks: dict, pools: dict[str, tuple[int, int]] | None = None) -> dict:
        """The stream's ``data`` for the state after the last published block, given the
        margin engine's ``MarksOf`` answer and the pools' ``lending_totals`` for that state."""
        fmt = self.fmt
        md = self.md
        prices = self._prices(marks)
        unit = self.valuation if self.valuation in fmt.assets else None
        total = {"volume": 0, "openInterest": 0, "custody": 0, "lent": 0, "borrowed": 0}

        def add(key: str, asset: str, units: int) -> str | None:
            value = self._value(prices, asset, units)
            if value is None or unit is None:
                return None
            total[key] += value
            return fmt.asset(unit, value)

        markets = []
        open_interest = []
        for sym, spec in fmt.markets.items():
            day = md.day(sym)
            ticker = md.rest_ticker(sym)
            del ticker["symbol"]
            markets.append({"symbol": sym, "marketType": "PERP" if spec.perp else "SPOT", **ticker,
                            "quoteVolumeValue": add("volume", spec.quote, day[5] if day else 0)})
            if spec.perp is not None:
                p = marks.get(sym)
                contracts, mark = (p.open_interest, p.mark) if p is not None else (0, 0)
                notional = contracts * mark * spec.notional_mult
                open_interest.append({
                    "symbol": sym, "openInterest": fmt.qty(sym, contracts),
                    "markPrice": fmt.price(sym, mark) if mark else None,
                    "notional": fmt.quote(sym, notional), "notionalValue": add("openInterest", spec.quote, notional),
                })
        pools = pools or {}
        deposits = self._deposits or {}
        assets = []
        for asset in fmt.assets:
            custody = deposits.get(asset, 0)
            lent, borrowed = pools.get(asset, (0, 0))
            price = self._value(prices, asset, 10 ** fmt.assets[asset].decimals)  # one whole unit
            assets.append({
                "symbol": asset, "price": fmt.asset(unit, price) if price is not None and unit else None,
                "custody": fmt.asset(asset, custody), "custodyValue": add("custody", asset, custody),
                "lent": fmt.asset(asset, lent), "lentValue": add("lent", asset, lent),
                "borrowed": fmt.asset(asset, borrowed), "borrowedValue": add("borrowed", asset, borrowed),
            })
        money = (lambda units: fmt.asset(unit, units)) if unit else (lambda units: None)
        return {
            "e": STREAM, "E": self._ts, "blockHeight": self._height, "valuationAsset": unit,
            "volume24h": money(total["volume"]), "openInterestValue": money(total["openInterest"]),
            "custodyValue": money(total["custody"]), "lentValue": money(total["lent"]),
            "borrowedValue": money(total["borrowed"]),
            "markets": markets, "openInterest": open_interest, "assets": assets,
        }

    def _prices(self, marks: dict) -> dict[str, tuple[int, MarketSpec]]:
        """Asset -> (price, the market it is quoted in) against the valuation asset: a
        perp's mark first, else the spot market's last trade."""
        out: dict[str, tuple[int, MarketSpec]] = {}
        unit = self.valuation
        for sym, spec in self.fmt.markets.items():
            if spec.quote != unit or spec.base == unit:
                continue
            if spec.perp is not None:
                p = marks.get(sym)
                if p is not None and p.mark:
                    out[spec.base] = (p.mark, spec)
        for sym, spec in self.fmt.markets.items():
            if spec.quote == unit and spec.perp is None and spec.base not in out:
                last = self.md.last_price(sym)
                if last:
                    out[spec.base] = (last, spec)
        return out

    def _value(self, prices: dict[str, tuple[int, MarketSpec]], asset: str, units: int) -> int | None:
        """``units`` of ``asset`` in valuation-asset units (rounded down), None without a price."""
        if asset == self.valuation:
            return units
        quoted = prices.get(asset)
        if quoted is None:
            return None
        price, spec = quoted
        return units * price * spec.notional_mult // spec.base_mult
