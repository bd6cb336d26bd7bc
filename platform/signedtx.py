"""Does a signed request say what the transaction says?

A valid signature only proves the account signed *some* string. A validator also
rebuilds the transaction from the signed string's parameters -- with the same
conversions the gateway used -- and requires it to equal the journaled transaction, so
a node cannot reuse a signature for a different price, quantity, side or account.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

import msgspec

from satchel.gateway import protocol as P
from satchel.messages import (
    CancelAll, CancelOrder, Deposit, ListAsset, ListMarket, MarketSpec, PlaceOrder, SetAdmin, SetFees, SetTrading,
)


def _params(message: bytes, instruction: str, decode: bool) -> dict[str, str] | None:
    text = message.decode(errors="replace")
    head = f"instruction={instruction}"
    if not text.startswith(head):
        return None
    body = text[len(head):]
    cut = body.rfind("&timestamp=")
    if cut < 0:
        return None
    body = body[:cut].lstrip("&")
    out: dict[str, str] = {}
    for part in body.split("&") if body else ():
        key, eq, value = part.partition("=")
        if not eq:
            return None
        out[unquote_plus(key) if decode else key] = unquote_plus(value) if decode else value
    return out


def _expected(tx: Any, values: dict[str, str], markets: dict[str, MarketSpec], decimals: dict[str, int]) -> Any:
    cls = tx.__class__
    if cls is PlaceOrder:
        p = P.typed(values, P.OrderExecuteParams)
        spec = markets.get(p.symbol)
        return P.order_tx(p, tx.account, markets, decimals.get(spec.quote) if spec else None)
    if cls is CancelOrder:
        p = P.typed(values, P.OrderRefParams)
        return CancelOrder(tx.account, p.symbol, p.orderId, p.clientId)
    if cls is CancelAll:
        return CancelAll(tx.account, P.typed(values, P.SymbolParams).symbol)
    if cls is Deposit:
        p = P.typed(values, P.DepositParams)
        if p.asset not in decimals:
            return None
        return Deposit(tx.admin, p.account, p.asset, P.quote_units(p.quantity, decimals[p.asset]))
    if cls is SetTrading:
        p = P.typed(values, P.SetTradingParams)
        return SetTrading(tx.admin, p.account, p.symbol, p.enabled)
    if cls is SetFees:
        p = P.typed(values, P.SetFeesParams)
        return SetFees(tx.admin, p.symbol, p.makerFeeBps, p.takerFeeBps)
    if cls is SetAdmin:
        return SetAdmin(values.get("key", ""))
    if cls is ListAsset:
        return tx if values.get("symbol") == tx.spec.symbol else None
    if cls is ListMarket:
        return tx if values.get("symbol") == tx.spec.symbol else None
    return None


def matches(tx: Any, instruction: str, markets: dict[str, MarketSpec], decimals: dict[str, int]) -> bool:
    """True if the transaction is exactly what its signed string asks for."""
    bare = msgspec.structs.replace(tx, auth=None)
    for decode in (False, True):  # raw values, then the percent-encoded form ccxt signs
        values = _params(tx.auth.message, instruction, decode)
        if values is None:
            continue
        try:
            expected = _expected(tx, values, markets, decimals)
        except (P.RequestError, msgspec.ValidationError, KeyError, ValueError, TypeError):
            continue
        if expected is not None and msgspec.structs.replace(expected, auth=None) == bare:
            return True
    return False
