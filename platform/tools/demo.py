"""Demo accounts and a simple market maker, so a newcomer sees a live book.

An edge like any other: it signs its orders with its own keys and submits them to the
sequencer; it never touches ledger state. Keys live in ``<data>/demo.keys`` so a
restarted node quotes with the same accounts; they are funded once, by admin deposits
(perps need only the USDC: it is their collateral).

Spot markets are quoted around a private random walk from the ``[demo]`` reference
prices. Perps are quoted around their index, read each period from the node with the
typed ``MarksOf`` query (what the public ``markPrices`` method answers from, without a
WebSocket connection): the index is the fair price the oracle publishes, so the book's
mid follows it and the premium, hence funding, stays small. Quoting around the mark
instead would feed the book back into itself (the mark is the index plus the book's
basis). A perp without an index yet (``--no-oracle``) is not quoted: the engine refuses
risk-increasing orders on it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import structlog
import trio

from satchel.core import instructions
from satchel.core.amounts import format_units, to_units
from satchel.core.messages import ASK, BID, GTC, IOC, BalancesOf, Deposit, MarketSpec, MarksOf
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
            if price and spec.perp is None:
                self.mid[sym] = to_units(price, spec.price_decimals) // spec.tick * spec.tick
        perps = [spec for spec in engine.markets.values() if spec.perp is not None]
        log.info("demo.started", accounts=[k.api_key for k in self.keys], markets=list(self.mid),
                 perps=[p.symbol for p in perps])
        while True:
            for sym, mid in list(self.mid.items()):
                spec = engine.markets[sym]
                # random walk of the mid, a few ticks per period
                mid = max(spec.tick * 10, mid + self.rng.randint(-3, 3) * spec.tick * max(1, mid // spec.tick // 10_000))
                self.mid[sym] = mid
                self._quote(spec, mid)
            if perps:
                marks = await self.node.ask("risk", MarksOf())
                for spec in perps:
                    prices = marks.get(spec.symbol)
                    if prices is not None and prices.index:
                        self._quote(spec, prices.index // spec.tick * spec.tick)
            await trio.sleep(self.period)

    def _quote(self, spec: MarketSpec, mid: int) -> None:
        """Replace the maker's ladder around ``mid``; now and then a taker crosses it."""
        maker, taker = self.keys
        sym = spec.symbol
        self._submit(maker, "orderCancelAll", {"symbol": sym})
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
        self._submit(key, "orderExecute", params)

    def _submit(self, key: Keypair, instruction: str, params: dict[str, str]) -> None:
        """Build the transaction from its signed texts with the declared builder, as the
        gateway and the validator do: positional fields would silently drift when the
        record grows (an ``Auth`` once landed in ``PlaceOrder.reduce_only``)."""
        tx = instructions.build(instruction, params, key.api_key, self.node.engine)
        self.node.submit(msgspec.structs.replace(tx, auth=auth_for(key, instruction, params)))


class DemoDeposits:
    """Deposits arriving on the simulated chains, so a newcomer sees the custody edge at
    work: every ``period`` seconds a transfer of ``amount`` USDC from outside reaches the
    taker demo account's deposit address; the chain's adapter reports it once it has its
    confirmations and the engine credits it (``chainStatus`` counts it, ``depositQueryAll``
    lists it). Like a user's wallet, it only moves funds on the chain: it never touches
    the ledger."""

    def __init__(self, node, chains, period: float = 10.0, amount: str = "100"):
        self.node = node  # the node, or the ``EdgeHost`` of ``satchel chains`` (its cfg and data)
        self.chains = chains  # ``satchel.chains.embedded`` (its ``sims`` and ``deposit``)
        self.period = period
        self.amount = amount
        self.account = _keys(node.data, 2)[1].api_key

    async def run(self) -> None:
        sims = [name for name, sim in sorted(self.chains.sims.items()) if "USDC" in self.node.cfg.chains[name].assets]
        decimals = self.node.cfg.decimals()
        if not sims or "USDC" not in decimals:
            return
        units = to_units(self.amount, decimals["USDC"])
        log.info("demo.deposits", chains=sims, account=self.account, every_s=self.period, amount=self.amount)
        while True:
            await trio.sleep(self.period)
            for name in sims:
                tx_hash = self.chains.deposit(name, self.account, "USDC", units)
                log.info("demo.deposit_sent", chain=name, tx=tx_hash, account=self.account, quantity=self.amount)
