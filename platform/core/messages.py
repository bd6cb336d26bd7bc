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
TRIGGER_PENDING = "TriggerPending"

# What a trigger order's price is compared with (``triggerBy``).
BY_MARK = 0
BY_LAST = 1
BY_INDEX = 2
TRIGGER_BY_NAMES = ("MarkPrice", "LastPrice", "IndexPrice")

# Who placed an order: a user, the liquidation engine, or a user's trigger that fired.
USER = 0
LIQUIDATION = 1
TRIGGERED = 2

# Spot-margin flags of an order (``PlaceOrder.auto``, Backpack's autoBorrow, ...): it may
# borrow what it lacks, repay a borrow with its proceeds, lend its proceeds, redeem a lend.
AUTO_BORROW = 1
AUTO_BORROW_REPAY = 2
AUTO_LEND = 4
AUTO_LEND_REDEEM = 8

# A borrowLendExecute's side (Backpack's Borrow | Lend).
BORROW = 0
LEND = 1
LEND_SIDE_NAMES = ("Borrow", "Lend")

# Fractions (margin factors, weights, funding rates, price bands) are integers in parts
# per billion: 0.02 is 20_000_000.
PPB = 10**9


class _Rec(msgspec.Struct, array_like=True, frozen=True, tag_field="k"):
    pass


# ---------------------------------------------------------------- configuration specs


class AssetSpec(msgspec.Struct, array_like=True, frozen=True):
    symbol: str
    decimals: int
    # as collateral: value = quantity x price x weight, the weight shrinking with size:
    # weight = min(collateral_weight, 1.1 / (haircut_penalty x sqrt(notional in whole quote) + 1))
    collateral_weight: int = 0  # PPB; 0 = not collateral (the settlement asset always counts at 1)
    haircut_penalty: int = 0  # PPB


class PerpSpec(msgspec.Struct, array_like=True, frozen=True):
    """A perpetual future's risk parameters (fractions in PPB, times in us).

    Position IMF = max(imf_base, 1/leverage, imf_factor x sqrt(notional)), MMF likewise
    with the mmf fields, notional in whole quote units (Backpack's ``sqrt`` function).
    """

    imf_base: int
    imf_factor: int
    mmf_base: int
    mmf_factor: int
    max_leverage: int  # whole multiples
    open_interest_limit: int  # quantity units; long open interest may not exceed it
    band_min: int  # a limit price must lie within mark x [band_min, band_max]
    band_max: int
    impact_max: int  # a taker bid fills no higher than best ask x impact_max
    impact_min: int  # a taker ask fills no lower than best bid x impact_min
    mark_band: int  # mark = index + basis, the basis bounded to index x mark_band
    funding_interval_us: int
    funding_floor: int  # PPB per interval
    funding_cap: int
    stale_index_us: int  # an index older than this blocks risk-increasing orders


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
    perp: PerpSpec | None = None  # a perpetual future settled in ``quote`` on ``base``


class SeasonSpec(msgspec.Struct, array_like=True, frozen=True):
    """A points season (``actors.rewards``): fills between ``start`` and ``end`` (us of
    sequenced time) earn points per whole unit of ``asset`` traded (fills of markets quoted
    in another asset earn none), ``maker_weight`` / ``taker_weight`` percent of a point each;
    a referrer earns ``referral_bps`` of its referees' trading points; a lender earns
    ``lend_weight`` percent of a point per whole unit of ``asset`` lent, per day."""

    id: int
    name: str
    start: int
    end: int
    asset: str
    maker_weight: int
    taker_weight: int
    referral_bps: int
    lend_weight: int = 0


class ChainSpec(msgspec.Struct, array_like=True, frozen=True):
    """A chain the exchange takes deposits from and sends withdrawals to, and the key its
    adapter signs its reports with. ``hot_limit`` per asset: what the hot wallet keeps;
    credited deposits beyond it are booked to cold storage (the adapter moves them)."""

    name: str
    adapter: str  # the adapter's API key
    assets: list[str]
    confirmations: int  # blocks a deposit waits before the adapter reports it
    hot_limit: list[tuple[str, int]]  # (asset, units), sorted by asset


