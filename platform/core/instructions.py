"""Every signed instruction, declared once: name, params schema, builder, signer.

A request's parameters arrive as literal texts (what the client signed). ``build``
turns them into a transaction with the market's tick and step rules; the gateway calls
it before sequencing, and a validator calls it again on the parameters kept in the
journal (``Auth.params``) and requires the same transaction, so a node cannot reuse a
signature for another price, quantity, side or account. Being part of the rules, this
module is deterministic (no clock, no I/O) and covered by ``RULES_VERSION``.

Parameters are strict: integers are plain decimal digits (``clientId`` 7 or "7", never
"1e3" or 7.0), booleans are ``true``/``false``, decimals are plain decimal strings
whose digits fit the market's tick or step.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from satchel.core.amounts import MAX_UNITS, AmountError, asset_decimals, format_units, to_units
from satchel.core.errors import (
    Code,
    INVALID_ASSET, INVALID_DECIMAL, INVALID_PRICE, INVALID_QUANTITY, INVALID_REQUEST, INVALID_SYMBOL, RequestError,
)
from satchel.core.messages import (
    ASK, AUTO_BORROW, AUTO_BORROW_REPAY, AUTO_LEND, AUTO_LEND_REDEEM, BID, BORROW, BY_INDEX, BY_LAST, BY_MARK, FOK, GTC,
    IOC, LEND, LIMIT, MARKET, REJECT_BOTH, REJECT_MAKER, REJECT_TAKER, ApproveSweep, AssetSpec, BorrowLend, ChainDeposit,
    ChainSpec, ChainStatus, ReportedDeposit, SetChain, Withdraw, WithdrawalConfirmed, WithdrawalFailed, WithdrawalSent,
    CancelAll, CancelOrder, Deposit, ListAsset, ListMarket, MarginSpec, MarketSpec, PerpSpec, PlaceOrder, SetAdmin,
    LendingSpec, SetFees, SetIndex, SetLending, SetLeverage, SetMargin, SetProfile, SetRule, SetTierLimits, SetTrading,
    ReferralCode, SeasonSpec, SetMultiplier, SetSeason, Transfer, UseReferral, MoveDone,
)


# A deposit to this account seeds the insurance fund.
INSURANCE_ACCOUNT = "@insurance"


class Listing(Protocol):
    """What the builders read of the engine's configuration."""

    markets: Mapping[str, MarketSpec]
    assets: Mapping[str, AssetSpec]
    chains: Mapping[str, Any]  # name -> ChainSpec


Bool = Literal["true", "false"]


# ------------------------------------------------------------------ params schemas (all texts)


class OrderExecuteParams(msgspec.Struct):
    symbol: str
    side: Literal["Bid", "Ask"]
    orderType: Literal["Limit", "Market"]
    quantity: str | None = None
    quoteQuantity: str | None = None
    price: str | None = None
    timeInForce: Literal["GTC", "IOC", "FOK"] = "GTC"
    postOnly: Bool = "false"
    reduceOnly: Bool = "false"
    clientId: str | None = None
    selfTradePrevention: Literal["RejectTaker", "RejectMaker", "RejectBoth"] = "RejectTaker"
    triggerPrice: str | None = None
    triggerQuantity: str | None = None
    triggerBy: Literal["MarkPrice", "LastPrice", "IndexPrice"] = "MarkPrice"
    autoBorrow: Bool = "false"
    autoBorrowRepay: Bool = "false"
    autoLend: Bool = "false"
    autoLendRedeem: Bool = "false"


class BorrowLendParams(msgspec.Struct):
    symbol: str  # the asset, as Backpack names it
    side: Literal["Borrow", "Lend"]
    quantity: str


class WithdrawParams(msgspec.Struct):
    """Backpack's ``POST /wapi/v1/capital/withdrawals``: ``blockchain`` names the chain."""

    blockchain: str
    symbol: str
    quantity: str
    address: str
    clientId: str | None = None


class DepositConfirmedParams(msgspec.Struct):
    chain: str
    txHash: str
    logIndex: str
    account: str
    symbol: str
    quantity: str


class WithdrawalRefParams(msgspec.Struct):
    chain: str
    withdrawalId: str
    txHash: str | None = None
    reason: str | None = None


class MoveDoneParams(msgspec.Struct):
    chain: str
    seq: str  # the custody move's id: the sequence number of the transaction that booked it
    symbol: str


class ChainStatusParams(msgspec.Struct):
    chain: str
    paused: Bool
    reason: str = ""


class ApproveSweepParams(msgspec.Struct):
    chain: str
    symbol: str
    quantity: str


class OrderRefParams(msgspec.Struct):
    symbol: str
    orderId: str | None = None
    clientId: str | None = None


class SymbolParams(msgspec.Struct):
    symbol: str


class SetTradingParams(msgspec.Struct):
    enabled: Bool
    account: str | None = None
    symbol: str | None = None


class SetProfileParams(msgspec.Struct):
    account: str
    kycTier: str
    jurisdiction: str = ""
    tags: str = ""  # comma-separated


class SetTierLimitsParams(msgspec.Struct):
    tier: str
    withdrawalsPerDay: str | None = None  # absent: no limit
    maxOrderNotional: str = ""  # ASSET:decimal pairs, comma-separated, per quote asset


class SetPermissionParams(msgspec.Struct):
    allowed: Literal["true", "false", "inherit"]  # inherit: the rule is removed
    account: str | None = None
    jurisdiction: str | None = None  # a code, or * for every jurisdiction
    product: Literal["spot", "perps", "margin", "lending", "withdrawals"] | None = None
    symbol: str | None = None


