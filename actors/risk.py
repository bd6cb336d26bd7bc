"""Balances, holds and fees: the risk actor (it grows into the margin engine later).

State: per account and asset a ``[free, held]`` pair; per open order the amount still
held for it; fees collected per asset. It runs two phases of every block:

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

from satchel.core.amounts import MAX_UNITS
from satchel.core.errors import Code
from satchel.core.messages import (
    ASK,
    BID,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    REJECT_BOTH,
    REJECT_MAKER,
    REJECT_TAKER,
    AssetSpec,
    BalanceChanged,
    CancelAll,
    CancelOrder,
    Deposit,
    BalanceOf,
    BalancesOf,
    Deposited,
    Entry,
    Fill,
    LedgerOf,
    ListAssetSpec,
    ListMarketSpec,
    MarketSpec,
    OrderDone,
    PlaceOrder,
    PreTrade,
    PreTraded,
    Restore,
    SetPermission,
    Settle,
    Settled,
    StateOf,
    Totals,
    TxRejected,
    order_rejected,
)
from satchel.core.actor import dispatcher


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


class Risk:
    def __init__(self) -> None:
        self.assets: dict[str, AssetSpec] = {}
        self.markets: dict[str, MarketSpec] = {}
        self._balances: dict[str, dict[str, list[int]]] = {}
        self._holds: dict[int, list] = {}  # order id -> [account, asset, amount]
        self.fees: dict[str, int] = {}
        self.deposits: dict[str, int] = {}
        self._touched: dict[tuple[str, str], None] = {}
        self._hold_bps: dict[str, int] = {}
        self._accounts_off: dict[str, dict[str, None]] = {}
        self._markets_off: dict[str, None] = {}

    # ------------------------------------------------------------------ configuration

    def _list_asset(self, msg: ListAssetSpec) -> None:
        spec = msg.spec
        self.assets[spec.symbol] = spec
        self.fees.setdefault(spec.symbol, 0)
        self.deposits.setdefault(spec.symbol, 0)

    def _list_market(self, msg: ListMarketSpec) -> None:
        spec = msg.spec
        self.markets[spec.symbol] = spec
        # bids hold the larger fee rate, so either role's fee is covered (never negative)
        self._hold_bps[spec.symbol] = max(spec.taker_fee_bps, spec.maker_fee_bps, 0)

    def _set_permission(self, msg: SetPermission) -> None:
        """Admin: spot trading on/off for an account (one market or all) or a market."""
        account, symbol, enabled = msg.account, msg.symbol, msg.enabled
        if account is None:
            if enabled:
                self._markets_off.pop(symbol, None)
            else:
                self._markets_off[symbol] = None
            return
        rules = self._accounts_off.setdefault(account, {})
        key = symbol or "*"
        if enabled:
            rules.pop(key, None)
            if not rules:
                del self._accounts_off[account]
        else:
            rules[key] = None

    def _permission(self, account: str, symbol: str) -> str:
        """Why spot trading is not permitted for this order ("" if it is)."""
        if symbol in self._markets_off:
            return "MarketTradingDisabled"
        rules = self._accounts_off.get(account)
        if rules is not None and spot_forbidden(rules, symbol):
            return "AccountTradingDisabled"
        return ""

    # ------------------------------------------------------------------ queries

    def _balance_of(self, msg: BalanceOf) -> tuple[int, int]:
        bal = self._balances.get(msg.account, {}).get(msg.asset)
        return (bal[0], bal[1]) if bal else (0, 0)

    def _balances_of(self, msg: BalancesOf) -> dict[str, tuple[int, int]]:
        return {a: (b[0], b[1]) for a, b in self._balances.get(msg.account, {}).items()}

    def _totals(self, msg: Totals) -> dict[str, int]:
        """Per asset: free + held over all accounts, plus fees (for conservation checks)."""
        out = dict(self.fees)
        for assets in self._balances.values():
            for asset, (free, held) in assets.items():
                out[asset] = out.get(asset, 0) + free + held
        return out

    def _ledger(self, msg: LedgerOf) -> dict[str, tuple[int, int, int]]:
        """Per asset: (deposits, fees collected, sum of every account's free + held)."""
        out = {asset: [self.deposits.get(asset, 0), fee, 0] for asset, fee in self.fees.items()}
        for assets in self._balances.values():
            for asset, (free, held) in assets.items():
                out[asset][2] += free + held
        return {asset: (d, f, b) for asset, (d, f, b) in out.items()}

    def _state(self, msg: StateOf) -> list:
        return [
            sorted([acct, sorted([a, b[0], b[1]] for a, b in assets.items())] for acct, assets in self._balances.items()),
            sorted([oid, h[0], h[1], h[2]] for oid, h in self._holds.items()),
            sorted(self.fees.items()),
            sorted(self.deposits.items()),
            sorted([a, sorted(r)] for a, r in self._accounts_off.items()),
            sorted(self._markets_off),
        ]

    def _restore(self, msg: Restore) -> None:
        """Rebuild balances, holds, fees and permissions from ``StateOf`` output."""
        balances, holds, fees, deposits, accounts_off, markets_off = msg.state
        self._balances = {acct: {a: [free, held] for a, free, held in assets} for acct, assets in balances}
        self._holds = {oid: [acct, asset, amount] for oid, acct, asset, amount in holds}
        self.fees = dict(fees)
        self.deposits = dict(deposits)
        self._accounts_off = {a: dict.fromkeys(r) for a, r in accounts_off}
        self._markets_off = dict.fromkeys(markets_off)

    # ------------------------------------------------------------------ phase 1

    def _bal(self, account: str, asset: str) -> list[int]:
        assets = self._balances.get(account)
        if assets is None:
            assets = self._balances[account] = {}
        bal = assets.get(asset)
        if bal is None:
            bal = assets[asset] = [0, 0]
        return bal

    def _pretrade(self, msg: PreTrade) -> PreTraded:
        """Hold funds for new orders, credit deposits; route book commands by market."""
        batch = msg.batch
        out: list = []
        routed: dict[str, list] = {}
        touched = self._touched
        for seq, tx in batch:
            cls = tx.__class__
            if cls is PlaceOrder:
                spec = self.markets.get(tx.symbol)
                if spec is None:
                    out.append(TxRejected(seq, tx.account, Code.INVALID_SYMBOL, f"Unknown symbol {tx.symbol}"))
                    continue
                bad = _malformed(tx) or self._permission(tx.account, tx.symbol)
                if bad:
                    out.append(order_rejected(seq, tx, bad))
                    continue
                entry = self._hold(seq, tx, spec, out)
                if entry is not None:
                    cmds = routed.get(tx.symbol)
                    if cmds is None:
                        cmds = routed[tx.symbol] = []
                    cmds.append(entry)
            elif cls is CancelOrder or cls is CancelAll:
                if tx.symbol not in self.markets:
                    out.append(TxRejected(seq, tx.account, Code.INVALID_SYMBOL, f"Unknown symbol {tx.symbol}"))
                    continue
                cmds = routed.get(tx.symbol)
                if cmds is None:
                    cmds = routed[tx.symbol] = []
                cmds.append((seq, tx))
            elif cls is Deposit:
                if tx.asset not in self.assets or not 0 < tx.amount <= MAX_UNITS - self.deposits[tx.asset]:
                    out.append(TxRejected(seq, tx.account, Code.INVALID_DEPOSIT, "Unknown asset or non-positive amount"))
                    continue
                self._bal(tx.account, tx.asset)[0] += tx.amount
                self.deposits[tx.asset] += tx.amount
                touched[(tx.account, tx.asset)] = None
                out.append(Deposited(seq, tx.account, tx.asset, tx.amount))
        return PreTraded(routed, out)

    def _hold(self, seq: int, tx: PlaceOrder, spec: MarketSpec, out: list) -> Entry | None:
        assets = self._balances.get(tx.account)
        if assets is None:
            assets = self._balances[tx.account] = {}
        quote_cap = None
        if tx.side == BID:
            asset = spec.quote
            bal = assets.get(asset)
            if bal is None:
                bal = assets[asset] = [0, 0]
            hold_bps = self._hold_bps[tx.symbol]
            qty_cap = tx.quantity
            if tx.order_type == LIMIT:
                notional = tx.price * tx.quantity * spec.notional_mult
                need = notional + notional * hold_bps // 10_000
            elif tx.quantity:
                need = bal[0]
                quote_cap = need * 10_000 // (10_000 + hold_bps)
            else:
                quote_cap = tx.quote_quantity
                need = quote_cap + quote_cap * hold_bps // 10_000
                qty_cap = MAX_UNITS
        else:
            asset = spec.base
            bal = assets.get(asset)
            if bal is None:
                bal = assets[asset] = [0, 0]
            if tx.order_type == LIMIT or tx.quantity:
                qty_cap = tx.quantity
                need = qty_cap * spec.base_mult
            else:
                qty_cap = bal[0] // spec.base_mult
                need = qty_cap * spec.base_mult
                quote_cap = tx.quote_quantity
        if need <= 0 or bal[0] < need:
            out.append(order_rejected(seq, tx, "InsufficientFunds"))
            return None
        bal[0] -= need
        bal[1] += need
        self._holds[seq] = [tx.account, asset, need]
        self._touched[(tx.account, asset)] = None
        return Entry(seq, tx, qty_cap, quote_cap)

    # ------------------------------------------------------------------ phase 3

    def _settle(self, msg: Settle) -> Settled:
        """Apply fills and releases in event order; the block's balance changes."""
        events, last_seq = msg.events, msg.last_seq
        out: list = []
        holds = self._holds
        touched = self._touched
        fees = self.fees
        for ev in events:
            cls = ev.__class__
            if cls is Fill:
                spec = self.markets[ev.symbol]
                base_amt = ev.quantity * spec.base_mult
                quote_amt = ev.quote
                if ev.taker_side == BID:
                    buyer, buy_order, buy_fee = ev.taker_account, ev.taker_order, ev.taker_fee
                    seller, sell_order, sell_fee = ev.maker_account, ev.maker_order, ev.maker_fee
                else:
                    buyer, buy_order, buy_fee = ev.maker_account, ev.maker_order, ev.maker_fee
                    seller, sell_order, sell_fee = ev.taker_account, ev.taker_order, ev.taker_fee
                # buyer: quote out of the hold (a rebate is paid to free), base in
                short = self._consume(buy_order, buyer, spec.quote, quote_amt + max(buy_fee, 0))
                if short:
                    buy_fee -= short  # only after a fee increase: the part no balance covers is waived
                qb = self._bal(buyer, spec.quote)
                if buy_fee < 0:
                    qb[0] -= buy_fee
                self._bal(buyer, spec.base)[0] += base_amt
                # seller: base out of the hold, quote in net of its fee
                self._consume(sell_order, seller, spec.base, base_amt)
                self._bal(seller, spec.quote)[0] += quote_amt - sell_fee
                fees[spec.quote] += buy_fee + sell_fee
                touched[(buyer, spec.quote)] = None
                touched[(buyer, spec.base)] = None
                touched[(seller, spec.quote)] = None
                touched[(seller, spec.base)] = None
            elif cls is OrderDone:
                h = holds.pop(ev.order_id, None)
                if h is not None:
                    bal = self._balances[h[0]][h[1]]
                    bal[0] += h[2]
                    bal[1] -= h[2]
                    touched[(h[0], h[1])] = None
        for account, asset in touched:
            bal = self._balances[account][asset]
            out.append(BalanceChanged(last_seq, account, asset, bal[0], bal[1]))
        touched.clear()
        return Settled(out)

    def _consume(self, order_id: int, account: str, asset: str, amount: int) -> int:
        """Take ``amount`` from the order's hold; returns what could not be covered.

        Holds always cover fills at the fee rates in force when the order was placed. If
        an admin raised the fees since, the excess comes from the free balance, and what
        that cannot cover either is returned (the caller waives it) -- never a negative
        balance.
        """
        h = self._holds[order_id]
        bal = self._balances[account][asset]
        take = amount if amount <= h[2] else h[2]
        h[2] -= take
        bal[1] -= take
        rest = amount - take
        if rest:
            extra = rest if rest <= bal[0] else bal[0]
            bal[0] -= extra
            return rest - extra
        return 0

    handle = dispatcher({
        PreTrade: _pretrade, Settle: _settle, ListAssetSpec: _list_asset, ListMarketSpec: _list_market,
        SetPermission: _set_permission, BalanceOf: _balance_of, BalancesOf: _balances_of, Totals: _totals,
        LedgerOf: _ledger, StateOf: _state, Restore: _restore,
    })