class MarginSpec(msgspec.Struct, array_like=True, frozen=True):
    """Platform-wide margin and liquidation rules (fractions in PPB, times in us)."""

    settle_interval_us: int  # unrealized PnL is realized into the quote asset this often
    sample_interval_us: int  # premium samples and mark updates
    open_interest_interval_us: int  # openInterest events
    liquidation_fee_bps: int  # charged on liquidation fills, paid to the insurance fund
    liquidation_slice: int  # PPB of a position unwound per book order
    autoclose_divisor: int  # auto-close margin fraction = max(MMF / divisor, MMF - offset)
    autoclose_offset: int  # PPB
    backstop: str  # the backstop liquidity account ("" = none)
    settlement_asset: str  # what perps settle in (USDC)


class LendingSpec(msgspec.Struct, array_like=True, frozen=True):
    """One asset's interest-rate curve (annual rates and fractions in PPB).

    borrow = base_rate + slope1 x U / optimal below the kink,
    base_rate + slope1 + slope2 x (U - optimal) / (1 - optimal) above it;
    lend = borrow x U x (1 - reserve_factor).
    """

    asset: str
    base_rate: int
    slope1: int
    slope2: int
    optimal_utilization: int  # the kink, 0 < optimal <= PPB
    reserve_factor: int  # the reserve's share of borrowers' interest, 0 <= f <= PPB
    borrow_imf: int = 100_000_000  # initial margin a borrow needs: its value x this (PPB)
    borrow_mmf: int = 50_000_000  # maintenance margin of a borrow (PPB)
    # an account's own borrows (borrowLendExecute, autoBorrow) stop at this utilization,
    # so lenders can still redeem the rest of the cash (Backpack's maxUtilization)
    max_utilization: int = 1_000_000_000


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
    # a batch (``POST /api/v1/orders``): one signature covers every item, so each item's
    # record keeps all of them (each item's params, sorted) and its own place; a transaction
    # that carries every item itself (``Instruction.many``) has empty ``params``
    batch: tuple[tuple[tuple[str, str], ...], ...] = ()
    item: int = 0


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
    reduce_only: bool = False  # perps: may only shrink the position
    trigger_price: int = 0  # >0: held as TriggerPending until the ``trigger_by`` price crosses it
    trigger_by: int = BY_MARK
    origin: int = USER  # USER, LIQUIDATION or TRIGGERED (never set by a client)
    auto: int = 0  # AUTO_BORROW | AUTO_BORROW_REPAY | AUTO_LEND | AUTO_LEND_REDEEM (spot margin)
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


class SetMargin(_Rec, tag=7):
    """The platform's margin and liquidation rules (genesis, or an admin change)."""

    admin: str
    spec: MarginSpec
    auth: Auth | None = None


class SetIndex(_Rec, tag=13):
    """The oracle's index price for a perpetual market, in price units."""

    admin: str
    symbol: str
    price: int
    auth: Auth | None = None


class SetLeverage(_Rec, tag=14):
    """An account's settings (Backpack's ``accountUpdate``): its leverage limit
    (IMF >= 1/leverage; 0 leaves it), auto-lend of idle balances and auto-repay of
    borrows from incoming funds (1 on, 0 off, -1 leaves it)."""

    account: str
    leverage: int
    auth: Auth | None = None
    auto_lend: int = -1
    auto_repay: int = -1


class BorrowLend(_Rec, tag=16):
    """Backpack's ``borrowLendExecute``: move the account's net lend position in
    ``asset`` by ``quantity`` -- up (``LEND``: repay a borrow first, lend the rest) or
    down (``BORROW``: redeem a lend first, borrow the rest)."""

    account: str
    asset: str
    side: int  # LEND or BORROW
    quantity: int
    auth: Auth | None = None


class SetLending(_Rec, tag=15):
    """An asset's borrow/lend curve (genesis, or an admin change): a new pool, or a new
    curve from this transaction on (interest so far accrues at the old one)."""

    admin: str
    spec: LendingSpec
    auth: Auth | None = None


class SetChain(_Rec, tag=17):
    """A chain listed, or its spec changed (genesis, or an admin change)."""

    admin: str
    spec: ChainSpec
    auth: Auth | None = None


class ReportedDeposit(msgspec.Struct, array_like=True, frozen=True):
    """One transfer to an account's deposit address, as a ``ChainDeposit`` reports it."""

    tx_hash: str
    log_index: int
    account: str
    asset: str
    amount: int


