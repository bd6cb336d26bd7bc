"""What traders send: seeded order flow per scenario, as Backpack request params.

* ``mm``: market makers post limit orders a few ticks around mid and cancel their own
  older quotes, so the book churns without crossing much;
* ``takers``: IOC limits through the touch and market orders by quantity;
* ``mixed``: two makers for every taker;
* ``perps``: makers quote the perpetual markets around the index price, and leveraged
  takers lean one way: most go ``long`` (the crash in ``perps.py`` liquidates them), one
  taker in four ``short`` (auto-deleveraging needs profitable opposite positions). A
  taker keeps no position book: it adds until pre-trade refuses its orders for margin,
  so it sits at the leverage the runner set for it. Some makers also lend or borrow
  (``lending``): a share of their requests are ``borrowLendExecute``.

Spot mid prices follow a slow random walk per trader (seeded), clamped to a band around
the configured reference so orders stay inside the node's price band. Perp mids follow
the index from the ``markPrice`` stream (``Flow.index``), crash included.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from satchel.core.amounts import format_units, to_units
from satchel.config import Config


@dataclass(frozen=True)
class MarketPlan:
    symbol: str
    mid: int  # price units
    tick: int
    step: int
    lot: int  # quantity units per order
    price_decimals: int
    quantity_decimals: int
    perp: bool = False  # mids follow the index (markPrice stream) instead of a random walk


# Whole quote units per perp order: a taker's position (10-20x its deposit) is some dozens
# of them, so reaching it takes many fills, and the makers' few quotes make a thin book.
PERP_LOT_QUOTE = 50


def reference_price(cfg: Config, symbol: str) -> str | None:
    """The demo price of a market, or for a perp that of its spot market (BTC_USDC_PERP: BTC_USDC)."""
    return cfg.demo.prices.get(symbol) or cfg.demo.prices.get(symbol.removesuffix("_PERP"))


def market_plans(cfg: Config, symbols: list[str] | None, perps: bool = False) -> list[MarketPlan]:
    """The spot markets to trade, or with ``perps`` the perpetual ones (those with a reference price)."""
    plans = []
    quote_units = {a.symbol: 10**a.decimals for a in cfg.assets}
    for spec in cfg.market_specs():
        if (spec.perp is not None) != perps or (symbols and spec.symbol not in symbols):
            continue
        ref = reference_price(cfg, spec.symbol)
        if ref is None:
            continue
        mid = to_units(ref, spec.price_decimals) // spec.tick * spec.tick
        # spot: about 2x the minimum notional per order; perps: PERP_LOT_QUOTE; in whole steps
        notional = PERP_LOT_QUOTE * quote_units[spec.quote] if perps else spec.min_notional * 2
        lot = max(spec.min_quantity, -(-notional // (mid * spec.notional_mult)))
        lot = -(-lot // spec.step) * spec.step
        plans.append(MarketPlan(spec.symbol, mid, spec.tick, spec.step, lot, spec.price_decimals, spec.quantity_decimals,
                                perps))
    return plans


LEND_SHARE = 0.05  # of a lending maker's requests: borrowLendExecute (``lending``)


@dataclass(frozen=True)
class LendPlan:
    """What a trader of the lending cohort does (``lending.cohort``); plain data, sent to the workers."""

    role: str  # "lend" or "borrow"
    asset: str
    decimals: int
    step: int  # asset units per step
    cap: int = 0  # a borrower: the most it borrows, asset units

    def to_dict(self) -> dict:
        return asdict(self)


class Borrowing:
    """A lender's or a borrower's ``borrowLendExecute`` requests (see ``lending``): a lender
    redeems a small part of its claim (``Borrow`` within the claim), which auto-lend lends
    again; a borrower borrows up to its cap (seven times in ten while under it, so its debt
    grows through the run) and repays (``Lend``) at most what it borrowed, so it never lends
    by accident while its debt carries interest."""

    def __init__(self, plan: LendPlan):
        self.plan = plan
        self.owed = 0  # a borrower: what its requests borrowed and did not repay, asset units

    def next(self, rng: Any) -> tuple[str, dict]:
        p = self.plan
        qty = p.step * rng.randint(1, 3)
        if p.role == "lend":
            side = "Borrow"  # a part of its claim: redeemed
        elif self.owed + qty <= p.cap and (not self.owed or rng.random() < 0.7):
            side = "Borrow"
            self.owed += qty
        else:
            qty = min(qty, self.owed) or p.step
            side = "Lend"
            self.owed = max(0, self.owed - qty)
        return "borrowLendExecute", {"symbol": p.asset, "side": side, "quantity": format_units(qty, p.decimals)}

    def refused(self, params: dict) -> None:
        """A request was refused: what it did to ``owed`` is undone."""
        if self.plan.role != "borrow":
            return
        qty = to_units(params["quantity"], self.plan.decimals)
        self.owed = max(0, self.owed - qty) if params["side"] == "Borrow" else self.owed + qty


# the share of a leaning taker's orders on its side (the rest trade the other way)
LEAN = {"long": 0.8, "short": 0.2, "taker": 0.5}


class Flow:
    """One trader's order stream. ``next()`` returns (method, params)."""

    def __init__(self, role: str, markets: list[MarketPlan], seed: int, lending: LendPlan | None = None):
        self.role = role
        self.lending = Borrowing(lending) if lending is not None else None
        self.markets = markets
        self.by_symbol = {m.symbol: m for m in markets}
        self.rng = random.Random(seed)
        self.mids = {m.symbol: m.mid for m in markets}
        self.live: list[tuple[str, str, int]] = []  # (symbol, order id, price) of this trader's resting quotes
        self.client_id = 0

    def _price(self, m: MarketPlan, ticks: int) -> str:
        return format_units(self.mids[m.symbol] + ticks * m.tick, m.price_decimals)

    def _walk(self, m: MarketPlan) -> None:
        if m.perp:
            return  # the index moves it
        mid = self.mids[m.symbol] + self.rng.choice((-1, 0, 0, 1)) * m.tick
        band = m.mid // 50  # stay within 2% of the reference: well inside a 10% price band
        self.mids[m.symbol] = min(max(mid, m.mid - band), m.mid + band)

    def index(self, symbol: str, price: str) -> None:
        """A ``markPrice`` frame's index price: perp quotes and takes center on it from now on."""
        m = self.by_symbol.get(symbol)
        if m is None or not m.perp:
            return
        units = to_units(price, m.price_decimals) // m.tick * m.tick
        if units > 0:  # 0: no index yet
            self.mids[symbol] = units

    def _stale(self) -> int | None:
        """Where in ``live`` a perp quote lies over 0.5% from the index, left behind when the
        index moved (it would fill at a stale price); None if none does."""
        for i, (symbol, _, price) in enumerate(self.live):
            mid = self.mids[symbol]
            if self.by_symbol[symbol].perp and abs(price - mid) * 200 > mid:
                return i
        return None

    def _cancel(self, i: int) -> tuple[str, dict]:
        symbol, oid, _ = self.live.pop(i)
        return "orderCancel", {"symbol": symbol, "orderId": oid}

    def next(self) -> tuple[str, dict]:
        if self.lending is not None and self.rng.random() < LEND_SHARE:
            return self.lending.next(self.rng)
        m = self.rng.choice(self.markets)
        self._walk(m)
        rng = self.rng
        qty = format_units(m.lot * rng.randint(1, 3), m.quantity_decimals)
        if self.role == "mm":
            stale = self._stale()
            if stale is not None:
                return self._cancel(stale)
            if len(self.live) > 20 or (self.live and rng.random() < 0.3):
                return self._cancel(rng.randrange(len(self.live)))
            side = rng.choice(("Bid", "Ask"))
            ticks = rng.randint(1, 8)
            return "orderExecute", {
                "symbol": m.symbol, "side": side, "orderType": "Limit", "quantity": qty, "clientId": self._next_client_id(),
                "price": self._price(m, -ticks if side == "Bid" else ticks),
            }
        side = "Bid" if rng.random() < LEAN[self.role] else "Ask"
        cid = self._next_client_id()
        if rng.random() < 0.7:
            ticks = rng.randint(1, 4)
            return "orderExecute", {
                "symbol": m.symbol, "side": side, "orderType": "Limit", "timeInForce": "IOC", "quantity": qty,
                "price": self._price(m, ticks if side == "Bid" else -ticks), "clientId": cid,
            }
        return "orderExecute", {"symbol": m.symbol, "side": side, "orderType": "Market", "quantity": qty, "clientId": cid}

    def _next_client_id(self) -> int:
        # every order gets its own clientId: two identical requests signed in the same
        # millisecond would otherwise carry the same signature and be refused as replays
        self.client_id = (self.client_id + 1) % 2**32
        return self.client_id

    def gone(self, order_id: str) -> None:
        """An order update said this quote was filled or cancelled: stop cancelling it."""
        self.live = [q for q in self.live if q[1] != order_id]

    def refused(self, method: str, params: dict) -> None:
        """The node refused a request."""
        if method == "borrowLendExecute" and self.lending is not None:
            self.lending.refused(params)

    def acked(self, method: str, params: dict, result: dict) -> None:
        if self.role == "mm" and method == "orderExecute" and result.get("status") in ("New", "PartiallyFilled"):
            price = to_units(params["price"], self.by_symbol[params["symbol"]].price_decimals)
            self.live.append((params["symbol"], result["id"], price))


def roles(scenario: str, traders: int) -> list[str]:
    if scenario == "mm":
        return ["mm"] * traders
    if scenario == "takers":
        return ["taker"] * traders
    if scenario == "perps":
        # a maker in every three; of the takers, every fourth leans short
        return ["mm" if i % 3 == 0 else "short" if i % 6 == 5 else "long" for i in range(traders)]
    return ["taker" if i % 3 == 2 else "mm" for i in range(traders)]
