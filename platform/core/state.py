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

from satchel.core.lending import Pool
from satchel.core.messages import (
    AssetSpec, ChainSpec, FundingPayment, Liquidation, MarginSpec, MarketSpec, MarkPrice, MarkView, PlaceOrder,
    SeasonSpec,
)


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
    base: str = ""  # a spot bid's: the asset it buys (its hold counts in initial margin)


class AssetAmount(_State):
    asset: str
    amount: int


class AccountRules(_State):
    """The markets an account may not trade ("*" = all)."""

    account: str
    markets_off: list[str]  # sorted


class PositionState(_State):
    """One account's position in one perp (see ``messages.PositionChanged``)."""

    account: str
    symbol: str
    size: int
    net_cost: int
    entry_notional: int
    realized: int
    funding: int
    funding_index: int  # the market's cumulative funding index when last paid
    position_id: int  # sequence number of the fill that opened it


class PerpOrderState(_State):
    """An open perp order's risk: what it may still add to the position."""

    order_id: int
    account: str
    symbol: str
    side: int
    remaining: int  # quantity units
    price: int  # its limit, or the mark it was checked at for a market order
    reduce_only: bool
    liquidation: bool  # placed by the liquidation engine (pays the liquidation fee)


class TriggerState(_State):
    order_id: int
    order: PlaceOrder  # the order waiting (without its auth)
    rising: bool  # fires when the price reaches trigger_price from below


class AccountLeverage(_State):
    account: str
    leverage: int


class LoanState(_State):
    account: str
    asset: str
    lent: int  # scaled by the lend index
    borrowed: int  # scaled by the borrow index
    principal: int  # amounts lent minus redeemed (or borrowed minus repaid, negative)


class LoansState(_State):
    loans: list[LoanState]  # sorted by (account, asset)
    auto_lend_off: list[str]  # sorted accounts
    auto_repay_on: list[str]
    due: list[str]  # accounts to sweep at the next sweep, sorted
    pending: list[str]  # accounts touched in the interval before: lent at the next sweep if quiet since
    order_flags: list[tuple[int, int]]  # open spot order id -> its AUTO_LEND / AUTO_BORROW_REPAY flags
    next_sweep: int  # us
    flagged: list[tuple[str, int]] = []  # accounts whose flagged orders filled after the block's sweep
    backlog: list[tuple[str, int]] = []  # accounts (with sweep flags) a burst left for the next blocks


class ChainState(_State):
    spec: ChainSpec
    paused: str | None  # the reason, None when open
    paused_by: str = ""  # the key that signed the pause in force


class WithdrawalState(_State):
    withdrawal_id: int
    account: str
    chain: str
    asset: str
    amount: int
    address: str
    status: str
    tx_hash: str
    client_id: int | None


class MoveState(_State):
    """A custody move booked but not yet reported carried out by the chain's adapter."""

    seq: int  # the transaction that booked it (its id)
    chain: str
    asset: str
    amount: int
    to_cold: bool


class CustodyState(_State):
    chains: list[ChainState]  # sorted by name
    credited: list[str]  # "chain/tx_hash/log_index" of every credited deposit, sorted
    hot: list[tuple[str, str, int]]  # (chain, asset, units), sorted
    cold: list[tuple[str, str, int]]
    reserved: list[tuple[str, str, int]]
    withdrawals: list[WithdrawalState]  # open ones, by id
    withdrawn: list[tuple[str, int]]  # confirmed withdrawals per asset, sorted
    moves: list[MoveState] = []  # open ones, by id



class ProfileState(_State):
    account: str
    tier: int
    jurisdiction: str
    tags: list[str]  # sorted
    seq: int  # the transaction that set it


class TierState(_State):
    tier: int
    withdrawals_per_day: int  # -1: no limit
    max_order_notional: list[tuple[str, int]]  # (quote asset, units), sorted
    seq: int


class RuleState(_State):
    scope: str  # "account" | "jurisdiction"
    who: str
    what: str  # a product or "market:<symbol>"
    allowed: bool
    seq: int


