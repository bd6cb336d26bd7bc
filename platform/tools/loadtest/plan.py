"""What traders send: seeded order flow per scenario, as Backpack request params.

* ``mm``: market makers post limit orders a few ticks around mid and cancel their own
  older quotes, so the book churns without crossing much;
* ``takers``: IOC limits through the touch and market orders by quantity;
* ``mixed``: two makers for every taker.

Mid prices follow a slow random walk per trader (seeded), clamped to a band around the
configured reference so orders stay inside the node's price band.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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


def market_plans(cfg: Config, symbols: list[str] | None) -> list[MarketPlan]:
    plans = []
    for spec in cfg.market_specs():
        if symbols and spec.symbol not in symbols:
            continue
        ref = cfg.demo.prices.get(spec.symbol)
        if ref is None:
            continue
        mid = to_units(ref, spec.price_decimals) // spec.tick * spec.tick
        # about 2x the minimum notional per order, in whole steps
        lot = max(spec.min_quantity, -(-spec.min_notional * 2 // (mid * spec.notional_mult)))
        lot = -(-lot // spec.step) * spec.step
        plans.append(MarketPlan(spec.symbol, mid, spec.tick, spec.step, lot, spec.price_decimals, spec.quantity_decimals))
    return plans


class Flow:
    """One trader's order stream. ``next()`` returns (method, params)."""

    def __init__(self, role: str, markets: list[MarketPlan], seed: int):
        self.role = role
        self.markets = markets
        self.rng = random.Random(seed)
        self.mids = {m.symbol: m.mid for m in markets}
        self.live: list[tuple[str, str]] = []  # (symbol, order id) of this trader's resting quotes
        self.client_id = 0

    def _price(self, m: MarketPlan, ticks: int) -> str:
        return format_units(self.mids[m.symbol] + ticks * m.tick, m.price_decimals)

    def _walk(self, m: MarketPlan) -> None:
        mid = self.mids[m.symbol] + self.rng.choice((-1, 0, 0, 1)) * m.tick
        band = m.mid // 50  # stay within 2% of the reference: well inside a 10% price band
        self.mids[m.symbol] = min(max(mid, m.mid - band), m.mid + band)

    def next(self) -> tuple[str, dict]:
        m = self.rng.choice(self.markets)
        self._walk(m)
        rng = self.rng
        qty = format_units(m.lot * rng.randint(1, 3), m.quantity_decimals)
        if self.role == "mm":
            if len(self.live) > 20 or (self.live and rng.random() < 0.3):
                symbol, oid = self.live.pop(rng.randrange(len(self.live)))
                return "orderCancel", {"symbol": symbol, "orderId": oid}
            side = rng.choice(("Bid", "Ask"))
            ticks = rng.randint(1, 8)
            return "orderExecute", {
                "symbol": m.symbol, "side": side, "orderType": "Limit", "quantity": qty, "clientId": self._next_client_id(),
                "price": self._price(m, -ticks if side == "Bid" else ticks),
            }
        side = rng.choice(("Bid", "Ask"))
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

    def acked(self, method: str, params: dict, result: dict) -> None:
        if self.role == "mm" and method == "orderExecute" and result.get("status") in ("New", "PartiallyFilled"):
            self.live.append((params["symbol"], result["id"]))


def roles(scenario: str, traders: int) -> list[str]:
    if scenario == "mm":
        return ["mm"] * traders
    if scenario == "takers":
        return ["taker"] * traders
    return ["taker" if i % 3 == 2 else "mm" for i in range(traders)]
