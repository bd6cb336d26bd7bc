"""Demo accounts and a simple market maker, so a newcomer sees a live book.

An edge like any other: it signs its orders with its own keys and submits them to the
sequencer; it never touches ledger state. Keys live in ``<data>/demo.keys`` so a
restarted node quotes with the same accounts; they are funded once, by admin deposits.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import structlog
import trio

from satchel.core.amounts import format_units, to_units
from satchel.core.messages import (
    ASK, BID, GTC, IOC, LIMIT, REJECT_TAKER, BalancesOf, CancelAll, Deposit, MarketSpec, PlaceOrder,
)
from satchel.signing import Keypair, auth_for

log = structlog.get_logger("satchel.tools.demo")

_FUNDING = {"USDC": "10000000", "BTC": "100", "ETH": "1000", "SOL": "100000"}


def _keys(data: Path, n: int) -> list[Keypair]:
    path = data / "demo.keys"
    if path.exists():
        return [Keypair.from_secret(s) for s in json.loads(path.read_text())]
    keys = [Keypair.generate() for _ in range(n)]
    path.write_text(json.dumps([k.secret for k in keys]))
    path.chmod(0o600)
    return keys


class MarketMaker:
    def __init__(self, node, levels: int = 5, period: float = 1.0, seed: int | None = None):
        self.node = node
        self.levels = levels
        self.period = period
        self.rng = random.Random(seed)
        self.keys = _keys(node.data, 2)
        self.mid: dict[str, int] = {}

    async def run(self) -> None:
        engine = self.node.engine
        for key in self.keys:
            balances = await self.node.ask("risk", BalancesOf(key.api_key))
            if not balances:
                for asset, amount in _FUNDING.items():
                    if asset in engine.assets:
                        units = to_units(amount, engine.assets[asset].decimals)
                        params = {"account": key.api_key, "asset": asset, "quantity": amount}
                        auth = auth_for(self.node.admin, "deposit", params)
                        await self.node.submit_wait(Deposit(self.node.admin.api_key, key.api_key, asset, units, auth))
        for sym, spec in engine.markets.items():
            price = self.node.cfg.demo.prices.get(sym)
            if price:
                self.mid[sym] = to_units(price, spec.price_decimals) // spec.tick * spec.tick
        log.info("demo.started", accounts=[k.api_key for k in self.keys], markets=list(self.mid))
        while True:
            for sym, mid in list(self.mid.items()):
                self._quote(engine.markets[sym], mid)
            await trio.sleep(self.period)

    def _quote(self, spec: MarketSpec, mid: int) -> None:
        maker, taker = self.keys
        sym = spec.symbol
        # random walk of the mid, a few ticks per period
        mid = max(spec.tick * 10, mid + self.rng.randint(-3, 3) * spec.tick * max(1, mid // spec.tick // 10_000))
        self.mid[sym] = mid
        self.node.submit(CancelAll(maker.api_key, sym, auth_for(maker, "orderCancelAll", {"symbol": sym})))
        spread = max(spec.tick, mid // 2000 // spec.tick * spec.tick)
        lot = max(spec.min_quantity, -(-spec.min_notional * 20 // (mid * spec.notional_mult)) // spec.step * spec.step)
        for i in range(self.levels):
            for side, price in ((BID, mid - spread * (i + 1)), (ASK, mid + spread * (i + 1))):
                qty = lot * self.rng.randint(1, 5)
                self._order(maker, spec, side, price, qty, GTC)
        if self.rng.random() < 0.5:
            side = self.rng.choice((BID, ASK))
            price = mid + spread * 2 if side == BID else mid - spread * 2
            self._order(taker, spec, side, price, lot, IOC)

    def _order(self, key: Keypair, spec: MarketSpec, side: int, price: int, qty: int, tif: int) -> None:
        params = {
            "symbol": spec.symbol, "side": "Bid" if side == BID else "Ask", "orderType": "Limit",
            "price": format_units(price, spec.price_decimals), "quantity": format_units(qty, spec.quantity_decimals),
            "timeInForce": "GTC" if tif == GTC else "IOC",
        }
        auth = auth_for(key, "orderExecute", params)
        self.node.submit(PlaceOrder(key.api_key, spec.symbol, side, LIMIT, tif, False, price, qty, 0, None, REJECT_TAKER, auth))