class SetSeasonParams(msgspec.Struct):
    id: str
    name: str
    start: str  # ms of sequenced time
    end: str
    asset: str = "USDC"
    makerWeight: str = "100"  # percent of a point per whole unit traded
    takerWeight: str = "100"
    referralBps: str = "1000"
    lendWeight: str = "0"  # percent of a point per whole unit lent per day


class SetMultiplierParams(msgspec.Struct):
    factor: str  # a decimal: 2 doubles, 1.5 adds half
    fromHeight: str
    toHeight: str = "0"  # 0: no end
    account: str | None = None
    tag: str | None = None  # neither: every account


class TransferParams(msgspec.Struct):
    source: str
    target: str
    asset: str
    quantity: str


class ReferralCodeParams(msgspec.Struct):
    code: str


class SetFeesParams(msgspec.Struct):
    symbol: str
    makerFeeBps: str
    takerFeeBps: str


class DepositParams(msgspec.Struct):
    account: str
    asset: str
    quantity: str


class SetAdminParams(msgspec.Struct):
    key: str


class ListAssetParams(msgspec.Struct):
    symbol: str
    decimals: str
    collateralWeight: str = "0"
    haircutPenalty: str = "0"


class OracleIndexParams(msgspec.Struct):
    symbol: str
    price: str


class AccountUpdateParams(msgspec.Struct):
    leverageLimit: str | None = None
    autoLend: Bool | None = None
    autoRepayBorrows: Bool | None = None


# ------------------------------------------------------------------ strict scalars


def uint(text: str | None, what: str, limit: int = MAX_UNITS) -> int | None:
    """A non-negative integer written as plain digits, below ``limit``; None stays None."""
    if text is None:
        return None
    if not (0 < len(text) <= 20 and text.isascii() and text.isdigit()) or int(text) >= limit:
        raise RequestError(INVALID_REQUEST, f"{what} must be an integer in 0..{limit - 1}")
    return int(text)


