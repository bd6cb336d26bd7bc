"""Integer state to Backpack's decimal-string payloads: shared by the API and market data.

One place knows how an order, a price level or a balance looks on the wire, so every
front end (WebSocket today, REST later) and every stream shows the same figures.
"""

from __future__ import annotations

from satchel.core.amounts import format_units
from satchel.core.messages import (
    GTC, LIMIT, MARKET, ORDER_TYPE_NAMES, REJECT_TAKER, SIDE_NAMES, STP_NAMES, TIF_NAMES, NEW, PARTIALLY_FILLED,
    AssetSpec, MarketSpec,
)


class Formatter:
    """Integer state to Backpack's decimal-string payloads, per market."""

    def __init__(self, markets: dict[str, MarketSpec], assets: dict[str, AssetSpec]):
        self.markets = markets
        self.assets = assets

    def price(self, symbol: str, units: int) -> str:
        return format_units(units, self.markets[symbol].price_decimals)

    def qty(self, symbol: str, units: int) -> str:
        return format_units(units, self.markets[symbol].quantity_decimals)

    def quote(self, symbol: str, units: int) -> str:
        return format_units(units, self.assets[self.markets[symbol].quote].decimals)

    def asset(self, asset: str, units: int) -> str:
        return format_units(units, self.assets[asset].decimals)

    def levels(self, symbol: str, levels: list[tuple[int, int]]) -> list[list[str]]:
        d = self.markets[symbol]
        pd, qd = d.price_decimals, d.quantity_decimals
        return [[format_units(p, pd), format_units(q, qd)] for p, q in levels]

    def order(self, symbol: str, order_id: int, client_id: int | None, side: int, price: int, quantity: int,
              executed: int, executed_quote: int, status: str, *, order_type: int | None = None, tif: int = GTC,
              stp: int = REJECT_TAKER, post_only: bool = False, quote_quantity: int = 0, created_us: int = 0) -> dict:
        """An order object shaped like Backpack's REST order."""
        if order_type is None:
            order_type = LIMIT if price else MARKET
        return {
            "id": str(order_id),
            "clientId": client_id,
            "createdAt": created_us // 1000,
            "orderType": ORDER_TYPE_NAMES[order_type],
            "symbol": symbol,
            "side": SIDE_NAMES[side],
            "price": self.price(symbol, price) if price else None,
            "quantity": self.qty(symbol, quantity) if quantity else None,
            "quoteQuantity": self.quote(symbol, quote_quantity) if quote_quantity else None,
            "executedQuantity": self.qty(symbol, executed),
            "executedQuoteQuantity": self.quote(symbol, executed_quote),
            "timeInForce": TIF_NAMES[tif],
            "selfTradePrevention": STP_NAMES[stp],
            "postOnly": post_only,
            "reduceOnly": False,
            "status": status,
        }

    def resting(self, symbol: str, view: tuple) -> dict:
        """A resting order from the book's snapshot tuple (see ``Book.query``)."""
        oid, cid, side, price, qty, executed, executed_quote, created = view
        return self.order(symbol, oid, cid, side, price, qty, executed, executed_quote,
                          PARTIALLY_FILLED if executed else NEW, created_us=created)
