"""The spot parts of the margin engine (``margin``): ledger, permissions, spot holds.

State: per account and asset a ``Balance`` (free, held); per open order a ``Hold`` (the
amount still held for it); fees collected per asset.

Three parts, composed by the margin actor: ``Ledger`` (balances, holds, fees, deposits --
every movement of value, and conservation), ``Permissions`` (who may trade which market)
and the spot hold policy, ``SpotHolds`` (what a spot order must hold before it reaches
the book). For spot orders the two phases of every block are:

* ``pretrade`` -- in sequence order, credits deposits and, for each new order, takes
  the hold the order could need at worst, or rejects it with ``InsufficientFunds``.
  Bids hold quote: ``notional + fee at max(maker, taker)``; asks hold base. A market
  bid by quantity holds all free quote and may spend what that covers; a market ask
  by quote quantity holds all free base. The book receives each order with the caps
  its hold allows, so a fill can never need more than was held.
* ``settle`` -- applies the block's events in order: a fill moves base and quote
  between buyer and seller out of their holds and books both fees; an order leaving
  the book releases what is still held for it.

Conservation: for every asset, ``sum(free + held) + fees == deposits`` after every
block (tests check it over generated workloads).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from satchel.core.amounts import MAX_UNITS
from satchel.core.messages import (
    ASK, BID, FOK, GTC, IOC, LIMIT, MARKET, REJECT_BOTH, REJECT_MAKER, REJECT_TAKER, Entry, MarketSpec, PlaceOrder,
    order_rejected,
)
from satchel.core.state import AccountBalances, AccountRules, AssetBalance, HoldState, RiskState


class Balance(msgspec.Struct, gc=False):
    """One account's balance of one asset (mutable, hot path: attribute access is a slot read)."""

    free: int = 0
    held: int = 0


class Hold(msgspec.Struct, gc=False):
    """What is still held for one open order."""

    account: str
    asset: str
    amount: int
    base: str = ""  # a spot bid's: the asset its quote becomes as it fills (``mark_bid``)


def _malformed(tx: PlaceOrder) -> str:
    """Why an order cannot be held at all, before looking at funds ("" if it can)."""
    if tx.order_type == LIMIT:
        if not 0 < tx.price < MAX_UNITS:
            return "InvalidPrice"
        if not 0 < tx.quantity < MAX_UNITS or tx.quote_quantity:
            return "InvalidQuantity"
    elif tx.order_type == MARKET:
        qty, quote = tx.quantity, tx.quote_quantity
        if tx.price or tx.post_only or (qty > 0) == (quote > 0) or not (0 <= qty < MAX_UNITS and 0 <= quote < MAX_UNITS):
            return "InvalidQuantity"
    else:
        return "InvalidOrder"
    if tx.side not in _SIDES or tx.tif not in _TIFS or tx.stp not in _STPS:
        return "InvalidOrder"
    return ""


_SIDES = (BID, ASK)
_TIFS = (GTC, IOC, FOK)
_STPS = (REJECT_TAKER, REJECT_MAKER, REJECT_BOTH)


def spot_forbidden(rules: dict[str, None], symbol: str) -> bool:
    """The spot-permission rule for an account with trading restrictions.

    ``rules`` holds the markets the account may not trade ("*" = all). Validators must
    apply exactly this rule; the incident drill swaps it for a faulty one to show that a
    node running other rules is caught.
    """
    return "*" in rules or symbol in rules



