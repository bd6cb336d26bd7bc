"""The margin engine: balances, perp positions, collateral, margin, funding, PnL settlement.

The risk actor grown into a cross-margin engine. It composes the spot parts of
``risk`` (``Ledger`` -- every movement of value --, ``Permissions``, ``SpotHolds``) with
perp ``Position``s, the open perp orders' risk, trigger orders (``triggers``) and the
liquidation tiers (``liquidation``). Phases of every block (DESIGN §2):

* pre-trade -- deposits, leverage settings; spot orders hold funds as before (an account
  with perp exposure must also keep its initial margin after the bid's haircut); a perp
  order is checked against the mark: reduce-only, stale index, open-interest limit and
  initial margin with every open order that adds risk; a trigger order is stored;
* settlement -- spot fills move assets; perp fills move positions and their net cost,
  fees (and liquidation fees) in the settlement asset;
* periodic (``Remark``) -- funding payments, PnL settlement every ``settle_interval``,
  maintenance checks for the accounts whose margin can change, triggers; ``Escalate``
  after the generated orders ran.

Accounting (all integers, quote units of the settlement asset). A position has a
signed ``size`` and ``net_cost``: a fill adds (+/-) its notional to the buyer's and
seller's net cost, so the sum of all net costs is always zero, and unrealized PnL is
``size x mark x notional_mult - net_cost``. PnL is realized into the settlement balance
when a position closes (the part that closes, at the fill's price) and for every
position every ``settle_interval`` (net cost reset to size x mark). Conservation, per
block: ``sum(balances) + fees + insurance - sum(net_cost) == deposits`` for the
settlement asset, and ``sum(free + held) + fees == deposits`` for the others; long open
interest equals short open interest in every market.

Equity = collateral + unrealized PnL. Collateral: the settlement asset at face value
(negative balances count in full), other assets at quantity x the mark of the perp on
that asset x a weight shrinking with size (``core.margin.collateral_weight``), rounded
down. Exposure per market: max(|size + open bids|, |size - open asks|) x mark.
Initial margin: sum of exposure x IMF(exposure); maintenance: sum of position notional
x MMF(notional), each rounded up.

Cost of the periodic phase: O(accounts whose margin can change) per block -- accounts
holding a position or open order in a market whose mark moved (an index per market
keeps them), accounts in liquidation, and accounts that traded perps in the block --
never a scan of all accounts. PnL settlement and funding touch each position of the
market once per interval.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import msgspec

from satchel.actors.book import MAX_OPEN_ORDERS
from satchel.actors.compliance import Compliance
from satchel.actors.custody import CUSTODY_TXS, Custody
from satchel.actors.liquidation import Liquidator
from satchel.actors.loans import Loans
from satchel.actors.risk import Balance, Ledger, Permissions, SpotHolds, _malformed
from satchel.actors.triggers import Triggers, reference
from satchel.core import margin as rules
from satchel.core.actor import dispatcher
from satchel.core.amounts import MAX_UNITS, format_units
from satchel.core.errors import Code
from satchel.core.instructions import INSURANCE_ACCOUNT
from satchel.core.messages import (
    BID, CANCELLED, EXPIRED, LIMIT, LIQUIDATION, PPB,
    AssetSpec, BorrowLend, ChainCommand, ChainsOf, ComplianceCommand, PermissionsOf, LendingOf, MovesOf, PoolsUsed, UsePools, Withdraw, WithdrawalsOf, BalanceChanged, BalanceOf, BalancesOf, CancelAll, CancelOrder, CollateralOf, CollateralRow, CollateralView,
    Deposit, Deposited, Entry, Escalate, Fill, FundingPaid, FundingPayment, HistoryOf, LedgerOf, LeverageSet,
    Liquidation, ListAssetSpec, ListMarginSpec, ListMarketSpec, MarginSpec, MarketSpec, MarkPrice, MarksOf, OpenInterest, OrderDone,
    PerpPrices, PlaceOrder, PositionChanged, PositionsOf, PositionsView, PreTrade, PreTraded, Remark, Restore,
    SetLeverage, SetPermission, Settle, Settled, StateOf, Ticked, Totals, Transfer, Transferred, TriggerPlaced, TxRejected,
    order_rejected,
)
from satchel.core.state import (
    AccountLeverage, AssetAmount, MarginState, PerpOrderState, PositionState, RiskState,
)

HISTORY = 100  # funding payments, and separately liquidation steps, kept per account (newest)
_NONE: dict[str, int] = {}  # an account with no withdrawal open (never written to)



class Position(msgspec.Struct, gc=False):
    size: int = 0
    net_cost: int = 0
    entry_notional: int = 0
    realized: int = 0
    funding: int = 0
    funding_index: int = 0
    position_id: int = 0


class PerpOrder(msgspec.Struct, gc=False):
    account: str
    symbol: str
    side: int
    remaining: int
    price: int
    reduce_only: bool
    liquidation: bool = False


class Figures(msgspec.Struct):
    """An account's margin figures, quote units."""

    collateral: int
    unrealized: int
    equity: int
    exposure: int
    initial: int
    maintenance: int
    position_notional: int


