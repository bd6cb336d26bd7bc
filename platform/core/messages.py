"""Everything that crosses an actor boundary or lands in the journal.

Transactions are what edges submit and the journal stores; events are what the
engine emits. Both are msgspec Structs encoded as arrays (``array_like``) with a small
integer tag, so a journal record is compact and decodes back into exactly these types
-- the validator of a later issue decodes the same bytes with the same schemas.
Integers only: prices in price units, quantities in quantity units, balances in an
asset's smallest unit (see ``amounts``).

New record or event types are added with new tags; existing tags never change meaning.
"""

from __future__ import annotations

from typing import Union

import msgspec

BID = 0
ASK = 1
SIDE_NAMES = ("Bid", "Ask")

LIMIT = 0
MARKET = 1
ORDER_TYPE_NAMES = ("Limit", "Market")

GTC = 0
IOC = 1
FOK = 2
TIF_NAMES = ("GTC", "IOC", "FOK")

REJECT_TAKER = 0
REJECT_MAKER = 1
REJECT_BOTH = 2
STP_NAMES = ("RejectTaker", "RejectMaker", "RejectBoth")

# Order statuses as clients see them (Backpack's names).
NEW = "New"
PARTIALLY_FILLED = "PartiallyFilled"
FILLED = "Filled"
CANCELLED = "Cancelled"
EXPIRED = "Expired"
REJECTED = "Rejected"


class _Rec(msgspec.Struct, array_like=True, frozen=True, tag_field="k"):
    pass


# ---------------------------------------------------------------- configuration specs


class AssetSpec(msgspec.Struct, array_like=True, frozen=True):
    symbol: str
    decimals: int


class MarketSpec(msgspec.Struct, array_like=True, frozen=True):
    """A spot market in integer terms. Built from decimal config by ``config``."""

    symbol: str
    base: str
    quote: str
    price_decimals: int
    tick: int  # price units per tick
    quantity_decimals: int
    step: int  # quantity units per step
    min_quantity: int  # quantity units
    min_notional: int  # quote asset units
    maker_fee_bps: int
    taker_fee_bps: int
    price_band_bps: int  # 0 disables the band
    notional_mult: int  # quote units per (price unit x quantity unit)
    base_mult: int  # base asset units per quantity unit


# ---------------------------------------------------------------- transactions


class Auth(msgspec.Struct, array_like=True, frozen=True):
    """A signed request as it arrived, kept so anyone can re-verify it.

    The parameters are kept as the client signed them -- (key, literal text) pairs,
    sorted by key -- not as the signed string: a value may hold ``&`` or ``=``, and
    such a string cannot be split back into its parameters. The signed string is
    rebuilt from them (``signing.signed_message``) and the transaction is rebuilt
    from them by the same rules the gateway applied (``instructions.build``).
    """

    params: tuple[tuple[str, str], ...]
    encoded: bool  # signed over percent-encoded keys and values (ccxt does), not the raw texts
    signature: bytes  # 64-byte Ed25519 signature
    timestamp: int  # client's timestamp, ms
    window: int  # validity window, ms


class SetAdmin(_Rec, tag=1):
    """Genesis: names the key whose signature admin transactions must carry."""

    key: str
    auth: Auth | None = None


class ListAsset(_Rec, tag=2):
    admin: str
    spec: AssetSpec
    auth: Auth | None = None


class ListMarket(_Rec, tag=3):
    admin: str
    spec: MarketSpec
    auth: Auth | None = None


class Deposit(_Rec, tag=4):
    admin: str
    account: str
    asset: str
    amount: int
    auth: Auth | None = None


class SetTrading(_Rec, tag=5):
    """Enable or disable spot trading: for one account (``account`` set; ``symbol`` set
    for one market, None for all) or for a whole market (``account`` None)."""

    admin: str
    account: str | None
    symbol: str | None
    enabled: bool
    auth: Auth | None = None


class SetFees(_Rec, tag=6):
    """Change a market's fee schedule, effective from this transaction on."""

    admin: str
    symbol: str
    maker_fee_bps: int
    taker_fee_bps: int
    auth: Auth | None = None