class Ledger:
    """Balances, holds, fees and deposits: every movement of value goes through here.

    Conservation: for every asset, ``sum(free + held) + fees == deposits``. Each
    (account, asset) whose balance changes is recorded in ``touched`` until the owner
    reports and clears it.
    """

    def __init__(self) -> None:
        self.balances: dict[str, dict[str, Balance]] = {}
        self.holds: dict[int, Hold] = {}  # order id -> what is still held for it
        self.bids_of: dict[str, dict[int, None]] = {}  # account -> its spot bids' holds (derived)
        self.fees: dict[str, int] = {}
        self.deposits: dict[str, int] = {}
        self.touched: dict[tuple[str, str], None] = {}

    def list_asset(self, asset: str) -> None:
        self.fees.setdefault(asset, 0)
        self.deposits.setdefault(asset, 0)

    def bal(self, account: str, asset: str) -> Balance:
        """The account's balance of the asset, created empty if it has none."""
        assets = self.balances.get(account)
        if assets is None:
            assets = self.balances[account] = {}
        bal = assets.get(asset)
        if bal is None:
            bal = assets[asset] = Balance()
        return bal

    def deposit(self, account: str, asset: str, amount: int) -> None:
        self.bal(account, asset).free += amount
        self.deposits[asset] += amount
        self.touched[(account, asset)] = None

    def hold(self, order_id: int, account: str, asset: str, bal: Balance, need: int) -> None:
        """Move ``need`` of ``bal`` (the account's balance of the asset) from free to held for the order."""
        bal.free -= need
        bal.held += need
        self.holds[order_id] = Hold(account, asset, need)
        self.touched[(account, asset)] = None

    def fill(self, spec: MarketSpec, buyer: str, buy_order: int, buy_fee: int, seller: str, sell_order: int,
             sell_fee: int, base_amt: int, quote_amt: int) -> None:
        """A trade: base from the seller's hold to the buyer, quote from the buyer's hold to
        the seller net of its fee, both fees booked (a negative fee is a rebate)."""
        quote, base = spec.quote, spec.base
        bal = self.bal
        # buyer: quote out of the hold (a rebate is paid to free), base in
        short = self.consume(buy_order, buyer, quote, quote_amt + max(buy_fee, 0))
        if short:
            buy_fee -= short  # only after a fee increase: the part no balance covers is waived
        if buy_fee < 0:
            bal(buyer, quote).free -= buy_fee
        bal(buyer, base).free += base_amt
        # seller: base out of the hold, quote in net of its fee
        self.consume(sell_order, seller, base, base_amt)
        bal(seller, quote).free += quote_amt - sell_fee
        self.fees[quote] += buy_fee + sell_fee
        touched = self.touched
        touched[(buyer, quote)] = None
        touched[(buyer, base)] = None
        touched[(seller, quote)] = None
        touched[(seller, base)] = None

    def consume(self, order_id: int, account: str, asset: str, amount: int) -> int:
        """Take ``amount`` from the order's hold; returns what could not be covered.

        Holds always cover fills at the fee rates in force when the order was placed. If
        an admin raised the fees since, the excess comes from the free balance, and what
        that cannot cover either is returned (the caller waives it) -- never a negative
        balance.
        """
        h = self.holds[order_id]
        bal = self.balances[account][asset]
        held = h.amount
        take = amount if amount <= held else held
        h.amount = held - take
        bal.held -= take
        rest = amount - take
        if rest:
            free = bal.free
            extra = rest if rest <= free else free
            bal.free = free - extra
            return rest - extra
        return 0

    def mark_bid(self, order_id: int, base: str) -> None:
        """The hold is a spot bid's, buying ``base``: what it holds counts in the margin
        engine's initial requirement as the conversion it becomes (``Margin.bid_loss``)."""
        h = self.holds[order_id]
        h.base = base
        self._index_bid(h.account, order_id)

    def _index_bid(self, account: str, order_id: int) -> None:
        self.bids_of.setdefault(account, {})[order_id] = None

    def release(self, order_id: int) -> None:
        """The order left the book: what is still held for it goes back to free."""
        h = self.holds.pop(order_id, None)
        if h is not None:
            if h.base:
                self._unmark(h.account, order_id)
            bal = self.balances[h.account][h.asset]
            bal.free += h.amount
            bal.held -= h.amount
            self.touched[(h.account, h.asset)] = None

    # ------------------------------------------------------------------ reads

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        bal = self.balances.get(account, {}).get(asset)
        return (bal.free, bal.held) if bal else (0, 0)

    def balances_of(self, account: str) -> dict[str, tuple[int, int]]:
        return {a: (b.free, b.held) for a, b in self.balances.get(account, {}).items()}

    def totals(self) -> dict[str, int]:
        """Per asset: free + held over all accounts, plus fees (for conservation checks)."""
        out = dict(self.fees)
        for assets in self.balances.values():
            for asset, bal in assets.items():
                out[asset] = out.get(asset, 0) + bal.free + bal.held
        return out

    def summary(self) -> dict[str, tuple[int, int, int]]:
        """Per asset: (deposits, fees collected, sum of every account's free + held)."""
        out = {asset: [self.deposits.get(asset, 0), fee, 0] for asset, fee in self.fees.items()}
        for assets in self.balances.values():
            for asset, bal in assets.items():
                out[asset][2] += bal.free + bal.held
        return {asset: (d, f, b) for asset, (d, f, b) in out.items()}

    # ------------------------------------------------------------------ state

    def balance_rows(self) -> list[AccountBalances]:
        return [
            AccountBalances(acct, [AssetBalance(a, b.free, b.held) for a, b in sorted(assets.items())])
            for acct, assets in sorted(self.balances.items())
        ]

    def _unmark(self, account: str, order_id: int) -> None:
        bids = self.bids_of[account]
        del bids[order_id]
        if not bids:
            del self.bids_of[account]

    def hold_rows(self) -> list[HoldState]:
        return [HoldState(oid, h.account, h.asset, h.amount, h.base) for oid, h in sorted(self.holds.items())]

    def restore(self, state: RiskState) -> None:
        self.balances = {row.account: {b.asset: Balance(b.free, b.held) for b in row.assets} for row in state.balances}
        self.holds = {h.order_id: Hold(h.account, h.asset, h.amount, h.base) for h in state.holds}
        self.bids_of = {}
        for oid, h in self.holds.items():
            if h.base:
                self._index_bid(h.account, oid)
        self.fees = {f.asset: f.amount for f in state.fees}
        self.deposits = {d.asset: d.amount for d in state.deposits}