def page_limit(text: str | None, top: int, default: int) -> int:
    """A page's ``limit``: 1..``top``, ``default`` when absent (0 would answer nothing)."""
    if text is None:
        return default
    if not (0 < len(text) <= 20 and text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:
        raise RequestError(INVALID_REQUEST, f"limit must be 1..{top}")
    return int(text)


def sint(text: str, what: str, limit: int) -> int:
    """An integer, possibly negative, with absolute value below ``limit``."""
    value = uint(text[1:] if text.startswith("-") else text, what, limit)
    return -value if text.startswith("-") else value


def boolean(text: str) -> bool:
    return text == "true"


def units(text: str, decimals: int, step: int, code: str, what: str) -> int:
    """A decimal string as a whole number of ``step`` units at ``decimals``, or RequestError."""
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


def _market(listing: Listing, symbol: str) -> MarketSpec:
    spec = listing.markets.get(symbol)
    if spec is None:
        raise RequestError(INVALID_SYMBOL, f"Unknown symbol {symbol}")
    return spec


def _asset(listing: Listing, asset: str) -> AssetSpec:
    spec = listing.assets.get(asset)
    if spec is None:
        raise RequestError(INVALID_ASSET, f"Unknown asset {asset}")
    return spec


# ------------------------------------------------------------------ builders

_SIDES = {"Bid": BID, "Ask": ASK}
_TIFS = {"GTC": GTC, "IOC": IOC, "FOK": FOK}
_STPS = {"RejectTaker": REJECT_TAKER, "RejectMaker": REJECT_MAKER, "RejectBoth": REJECT_BOTH}


def _order(p: OrderExecuteParams, account: str, listing: Listing) -> PlaceOrder:
    spec = _market(listing, p.symbol)
    reduce_only = boolean(p.reduceOnly)
    if spec.perp is None and (reduce_only or p.triggerPrice is not None):
        raise RequestError(INVALID_REQUEST, "reduceOnly and triggerPrice apply to perpetual markets only")
    client_id = uint(p.clientId, "clientId", 2**32)
    post_only = boolean(p.postOnly)
    trigger = 0
    if p.triggerPrice is not None:
        trigger = units(p.triggerPrice, spec.price_decimals, spec.tick, INVALID_PRICE, "triggerPrice")
        if trigger <= 0:
            raise RequestError(INVALID_PRICE, "triggerPrice must be positive")
        if p.triggerQuantity is not None:
            if p.quantity is not None and p.quantity != p.triggerQuantity:
                raise RequestError(INVALID_REQUEST, "Give quantity or triggerQuantity, not both")
            p = msgspec.structs.replace(p, quantity=p.triggerQuantity)
        if p.quoteQuantity is not None:
            raise RequestError(INVALID_REQUEST, "Trigger orders are sized by quantity")
    elif p.triggerQuantity is not None:
        raise RequestError(INVALID_REQUEST, "triggerQuantity needs triggerPrice")
    if p.orderType == "Limit":
        if p.price is None or p.quantity is None:
            raise RequestError(INVALID_REQUEST, "Limit orders need price and quantity")
        if p.quoteQuantity is not None:
            raise RequestError(INVALID_REQUEST, "quoteQuantity applies to market orders")
        price = units(p.price, spec.price_decimals, spec.tick, INVALID_PRICE, "price")
        qty = units(p.quantity, spec.quantity_decimals, spec.step, INVALID_QUANTITY, "quantity")
        quote = 0
        order_type = LIMIT
    else:
        if (p.quantity is None) == (p.quoteQuantity is None):
            raise RequestError(INVALID_REQUEST, "Market orders need exactly one of quantity and quoteQuantity")
        if post_only:
            raise RequestError(INVALID_REQUEST, "postOnly applies to limit orders")
        if p.price is not None:
            raise RequestError(INVALID_REQUEST, "Market orders take no price")
        price = 0
        qty = units(p.quantity, spec.quantity_decimals, spec.step, INVALID_QUANTITY, "quantity") if p.quantity is not None else 0
        decimals = _asset(listing, spec.quote).decimals
        quote = units(p.quoteQuantity, decimals, 1, INVALID_QUANTITY, "quoteQuantity") if p.quoteQuantity is not None else 0
        order_type = MARKET
    if qty == 0 and quote == 0:
        raise RequestError(INVALID_QUANTITY, "quantity must be positive")
    auto = 0
    if spec.perp is None:  # spot margin flags; a perp order trades on margin anyway
        for flag, text in ((AUTO_BORROW, p.autoBorrow), (AUTO_BORROW_REPAY, p.autoBorrowRepay), (AUTO_LEND, p.autoLend),
                           (AUTO_LEND_REDEEM, p.autoLendRedeem)):
            if boolean(text):
                auto |= flag
    return PlaceOrder(account, p.symbol, _SIDES[p.side], order_type, _TIFS[p.timeInForce], post_only, price, qty, quote,
                      client_id, _STPS[p.selfTradePrevention], reduce_only, trigger, _TRIGGER_BY[p.triggerBy], auto=auto)


_TRIGGER_BY = {"MarkPrice": BY_MARK, "LastPrice": BY_LAST, "IndexPrice": BY_INDEX}


def _perp(listing: Listing, symbol: str) -> MarketSpec:
    spec = _market(listing, symbol)
    if spec.perp is None:
        raise RequestError(INVALID_SYMBOL, f"{symbol} is not a perpetual market")
    return spec


def _oracle_index(p: OracleIndexParams, admin: str, listing: Listing) -> SetIndex:
    spec = _perp(listing, p.symbol)
    price = units(p.price, spec.price_decimals, spec.tick, INVALID_PRICE, "price")
    if price <= 0:
        raise RequestError(INVALID_PRICE, "price must be positive")
    return SetIndex(admin, p.symbol, price)


def max_leverage(listing: Listing) -> int:
    """The highest leverage any listed perpetual allows (1 with none listed)."""
    return max((m.perp.max_leverage for m in listing.markets.values() if m.perp is not None), default=1)


def _account_update(p: AccountUpdateParams, account: str, listing: Listing) -> SetLeverage:
    if p.leverageLimit is None and p.autoLend is None and p.autoRepayBorrows is None:
        raise RequestError(INVALID_REQUEST, "Give leverageLimit, autoLend or autoRepayBorrows")
    leverage = 0
    if p.leverageLimit is not None:
        leverage = uint(p.leverageLimit, "leverageLimit", 1_001)
        top = max_leverage(listing)
        if not 1 <= leverage <= top:
            raise RequestError(Code.INVALID_LEVERAGE, f"leverageLimit must be 1..{top}")
    return SetLeverage(account, leverage, auto_lend=_switch(p.autoLend), auto_repay=_switch(p.autoRepayBorrows))


def _switch(text: str | None) -> int:
    """A setting's new value: 1 on, 0 off, -1 unchanged (not given)."""
    return -1 if text is None else int(boolean(text))


def _borrow_lend(p: BorrowLendParams, account: str, listing: Listing) -> BorrowLend:
    decimals = _asset(listing, p.symbol).decimals
    amount = units(p.quantity, decimals, 1, INVALID_QUANTITY, "quantity")
    if amount <= 0:
        raise RequestError(INVALID_QUANTITY, "quantity must be positive")
    return BorrowLend(account, p.symbol, LEND if p.side == "Lend" else BORROW, amount)


def _amount(listing: Listing, asset: str, text: str) -> int:
    amount = units(text, _asset(listing, asset).decimals, 1, INVALID_QUANTITY, "quantity")
    if amount <= 0:
        raise RequestError(INVALID_QUANTITY, "quantity must be positive")
    return amount


def _text(text: str | None, what: str, limit: int = 128) -> str:
    """A short printable ASCII text (a hash, an address, a reason)."""
    if text is None or not 0 < len(text) <= limit or not text.isascii() or not text.isprintable():
        raise RequestError(INVALID_REQUEST, f"{what} must be 1 to {limit} printable ASCII characters")
    return text


_HEX = frozenset("0123456789abcdefABCDEF")


def tx_hash(text: str | None) -> str:
    """A chain transaction's hash as the ledger keys it. A ``0x`` hexadecimal hash is one
    number whatever its letters' case: it is taken in lower case, so a provider answering
    ``0xAB..`` cannot get a deposit credited a second time. Other forms (base58) are
    case-sensitive and kept as sent."""
    text = _text(text, "txHash")
    if text[:2] in ("0x", "0X") and len(text) > 2 and _HEX.issuperset(text[2:]):
        return "0x" + text[2:].lower()
    return text


def chain_name(listing: Listing, text: str) -> str:
    """The listed chain ``text`` names: its name, or the one name equal to it ignoring case
    (Backpack's clients send ``Solana``, ``Ethereum``; a chain is configured as
    ``solana``, ``ethereum``). Anything else is returned as given, for the engine to refuse."""
    chains = listing.chains
    if text in chains:
        return text
    same = [name for name in chains if name.lower() == text.lower()]
    return same[0] if len(same) == 1 else text


def _withdraw(p: WithdrawParams, account: str, listing: Listing) -> Withdraw:
    return Withdraw(account, chain_name(listing, p.blockchain), p.symbol, _amount(listing, p.symbol, p.quantity),
                    _text(p.address, "address"), uint(p.clientId, "clientId", 2**32))


MAX_REPORTED_DEPOSITS = 256  # deposits in one depositConfirmed (its block's apply stays short)


def deposit_texts(tx: ChainDeposit, decimals: Mapping[str, int]) -> list[dict[str, str]]:
    """A report's items in their canonical texts (what ``_deposit_confirmed`` builds it from)."""
    return [{"chain": tx.chain, "txHash": d.tx_hash, "logIndex": str(d.log_index), "account": d.account,
             "symbol": d.asset, "quantity": format_units(d.amount, decimals[d.asset])} for d in tx.deposits]


def _deposit_confirmed(items: list[DepositConfirmedParams], adapter: str, listing: Listing) -> ChainDeposit:
    if not 1 <= len(items) <= MAX_REPORTED_DEPOSITS:
        raise RequestError(INVALID_REQUEST, f"a report holds 1..{MAX_REPORTED_DEPOSITS} deposits")
    chain = items[0].chain
    deposits = []
    places: dict[tuple[str, int], int] = {}  # (txHash, logIndex) -> its place: each is reported once
    for i, p in enumerate(items):
        try:
            if p.chain != chain:
                raise RequestError(INVALID_REQUEST, "every deposit of a report is on the same chain")
            if not is_api_key(p.account):
                raise RequestError(INVALID_REQUEST, "account must be an API key")
            d = ReportedDeposit(tx_hash(p.txHash), uint(p.logIndex, "logIndex"), p.account,
                                p.symbol, _amount(listing, p.symbol, p.quantity))
            first = places.setdefault((d.tx_hash, d.log_index), i)
            if first != i:
                raise RequestError(INVALID_REQUEST, f"the same txHash and logIndex as deposit {first}")
            deposits.append(d)
        except RequestError as exc:
            raise RequestError(exc.code, f"deposit {i}: {exc.message}" if len(items) > 1 else exc.message) from exc
    return ChainDeposit(adapter, chain, tuple(deposits))


def _withdrawal_sent(p: WithdrawalRefParams, adapter: str, listing: Listing) -> WithdrawalSent:
    return WithdrawalSent(adapter, p.chain, uint(p.withdrawalId, "withdrawalId"), tx_hash(p.txHash))


def _move_done(p: MoveDoneParams, adapter: str, listing: Listing) -> MoveDone:
    return MoveDone(adapter, p.chain, uint(p.seq, "seq"), p.symbol)


def _withdrawal_confirmed(p: WithdrawalRefParams, adapter: str, listing: Listing) -> WithdrawalConfirmed:
    return WithdrawalConfirmed(adapter, p.chain, uint(p.withdrawalId, "withdrawalId"))


def _withdrawal_failed(p: WithdrawalRefParams, adapter: str, listing: Listing) -> WithdrawalFailed:
    return WithdrawalFailed(adapter, p.chain, uint(p.withdrawalId, "withdrawalId"), _text(p.reason, "reason", 256))


def _chain_status(p: ChainStatusParams, signer: str, listing: Listing) -> ChainStatus:
    # shown by `satchel status` and every chainStatus stream: no control or direction characters
    return ChainStatus(signer, p.chain, boolean(p.paused), p.reason and _text(p.reason, "reason", 256))


def _approve_sweep(p: ApproveSweepParams, admin: str, listing: Listing) -> ApproveSweep:
    return ApproveSweep(admin, p.chain, p.symbol, _amount(listing, p.symbol, p.quantity))


def _set_chain(p: dict[str, str], admin: str, listing: Listing) -> SetChain:
    """``name``, ``adapter`` (its API key), ``assets`` (comma-separated), ``confirmations``,
    ``hotLimit`` (``ASSET:units`` pairs, comma-separated, in the asset's smallest units:
    the genesis block lists assets and chains together, so nothing here may depend on the
    listing; the engine checks the assets)."""
    try:
        assets = [a for a in p["assets"].split(",") if a]
        limits = []
        for pair in filter(None, p.get("hotLimit", "").split(",")):
            asset, _, text = pair.partition(":")
            limits.append((asset, uint(text, "hotLimit")))
        spec = ChainSpec(p["name"], p["adapter"], assets, uint(p["confirmations"], "confirmations"), sorted(limits))
    except KeyError as exc:
        raise RequestError(INVALID_REQUEST, f"setChain needs {exc}") from exc
    return SetChain(admin, spec)


def chain_params(spec: ChainSpec) -> dict[str, str]:
    """A chain listing's signed parameters (``_set_chain``'s input)."""
    return {"name": spec.name, "adapter": spec.adapter, "assets": ",".join(spec.assets),
            "confirmations": str(spec.confirmations), "hotLimit": ",".join(f"{a}:{v}" for a, v in spec.hot_limit)}


def order_ref(p: OrderRefParams, listing: Listing) -> tuple[str, int | None, int | None]:
    _market(listing, p.symbol)
    if (p.orderId is None) == (p.clientId is None):
        raise RequestError(INVALID_REQUEST, "Give exactly one of orderId and clientId")
    return p.symbol, uint(p.orderId, "orderId"), uint(p.clientId, "clientId", 2**32)


def _cancel(p: OrderRefParams, account: str, listing: Listing) -> CancelOrder:
    return CancelOrder(account, *order_ref(p, listing))


def _cancel_all(p: SymbolParams, account: str, listing: Listing) -> CancelAll:
    _market(listing, p.symbol)
    return CancelAll(account, p.symbol)


def _deposit(p: DepositParams, admin: str, listing: Listing) -> Deposit:
    decimals = _asset(listing, p.asset).decimals
    amount = units(p.quantity, decimals, 1, INVALID_QUANTITY, "quantity")
    if amount <= 0:
        raise RequestError(INVALID_QUANTITY, "quantity must be positive")
    if not is_api_key(p.account) and p.account != INSURANCE_ACCOUNT:
        raise RequestError(INVALID_REQUEST, "account must be an API key (base64 of a 32-byte public key) or @insurance")
    return Deposit(admin, p.account, p.asset, amount)


def _set_trading(p: SetTradingParams, admin: str, listing: Listing) -> SetTrading:
    if p.symbol is not None:
        _market(listing, p.symbol)
    if p.account is None and p.symbol is None:
        raise RequestError(INVALID_REQUEST, "Give an account, a symbol or both")
    return SetTrading(admin, p.account, p.symbol, boolean(p.enabled))


MAX_TIER = 255
MAX_TAGS = 16


def _code(text: str, what: str, limit: int = 32) -> str:
    """A jurisdiction code or a tag: 1..limit letters, digits, ``_`` or ``-``."""
    if not 0 < len(text) <= limit or not text.isascii() or not text.replace("_", "").replace("-", "").isalnum():
        raise RequestError(INVALID_REQUEST, f"{what} must be 1 to {limit} letters, digits, _ or -")
    return text


def _set_profile(p: SetProfileParams, admin: str, listing: Listing) -> SetProfile:
    if not is_api_key(p.account):
        raise RequestError(INVALID_REQUEST, "account must be an API key")
    tags = sorted({_code(t, "a tag") for t in p.tags.split(",") if t})
    if len(tags) > MAX_TAGS:
        raise RequestError(INVALID_REQUEST, f"at most {MAX_TAGS} tags")
    jurisdiction = _code(p.jurisdiction, "jurisdiction", 16) if p.jurisdiction else ""
    return SetProfile(admin, p.account, uint(p.kycTier, "kycTier", MAX_TIER + 1), jurisdiction, tuple(tags))


def _set_tier_limits(p: SetTierLimitsParams, admin: str, listing: Listing) -> SetTierLimits:
    per_day = -1 if p.withdrawalsPerDay is None else uint(p.withdrawalsPerDay, "withdrawalsPerDay", 1_000_000)
    limits = {}
    for pair in filter(None, p.maxOrderNotional.split(",")):
        asset, _, text = pair.partition(":")
        limits[asset] = _amount(listing, asset, text)
    return SetTierLimits(admin, uint(p.tier, "tier", MAX_TIER + 1), per_day, tuple(sorted(limits.items())))


def _set_permission(p: SetPermissionParams, admin: str, listing: Listing) -> SetRule:
    if (p.account is None) == (p.jurisdiction is None):
        raise RequestError(INVALID_REQUEST, "Give exactly one of account and jurisdiction")
    if (p.product is None) == (p.symbol is None):
        raise RequestError(INVALID_REQUEST, "Give exactly one of product and symbol")
    if p.account is not None:
        if not is_api_key(p.account):
            raise RequestError(INVALID_REQUEST, "account must be an API key")
        scope, who = "account", p.account
    else:
        scope, who = "jurisdiction", "*" if p.jurisdiction == "*" else _code(p.jurisdiction, "jurisdiction", 16)
    what = p.product if p.product is not None else "market:" + _market(listing, p.symbol).symbol
    return SetRule(admin, scope, who, what, None if p.allowed == "inherit" else boolean(p.allowed))


def _set_season(p: SetSeasonParams, admin: str, listing: Listing) -> SetSeason:
    name = _text(p.name, "name", 64)
    spec = SeasonSpec(uint(p.id, "id", 2**32), name, uint(p.start, "start") * 1000, uint(p.end, "end") * 1000,
                      _asset(listing, p.asset).symbol, uint(p.makerWeight, "makerWeight", 10_001),
                      uint(p.takerWeight, "takerWeight", 10_001), uint(p.referralBps, "referralBps", 10_001),
                      uint(p.lendWeight, "lendWeight", 10_001))
    return SetSeason(admin, spec)


def _set_multiplier(p: SetMultiplierParams, admin: str, listing: Listing) -> SetMultiplier:
    if p.account is not None and p.tag is not None:
        raise RequestError(INVALID_REQUEST, "Give an account, a tag, or neither (everyone)")
    if p.account is not None and not is_api_key(p.account):
        raise RequestError(INVALID_REQUEST, "account must be an API key")
    factor = units(p.factor, 2, 1, INVALID_QUANTITY, "factor")  # percent
    if not 100 <= factor <= 10_000:
        raise RequestError(INVALID_QUANTITY, "factor must be 1 to 100")
    scope, who = ("account", p.account) if p.account is not None else ("tag", _code(p.tag, "tag")) \
        if p.tag is not None else ("all", "")
    start, end = uint(p.fromHeight, "fromHeight"), uint(p.toHeight, "toHeight")
    if start < 1 or (end and end < start):
        raise RequestError(INVALID_REQUEST, "fromHeight must be at least 1, and toHeight 0 or at least fromHeight")
    return SetMultiplier(admin, scope, who, factor, start, end)


def _transfer(p: TransferParams, admin: str, listing: Listing) -> Transfer:
    for key in (p.source, p.target):
        if not is_api_key(key):
            raise RequestError(INVALID_REQUEST, "source and target must be API keys")
    if p.source == p.target:
        raise RequestError(INVALID_REQUEST, "source and target are the same account")
    return Transfer(admin, p.source, p.target, p.asset, _amount(listing, p.asset, p.quantity))


def _referral_code(p: ReferralCodeParams, account: str, listing: Listing) -> ReferralCode:
    return ReferralCode(account, _code(p.code, "code"))


def _use_referral(p: ReferralCodeParams, account: str, listing: Listing) -> UseReferral:
    return UseReferral(account, _code(p.code, "code"))


def _set_fees(p: SetFeesParams, admin: str, listing: Listing) -> SetFees:
    _market(listing, p.symbol)
    return SetFees(admin, p.symbol, sint(p.makerFeeBps, "makerFeeBps", 10_001), sint(p.takerFeeBps, "takerFeeBps", 10_001))


def _set_admin(p: SetAdminParams, key: str, listing: Listing) -> SetAdmin:
    return SetAdmin(p.key)


def _list_asset(p: ListAssetParams, admin: str, listing: Listing) -> ListAsset:
    return ListAsset(admin, AssetSpec(p.symbol, uint(p.decimals, "decimals", 31), uint(p.collateralWeight, "collateralWeight"),
                                      uint(p.haircutPenalty, "haircutPenalty")))


def asset_params(spec: AssetSpec) -> dict[str, str]:
    return {"symbol": spec.symbol, "decimals": str(spec.decimals), "collateralWeight": str(spec.collateral_weight),
            "haircutPenalty": str(spec.haircut_penalty)}


def _struct_from_texts(cls: type, p: Mapping[str, str], prefix: str = "", text_fields: tuple = ()) -> Any:
    """A spec struct whose fields arrive as texts named ``prefix + field`` (integers unless in ``text_fields``)."""
    try:
        fields = {f: (p[prefix + f] if f in text_fields else sint(p[prefix + f], f, MAX_UNITS))
                  for f in cls.__struct_fields__ if f != "perp"}
    except KeyError as exc:
        raise RequestError(INVALID_REQUEST, f"{cls.__name__} needs {exc}") from exc
    return cls(**fields)


def _struct_texts(spec: Any, prefix: str = "") -> dict[str, str]:
    return {prefix + f: str(getattr(spec, f)) for f in spec.__struct_fields__ if f != "perp"}


def _list_market(p: dict[str, str], admin: str, listing: Listing) -> ListMarket:
    spec = _struct_from_texts(MarketSpec, p, text_fields=_MARKET_TEXT_FIELDS)
    if any(k.startswith(_PERP_PREFIX) for k in p):
        spec = msgspec.structs.replace(spec, perp=_struct_from_texts(PerpSpec, p, _PERP_PREFIX))
    return ListMarket(admin, spec)


_MARKET_TEXT_FIELDS = ("symbol", "base", "quote")
_PERP_PREFIX = "perp."


def market_params(spec: MarketSpec) -> dict[str, str]:
    """A market listing's signed parameters: every field of its spec as text (a perp's
    risk parameters as ``perp.<field>``)."""
    texts = _struct_texts(spec)
    if spec.perp is not None:
        texts.update(_struct_texts(spec.perp, _PERP_PREFIX))
    return texts


def _set_margin(p: dict[str, str], admin: str, listing: Listing) -> SetMargin:
    return SetMargin(admin, _struct_from_texts(MarginSpec, p, text_fields=_MARGIN_TEXT_FIELDS))


_MARGIN_TEXT_FIELDS = ("backstop", "settlement_asset")


def _set_lending(p: dict[str, str], admin: str, listing: Listing) -> SetLending:
    return SetLending(admin, _struct_from_texts(LendingSpec, p, text_fields=("asset",)))


def lending_params(spec: LendingSpec) -> dict[str, str]:
    return _struct_texts(spec)


def margin_params(spec: MarginSpec) -> dict[str, str]:
    return _struct_texts(spec)


# ------------------------------------------------------------------ the declarations


class Instruction(NamedTuple):
    name: str  # the signed string's instruction=...
    tx: type  # the transaction it builds
    schema: type | None  # params schema (None: a plain dict of texts)
    build: Callable[[Any, str, Listing], Any]  # (params, signer, listing) -> tx
    signer: Callable[[Any], str]  # who must have signed a tx of this type
    admin: bool  # signed by the node's admin key
    phase: str  # "trade": through the engine's trading phases; "config": applied at its sequence number;
    # "periodic": taken by the periodic phase of its block (oracle prices)
    errors: tuple[str, ...]  # codes a request of this kind can be refused with (besides signature and window)
    # the transaction carries every item of a batch request (``build`` gets a list of
    # params; one record, one signature), instead of one transaction per item
    many: bool = False
    # a chain adapter's report: its weight (a report's deposits); the sequencer lets it ride
    # along in blocks cut for other transactions, a few of weight a block, rather than cut
    # one for it (``ledger.sequencer``): custody work never puts a block's fixed cost in
    # front of an order
    background: Callable[[Any], int] | None = None
    # for a ``many`` instruction: the items its transaction is signed as when their texts
    # are canonical (the builder's inverse: (tx, decimals per asset) -> items). A record of
    # such items leaves them out (``Auth.batch`` empty) and they are rebuilt from the
    # transaction (``full_auth``): a report's deposits are journaled once, not twice
    texts: Callable[[Any, Mapping[str, int]], list[dict[str, str]]] | None = None


def _account(tx: Any) -> str:
    return tx.account


def _admin(tx: Any) -> str:
    return tx.admin


def _adapter(tx: Any) -> str:
    return tx.adapter


def _one(tx: Any) -> int:
    return 1


_ORDER_ERRORS = (INVALID_REQUEST, INVALID_SYMBOL, INVALID_DECIMAL, INVALID_PRICE, INVALID_QUANTITY)
_REF_ERRORS = (INVALID_REQUEST, INVALID_SYMBOL, Code.RESOURCE_NOT_FOUND)
_ADMIN_ERRORS = (INVALID_REQUEST, Code.UNAUTHORIZED)
_CHAIN_ERRORS = (INVALID_REQUEST, INVALID_ASSET, INVALID_DECIMAL, INVALID_QUANTITY, Code.INVALID_CHAIN, Code.CHAIN_PAUSED)

INSTRUCTIONS = (
    Instruction("orderExecute", PlaceOrder, OrderExecuteParams, _order, _account, False, "trade", _ORDER_ERRORS),
    Instruction("orderCancel", CancelOrder, OrderRefParams, _cancel, _account, False, "trade", _REF_ERRORS),
    Instruction("orderCancelAll", CancelAll, SymbolParams, _cancel_all, _account, False, "trade", _REF_ERRORS[:2]),
    Instruction("deposit", Deposit, DepositParams, _deposit, _admin, True, "trade",
                _ADMIN_ERRORS + (INVALID_ASSET, INVALID_DECIMAL, INVALID_QUANTITY, Code.INVALID_DEPOSIT)),
    Instruction("adminSetTrading", SetTrading, SetTradingParams, _set_trading, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_SYMBOL,)),
    Instruction("adminSetFees", SetFees, SetFeesParams, _set_fees, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_SYMBOL, Code.INVALID_FEES)),
    Instruction("adminSetProfile", SetProfile, SetProfileParams, _set_profile, _admin, True, "config", _ADMIN_ERRORS),
    Instruction("adminSetTierLimits", SetTierLimits, SetTierLimitsParams, _set_tier_limits, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_ASSET, INVALID_DECIMAL, INVALID_QUANTITY)),
    Instruction("adminSetPermission", SetRule, SetPermissionParams, _set_permission, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_SYMBOL,)),
    Instruction("adminSetSeason", SetSeason, SetSeasonParams, _set_season, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_ASSET, Code.INVALID_SEASON)),
    Instruction("adminSetMultiplier", SetMultiplier, SetMultiplierParams, _set_multiplier, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_DECIMAL, INVALID_QUANTITY, Code.INVALID_MULTIPLIER)),
    Instruction("adminTransfer", Transfer, TransferParams, _transfer, _admin, True, "trade",
                _ADMIN_ERRORS + (INVALID_ASSET, INVALID_DECIMAL, INVALID_QUANTITY, Code.INSUFFICIENT_FUNDS,
                                 Code.INSUFFICIENT_MARGIN)),
    Instruction("referralCodeCreate", ReferralCode, ReferralCodeParams, _referral_code, _account, False, "config",
                (INVALID_REQUEST, Code.INVALID_REFERRAL)),
    Instruction("referralCodeUse", UseReferral, ReferralCodeParams, _use_referral, _account, False, "config",
                (INVALID_REQUEST, Code.INVALID_REFERRAL)),
    Instruction("setAdmin", SetAdmin, SetAdminParams, _set_admin, lambda tx: tx.key, True, "config", _ADMIN_ERRORS),
    Instruction("listAsset", ListAsset, ListAssetParams, _list_asset, _admin, True, "config", _ADMIN_ERRORS),
    Instruction("listMarket", ListMarket, None, _list_market, _admin, True, "config",
                _ADMIN_ERRORS + (Code.INVALID_MARKET,)),
    Instruction("setMargin", SetMargin, None, _set_margin, _admin, True, "config", _ADMIN_ERRORS),
    Instruction("setLending", SetLending, None, _set_lending, _admin, True, "config",
                _ADMIN_ERRORS + (INVALID_ASSET,)),
    Instruction("oracleIndex", SetIndex, OracleIndexParams, _oracle_index, _admin, True, "periodic",
                _ADMIN_ERRORS + (INVALID_SYMBOL, INVALID_DECIMAL, INVALID_PRICE)),
    Instruction("accountUpdate", SetLeverage, AccountUpdateParams, _account_update, _account, False, "trade",
                (INVALID_REQUEST, Code.INVALID_LEVERAGE, Code.PRODUCT_RESTRICTED)),
    Instruction("withdraw", Withdraw, WithdrawParams, _withdraw, _account, False, "trade",
                _CHAIN_ERRORS + (Code.INVALID_ADDRESS, Code.INSUFFICIENT_FUNDS, Code.INSUFFICIENT_MARGIN,
                                 Code.PRODUCT_RESTRICTED, Code.TIER_LIMIT, Code.WITHDRAWAL_LIMIT)),
    Instruction("depositConfirmed", ChainDeposit, DepositConfirmedParams, _deposit_confirmed, _adapter, False, "trade",
                _CHAIN_ERRORS + (Code.UNAUTHORIZED, Code.INVALID_DEPOSIT, Code.ALREADY_CREDITED), many=True,
                background=lambda tx: len(tx.deposits), texts=deposit_texts),
    Instruction("withdrawalSent", WithdrawalSent, WithdrawalRefParams, _withdrawal_sent, _adapter, False, "trade",
                _CHAIN_ERRORS + (Code.UNAUTHORIZED, Code.INVALID_WITHDRAWAL), background=_one),
    Instruction("withdrawalConfirmed", WithdrawalConfirmed, WithdrawalRefParams, _withdrawal_confirmed, _adapter, False,
                "trade", _CHAIN_ERRORS + (Code.UNAUTHORIZED, Code.INVALID_WITHDRAWAL), background=_one),
    Instruction("withdrawalFailed", WithdrawalFailed, WithdrawalRefParams, _withdrawal_failed, _adapter, False, "trade",
                _CHAIN_ERRORS + (Code.UNAUTHORIZED, Code.INVALID_WITHDRAWAL), background=_one),
    Instruction("custodyMoveDone", MoveDone, MoveDoneParams, _move_done, _adapter, False, "trade",
                _CHAIN_ERRORS + (Code.UNAUTHORIZED, Code.RESOURCE_NOT_FOUND), background=_one),
    Instruction("chainStatus", ChainStatus, ChainStatusParams, _chain_status, lambda tx: tx.signer, False, "config",
                (INVALID_REQUEST, Code.INVALID_CHAIN, Code.UNAUTHORIZED)),
    Instruction("approveSweep", ApproveSweep, ApproveSweepParams, _approve_sweep, _admin, True, "config",
                _ADMIN_ERRORS + _CHAIN_ERRORS),
    Instruction("setChain", SetChain, None, _set_chain, _admin, True, "config", _ADMIN_ERRORS + (Code.INVALID_CHAIN,)),
    Instruction("borrowLendExecute", BorrowLend, BorrowLendParams, _borrow_lend, _account, False, "trade",
                (INVALID_REQUEST, INVALID_ASSET, INVALID_DECIMAL, INVALID_QUANTITY, Code.INSUFFICIENT_FUNDS,
                 Code.INSUFFICIENT_LIQUIDITY, Code.AMOUNT_TOO_SMALL, Code.BORROW_LIMIT, Code.PRODUCT_RESTRICTED)),
)
BY_NAME = {i.name: i for i in INSTRUCTIONS}
BY_TX = {i.tx: i for i in INSTRUCTIONS}