class ChainDeposit(_Rec, tag=18):
    """A chain adapter's report (``depositConfirmed``): transfers to accounts' deposit
    addresses reached their confirmations. One transaction carries a chain block's
    deposits under one signature (one record, one signature to check, however many
    deposits). Each is credited once per (chain, tx_hash, log_index)."""

    adapter: str
    chain: str
    deposits: tuple[ReportedDeposit, ...]
    auth: Auth | None = None


class Withdraw(_Rec, tag=19):
    """An account's withdrawal request (``withdraw``): the amount is held at once."""

    account: str
    chain: str
    asset: str
    amount: int
    address: str
    client_id: int | None = None
    auth: Auth | None = None


class WithdrawalSent(_Rec, tag=20):
    """The adapter broadcast withdrawal ``withdrawal_id`` as chain transaction ``tx_hash``."""

    adapter: str
    chain: str
    withdrawal_id: int
    tx_hash: str
    auth: Auth | None = None


class WithdrawalConfirmed(_Rec, tag=21):
    adapter: str
    chain: str
    withdrawal_id: int
    auth: Auth | None = None


class WithdrawalFailed(_Rec, tag=22):
    """The withdrawal will never be on chain: its funds are released."""

    adapter: str
    chain: str
    withdrawal_id: int
    reason: str
    auth: Auth | None = None


class MoveDone(_Rec, tag=46):
    """A chain adapter's report (``custodyMoveDone``): the custody move of ``asset``
    booked by transaction ``seq`` is carried out on chain; the books stop asking for it."""

    adapter: str
    chain: str
    seq: int
    asset: str
    auth: Auth | None = None


class ChainStatus(_Rec, tag=23):
    """Pause or resume a chain's deposits and withdrawals (``chainStatus``), signed by its
    adapter (its circuit breaker) or the admin."""

    signer: str
    chain: str
    paused: bool
    reason: str
    auth: Auth | None = None


class ApproveSweep(_Rec, tag=24):
    """The admin approves moving ``amount`` of ``asset`` from cold storage to the hot
    wallet: queued withdrawals it covers go out."""

    admin: str
    chain: str
    asset: str
    amount: int
    auth: Auth | None = None



class SetProfile(_Rec, tag=25):
    """An account's compliance profile (``actors.compliance``): KYC tier, jurisdiction (a
    code, "" unknown), tags (communities, flags)."""

    admin: str
    account: str
    tier: int
    jurisdiction: str
    tags: tuple[str, ...]
    auth: Auth | None = None


class SetTierLimits(_Rec, tag=26):
    """A KYC tier's limits: withdrawals a UTC day (-1: none), the largest order notional
    per quote asset (units; an asset not named: no limit)."""

    admin: str
    tier: int
    withdrawals_per_day: int
    max_order_notional: tuple[tuple[str, int], ...]
    auth: Auth | None = None


class SetRule(_Rec, tag=27):
    """Allow or deny a product or a market (``what``: a product of
    ``actors.compliance.PRODUCTS`` or ``market:<symbol>``) for an account or a
    jurisdiction (``scope``; ``who`` the key, the code, or ``*`` for every jurisdiction);
    ``allowed`` None removes the rule."""

    admin: str
    scope: str
    who: str
    what: str
    allowed: bool | None
    auth: Auth | None = None


class SetSeason(_Rec, tag=28):
    """A points season set (or changed: same id)."""

    admin: str
    spec: SeasonSpec
    auth: Auth | None = None


class SetMultiplier(_Rec, tag=29):
    """Points multiplier (``factor`` percent: 200 doubles) for an account, a tag or everyone
    (``scope`` account | tag | all, ``who`` the key or the tag, "" for all) on the trading
    points earned in blocks ``from_height`` .. ``to_height`` (0: no end). A range already
    past is applied to the points the accounts earned there (``actors.rewards``)."""

    admin: str
    scope: str
    who: str
    factor: int
    from_height: int
    to_height: int
    auth: Auth | None = None


class ReferralCode(_Rec, tag=30):
    """An account creates its referral code (one per account, unique)."""

    account: str
    code: str
    auth: Auth | None = None


class UseReferral(_Rec, tag=31):
    """An account joins under a referrer's code (once; never its own)."""

    account: str
    code: str
    auth: Auth | None = None