class Permissions:
    """Spot trading on/off per account (one market or all) and per market."""

    def __init__(self) -> None:
        self.accounts_off: dict[str, dict[str, None]] = {}  # account -> markets it may not trade ("*" = all)
        self.markets_off: dict[str, None] = {}

    def set(self, account: str | None, symbol: str | None, enabled: bool) -> None:
        if account is None:
            if enabled:
                self.markets_off.pop(symbol, None)
            else:
                self.markets_off[symbol] = None
            return
        rules = self.accounts_off.setdefault(account, {})
        key = symbol or "*"
        if enabled:
            rules.pop(key, None)
            if not rules:
                del self.accounts_off[account]
        else:
            rules[key] = None

    def check(self, account: str, symbol: str) -> str:
        """Why spot trading is not permitted for this order ("" if it is)."""
        if symbol in self.markets_off:
            return "MarketTradingDisabled"
        rules = self.accounts_off.get(account)
        if rules is not None and spot_forbidden(rules, symbol):
            return "AccountTradingDisabled"
        return ""

    def account_rows(self) -> list[AccountRules]:
        return [AccountRules(a, sorted(r)) for a, r in sorted(self.accounts_off.items())]

    def restore(self, state: RiskState) -> None:
        self.accounts_off = {r.account: dict.fromkeys(r.markets_off) for r in state.accounts_off}
        self.markets_off = dict.fromkeys(state.markets_off)


class SpotHolds:
    """The hold policy for spot: what an order must hold before it reaches the book.

    Each order holds its own worst case in the asset it spends (isolated, no netting):
    bids hold quote, ``notional + fee at max(maker, taker)``; asks hold base. A market bid
    by quantity holds all free quote and may spend what that covers; a market ask by
    quote quantity holds all free base. A margin policy answers the same ``hold`` call.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.hold_bps: dict[str, int] = {}  # market -> fee rate bids hold
        self.provide: Callable | None = None  # (seq, order, asset, balance, need or None, out)

    def list_market(self, spec: MarketSpec) -> None:
        # bids hold the larger fee rate, so either role's fee is covered (never negative)
        self.hold_bps[spec.symbol] = max(spec.taker_fee_bps, spec.maker_fee_bps, 0)

    def hold(self, seq: int, tx: PlaceOrder, spec: MarketSpec, out: list) -> Entry | None:
        """Take the order's hold and return it with the caps that hold allows, or append
        its rejection to ``out`` and return None. ``provide`` (the margin engine's
        lending part), when set, may first add to the free balance what the hold lacks."""
        ledger = self.ledger
        assets = ledger.balances.get(tx.account)
        if assets is None:
            assets = ledger.balances[tx.account] = {}
        quote_cap = None
        bid = tx.side == BID
        asset = spec.quote if bid else spec.base
        bal = assets.get(asset)
        if bal is None:
            bal = assets[asset] = Balance()
        hold_bps = self.hold_bps[tx.symbol]
        if bid:
            qty_cap = tx.quantity
            if tx.order_type == LIMIT:
                notional = tx.price * tx.quantity * spec.notional_mult
                need = notional + notional * hold_bps // 10_000
            elif tx.quantity:
                need = None  # all the free quote
            else:
                quote_cap = tx.quote_quantity
                need = quote_cap + quote_cap * hold_bps // 10_000
                qty_cap = MAX_UNITS
        elif tx.order_type == LIMIT or tx.quantity:
            qty_cap = tx.quantity
            need = qty_cap * spec.base_mult
        else:
            need = None  # all the free base
            quote_cap = tx.quote_quantity
        provide = self.provide
        if provide is not None and (tx.auto or need is None or bal.free < need):
            provide(seq, tx, asset, bal, need, out)
        if need is None:
            if bid:
                need = bal.free
                quote_cap = need * 10_000 // (10_000 + hold_bps)
            else:
                qty_cap = bal.free // spec.base_mult
                need = qty_cap * spec.base_mult
        if need <= 0 or bal.free < need:
            out.append(order_rejected(seq, tx, "InsufficientFunds"))
            return None
        ledger.hold(seq, tx.account, asset, bal, need)
        return Entry(seq, tx, qty_cap, quote_cap)