class Margin:
    """The actor: configuration, the pre-trade and settlement phases, the periodic phase
    and reads, over the ledger and the positions."""

    def __init__(self) -> None:
        self.assets: dict[str, AssetSpec] = {}
        self.markets: dict[str, MarketSpec] = {}
        self.ledger = Ledger()
        self.permissions = Permissions()
        self.policy = SpotHolds(self.ledger)
        self.spec: MarginSpec | None = None
        self.settle_asset = "USDC"
        self.quote_unit = 10**6
        self.positions: dict[str, dict[str, Position]] = {}  # account -> symbol -> position
        self.orders: dict[int, PerpOrder] = {}  # open perp orders by id
        # account -> symbol -> [bid qty, ask qty, orders, reduce-only bid qty, reduce-only ask qty] open
        self.open: dict[str, dict[str, list[int]]] = {}
        self.holders: dict[str, dict[str, None]] = {}  # symbol -> accounts with a position or open order
        self.triggers = Triggers()
        self.leverage: dict[str, int] = {}
        self.marks: dict = {}  # symbol -> MarkView
        self.prices: dict[str, MarkPrice] = {}  # symbol -> the last MarkPrice (funding estimate)
        self.funding_index: dict[str, int] = {}
        self.long_oi: dict[str, int] = {}
        self.short_oi: dict[str, int] = {}
        self.insurance = 0
        self.liquidating: dict[str, None] = {}
        self.next_settle = 0
        self.next_oi = 0
        self.history: dict[str, tuple[deque, deque]] = {}  # account -> (funding payments, liquidation steps)
        self.collateral_perp: dict[str, MarketSpec] = {}  # asset -> the perp whose mark prices it
        self.touched: dict[tuple[str, str], None] = {}  # positions changed since last reported
        self.traded: dict[str, None] = {}  # accounts with perp fills since the last check
        self.liquidator = Liquidator(self)
        self.loans = Loans(self.ledger, self._borrow_ok)  # lend and borrow positions
        self.loans.may_lend = self._may_lend
        self.custody = Custody(self.ledger, self._fund_withdrawal, self._amount_text)  # chains: deposits, withdrawals
        self.compliance = Compliance()  # KYC profiles, tier limits, product and market rules
        self.now = 0  # the block being applied, us (event times)
        self._pass: dict[str, list] = {}  # pre-trade's margin figures per account, for one pass
        self._oi_pass: dict[str, int] = {}  # symbol -> what this pass's orders may add to its open interest
        self._loss_pass: dict[str, int] = {}  # account -> what this pass's perp orders may lose against the mark

    # ------------------------------------------------------------------ configuration

    def _list_asset(self, msg: ListAssetSpec) -> None:
        spec = msg.spec
        self.assets[spec.symbol] = spec
        self.ledger.list_asset(spec.symbol)

    def _list_market(self, msg: ListMarketSpec) -> None:
        spec = msg.spec
        self.markets[spec.symbol] = spec
        self.policy.list_market(spec)
        if spec.perp is not None:
            self.collateral_perp.setdefault(spec.base, spec)
            self.funding_index.setdefault(spec.symbol, 0)
            self.long_oi.setdefault(spec.symbol, 0)
            self.short_oi.setdefault(spec.symbol, 0)
            self.holders.setdefault(spec.symbol, {})

    def _set_margin(self, msg: ListMarginSpec) -> None:
        self.spec = msg.spec
        self.settle_asset = msg.spec.settlement_asset
        # whole units of the settlement asset: the square roots of margin fractions take them
        self.quote_unit = 10 ** self.assets[self.settle_asset].decimals

    def _set_permission(self, msg: SetPermission) -> None:
        self.permissions.set(msg.account, msg.symbol, msg.enabled)

    # ------------------------------------------------------------------ positions

    def position(self, account: str, symbol: str) -> Position | None:
        return self.positions.get(account, {}).get(symbol)

    def has_perp(self, account: str) -> bool:
        return account in self.positions or account in self.open

    def trade(self, account: str, symbol: str, qty: int, cost: int, seq: int) -> int:
        """Add ``qty`` (signed, + buys) to the account's position at total ``cost`` (signed
        like qty); PnL of any part that closes is realized into the settlement balance.
        Returns the new size."""
        book = self.positions.get(account)
        if book is None:
            book = self.positions[account] = {}
        pos = book.get(symbol)
        if pos is None:
            pos = book[symbol] = Position(funding_index=self.funding_index[symbol], position_id=seq)
            self.holders[symbol][account] = None
        size = pos.size
        self._oi(symbol, size, -1)
        if size == 0 or (size > 0) == (qty > 0):
            if size == 0:
                pos.position_id = seq
                pos.funding_index = self.funding_index[symbol]
            pos.size = size + qty
            pos.net_cost += cost
            pos.entry_notional += cost
        elif abs(qty) <= abs(size):
            pos.entry_notional -= rules.share(pos.entry_notional, abs(qty), abs(size))
            pos.size = size + qty
            pos.net_cost += cost
            if pos.size == 0:
                self._realize_all(account, pos)
        else:  # flips: close the old size at this fill's price, open the rest
            closing = rules.share(cost, abs(size), abs(qty))
            pos.size = 0
            pos.net_cost += closing
            self._realize_all(account, pos)
            pos.size = size + qty
            pos.net_cost = pos.entry_notional = cost - closing
            pos.position_id = seq
            pos.funding_index = self.funding_index[symbol]
        self._oi(symbol, pos.size, 1)
        self.touched[(account, symbol)] = None
        return pos.size

    def _oi(self, symbol: str, size: int, sign: int) -> None:
        if size > 0:
            self.long_oi[symbol] += sign * size
        elif size < 0:
            self.short_oi[symbol] -= sign * size

    def _realize_all(self, account: str, pos: Position) -> None:
        pnl = -pos.net_cost
        self.credit(account, pnl)
        pos.realized += pnl
        pos.net_cost = 0
        pos.entry_notional = 0

    def credit(self, account: str, amount: int) -> None:
        """Move ``amount`` (signed) into the account's settlement balance; it may go negative
        (a shortfall against collateral)."""
        if amount:
            self.ledger.bal(account, self.settle_asset).free += amount
            self.ledger.touched[(account, self.settle_asset)] = None

    def drop_if_flat(self, account: str, symbol: str) -> None:
        book = self.positions.get(account)
        if book is None:
            return
        pos = book.get(symbol)
        if pos is not None and pos.size == 0 and pos.net_cost == 0:
            del book[symbol]
            if not book:
                del self.positions[account]
            if symbol not in self.open.get(account, {}):
                self.holders[symbol].pop(account, None)

    # ------------------------------------------------------------------ margin figures

    def mark(self, symbol: str) -> int:
        view = self.marks.get(symbol)
        return view.mark if view is not None else 0

    def asset_value(self, asset: str, total: int) -> tuple[int, int, int]:
        """(mark value, weight, collateral value) of ``total`` units of a non-settlement asset,
        in quote units: valued at the mark of the perp on it (nothing without one), a
        holding's weight shrinking with its size, the collateral value rounded down."""
        perp = self.collateral_perp.get(asset)
        mark = self.mark(perp.symbol) if perp is not None else 0
        if not mark:
            return 0, 0, 0
        value = total * mark * perp.notional_mult // perp.base_mult
        if value <= 0:
            return value, PPB, value  # owed: counts in full
        weight = rules.collateral_weight(self.assets[asset], value, self.quote_unit)
        return value, weight, value * weight // PPB

    def collateral(self, account: str) -> int:
        """The account's weighted collateral (see the module docstring)."""
        collateral = 0
        for asset, bal in self.ledger.balances.get(account, {}).items():
            total = self._holding(account, asset, bal)
            if not total:
                continue
            collateral += total if asset == self.settle_asset else self.asset_value(asset, total)[2]
        return collateral

    def _holding(self, account: str, asset: str, bal: Balance) -> int:
        """What of ``asset`` counts as the account's (``bal`` its balance): free + held, less
        what its open withdrawals hold (on its way out: an outside test opened a 37x position
        on 100 USDC being withdrawn, and borrowed against it), plus a lend's claim or less a
        debt, asset units."""
        total = bal.free + bal.held - self.custody.leaving.get(account, _NONE).get(asset, 0)
        loan = self.loans.loans.get(account, _NONE).get(asset)
        return total + self.loans.net(asset, loan) if loan is not None else total

    def equity(self, account: str) -> int:
        """Collateral + unrealized PnL at the marks."""
        unrealized = 0
        for symbol, pos in self.positions.get(account, {}).items():
            unrealized += pos.size * self.mark(symbol) * self.markets[symbol].notional_mult - pos.net_cost
        return self.collateral(account) + unrealized

    def initial_term(self, account: str, symbol: str, side: int = BID, qty: int = 0) -> int:
        """The initial margin one market asks of the account, with ``qty`` more on ``side``."""
        spec = self.markets[symbol]
        pos = self.positions.get(account, {}).get(symbol)
        size = pos.size if pos is not None else 0
        sides = self.open.get(account, {}).get(symbol)
        bids, asks = (sides[0], sides[1]) if sides is not None else (0, 0)
        if side == BID:
            bids += qty
        else:
            asks += qty
        exp = max(abs(size + bids), abs(size - asks)) * self.mark(symbol) * spec.notional_mult
        return rules.requirement(exp, rules.imf(spec.perp, exp, self.quote_unit, self.leverage.get(account, 0)))

    def maintenance(self, account: str) -> int:
        out = self.borrow_terms(account)[1]
        for symbol, pos in self.positions.get(account, {}).items():
            spec = self.markets[symbol]
            notional = abs(pos.size) * self.mark(symbol) * spec.notional_mult
            out += rules.requirement(notional, rules.mmf(spec.perp, notional, self.quote_unit))
        return out


    def figures(self, account: str, extra: tuple[str, int, int] | None = None) -> Figures:
        """The account's equity and requirements; ``extra`` = (symbol, side, qty) adds a
        prospective open order."""
        quote_unit = self.quote_unit
        collateral = self.collateral(account)
        unrealized = exposure = initial = maintenance = pos_notional = 0
        positions = self.positions.get(account, {})
        open_orders = self.open.get(account, {})
        symbols = dict.fromkeys(positions)
        symbols.update(dict.fromkeys(open_orders))
        if extra is not None:
            symbols[extra[0]] = None
        leverage = self.leverage.get(account, 0)
        for symbol in symbols:
            spec = self.markets[symbol]
            mark = self.mark(symbol)
            mult = spec.notional_mult
            pos = positions.get(symbol)
            size = pos.size if pos is not None else 0
            if pos is not None:
                unrealized += size * mark * mult - pos.net_cost
            sides = open_orders.get(symbol)
            bids, asks = (sides[0], sides[1]) if sides is not None else (0, 0)
            if extra is not None and extra[0] == symbol:
                if extra[1] == BID:
                    bids += extra[2]
                else:
                    asks += extra[2]
            exp = max(abs(size + bids), abs(size - asks)) * mark * mult
            notional = abs(size) * mark * mult
            exposure += exp
            pos_notional += notional
            initial += rules.requirement(exp, rules.imf(spec.perp, exp, quote_unit, leverage))
            maintenance += rules.requirement(notional, rules.mmf(spec.perp, notional, quote_unit))
        if account in self.loans.debtors:
            borrow_initial, borrow_maintenance = self.borrow_terms(account)
            initial += borrow_initial
            maintenance += borrow_maintenance
        initial += self.bid_loss(account)
        return Figures(collateral, unrealized, collateral + unrealized, exposure, initial, maintenance, pos_notional)

    def conversion_loss(self, base: str, quote_amount: int) -> int:
        """What spending ``quote_amount`` of the settlement asset on ``base`` takes from
        collateral: base counts at its weight (0 without a perp to price it)."""
        weight = self.assets[base].collateral_weight if base in self.collateral_perp else 0
        return quote_amount * (PPB - weight) // PPB

    def bid_loss(self, account: str) -> int:
        """What the account's open spot bids take from collateral once they fill: part of the
        initial requirement, as open perp orders' exposure is. Counted at each check, a
        batch of auto-borrowing bids each passed against equity before the others' fills
        (an outside test ended with equity -573 USDC and the lenders' money spent)."""
        bids = self.ledger.bids_of.get(account)
        if not bids:
            return 0
        holds = self.ledger.holds
        return sum(self.conversion_loss(holds[oid].base, holds[oid].amount) for oid in bids)

    def debt_value(self, asset: str, amount: int) -> int:
        """What ``amount`` of ``asset`` owed is worth in quote units (0: no price)."""
        return amount if asset == self.settle_asset else self.asset_value(asset, amount)[0]

    def borrow_terms(self, account: str) -> tuple[int, int]:
        """(initial, maintenance) margin the account's borrows ask: each debt's value x the
        pool's borrow IMF / MMF, rounded up."""
        if account not in self.loans.debtors:
            return 0, 0
        initial = maintenance = 0
        for asset, debt in self.loans.debts(account):
            value = self.debt_value(asset, debt)
            spec = self.loans.pools[asset].spec
            initial += rules.requirement(value, spec.borrow_imf)
            maintenance += rules.requirement(value, spec.borrow_mmf)
        return initial, maintenance

    def _borrow_ok(self, account: str, asset: str, amount: int, order: PlaceOrder | None = None) -> bool:
        """The borrow limit: after borrowing ``amount`` more (and, for a spot bid, spending
        it on an asset that counts at a weight below 1), equity must still cover the
        initial margin. A borrow changes no net holding, so equity moves only by that
        conversion; the requirement grows by the borrow's IMF."""
        if asset != self.settle_asset and self.asset_value(asset, 10 ** self.assets[asset].decimals)[0] <= 0:
            return False  # an asset without a price cannot be borrowed
        value = self.debt_value(asset, amount)
        spec = self.loans.pools[asset].spec
        debt = self.loans.debt(account, asset)
        extra = (rules.requirement(self.debt_value(asset, debt + amount), spec.borrow_imf)
                 - rules.requirement(self.debt_value(asset, debt), spec.borrow_imf))
        loss = 0
        if order is not None and order.side == BID:
            loss = self.conversion_loss(self.markets[order.symbol].base, value)
        f = self.figures(account)
        self._pass.pop(account, None)
        return f.equity - loss >= f.initial + extra

    def autoclose_requirement(self, f: Figures) -> int:
        """Below this equity the account is closed out (tier 3+): position notional x
        max(MMF / divisor, MMF - offset), MMF the account's exposure-weighted one."""
        if not f.position_notional:
            return 0
        account_mmf = f.maintenance * PPB // f.position_notional
        fraction = rules.autoclose(account_mmf, self.spec.autoclose_divisor, self.spec.autoclose_offset)
        return rules.requirement(f.position_notional, fraction)

    # ------------------------------------------------------------------ phase 1

    def _pretrade(self, msg: PreTrade) -> PreTraded:
        """Hold funds or check margin for new orders, credit deposits; route book commands by market."""
        out: list = []
        routed: dict[str, list] = {}
        markets = self.markets
        permission = self.permissions.check
        compliance = self.compliance
        hold = self.policy.hold
        ledger = self.ledger
        now = msg.timestamp
        self._pass = {}
        self._oi_pass = {}
        self._loss_pass = {}
        self.loans.now = now
        for seq, tx in msg.batch:
            cls = tx.__class__
            if cls is PlaceOrder:
                spec = markets.get(tx.symbol)
                if spec is None:
                    out.append(TxRejected(seq, tx.account, Code.INVALID_SYMBOL, f"Unknown symbol {tx.symbol}"))
                    continue
                bad = _malformed(tx) or (tx.origin != LIQUIDATION and (
                    permission(tx.account, tx.symbol) or (compliance.active and self._compliant(tx, spec))))
                if bad:
                    out.append(order_rejected(seq, tx, bad))
                    continue
                if spec.perp is not None:
                    entry = self._perp_entry(seq, tx, spec, now, out)
                else:
                    entry = hold(seq, tx, spec, out)
                    if entry is not None and tx.side == BID:
                        if self.has_perp(tx.account) or tx.account in self.loans.debtors:
                            entry = self._spot_margin(entry, spec, out)
                        if entry is not None and entry.seq in ledger.holds:
                            ledger.mark_bid(entry.seq, spec.base)
                if entry is not None:
                    cmds = routed.get(tx.symbol)
                    if cmds is None:
                        cmds = routed[tx.symbol] = []
                    cmds.append(entry)
            elif cls is CancelOrder or cls is CancelAll:
                if tx.symbol not in markets:
                    out.append(TxRejected(seq, tx.account, Code.INVALID_SYMBOL, f"Unknown symbol {tx.symbol}"))
                    continue
                if self._cancel_triggers(seq, tx, out):
                    continue
                cmds = routed.get(tx.symbol)
                if cmds is None:
                    cmds = routed[tx.symbol] = []
                cmds.append((seq, tx))
            elif cls is Deposit:
                if tx.asset not in self.assets or not 0 < tx.amount <= MAX_UNITS - ledger.deposits[tx.asset] or (
                        tx.account == INSURANCE_ACCOUNT and tx.asset != self.settle_asset):
                    out.append(TxRejected(seq, tx.account, Code.INVALID_DEPOSIT,
                                          "Unknown asset, non-positive amount, or past the ledger's limit"))
                    continue
                self._pass.pop(tx.account, None)
                if tx.account == INSURANCE_ACCOUNT:
                    ledger.deposits[tx.asset] += tx.amount
                    self.insurance += tx.amount
                else:
                    ledger.deposit(tx.account, tx.asset, tx.amount)
                out.append(Deposited(seq, tx.account, tx.asset, tx.amount))
            elif cls is Transfer:
                self._transfer(seq, tx, out)
            elif cls is BorrowLend:
                if compliance.active and self._refused(seq, tx.account, compliance.borrow_lend(tx.account, tx.side), out):
                    continue
                self._pass.pop(tx.account, None)
                self.loans.execute(seq, tx, out)
            elif cls in CUSTODY_TXS:
                checked = cls is Withdraw and compliance.active  # a withdrawal counts against the tier's day
                if checked and self._refused(seq, tx.account, compliance.withdraw(tx.account, now), out):
                    continue
                before = len(out)
                self._pass.pop(getattr(tx, "account", ""), None)
                self.custody.now = now
                self.custody.apply(seq, tx, out)
                if checked and not any(e.__class__ is TxRejected for e in out[before:]):
                    compliance.withdrew(tx.account, now)
            elif cls is SetLeverage:
                if tx.auto_lend == 1 and compliance.active and self._refused(
                        seq, tx.account, compliance.auto_lend(tx.account), out):
                    continue
                self._pass.pop(tx.account, None)
                if tx.leverage:
                    self.leverage[tx.account] = tx.leverage
                self.loans.configure(seq, tx.account, tx.auto_lend, tx.auto_repay, out)
                out.append(LeverageSet(seq, tx.account, self.leverage.get(tx.account, 0), *self.loans.settings(tx.account)))
        return PreTraded(routed, out)

    def _may_lend(self, account: str) -> bool:
        """A lending ban stops the auto-lend sweep too: with auto-lend on by default, an
        account denied lending was still made a lender by its first idle deposit (an
        outside test: 50,000 USDC lent within 4 s, interest and lending points earned)."""
        return not self.compliance.active or not self.compliance.auto_lend(account)[0]

    def _amount_text(self, asset: str, units: int) -> str:
        """``units`` of ``asset`` as a client writes them ("100.5 USDC"), for refusals."""
        spec = self.assets.get(asset)
        return f"{units if spec is None else format_units(units, spec.decimals)} {asset}"

    def _fund_withdrawal(self, seq: int, account: str, asset: str, amount: int, out: list) -> str:
        """Whether the account can give ``amount`` of ``asset`` away (a withdrawal, the
        source of a transfer; "" if it can): an auto-lent claim is redeemed for what the
        free balance lacks, as for an order; and equity must still cover the initial
        margin without the amount's collateral value."""
        bal = self.ledger.bal(account, asset)
        if bal.free < amount:
            self.loans.redeem_shortfall(seq, account, asset, bal, amount, False, out)
        if bal.free < amount:
            return Code.INSUFFICIENT_FUNDS
        if self.has_perp(account) or account in self.loans.debtors:
            if asset == self.settle_asset:
                loss = amount
            else:
                total = self._holding(account, asset, bal)
                loss = self.asset_value(asset, total)[2] - self.asset_value(asset, total - amount)[2]
            f = self.figures(account)
            if f.equity - loss < f.initial:
                return Code.INSUFFICIENT_MARGIN
        return ""

    def _transfer(self, seq: int, tx: Transfer, out: list) -> None:
        """The admin's transfer between two accounts' free balances: the source gives it as
        it would a withdrawal (an auto-lent claim redeemed, margin kept)."""
        if tx.asset not in self.assets or not 0 < tx.amount < MAX_UNITS or tx.source == tx.target \
                or tx.source.startswith("@") or tx.target.startswith("@"):
            out.append(TxRejected(seq, tx.admin, Code.INVALID_REQUEST, "Unknown asset, bad amount or accounts"))
            return
        self._pass.pop(tx.source, None)
        self._pass.pop(tx.target, None)
        code = self._fund_withdrawal(seq, tx.source, tx.asset, tx.amount, out)
        if code:
            out.append(TxRejected(seq, tx.admin, code, f"{tx.source} cannot give {self._amount_text(tx.asset, tx.amount)}"))
            return
        ledger = self.ledger
        ledger.bal(tx.source, tx.asset).free -= tx.amount
        ledger.bal(tx.target, tx.asset).free += tx.amount
        ledger.touched[(tx.source, tx.asset)] = None
        ledger.touched[(tx.target, tx.asset)] = None
        out.append(Transferred(seq, tx.source, tx.target, tx.asset, tx.amount))

    def _compliant(self, tx: PlaceOrder, spec: MarketSpec) -> str:
        """Why compliance refuses the order ("" if it does not)."""
        view = self.marks.get(spec.symbol) if spec.perp is not None else None
        return self.compliance.order(tx, spec, view.mark if view is not None else 0)

    @staticmethod
    def _refused(seq: int, account: str, refusal: tuple[str, str], out: list) -> bool:
        code, message = refusal
        if code:
            out.append(TxRejected(seq, account, code, message))
        return bool(code)

    def _compliance_command(self, msg: ComplianceCommand) -> list:
        return self.compliance.command(msg.seq, msg.tx, self.markets)

    def _permissions_of(self, msg: PermissionsOf) -> dict:
        return self.compliance.effective(msg.account, sorted(self.markets))

    def _chain_command(self, msg: ChainCommand) -> list:
        return self.custody.command(msg.seq, msg.tx, msg.timestamp) + self.report(msg.seq)

    def _chains_of(self, msg: ChainsOf) -> list:
        return self.custody.views()

    def _withdrawals_of(self, msg: WithdrawalsOf) -> list:
        return self.custody.withdrawals(msg.account)

    def _moves_of(self, msg: MovesOf) -> list:
        return self.custody.open_moves(msg.chain)

    def _provide(self, seq: int, tx: PlaceOrder, asset: str, bal: object, need: int | None, out: list) -> None:
        self.loans.provide(seq, tx, asset, bal, need, out)
        self._pass.pop(tx.account, None)

    def _use_pools(self, msg: UsePools) -> None:
        self.loans.use(msg.pools)
        self.policy.provide = self._provide if msg.pools else None

    def _pools_used(self, msg: PoolsUsed) -> list:
        return self.loans.used()

    def _spot_margin(self, entry: Entry, spec: MarketSpec, out: list) -> Entry | None:
        """A spot bid by an account with perp exposure: buying an asset that counts at a
        weight below 1 lowers collateral by notional x (1 - weight); the initial margin
        must survive that."""
        tx = entry.tx
        loss = self.conversion_loss(spec.base, self.ledger.holds[entry.seq].amount)
        margin = self._margin_of(tx.account)
        if margin[0] - margin[2] >= loss:
            margin[2] += loss  # marked a bid below: in the requirement from now on
            return entry
        self.ledger.release(entry.seq)
        out.append(order_rejected(entry.seq, tx, "InsufficientMargin"))
        return None

    def _perp_entry(self, seq: int, tx: PlaceOrder, spec: MarketSpec, now: int, out: list) -> Entry | None:
        """The checks a perp order passes before the book; records its open-order risk."""
        symbol = tx.symbol
        view = self.marks.get(symbol)
        if self.spec is None or view is None or not view.mark:
            out.append(order_rejected(seq, tx, "NoMarkPrice"))
            return None
        if tx.trigger_price:
            if not reference(view, tx.trigger_by):
                out.append(order_rejected(seq, tx, "NoReferencePrice"))
                return None
            # a trigger holds nothing until it fires: bounded per account and market as
            # resting orders are, and only for an account with equity (an outside test
            # placed 100,000 from a key never funded: 55 MB, and a 1.1 s block when they fired)
            if self.triggers.count(tx.account, symbol) >= MAX_OPEN_ORDERS:
                out.append(order_rejected(seq, tx, "TooManyOpenOrders"))
                return None
            if self._margin_of(tx.account)[0] <= 0:
                out.append(order_rejected(seq, tx, "InsufficientMargin"))
                return None
            self.triggers.place(seq, tx, view)
            out.append(TriggerPlaced(seq, seq, tx.account, symbol, tx.side, tx.order_type, tx.price, tx.quantity,
                                     tx.trigger_price, tx.trigger_by, tx.reduce_only, tx.client_id))
            return None
        mark = view.mark
        pos = self.position(tx.account, symbol)
        size = pos.size if pos is not None else 0
        qty = tx.quantity or tx.quote_quantity // max(mark * spec.notional_mult, 1)
        qty_cap = tx.quantity or MAX_UNITS
        quote_cap = tx.quote_quantity or None
        reduce_only = tx.reduce_only or tx.origin == LIQUIDATION
        if reduce_only:
            if size == 0 or (size > 0) == (tx.side == BID):
                out.append(OrderDone(seq, seq, tx.account, symbol, tx.client_id, tx.side, tx.price, tx.quantity, EXPIRED,
                                     "ReduceOnly", 0, 0))
                return None
            # what the account's other reduce-only orders on this side (resting, or earlier
            # in this block) may still close is spoken for: without that, orders each capped
            # at the whole position filled together and flipped it with no margin check
            # (an outside test: 40 in one batch took a 1 SOL long to 37.6 short)
            left = abs(size)
            if tx.origin != LIQUIDATION:
                sides = self.open.get(tx.account, {}).get(symbol)
                left -= sides[3 + tx.side] if sides is not None else 0
            if left <= 0:
                out.append(OrderDone(seq, seq, tx.account, symbol, tx.client_id, tx.side, tx.price, tx.quantity, EXPIRED,
                                     "ReduceOnly", 0, 0))
                return None
            qty = min(qty, left)
            qty_cap = min(qty_cap, left)
            self._pass.pop(tx.account, None)  # its open quantity changes unchecked
        elif tx.origin != LIQUIDATION:
            sides = self.open.get(tx.account, {}).get(symbol)
            bids, asks = (sides[0], sides[1]) if sides is not None else (0, 0)
            before = max(abs(size + bids), abs(size - asks))
            after = max(abs(size + bids + qty), abs(size - asks)) if tx.side == BID else max(abs(size + bids), abs(size - asks - qty))
            if after > before:
                if now - view.index_time > spec.perp.stale_index_us:
                    out.append(order_rejected(seq, tx, "IndexPriceStale"))
                    return None
                grows = qty if (size >= 0) == (tx.side == BID) else max(qty - abs(size), 0)
                # with what this block's orders before it may add: each checked against the
                # open interest alone, a batch of 50 x 12 BTC passed a 500 BTC limit
                pending = self._oi_pass.get(symbol, 0)
                if self.long_oi[symbol] + pending + grows > spec.perp.open_interest_limit:
                    out.append(order_rejected(seq, tx, "OpenInterestLimit"))
                    return None
                margin = self._margin_of(tx.account)
                equity, terms, initial = margin
                term = self.initial_term(tx.account, symbol, tx.side, qty)
                initial += term - terms.get(symbol, 0)
                equity -= self._loss_pass.get(tx.account, 0)  # what this block's orders before it may lose
                loss, price_cap = self._off_mark(tx, mark, qty, spec, lambda: equity - initial)
                if equity - loss < initial:
                    out.append(order_rejected(seq, tx, "InsufficientMargin"))
                    return None
                terms[symbol] = term  # what the market asks once this order is open
                margin[2] = initial
                self._oi_pass[symbol] = pending + grows
                self._loss_pass[tx.account] = self._loss_pass.get(tx.account, 0) + loss
                return self._entered(seq, tx, symbol, qty, mark, Entry(seq, tx, qty_cap, quote_cap, price_cap))
        entry = Entry(seq, tx, qty_cap, quote_cap)
        if tx.origin != LIQUIDATION:
            # an order that adds no risk may still fill off the mark: the loss it books at once
            # must leave equity at or above zero, or the insurance fund pays for it
            def budget() -> int:  # equity is only computed for an order that may lose something
                return self.equity(tx.account) - self._loss_pass.get(tx.account, 0)

            loss, entry.price_cap = self._off_mark(tx, mark, qty, spec, budget)
            if loss and entry.price_cap is None and loss > budget():  # a market order's is within it
                out.append(order_rejected(seq, tx, "InsufficientMargin"))
                return None
            self._loss_pass[tx.account] = self._loss_pass.get(tx.account, 0) + loss
            self._pass.pop(tx.account, None)  # its open quantity changes unchecked
        return self._entered(seq, tx, symbol, qty, mark, entry)

    def _entered(self, seq: int, tx: PlaceOrder, symbol: str, qty: int, mark: int, entry: Entry) -> Entry:
        """A perp order on its way to the book: its open-order risk recorded."""
        self.orders[seq] = PerpOrder(tx.account, symbol, tx.side, qty, tx.price or mark, tx.reduce_only,
                                     tx.origin == LIQUIDATION)
        self._open_add(tx.account, symbol, tx.side, qty, tx.reduce_only and tx.origin != LIQUIDATION)
        return entry

    @staticmethod
    def _off_mark(tx: PlaceOrder, mark: int, qty: int, spec: MarketSpec,
                  budget: Callable[[], int]) -> tuple[int, int | None]:
        """(the most the order may lose against the mark as it fills, a market order's worst
        price): a limit order's loss at its price; a market order may lose ``budget()`` at
        most, so its fills stop at the price where that is spent. Two accounts of one owner
        otherwise drained the insurance fund: one bought at the band's edge (mark x 1.0999)
        from the other, its equity went below zero in the same block, and the fund paid the
        deficit (6,625 USDC in one trade, an outside test)."""
        mult = spec.notional_mult
        if tx.order_type == LIMIT:
            off = tx.price - mark if tx.side == BID else mark - tx.price
            return (off * qty * mult if off > 0 else 0), None
        per_unit = max(budget(), 0) // max(qty * mult, 1)
        cap = mark + per_unit if tx.side == BID else max(mark - per_unit, 1)
        return per_unit * qty * mult, cap

    def _margin_of(self, account: str) -> list:
        """[equity, initial margin per market, total initial margin] of an account, kept for
        the rest of this pre-trade pass: nothing in pre-trade moves marks, positions or
        balance totals, so only the market of each new order needs recomputing (a deposit
        or a leverage change drops the entry)."""
        margin = self._pass.get(account)
        if margin is None:
            symbols = dict.fromkeys(self.positions.get(account, ()))
            symbols.update(dict.fromkeys(self.open.get(account, ())))
            terms = {s: self.initial_term(account, s) for s in symbols}
            margin = self._pass[account] = [self.equity(account), terms,
                                            sum(terms.values()) + self.borrow_terms(account)[0] + self.bid_loss(account)]
        return margin

    def _open_add(self, account: str, symbol: str, side: int, qty: int, reducing: bool) -> None:
        mine = self.open.get(account)
        if mine is None:
            mine = self.open[account] = {}
        sides = mine.get(symbol)
        if sides is None:
            sides = mine[symbol] = [0, 0, 0, 0, 0]
            self.holders[symbol][account] = None
        sides[side] += qty
        sides[2] += 1
        if reducing:
            sides[3 + side] += qty

    def _open_remove(self, order_id: int, qty: int | None) -> None:
        """An open perp order filled ``qty`` or (None) left the book."""
        o = self.orders.get(order_id)
        if o is None:
            return
        take = o.remaining if qty is None or qty > o.remaining else qty
        o.remaining -= take
        mine = self.open[o.account]
        sides = mine[o.symbol]
        sides[o.side] -= take
        if o.reduce_only and not o.liquidation:
            sides[3 + o.side] -= take
        if qty is not None:
            return
        del self.orders[order_id]
        sides[2] -= 1
        if not sides[2]:
            del mine[o.symbol]
            if not mine:
                del self.open[o.account]
            if self.position(o.account, o.symbol) is None:
                self.holders[o.symbol].pop(o.account, None)

    def _cancel_triggers(self, seq: int, tx: CancelOrder | CancelAll, out: list) -> bool:
        """Cancel pending triggers; True if the cancel is fully answered here (not routed)."""
        if tx.__class__ is CancelOrder:
            oid = self.triggers.find(tx.account, tx.order_id, tx.client_id)
            if oid is None:
                return False
            self._trigger_done(seq, oid, CANCELLED, "", out)
            return True
        for oid in self.triggers.of(tx.account, tx.symbol):
            self._trigger_done(seq, oid, CANCELLED, "", out)
        return False

    def _trigger_done(self, seq: int, oid: int, status: str, reason: str, out: list) -> None:
        o = self.triggers.remove(oid)
        out.append(OrderDone(seq, oid, o.account, o.symbol, o.client_id, o.side, o.price, o.quantity, status, reason, 0, 0))

    # ------------------------------------------------------------------ phase 3

    def _settle(self, msg: Settle) -> Settled:
        """Apply fills and releases in event order; the block's balance and position changes."""
        ledger = self.ledger
        markets = self.markets
        fill = ledger.fill
        release = ledger.release
        orders = self.orders
        flags = self.loans.order_flags
        for ev in msg.events:
            cls = ev.__class__
            if cls is Fill:
                spec = markets[ev.symbol]
                if spec.perp is not None:
                    self._perp_fill(ev, spec)
                elif ev.taker_side == BID:
                    fill(spec, ev.taker_account, ev.taker_order, ev.taker_fee, ev.maker_account, ev.maker_order,
                         ev.maker_fee, ev.quantity * spec.base_mult, ev.quote)
                else:
                    fill(spec, ev.maker_account, ev.maker_order, ev.maker_fee, ev.taker_account, ev.taker_order,
                         ev.taker_fee, ev.quantity * spec.base_mult, ev.quote)
                if flags:
                    self.loans.filled(ev.taker_account, ev.taker_order)
                    self.loans.filled(ev.maker_account, ev.maker_order)
            elif cls is OrderDone:
                if ev.order_id in orders:
                    self._open_remove(ev.order_id, None)
                    self.drop_if_flat(ev.account, ev.symbol)
                else:
                    release(ev.order_id)
                    if flags:
                        self.loans.order_done(ev.order_id)
        return Settled(self.report(msg.last_seq))

    def _perp_fill(self, ev: Fill, spec: MarketSpec) -> None:
        seq, symbol, qty, quote = ev.seq, ev.symbol, ev.quantity, ev.quote
        buy_first = ev.taker_side == BID
        self.ledger.fees[self.settle_asset] += ev.taker_fee + ev.maker_fee
        for account, order_id, fee, bought in ((ev.taker_account, ev.taker_order, ev.taker_fee, buy_first),
                                               (ev.maker_account, ev.maker_order, ev.maker_fee, not buy_first)):
            size = self.trade(account, symbol, qty if bought else -qty, quote if bought else -quote, seq)
            self.credit(account, -fee)
            o = self.orders.get(order_id)
            if o is not None:
                if o.liquidation:
                    penalty = quote * self.spec.liquidation_fee_bps // 10_000
                    self.credit(account, -penalty)
                    self.insurance += penalty
                self._open_remove(order_id, qty)
            self.traded[account] = None
            if not size:
                self.drop_if_flat(account, symbol)

    def report(self, seq: int) -> list:
        """BalanceChanged and PositionChanged for everything touched since the last report."""
        out: list = []
        balances = self.ledger.balances
        touched = self.ledger.touched
        due = self.loans.due if self.loans.pools else None
        lenders = self.loans.loans
        swept = self.loans.swept
        for account, asset in touched:
            bal = balances[account][asset]
            free = bal.free
            if due is not None:
                if free and account not in swept:
                    due[account] = None
                if account in lenders:
                    free += self.loans.on_demand(account, asset)
            out.append(BalanceChanged(seq, account, asset, free, bal.held))
        touched.clear()
        for account, symbol in self.touched:
            pos = self.position(account, symbol)
            mark = self.mark(symbol)
            if pos is None:
                out.append(PositionChanged(seq, account, symbol, 0, 0, 0, 0, 0, mark, 0))
            else:
                out.append(PositionChanged(seq, account, symbol, pos.size, pos.net_cost, pos.entry_notional, pos.realized,
                                           pos.funding, mark, pos.position_id))
        self.touched.clear()
        return out

    # ------------------------------------------------------------------ phase 4

    def _remark(self, msg: Remark) -> Ticked:
        """Funding, PnL settlement, new marks, maintenance checks and triggers for one block."""
        events: list = []
        ts, seq = msg.timestamp, msg.last_seq
        self.now = ts
        moved = [s for s, view in msg.marks.items() if s not in self.marks or self.marks[s].mark != view.mark]
        self.marks.update(msg.marks)
        for mp in msg.prices:
            self.prices[mp.symbol] = mp
        check: dict[str, None] = {}
        for fp in msg.funding:
            self._pay_funding(fp, seq, events)
            check.update(self.holders[fp.symbol])
        if self.spec is not None and ts >= self.next_settle:
            if self.next_settle:
                self._settle_pnl(seq)
            self.next_settle = (ts // self.spec.settle_interval_us + 1) * self.spec.settle_interval_us
        if self.spec is not None and ts >= self.next_oi:
            if self.next_oi:
                events.extend(OpenInterest(seq, s, self.long_oi[s]) for s in self.long_oi)
            self.next_oi = (ts // self.spec.open_interest_interval_us + 1) * self.spec.open_interest_interval_us
        for symbol in moved:  # a new last price or index alone moves no one's margin
            check.update(self.holders.get(symbol, ()))
        if moved:  # a debt or a lent collateral is valued at the marks
            check.update(self.loans.debtors)
        self.loans.now = ts
        self.loans.sweep(seq, events, self.liquidating)
        check.update(self.traded)
        check.update(self.liquidating)
        self.traded.clear()
        orders: list = list(self.triggers.fire(msg.marks)) if self.triggers.pending else []
        if self.spec is not None:
            orders.extend(self.liquidator.check(sorted(check), seq, events))
        events.extend(self.report(seq))
        self.loans.swept.clear()
        return Ticked(events, orders, bool(self.liquidating))

    def _escalate(self, msg: Escalate) -> Ticked:
        events: list = []
        self.now = msg.timestamp
        if self.liquidating:
            self.liquidator.escalate(msg.last_seq, events)
        events.extend(self.report(msg.last_seq))
        return Ticked(events, [])

    def _pay_funding(self, fp: FundingPaid, seq: int, events: list) -> None:
        """Charge every position of the market its share of the index increment: payers'
        shares rounded up, receivers' down; the remainder goes to the insurance fund."""
        symbol = fp.symbol
        cumulative = fp.cumulative
        self.funding_index[symbol] = cumulative
        remainder = 0
        for account in sorted(self.holders[symbol]):
            pos = self.positions.get(account, {}).get(symbol)
            if pos is None:
                continue
            x = pos.size * (cumulative - pos.funding_index)
            pos.funding_index = cumulative
            if not x:
                continue
            amount = -(-x // PPB) if x > 0 else -((-x) // PPB)
            self.credit(account, -amount)
            pos.funding += amount
            remainder += amount
            self.touched[(account, symbol)] = None
            payment = FundingPayment(seq, account, symbol, amount, pos.size, fp.rate, fp.interval_end)
            events.append(payment)
            self.remember(account, payment)
        self.insurance += remainder

    def _settle_pnl(self, seq: int) -> None:
        """Realize every position's unrealized PnL at its market's mark (net cost := size x mark)."""
        for account in sorted(self.positions):
            for symbol, pos in sorted(self.positions[account].items()):
                mark = self.mark(symbol)
                if not mark:
                    continue
                value = pos.size * mark * self.markets[symbol].notional_mult
                pnl = value - pos.net_cost
                if pnl:
                    self.credit(account, pnl)
                    pos.realized += pnl
                    pos.net_cost = value
                    self.touched[(account, symbol)] = None

    def remember(self, account: str, event: FundingPayment | Liquidation) -> None:
        h = self.history.get(account)
        if h is None:
            h = self.history[account] = (deque(maxlen=HISTORY), deque(maxlen=HISTORY))
        h[event.__class__ is Liquidation].append(event)

    # ------------------------------------------------------------------ queries

    def _balance_of(self, msg: BalanceOf) -> tuple[int, int]:
        """(available, held): available counts an auto-lent claim (``Loans.on_demand``)."""
        free, held = self.ledger.balance(msg.account, msg.asset)
        return free + self.loans.on_demand(msg.account, msg.asset), held

    def _balances_of(self, msg: BalancesOf) -> dict[str, tuple[int, int]]:
        on_demand = self.loans.on_demand
        return {a: (free + on_demand(msg.account, a), held) for a, (free, held) in self.ledger.balances_of(msg.account).items()}

    def _unsettled(self) -> int:
        return sum(p.net_cost for book in self.positions.values() for p in book.values())

    def _totals(self, msg: Totals) -> dict[str, int]:
        """Per asset: balances + fees + pools' cash + confirmed withdrawals (+ insurance
        fund - net costs for the settlement asset): equals deposits when money is conserved."""
        out = self.ledger.totals()
        out[self.settle_asset] = out.get(self.settle_asset, 0) + self.insurance - self._unsettled()
        for asset, cash in self.loans.cash().items():
            out[asset] = out.get(asset, 0) + cash
        for asset, withdrawn in self.custody.withdrawn.items():
            out[asset] = out.get(asset, 0) + withdrawn
        return out

    def _ledger(self, msg: LedgerOf) -> dict[str, tuple[int, int, int, int]]:
        """Per asset: (deposits, withdrawals, fees + insurance fund, balances including
        unsettled PnL and the lending pool's cash): deposits - withdrawals = fees + balances."""
        out = {a: [d, self.custody.withdrawn.get(a, 0), f, b] for a, (d, f, b) in self.ledger.summary().items()}
        if self.settle_asset in out:
            row = out[self.settle_asset]
            row[2] += self.insurance
            row[3] -= self._unsettled()
        for asset, cash in self.loans.cash().items():
            if asset in out:
                out[asset][3] += cash
        return {a: tuple(row) for a, row in out.items()}

    def _positions_of(self, msg: PositionsOf) -> PositionsView:
        book = self.positions.get(msg.account, {})
        rows = [self._position_row(msg.account, s, p) for s, p in sorted(book.items())]
        return PositionsView(rows, {s: self.marks[s] for s in book if s in self.marks})

    def _position_row(self, account: str, symbol: str, p: Position) -> PositionState:
        return PositionState(account, symbol, p.size, p.net_cost, p.entry_notional, p.realized, p.funding, p.funding_index,
                             p.position_id)

    def _collateral_of(self, msg: CollateralOf) -> CollateralView:
        account = msg.account
        f = self.figures(account)
        rows = []
        loans = {p.asset: p for p in self.loans.positions(account)}
        for asset, bal in sorted(self.ledger.balances.get(account, {}).items()):
            loan = loans.get(asset)
            lent, owed = (loan.lent, loan.borrowed) if loan is not None else (0, 0)
            total = self._holding(account, asset, bal)  # as ``collateral`` counts it
            if asset == self.settle_asset:
                rows.append(CollateralRow(asset, total, bal.held, self.quote_unit, PPB, total, lent, owed))
                continue
            price = self.asset_value(asset, 10 ** self.assets[asset].decimals)[0]  # one whole unit
            _, weight, value = self.asset_value(asset, total)
            rows.append(CollateralRow(asset, total, bal.held, price, weight if total else PPB, value, lent, owed))
        exposure = f.exposure
        return CollateralView(
            rows, f.collateral, f.unrealized, f.equity, exposure, f.initial, f.maintenance,
            f.initial * PPB // exposure if exposure else 0, f.maintenance * PPB // exposure if exposure else 0,
            f.equity * PPB // exposure if exposure else 0, account in self.liquidating, self.leverage.get(account, 0),
            *self.loans.settings(account), sum(self.debt_value(a, d) for a, d in self.loans.debts(account)),
        )

    def _history_of(self, msg: HistoryOf) -> list:
        """The account's funding payments or (``kind`` "liquidation") liquidation steps, newest first."""
        h = self.history.get(msg.account)
        return list(reversed(h[msg.kind == "liquidation"])) if h is not None else []

    def _lending_of(self, msg: LendingOf) -> list:
        """The account's lend and borrow positions (``LendPosition``), by asset."""
        return self.loans.positions(msg.account)

    def _marks_of(self, msg: MarksOf) -> dict[str, PerpPrices]:
        out = {}
        for symbol, view in self.marks.items():
            mp = self.prices.get(symbol)
            out[symbol] = PerpPrices(view.mark, view.index, view.last, mp.funding_rate if mp else 0,
                                     mp.next_funding if mp else 0, self.long_oi.get(symbol, 0))
        return out

    # ------------------------------------------------------------------ state

    def _state(self, msg: StateOf) -> RiskState:
        ledger = self.ledger
        margin = MarginState(
            spec=self.spec,
            positions=[self._position_row(a, s, p) for a, book in sorted(self.positions.items()) for s, p in sorted(book.items())],
            orders=[PerpOrderState(oid, o.account, o.symbol, o.side, o.remaining, o.price, o.reduce_only, o.liquidation)
                    for oid, o in sorted(self.orders.items())],
            triggers=self.triggers.rows(),
            leverage=[AccountLeverage(a, v) for a, v in sorted(self.leverage.items())],
            marks=sorted(self.marks.items()),
            prices=[self.prices[s] for s in sorted(self.prices)],
            funding_index=sorted(self.funding_index.items()),
            insurance=self.insurance,
            liquidating=sorted(self.liquidating),
            next_settle=self.next_settle,
            next_open_interest=self.next_oi,
            history=[(a, [*funding, *steps]) for a, (funding, steps) in sorted(self.history.items())],
            loans=self.loans.canonical(),
            custody=self.custody.canonical(),
            compliance=self.compliance.canonical(),
        )
        return RiskState(
            balances=ledger.balance_rows(),
            holds=ledger.hold_rows(),
            fees=[AssetAmount(a, v) for a, v in sorted(ledger.fees.items())],
            deposits=[AssetAmount(a, v) for a, v in sorted(ledger.deposits.items())],
            accounts_off=self.permissions.account_rows(),
            markets_off=sorted(self.permissions.markets_off),
            margin=margin,
        )

    def _restore(self, msg: Restore) -> None:
        state: RiskState = msg.state
        self.ledger.restore(state)
        self.permissions.restore(state)
        m = state.margin
        if m is None:
            return
        self.spec = m.spec
        if m.spec is not None:
            self.settle_asset = m.spec.settlement_asset
        for row in m.positions:
            pos = Position(row.size, row.net_cost, row.entry_notional, row.realized, row.funding, row.funding_index,
                           row.position_id)
            self.positions.setdefault(row.account, {})[row.symbol] = pos
            self.holders[row.symbol][row.account] = None
            self._oi(row.symbol, row.size, 1)
        for row in m.orders:
            self.orders[row.order_id] = PerpOrder(row.account, row.symbol, row.side, row.remaining, row.price,
                                                  row.reduce_only, row.liquidation)
            self._open_add(row.account, row.symbol, row.side, row.remaining, row.reduce_only and not row.liquidation)
        self.triggers.restore(m.triggers)
        self.leverage = {r.account: r.leverage for r in m.leverage}
        self.marks = dict(m.marks)
        self.prices = {p.symbol: p for p in m.prices}
        self.funding_index.update(dict(m.funding_index))
        self.insurance = m.insurance
        self.liquidating = dict.fromkeys(m.liquidating)
        self.next_settle = m.next_settle
        self.next_oi = m.next_open_interest
        self.loans.restore(m.loans)
        self.custody.restore(m.custody)
        self.compliance.restore(m.compliance)
        self.history = {}
        for account, events in m.history:
            for ev in events:
                self.remember(account, ev)

    handle = dispatcher({
        PreTrade: _pretrade, Settle: _settle, Remark: _remark, Escalate: _escalate, ListAssetSpec: _list_asset,
        ListMarketSpec: _list_market, ListMarginSpec: _set_margin, SetPermission: _set_permission, BalanceOf: _balance_of,
        BalancesOf: _balances_of, Totals: _totals, LedgerOf: _ledger, PositionsOf: _positions_of,
        CollateralOf: _collateral_of, HistoryOf: _history_of, MarksOf: _marks_of, StateOf: _state, Restore: _restore,
        UsePools: _use_pools, PoolsUsed: _pools_used, LendingOf: _lending_of, ChainCommand: _chain_command,
        ChainsOf: _chains_of, WithdrawalsOf: _withdrawals_of, MovesOf: _moves_of, ComplianceCommand: _compliance_command,
        PermissionsOf: _permissions_of,
    })
