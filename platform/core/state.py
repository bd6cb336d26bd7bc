"""Named ledger state: what ``Engine.canonical()`` returns, a snapshot holds and the state
hash is taken over.

Every struct is ``array_like``: it encodes as a msgpack array in field order, so the
encoding stays compact and deterministic (every list is sorted, or kept in an order the
rules fix, by whoever builds it), while every reader uses field names. Decode a snapshot's
state with ``state_decoder`` (or ``msgspec.msgpack.decode(raw, type=EngineState)``).

Adding a field changes the state hash: append it at the end and bump ``RULES_VERSION``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from satchel.core.messages import AssetSpec, MarketSpec


class _State(msgspec.Struct, array_like=True):
    pass


# ---------------------------------------------------------------- risk


class AssetBalance(_State):
    asset: str
    free: int
    held: int


class AccountBalances(_State):
    account: str
    assets: list[AssetBalance]  # sorted by asset


class HoldState(_State):
    """What is still held for one open order."""

    order_id: int
    account: str
    asset: str
    amount: int


class AssetAmount(_State):
    asset: str
    amount: int


class AccountRules(_State):
    """The markets an account may not trade ("*" = all)."""

    account: str
    markets_off: list[str]  # sorted


class RiskState(_State):
    balances: list[AccountBalances]  # sorted by account
    holds: list[HoldState]  # sorted by order id
    fees: list[AssetAmount]  # fees collected, sorted by asset
    deposits: list[AssetAmount]  # sorted by asset
    accounts_off: list[AccountRules]  # sorted by account
    markets_off: list[str]  # markets with trading disabled, sorted


# ---------------------------------------------------------------- books


class RestingOrder(_State):
    order_id: int
    account: str
    remaining: int
    executed: int
    executed_quote: int
    client_id: int | None
    quantity: int
    created: int  # block timestamp, us


class LevelState(_State):
    key: int  # price for asks, -price for bids
    total: int
    orders: list[RestingOrder]  # in time priority


class BookSides(_State):
    bids: list[LevelState]  # sorted by key (best first)
    asks: list[LevelState]


class BookState(_State):
    symbol: str
    last_price: int
    trade_id: int
    update_id: int
    sides: BookSides


# ---------------------------------------------------------------- engine


class SeenSignature(_State):
    signature: bytes
    expiry: int  # ms


class PeriodicState(_State):
    name: str
    state: Any  # the periodic actor's own ``StateOf`` reply


class EngineState(_State):
    rules_version: int
    admin: str | None
    assets: list[AssetSpec]  # sorted by symbol
    # listing order matters (matching fans out in it), so it is kept, not sorted
    markets: list[MarketSpec]
    risk: RiskState
    books: list[BookState]  # sorted by symbol
    guard: list[SeenSignature]  # sorted by signature
    last_seq: int
    last_timestamp: int
    internal_seq: int
    periodic: list[PeriodicState]  # in registration order


state_encoder = msgspec.msgpack.Encoder()
state_decoder = msgspec.msgpack.Decoder(EngineState)