class Transfer(_Rec, tag=32):
    """The admin moves ``amount`` of ``asset`` from one account's free balance to another's
    (a treasury making losers whole after an incident: ``satchel compensate``)."""

    admin: str
    source: str
    target: str
    asset: str
    amount: int
    auth: Auth | None = None


# Every transaction type has an ``auth`` field (None for the node's own genesis records).
Tx = Union[SetAdmin, ListAsset, ListMarket, Deposit, SetTrading, SetFees, PlaceOrder, CancelOrder, CancelAll, SetMargin,
           SetIndex, SetLeverage, SetLending, BorrowLend, SetChain, ChainDeposit, Withdraw, WithdrawalSent,
           WithdrawalConfirmed, WithdrawalFailed, ChainStatus, ApproveSweep, SetProfile, SetTierLimits, SetRule, SetSeason,
           SetMultiplier, ReferralCode, UseReferral, Transfer, MoveDone]


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
    margin: MarginSpec | None = None
    lending: LendingSpec | None = None
    chain: ChainSpec | None = None


class PositionChanged(_Rec, tag=28):
    """A perp position after the block touched it (a fill, funding, settlement, liquidation).

    ``size`` is signed (+long/-short, quantity units). ``net_cost`` is what the position
    cost since it was last settled, in quote units (signed like size): unrealized PnL =
    size x mark - net_cost. ``entry_notional`` is the average-cost basis of the open size
    (the break-even price's numerator), ``realized`` the PnL realized into the quote
    asset, ``funding`` the funding paid (+) or received (-)."""

    seq: int
    account: str
    symbol: str
    size: int
    net_cost: int
    entry_notional: int
    realized: int
    funding: int
    mark: int
    position_id: int  # sequence number of the fill that opened it (0: closed)


class MarkPrice(_Rec, tag=29):
    """A perp's prices at a sample: mark, index, estimated funding rate (PPB per
    interval) and the next funding time (us)."""

    seq: int
    symbol: str
    mark: int
    index: int
    funding_rate: int
    next_funding: int


class FundingPaid(_Rec, tag=30):
    """An interval's funding rate applied (PPB), with the index increment it caused
    (quote units x PPB per quantity unit; positive: longs pay shorts)."""

    seq: int
    symbol: str
    rate: int
    index_delta: int
    cumulative: int
    mark: int
    interval_end: int  # us


class FundingPayment(_Rec, tag=31):
    """One account's funding for one interval: ``amount`` > 0 paid, < 0 received."""

    seq: int
    account: str
    symbol: str
    amount: int
    size: int
    rate: int
    interval_end: int


class Liquidation(_Rec, tag=32):
    """One step of a liquidation, with the inputs that decided it.

    tier 1 cancel orders, 2 unwind in the book, 3 backstop takeover, 4 insurance fund
    cover, 5 auto-deleverage. ``equity``, ``maintenance`` and ``autoclose`` are the
    account's figures when the step was decided (quote units); ``price`` is the price
    (or, for transfers, the notional / quantity) of the step, ``amount`` the quote units
    moved (fund cover) or the notional transferred."""

    seq: int
    account: str
    tier: int
    symbol: str
    side: int
    quantity: int
    price: int
    mark: int
    equity: int
    maintenance: int
    autoclose: int
    amount: int
    counterparty: str
    timestamp: int  # the block's, us


class OpenInterest(_Rec, tag=33):
    seq: int
    symbol: str
    open_interest: int  # long contracts (= short contracts), quantity units


class TriggerPlaced(_Rec, tag=34):
    """An order waiting for its trigger (status TriggerPending)."""

    seq: int
    order_id: int
    account: str
    symbol: str
    side: int
    order_type: int
    price: int
    quantity: int
    trigger_price: int
    trigger_by: int
    reduce_only: bool
    client_id: int | None


class LeverageSet(_Rec, tag=35):
    """An account's settings after an ``accountUpdate``."""

    seq: int
    account: str
    leverage: int
    auto_lend: bool = True
    auto_repay: bool = True


