"""Frame schemas, stable error codes and Backpack-shaped payloads.

Inbound frames are decoded with msgspec schemas (validated, ~0.5 us): ``Request`` for
the envelope, then one params schema per method. ``params`` is kept as raw JSON per key
so the signature is checked against the literal text that arrived (a number
re-formatted by a parser would no longer match what the client signed).

Error codes are strings and never change meaning; subscription errors use Backpack's
numeric codes (4006 = invalid stream).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from satchel.amounts import MAX_UNITS, AmountError, format_units, to_units
from satchel.messages import (
    ASK, BID, FOK, GTC, IOC, LIMIT, MARKET, ORDER_TYPE_NAMES, REJECT_BOTH, REJECT_MAKER, REJECT_TAKER,
    SIDE_NAMES, STP_NAMES, TIF_NAMES, NEW, PARTIALLY_FILLED, AssetSpec, MarketSpec, PlaceOrder,
)

# ------------------------------------------------------------------ errors

INVALID_JSON = "INVALID_JSON"
INVALID_REQUEST = "INVALID_CLIENT_REQUEST"
UNKNOWN_METHOD = "UNKNOWN_METHOD"
INVALID_DECIMAL = "INVALID_DECIMAL"
INVALID_PRICE = "INVALID_PRICE"
INVALID_QUANTITY = "INVALID_QUANTITY"
INVALID_SYMBOL = "INVALID_SYMBOL"
INVALID_ASSET = "INVALID_ASSET"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNAUTHORIZED = "UNAUTHORIZED"
INVALID_SIGNATURE = "INVALID_SIGNATURE"
EXPIRED = "EXPIRED"
TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
MAINTENANCE = "MAINTENANCE"

INVALID_STREAM = 4006
INVALID_SUBSCRIPTION = 4000
SUBSCRIPTION_AUTH = 4003


class RequestError(Exception):
    def __init__(self, code: str | int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ inbound schemas


class Request(msgspec.Struct):
    method: str
    id: int | str | None = None
    params: msgspec.Raw = msgspec.Raw(b"null")
    signature: list[str] | None = None


request_decoder = msgspec.json.Decoder(Request)
params_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
streams_decoder = msgspec.json.Decoder(list[str])
_str_decoder = msgspec.json.Decoder(str)


class OrderExecuteParams(msgspec.Struct):
    symbol: str
    side: Literal["Bid", "Ask"]
    orderType: Literal["Limit", "Market"]
    quantity: str | None = None
    quoteQuantity: str | None = None
    price: str | None = None
    timeInForce: Literal["GTC", "IOC", "FOK"] = "GTC"
    postOnly: bool = False
    reduceOnly: bool = False
    clientId: int | None = None
    selfTradePrevention: Literal["RejectTaker", "RejectMaker", "RejectBoth"] = "RejectTaker"


class OrderRefParams(msgspec.Struct):
    symbol: str
    orderId: int | None = None
    clientId: int | None = None


class SymbolParams(msgspec.Struct):
    symbol: str


class OptionalSymbolParams(msgspec.Struct):
    symbol: str | None = None


class NoParams(msgspec.Struct):
    pass


class SetTradingParams(msgspec.Struct):
    enabled: bool
    account: str | None = None
    symbol: str | None = None


class SetFeesParams(msgspec.Struct):
    symbol: str
    makerFeeBps: int
    takerFeeBps: int


class DepositParams(msgspec.Struct):
    account: str
    asset: str
    quantity: str


def split_params(raw: msgspec.Raw) -> tuple[dict[str, Any], dict[str, str]]:
    """Params as (typed-ish values for the schema, literal texts for the signed string).

    JSON strings become str, numbers stay their literal text (so decimal fields keep
    their digits and ``clientId`` may be a number or a string), booleans stay bool.
    """
    if bytes(raw) in (b"null", b""):
        return {}, {}
    try:
        fields = params_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(INVALID_REQUEST, "params must be an object") from exc
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    for key, rawv in fields.items():
        b = bytes(rawv)
        head = b[:1]
        if head == b'"':
            v = _str_decoder.decode(b)
            values[key] = texts[key] = v
        elif head == b"t" and b == b"true":
            values[key], texts[key] = True, "true"
        elif head == b"f" and b == b"false":
            values[key], texts[key] = False, "false"
        elif head == b"n":
            values[key] = None  # null: treated as absent, never part of the signed string
        elif head in (b"{", b"["):
            values[key] = msgspec.json.decode(b)  # a nested value: the schema will refuse it
            texts[key] = b.decode()
        else:
            values[key] = texts[key] = b.decode()
    return values, texts


def typed(values: dict[str, Any], schema: type) -> Any:
    try:
        return msgspec.convert(values, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise RequestError(INVALID_REQUEST, str(exc)) from exc


# ------------------------------------------------------------------ orders in


_SIDES = {"Bid": BID, "Ask": ASK}
_TIFS = {"GTC": GTC, "IOC": IOC, "FOK": FOK}
_STPS = {"RejectTaker": REJECT_TAKER, "RejectMaker": REJECT_MAKER, "RejectBoth": REJECT_BOTH}


def _units(text: str, decimals: int, step: int, code: str, what: str) -> int:
    try:
        value = to_units(text, 30)
    except AmountError as exc:
        raise RequestError(INVALID_DECIMAL, f"{what}: {exc}") from exc
    scale = 10 ** (30 - decimals)
    if value % scale or (value // scale) % step:
        raise RequestError(code, f"{what} {text} is not a multiple of {format_units(step, decimals)}")
    if value // scale >= MAX_UNITS:
        raise RequestError(code, f"{what} {text} is too large")
    return value // scale


def price_units(text: str, spec: MarketSpec) -> int:
    return _units(text, spec.price_decimals, spec.tick, INVALID_PRICE, "price")


def quantity_units(text: str, spec: MarketSpec) -> int:
    return _units(text, spec.quantity_decimals, spec.step, INVALID_QUANTITY, "quantity")


def quote_units(text: str, decimals: int) -> int:
    return _units(text, decimals, 1, INVALID_QUANTITY, "quoteQuantity")


def order_tx(p: OrderExecuteParams, account: str, markets: dict[str, MarketSpec], quote_decimals: int | None) -> PlaceOrder:
    spec = markets.get(p.symbol)
    if spec is None:
        raise RequestError(INVALID_SYMBOL, f"Unknown symbol {p.symbol}")
    if p.reduceOnly:
        raise RequestError(INVALID_REQUEST, "reduceOnly applies to futures only")
    if p.clientId is not None and not 0 <= p.clientId < 2**32:
        raise RequestError(INVALID_REQUEST, "clientId must be a uint32")
    if p.orderType == "Limit":
        if p.price is None or p.quantity is None:
            raise RequestError(INVALID_REQUEST, "Limit orders need price and quantity")
        price = price_units(p.price, spec)
        qty = quantity_units(p.quantity, spec)
        quote = 0
        order_type = LIMIT
    else:
        if (p.quantity is None) == (p.quoteQuantity is None):
            raise RequestError(INVALID_REQUEST, "Market orders need exactly one of quantity and quoteQuantity")
        if p.postOnly:
            raise RequestError(INVALID_REQUEST, "postOnly applies to limit orders")
        price = 0
        qty = quantity_units(p.quantity, spec) if p.quantity is not None else 0
        quote = quote_units(p.quoteQuantity, quote_decimals) if p.quoteQuantity is not None else 0
        order_type = MARKET
    if qty == 0 and quote == 0:
        raise RequestError(INVALID_QUANTITY, "quantity must be positive")
    return PlaceOrder(account, p.symbol, _SIDES[p.side], order_type, _TIFS[p.timeInForce], p.postOnly, price, qty, quote, p.clientId, _STPS[p.selfTradePrevention])


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
        oid, cid, side, price, qty, executed, executed_quote = view
        return self.order(symbol, oid, cid, side, price, qty, executed, executed_quote, PARTIALLY_FILLED if executed else NEW)


def result_frame(req_id: Any, result: Any) -> str:
    return msgspec.json.encode({"id": req_id, "result": result}).decode()


def error_frame(req_id: Any, code: str | int, message: str) -> str:
    return msgspec.json.encode({"id": req_id, "error": {"code": code, "message": message}}).decode()