def params_of(schema: type | None, texts: Mapping[str, str]) -> Any:
    """The texts checked against an instruction's schema (unknown keys are ignored)."""
    if schema is None:
        return dict(texts)
    try:
        return msgspec.convert(texts, schema)
    except msgspec.ValidationError as exc:
        raise RequestError(INVALID_REQUEST, str(exc)) from exc


def build(name: str, texts: "Mapping[str, str] | Sequence[Mapping[str, str]]", signer: str, listing: Listing) -> Any:
    """The transaction a request asks for (without its ``auth``), or RequestError. An
    instruction with ``many`` takes a batch's items, or one item's params alone."""
    decl = BY_NAME[name]
    if decl.many:
        items = [texts] if isinstance(texts, Mapping) else texts
        return decl.build([params_of(decl.schema, t) for t in items], signer, listing)
    return decl.build(params_of(decl.schema, texts), signer, listing)


def _item_texts(decl: Instruction, tx: Any, decimals: Mapping[str, int]) -> tuple | None:
    try:  # as ``Auth.batch`` keeps them: each item's (key, text) pairs sorted by key
        return tuple(tuple(sorted(item.items())) for item in decl.texts(tx, decimals))
    except KeyError:  # an asset without decimals: not canonical, so never left out
        return None


def compact(tx: Any, decimals: Mapping[str, int]) -> Any:
    """The transaction as journaled: a ``many`` instruction's items left out of its
    record when they are exactly the canonical texts ``full_auth`` rebuilds."""
    decl = BY_TX[tx.__class__]
    auth = tx.auth
    if decl.texts is None or auth is None or auth.params or not auth.batch:
        return tx
    if auth.batch != _item_texts(decl, tx, decimals):
        return tx
    return msgspec.structs.replace(tx, auth=msgspec.structs.replace(auth, batch=()))


def full_auth(tx: Any, listing: Listing) -> Any:
    """The transaction's ``Auth`` with the items a compact record left out rebuilt from
    the transaction (``compact``): what its signature covers and its params rebuild."""
    auth = tx.auth
    decl = BY_TX.get(tx.__class__)
    if auth is None or auth.params or auth.batch or decl is None or decl.texts is None:
        return auth
    decimals = asset_decimals(listing.assets.values())
    return msgspec.structs.replace(auth, batch=_item_texts(decl, tx, decimals) or ())


def signed_params(auth: Any) -> "dict[str, str] | list[dict[str, str]]":
    """The params a journaled ``Auth`` record holds, as ``build`` takes them: a record
    carrying a whole batch (empty ``params``) gives its items."""
    if auth.batch and not auth.params:
        return [dict(item) for item in auth.batch]
    return dict(auth.params)


def is_api_key(text: str) -> bool:
    """Whether ``text`` is the canonical base64 encoding of a 32-byte key.

    Base64 lets the two padding bits of a 32-byte value take any value, so one key has
    four spellings; accepting them all would make four accounts of one key.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and base64.b64encode(raw).decode() == text