class ComplianceState(_State):
    profiles: list[ProfileState]  # sorted by account
    tiers: list[TierState]  # sorted by tier
    rules: list[RuleState]  # sorted by (scope, who, what)
    withdrawals: list[tuple[str, int, int]]  # (account, UTC day, withdrawals that day), sorted

class MarginState(_State):
    spec: MarginSpec | None
    positions: list[PositionState]  # sorted by (account, symbol)
    orders: list[PerpOrderState]  # sorted by order id
    triggers: list[TriggerState]  # sorted by order id
    leverage: list[AccountLeverage]  # sorted by account
    marks: list[tuple[str, MarkView]]  # sorted by symbol
    prices: list[MarkPrice]  # the last MarkPrice per perp (funding estimate), sorted by symbol
    funding_index: list[tuple[str, int]]  # cumulative per perp, sorted by symbol
    insurance: int  # the insurance fund, in the settlement asset
    liquidating: list[str]  # accounts in liquidation, sorted
    next_settle: int  # us: unrealized PnL is next realized at this block time
    next_open_interest: int  # us
    history: list[tuple[str, list[FundingPayment | Liquidation]]]  # account -> its latest such events, sorted
    loans: LoansState | None = None
    custody: CustodyState | None = None
    compliance: ComplianceState | None = None


class RiskState(_State):
    balances: list[AccountBalances]  # sorted by account
    holds: list[HoldState]  # sorted by order id
    fees: list[AssetAmount]  # fees collected, sorted by asset
    deposits: list[AssetAmount]  # sorted by asset
    accounts_off: list[AccountRules]  # sorted by account
    markets_off: list[str]  # markets with trading disabled, sorted
    margin: MarginState | None = None


# ---------------------------------------------------------------- funding and marks


class FundingMarketState(_State):
    symbol: str
    index: int
    index_time: int
    mark: int
    basis: int  # EWMA of (book price - index), price units
    top: tuple[int, int, int]  # best bid, best ask, last
    premium_sum: int  # PPB, over this interval's samples
    samples: int
    cumulative: int  # funding index, quote units x PPB per quantity unit
    last_sample: int  # us: the sample slot last taken
    interval_end: int  # us: funding is next paid at this block time
    last_rate: int  # PPB, the rate paid at the last interval end


class FundingState(_State):
    markets: list[FundingMarketState]  # in listing order


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



class RewardAccountState(_State):
    season: int
    account: str
    points: int  # millionths of a point
    volume: int  # traded, units of the season's asset
    kinds: list[tuple[str, int]]  # points by source (maker, taker, streak, milestone, referral, multiplier), sorted
    last_day: int  # UTC day (days since the epoch) of the last trade, -1 before
    streak: int  # consecutive UTC days traded, up to last_day
    achievements: list[tuple[str, int]]  # (name, block height unlocked), sorted
    heights: list[int]  # the trading points' history: the blocks, oldest first
    traded: list[int]  # and the trading points earned in each (after multipliers)
    referees: int
    lent: int = 0  # the claim in the season's asset after its last lending movement
    lent_since: int = 0  # us: since when (lending points are credited at each movement)


class MultiplierState(_State):
    seq: int
    scope: str
    who: str
    factor: int
    from_height: int
    to_height: int


class RewardsState(_State):
    seasons: list[SeasonSpec]  # sorted by id
    accounts: list[RewardAccountState]  # sorted by (season, account)
    codes: list[tuple[str, str]]  # (referral code, account), sorted
    referrers: list[tuple[str, str]]  # (account, its referrer), sorted
    tags: list[tuple[str, list[str]]]  # (account, its profile's tags), sorted
    multipliers: list[MultiplierState]  # by seq

class EngineState(_State):
    rules_version: int
    admin: str | None
    margin: MarginSpec | None
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
    funding: FundingState | None = None
    lending: list[Pool] = []  # sorted by asset
    height: int = 0  # the last block applied
    rewards: RewardsState | None = None


state_encoder = msgspec.msgpack.Encoder()
state_decoder = msgspec.msgpack.Decoder(EngineState)
