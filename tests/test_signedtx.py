"""A validator rebuilds each transaction from its signed string: a reused signature fails."""

from __future__ import annotations

import msgspec

from satchel import config
from satchel.gateway import protocol as P
from satchel.messages import CancelOrder, PlaceOrder
from satchel.signedtx import matches
from satchel.signing import Keypair, auth_for, signing_string

MARKETS = {m.symbol: m for m in config.load().market_specs()}
DECIMALS = {"USDC": 6, "SOL": 9, "BTC": 8, "ETH": 8}


def signed_order(key: Keypair, **extra) -> PlaceOrder:
    params = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150.25", "quantity": "2", **extra}
    values = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items()}
    tx = P.order_tx(P.typed(values, P.OrderExecuteParams), key.api_key, MARKETS, 6)
    return msgspec.structs.replace(tx, auth=auth_for(key, "orderExecute", params))


def test_matching_transactions_pass():
    key = Keypair.generate()
    assert matches(signed_order(key), "orderExecute", MARKETS, DECIMALS)
    assert matches(signed_order(key, clientId=7, timeInForce="IOC", postOnly=False), "orderExecute", MARKETS, DECIMALS)
    cancel = CancelOrder(key.api_key, "SOL_USDC", 42, None, auth_for(key, "orderCancel", {"symbol": "SOL_USDC", "orderId": 42}))
    assert matches(cancel, "orderCancel", MARKETS, DECIMALS)


def test_altered_transactions_fail():
    key = Keypair.generate()
    tx = signed_order(key)
    # (another account is caught by the signature itself: it is checked against tx.account's key)
    for change in ({"price": tx.price + 1}, {"quantity": 1}, {"side": 1}, {"tif": 1}, {"symbol": "ETH_USDC"}):
        assert not matches(msgspec.structs.replace(tx, **change), "orderExecute", MARKETS, DECIMALS), change
    assert not matches(tx, "orderCancel", MARKETS, DECIMALS)


def test_percent_encoded_signing_is_understood():
    key = Keypair.generate()
    params = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150.25", "quantity": "2", "note": "a b/c"}
    msg = signing_string("orderExecute", params, 1, 5000, encoded=True)
    tx = signed_order(key)
    auth = msgspec.structs.replace(tx.auth, message=msg)
    assert matches(msgspec.structs.replace(tx, auth=auth), "orderExecute", MARKETS, DECIMALS)
