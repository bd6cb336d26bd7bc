"""Frame schemas, stable error codes and Backpack-shaped payloads.

Inbound frames are decoded with msgspec schemas (validated, ~0.5 us): ``Request`` for
the envelope, then one params schema per method. ``params`` is kept as raw JSON per key
so the signature is checked against the literal text that arrived (a number
re-formatted by a parser would no longer match what the client signed).

Error codes are strings and never change meaning; subscription errors use Backpack's
numeric codes (4006 = invalid stream).
"""

from __future__ import annotations

from typing import Any

import msgspec

from satchel.amounts import format_units
from satchel.messages import (
    GTC, LIMIT, MARKET, ORDER_TYPE_NAMES, REJECT_TAKER, SIDE_NAMES, STP_NAMES, TIF_NAMES, NEW, PARTIALLY_FILLED,
    AssetSpec, MarketSpec,
)

from satchel.errors import (  # re-exported: the gateway answers with the core's codes
    EXPIRED, INTERNAL_ERROR, INVALID_ASSET, INVALID_DECIMAL, INVALID_JSON, INVALID_PRICE, INVALID_QUANTITY,
    INVALID_REQUEST, INVALID_SIGNATURE, INVALID_STREAM, INVALID_SUBSCRIPTION, INVALID_SYMBOL, MAINTENANCE,
    PAYLOAD_TOO_LARGE, RESOURCE_NOT_FOUND, SUBSCRIPTION_AUTH, TOO_MANY_REQUESTS, UNAUTHORIZED, UNKNOWN_METHOD,
    RequestError,
)

# ------------------------------------------------------------------ inbound schemas


class Request(msgspec.Struct):
    method: str
    id: int | str | None = None
    params: msgspec.Raw = msgspec.Raw(b"null")
    signature: list[str] | None = None


class _IdOnly(msgspec.Struct):
    id: int | str | None = None


request_decoder = msgspec.json.Decoder(Request)
streams_decoder = msgspec.json.Decoder(list[str])
_params_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_id_decoder = msgspec.json.Decoder(_IdOnly)
_str_decoder = msgspec.json.Decoder(str)


def request_id(text: str | bytes) -> int | str | None:
    """Best effort: the ``id`` of a frame that failed validation, so its error names it."""
    try:
        return _id_decoder.decode(text).id
    except (msgspec.DecodeError, RecursionError):
        return None


class OptionalSymbolParams(msgspec.Struct):
    symbol: str | None = None
    limit: str | None = None
    offset: str | None = None


class NoParams(msgspec.Struct):
    pass


def split_params(raw: msgspec.Raw) -> dict[str, str]:
    """A request's params as the literal texts the client signed.

    JSON strings give their value, numbers their literal text (a re-formatted number
    would not match the signature, and ``clientId`` may be a number or a string),
    booleans ``true``/``false``; null means absent and is never part of the signed
    string. Nested objects and arrays are refused here, before anything looks inside.
    """
    if bytes(raw) in (b"null", b""):
        return {}
    try:
        fields = _params_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RequestError(INVALID_REQUEST, "params must be an object") from exc
    texts: dict[str, str] = {}
    for key, rawv in fields.items():
        b = bytes(rawv)
        head = b[:1]
        if head == b'"':
            texts[key] = _str_decoder.decode(b)
        elif head == b"n":
            continue
        elif head in (b"{", b"["):
            raise RequestError(INVALID_REQUEST, f"params.{key} must be a string, number or boolean")
        else:
            texts[key] = b.decode()  # true, false or a number: ASCII by JSON's grammar
    return texts


def typed(texts: dict[str, str], schema: type) -> Any:
    try:
        return msgspec.convert(texts, schema)
    except msgspec.ValidationError as exc:
        raise RequestError(INVALID_REQUEST, str(exc)) from exc


# ------------------------------------------------------------------ payloads out


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


def result_frame(req_id: Any, result: Any) -> str:
    return msgspec.json.encode({"id": req_id, "result": result}).decode()


def error_frame(req_id: Any, code: str | int, message: str) -> str:
    return msgspec.json.encode({"id": req_id, "error": {"code": code, "message": message}}).decode()


__all__ = [
    "EXPIRED",
    "INTERNAL_ERROR",
    "INVALID_ASSET",
    "INVALID_DECIMAL",
    "INVALID_JSON",
    "INVALID_PRICE",
    "INVALID_QUANTITY",
    "INVALID_REQUEST",
    "INVALID_SIGNATURE",
    "INVALID_STREAM",
    "INVALID_SUBSCRIPTION",
    "INVALID_SYMBOL",
    "MAINTENANCE",
    "PAYLOAD_TOO_LARGE",
    "RESOURCE_NOT_FOUND",
    "SUBSCRIPTION_AUTH",
    "TOO_MANY_REQUESTS",
    "UNAUTHORIZED",
    "UNKNOWN_METHOD",
    "RequestError",
]