class LendMoved(_Rec, tag=36):
    """One movement between an account and a lending pool. ``kind`` is Backpack's
    eventType (Lend, LendRedeem, Borrow, BorrowRepay), ``source`` why it happened
    (Manual, AutoLend, AutoLendRedeem, AutoBorrowRepay, SpotMargin, Liquidation);
    ``lent`` and ``borrowed`` are the account's claim and debt in the asset afterwards."""

    seq: int
    account: str
    asset: str
    kind: str
    source: str
    amount: int
    lent: int
    borrowed: int
    timestamp: int  # the block's, us
    lent_scaled: int = 0  # the position as the pool keeps it: read models derive interest from
    borrowed_scaled: int = 0  # these and the indices in ``PoolUpdate``
    index: int = 0  # the index the movement used (lend index for Lend/LendRedeem, else borrow index)


class PoolUpdate(_Rec, tag=37):
    """A lending pool's figures, once per second of sequenced time (and when listed or
    changed): totals in asset units, rates and utilization in PPB, indices in RAY."""

    seq: int
    asset: str
    lent: int
    borrowed: int
    cash: int
    reserve: int
    utilization: int
    borrow_rate: int
    lend_rate: int
    lend_index: int
    borrow_index: int
    timestamp: int


class BadDebt(_Rec, tag=38):
    """A debt no collateral covered: ``covered`` came from the insurance fund, ``socialized``
    was taken from the lenders by lowering the lend index."""

    seq: int
    account: str
    asset: str
    amount: int
    covered: int
    socialized: int
    timestamp: int


class ChainCredited(_Rec, tag=39):
    """A chain deposit credited (beside the account's ``Deposited``)."""

    seq: int
    chain: str
    tx_hash: str
    log_index: int
    account: str
    asset: str
    amount: int
    timestamp: int


class WithdrawalUpdate(_Rec, tag=40):
    """A withdrawal's new status: Queued (waiting for a cold-storage sweep), Pending (the
    adapter is to send it), Sent, Confirmed (debited), Failed (released)."""

    seq: int
    withdrawal_id: int
    account: str
    chain: str
    asset: str
    amount: int
    address: str
    status: str
    tx_hash: str
    reason: str
    timestamp: int
    client_id: int | None = None


class ChainStatusChanged(_Rec, tag=41):
    seq: int
    chain: str
    paused: bool
    reason: str
    signer: str
    timestamp: int


class CustodyMoved(_Rec, tag=42):
    """Funds booked between a chain's hot wallet and cold storage; the adapter moves them
    on chain (``to_cold``: the hot wallet passed its limit; else an approved sweep)."""

    seq: int
    chain: str
    asset: str
    amount: int
    to_cold: bool
    timestamp: int



class ComplianceChanged(_Rec, tag=43):
    """A compliance change applied: ``what`` is ``profile`` (``key`` the account),
    ``tierLimits`` (the tier) or ``rule`` (``scope:who``); ``value`` says what it now is."""

    seq: int
    what: str
    key: str
    value: str


class RewardUpdate(_Rec, tag=44):
    """An account's points in a season changed (block's last sequence number, or the
    transaction's): ``points`` its total and ``delta`` this change, in millionths of a
    point; ``achievements`` unlocked by it."""

    seq: int
    season: int
    account: str
    points: int
    delta: int
    achievements: tuple[str, ...] = ()



class Transferred(_Rec, tag=45):
    seq: int
    source: str
    target: str
    asset: str
    amount: int


Event = Union[OrderAccepted, Fill, OrderDone, TxRejected, Deposited, BalanceChanged, DepthDelta, ConfigChanged,
              PositionChanged, MarkPrice, FundingPaid, FundingPayment, Liquidation, OpenInterest, TriggerPlaced, LeverageSet,
              LendMoved, PoolUpdate, BadDebt, ChainCredited, WithdrawalUpdate, ChainStatusChanged, CustodyMoved,
              ComplianceChanged, RewardUpdate, Transferred]


# ---------------------------------------------------------------- actor messages
# What the engine and the edges say to the core actors: one class per request, handled
# by the actor's single ``handle``; the reply is its return value (see ``core.actor``).
# They never cross the journal, so they carry live objects where that is cheaper.