class PlaceOrder(_Rec, tag=10):
    account: str
    symbol: str
    side: int
    order_type: int
    tif: int
    post_only: bool
    price: int  # 0 for market orders
    quantity: int  # 0 when a market order gives quote_quantity instead
    quote_quantity: int
    client_id: int | None
    stp: int
    auth: Auth | None = None


class CancelOrder(_Rec, tag=11):
    account: str
    symbol: str
    order_id: int | None
    client_id: int | None
    auth: Auth | None = None


class CancelAll(_Rec, tag=12):
    account: str
    symbol: str
    auth: Auth | None = None


# Every transaction type has an ``auth`` field (None for the node's own genesis records).
Tx = Union[SetAdmin, ListAsset, ListMarket, Deposit, SetTrading, SetFees, PlaceOrder, CancelOrder, CancelAll]


# ---------------------------------------------------------------- events
# Every event's first field is the sequence number of the transaction that caused it,
# so the node can route a reply to its submitter in one pass.


class OrderAccepted(_Rec, tag=20):
    seq: int
    order_id: int
    account: str
    symbol: str
    side: int
    order_type: int
    tif: int
    price: int
    quantity: int
    quote_quantity: int
    client_id: int | None
    post_only: bool


class Fill(_Rec, tag=21):
    seq: int
    symbol: str
    trade_id: int
    price: int
    quantity: int
    quote: int  # notional in quote units
    taker_order: int
    maker_order: int
    taker_account: str
    maker_account: str
    taker_side: int
    taker_fee: int  # quote units; negative is a rebate
    maker_fee: int
    maker_left: int  # maker's remaining quantity after this fill
    taker_left: int  # taker's remaining quantity after this fill (its cap for quote-sized orders)


class OrderDone(_Rec, tag=22):
    """An order left the book or never entered it; its hold is released."""

    seq: int
    order_id: int
    account: str
    symbol: str
    client_id: int | None
    side: int
    price: int
    quantity: int  # as ordered (0 for a market order sized in quote)
    status: str  # FILLED, CANCELLED, EXPIRED, REJECTED
    reason: str  # "" or a Backpack-style reason
    executed_quantity: int
    executed_quote: int
    created: int = 0  # when the order was placed (block timestamp, us); 0 if it never was


def order_rejected(seq: int, tx: "PlaceOrder", reason: str) -> OrderDone:
    """The event for an order refused before it reached the book."""
    return OrderDone(seq, seq, tx.account, tx.symbol, tx.client_id, tx.side, tx.price, tx.quantity, REJECTED, reason, 0, 0)


class TxRejected(_Rec, tag=23):
    seq: int
    account: str
    code: str
    message: str


class Deposited(_Rec, tag=24):
    seq: int
    account: str
    asset: str
    amount: int


class BalanceChanged(_Rec, tag=25):
    seq: int  # last transaction of the block
    account: str
    asset: str
    free: int
    held: int


class DepthDelta(_Rec, tag=26):
    """Changed price levels of one market in one block: absolute quantities, 0 = gone."""

    seq: int
    symbol: str
    update_id: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class ConfigChanged(_Rec, tag=27):
    """A configuration change applied. A listing or a fee change carries the spec now in
    force (``asset`` or ``market``), so the edges learn the configuration from durable
    events rather than by reading the engine."""

    seq: int
    what: str
    name: str
    asset: AssetSpec | None = None
    market: MarketSpec | None = None


Event = Union[OrderAccepted, Fill, OrderDone, TxRejected, Deposited, BalanceChanged, DepthDelta, ConfigChanged]


# ---------------------------------------------------------------- actor messages
# What the engine and the edges say to the core actors: one class per request, handled
# by the actor's single ``handle``; the reply is its return value (see ``core.actor``).
# They never cross the journal, so they carry live objects where that is cheaper.


class Entry:
    """An order that passed pre-trade, with the caps its hold allows (risk -> book)."""

    __slots__ = ("seq", "tx", "qty_cap", "quote_cap")

    def __init__(self, seq: int, tx: "PlaceOrder", qty_cap: int, quote_cap: int | None):
        self.seq = seq
        self.tx = tx
        self.qty_cap = qty_cap  # quantity units the order may fill at most
        self.quote_cap = quote_cap  # notional it may spend/receive at most; None = no cap