class Entry:
    """An order that passed pre-trade, with the caps its hold allows (risk -> book)."""

    __slots__ = ("seq", "tx", "qty_cap", "quote_cap", "price_cap")

    def __init__(self, seq: int, tx: "PlaceOrder", qty_cap: int, quote_cap: int | None, price_cap: int | None = None):
        self.seq = seq
        self.tx = tx
        self.qty_cap = qty_cap  # quantity units the order may fill at most
        self.quote_cap = quote_cap  # notional it may spend/receive at most; None = no cap
        self.price_cap = price_cap  # a perp market order's worst fill price its margin affords; None = no cap


class PreTrade(msgspec.Struct):
    """Phase 1 (risk): hold funds for each new order, credit deposits, route by market."""

    batch: list  # (seq, transaction) in sequence order
    timestamp: int = 0  # the block's, us (index staleness)


class PreTraded(msgspec.Struct):
    routed: dict  # symbol -> book commands (Entry or (seq, cancel)) in sequence order
    events: list  # rejections and deposits, in sequence order


class Match(msgspec.Struct):
    """Phase 2 (a book): match this market's share of the block, in sequence order."""

    commands: list
    timestamp: int  # the block's, us: an order's creation time
    mark: int = 0  # a perp's mark price (its price band is around it); 0 = none


class Matched(msgspec.Struct):
    events: list
    delta: DepthDelta | None  # the levels the batch changed
    top: tuple = (0, 0, 0)  # (best bid, best ask, last price) after the batch; 0 = none


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
    orders: list = []  # orders the actor generates (liquidations; (order id, order) for a fired trigger): phases 1-3 again
    more: bool = False  # the margin actor: ask ``Escalate`` even with no orders


class Mark(msgspec.Struct):
    """Phase 4 (funding actor): the block's time and the tops of the perp books that
    traded or changed in it; samples premiums, moves marks, pays funding at interval ends."""

    timestamp: int
    previous: int
    last_seq: int
    tops: dict  # symbol -> (best bid, best ask, last)
    indexes: list = []  # the block's SetIndex transactions, in sequence order


class Marked(msgspec.Struct):
    events: list
    marks: dict  # symbol -> MarkView, for every perp whose mark or index changed
    funding: list  # FundingPaid events of intervals that ended


class MarkView(msgspec.Struct, array_like=True, frozen=True):
    mark: int
    index: int
    index_time: int  # us of the last index update (0 = never)
    last: int  # last trade price


class Remark(msgspec.Struct):
    """Phase 4 (margin actor): new marks and ended funding intervals; answers ``Ticked``
    with liquidation and trigger orders that re-enter phases 1-3 in this block."""

    timestamp: int
    previous: int
    last_seq: int
    marks: dict
    funding: list
    prices: list  # MarkPrice events of this block


class Escalate(msgspec.Struct):
    """Phase 4, after the generated orders ran: liquidation tiers 3-5 for accounts the
    book could not bring back above maintenance."""

    last_seq: int
    timestamp: int


class ListMarginSpec(msgspec.Struct):
    spec: MarginSpec


class ChainCommand(msgspec.Struct):
    """To the margin engine, at the transaction's sequence number: a chain listed
    (``SetChain``), paused or resumed (``ChainStatus``), a cold sweep (``ApproveSweep``);
    answers the events."""

    seq: int
    tx: object
    timestamp: int



class ComplianceCommand(msgspec.Struct):
    """To the margin engine, at the transaction's sequence number: a ``SetProfile``,
    ``SetTierLimits`` or ``SetRule``; answers the events."""

    seq: int
    tx: object


class PermissionsOf(msgspec.Struct):
    """An account's effective permissions and where each comes from (a dict, as
    ``actors.compliance.Compliance.effective`` gives it)."""

    account: str

class AccruePoints(msgspec.Struct):
    """To the rewards actor after settlement: the block's fills and lending movements
    (``LendMoved``), in event order; answers its ``RewardUpdate`` events."""

    height: int
    timestamp: int
    last_seq: int
    fills: list
    moves: list = []


class RewardsCommand(msgspec.Struct):
    """To the rewards actor, at the transaction's sequence number: ``SetSeason``,
    ``SetMultiplier``, ``ReferralCode``, ``UseReferral`` or ``SetProfile`` (its tags);
    answers the events."""

    seq: int
    height: int
    timestamp: int
    tx: object


class RewardsOf(msgspec.Struct):
    """An account's points breakdown in a season (None: the latest season) -- a dict."""

    account: str
    season: int | None = None


class LeaderboardOf(msgspec.Struct):
    """A season's top ``limit`` accounts by points (None: the latest season) -- a dict."""

    season: int | None = None
    limit: int = 100


class ChainsOf(msgspec.Struct):
    """The chains, their status and custody books (``actors.custody.ChainView`` list)."""


class WithdrawalsOf(msgspec.Struct):
    """An account's open withdrawals (None: every open one, for adapters)."""

    account: str | None = None


class MovesOf(msgspec.Struct):
    """A chain's custody moves not yet reported carried out (``MoveState`` list), by id."""

    chain: str


class ListLendingSpec(msgspec.Struct):
    """A pool listed or its curve changed, by the transaction ``seq``; answers its events."""

    spec: LendingSpec
    seq: int = 0


class Accrue(msgspec.Struct):
    """Before a block's trading phases: the lending pools accrue interest up to the
    block's time at the rates set after the previous block; answers every pool."""

    timestamp: int


class UsePools(msgspec.Struct):
    """To the margin engine: the pools (``core.lending.Pool``) the block works on."""

    pools: list


class PoolsUsed(msgspec.Struct):
    """To the margin engine, when the block's work is done: the pools it changed."""


class CommitPools(msgspec.Struct):
    """To the lending actor: the block's changed pools, to keep and reprice; answers its
    events (``PoolUpdate`` once per second of sequenced time)."""

    pools: list
    timestamp: int
    last_seq: int


class LendingOf(msgspec.Struct):
    """An account's lend and borrow positions: asset -> ``LendPosition``."""

    account: str


class LendPosition(msgspec.Struct, frozen=True):
    asset: str
    lent: int  # claim, asset units (rounded down)
    borrowed: int  # debt, asset units (rounded up)
    interest: int  # earned (+) or owed (-) since the position opened, asset units
    imf: int  # PPB (borrows)
    mmf: int


class PoolsOf(msgspec.Struct):
    """Every lending pool (``core.lending.Pool``), by asset."""


class PositionsOf(msgspec.Struct):
    account: str


class CollateralOf(msgspec.Struct):
    account: str


class HistoryOf(msgspec.Struct):
    """An account's funding payments or liquidation steps (``kind`` "funding" or
    "liquidation"), newest first."""

    account: str
    kind: str


class MarksOf(msgspec.Struct):
    """Every perp's prices and funding figures: symbol -> ``PerpPrices``."""


class PerpPrices(msgspec.Struct, frozen=True):
    mark: int
    index: int
    last: int
    funding_rate: int  # PPB per interval: the estimate for the running interval
    next_funding: int  # us
    open_interest: int  # quantity units


class PositionsView(msgspec.Struct, frozen=True):
    """``PositionsOf``'s answer: the account's positions (``core.state.PositionState``)
    and the marks they are valued at."""

    positions: list
    marks: dict  # symbol -> MarkView


class CollateralRow(msgspec.Struct, frozen=True):
    asset: str
    total: int  # free + held - held for withdrawals + lent - borrowed, asset units (negative: owed)
    held: int
    price: int  # quote units per whole asset unit (10**decimals asset units)
    weight: int  # PPB at this size
    value: int  # quote units, after the weight
    lent: int = 0  # the account's lend claim (part of total)
    borrowed: int = 0  # its debt (taken from total)


class CollateralView(msgspec.Struct, frozen=True):
    """``CollateralOf``'s answer, all in quote units of the settlement asset."""

    assets: list  # CollateralRow, sorted by asset
    collateral: int  # sum of weighted asset values
    unrealized: int  # sum of positions' unrealized PnL at mark
    equity: int  # collateral + unrealized
    exposure: int  # notional of positions plus open orders that add risk
    initial: int  # initial margin required (positions + risk-adding open orders)
    maintenance: int  # maintenance margin required (positions)
    imf: int  # PPB: initial / exposure (0 with no exposure)
    mmf: int  # PPB
    margin_fraction: int  # PPB: equity / exposure (0 with no exposure)
    liquidating: bool
    leverage: int = 0  # the account's leverage limit (0: never set, the markets' own maximum)
    auto_lend: bool = True  # idle balances are lent (and redeemed by orders)
    auto_repay: bool = False  # incoming funds repay borrows
    borrow_liability: int = 0  # quote units: the value of every debt


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