class PreTrade(msgspec.Struct):
    """Phase 1 (risk): hold funds for each new order, credit deposits, route by market."""

    batch: list  # (seq, transaction) in sequence order


class PreTraded(msgspec.Struct):
    routed: dict  # symbol -> book commands (Entry or (seq, cancel)) in sequence order
    events: list  # rejections and deposits, in sequence order


class Match(msgspec.Struct):
    """Phase 2 (a book): match this market's share of the block, in sequence order."""

    commands: list
    timestamp: int  # the block's, us: an order's creation time


class Matched(msgspec.Struct):
    events: list
    delta: DepthDelta | None  # the levels the batch changed


class Settle(msgspec.Struct):
    """Phase 3 (risk): apply fills in (sequence, fill) order, release unused holds."""

    events: list
    last_seq: int


class Settled(msgspec.Struct):
    events: list  # BalanceChanged, one per touched (account, asset)


class Tick(msgspec.Struct):
    """Phase 4 (periodic actors), once per block: the actor decides whether the block's
    timestamp crossed one of its boundaries (funding hour, interest accrual, ...)."""

    timestamp: int
    previous: int  # the previous block's timestamp


class Ticked(msgspec.Struct):
    events: list = []
    orders: list = []  # PlaceOrder the actor generates (liquidations): they re-enter phases 1-3


class ListAssetSpec(msgspec.Struct):
    spec: AssetSpec


class ListMarketSpec(msgspec.Struct):
    """A market listed, or its spec changed (fees)."""

    spec: MarketSpec


class SetPermission(msgspec.Struct):
    account: str | None
    symbol: str | None
    enabled: bool


class BalancesOf(msgspec.Struct):
    account: str


class BalanceOf(msgspec.Struct):
    account: str
    asset: str


class Totals(msgspec.Struct):
    """Per asset: free + held over all accounts plus fees (conservation checks)."""


class LedgerOf(msgspec.Struct):
    """Per asset: (deposits, fees, balances)."""


class OpenOrders(msgspec.Struct):
    account: str


class OrderOf(msgspec.Struct):
    account: str
    order_id: int | None
    client_id: int | None


class DepthOf(msgspec.Struct):
    limit: int | None = None


class StateOf(msgspec.Struct):
    """The actor's whole state, deterministic (hash and snapshot input): a ``core.state``
    struct (``RiskState``, ``BookState``) or, for a periodic actor, its own plain data."""


class Restore(msgspec.Struct):
    state: object  # what the actor answered to ``StateOf``


class StateHashOf(msgspec.Struct):
    """To the engine itself: the hash of all ledger state."""


class Query(msgspec.Struct):
    """A read the edges ask the engine between blocks: ``message`` for ``target`` ("engine",
    "risk" or a market's symbol for its book)."""

    target: str
    message: msgspec.Struct


# ---------------------------------------------------------------- blocks


class BlockHeader(msgspec.Struct, array_like=True, frozen=True):
    height: int
    first_seq: int
    timestamp: int  # microseconds since the epoch, never decreasing
    prev_hash: bytes
    rules_version: int
    tx_count: int
    events_hash: bytes  # sha256 of the msgpack-encoded event list
    txs_hash: bytes  # sha256 of the record's msgpack-encoded transaction list, exactly as journaled


class Block(msgspec.Struct, array_like=True, frozen=True):
    header: BlockHeader
    txs: list[Tx]


class BlockHeaderOnly(msgspec.Struct, array_like=True, frozen=True):
    """A journal record decoded only as far as its header (skipping old blocks fast)."""

    header: BlockHeader
    txs: msgspec.Raw


block_encoder = msgspec.msgpack.Encoder()
header_decoder = msgspec.msgpack.Decoder(BlockHeaderOnly)
block_decoder = msgspec.msgpack.Decoder(Block)
events_encoder = msgspec.msgpack.Encoder()
events_decoder = msgspec.msgpack.Decoder(list[Event])
