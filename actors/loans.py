"""Accounts' lend and borrow positions, part of the margin actor (``margin``).

The lending actor owns the pools between blocks; for one block the margin engine works
on a copy of them (``UsePools``, already accrued to the block's time) and hands back the
pools it changed (``PoolsUsed``), which the lending actor keeps and reprices. Within a
block rates do not matter (interest accrues only between blocks), so operations here
leave them as they were (``priced=False``).

State per account and asset: a ``Loan`` -- the scaled lend (``x lend_index``) or the
scaled debt (``x borrow_index``), never both, and the principal, for interest figures.
Movements, each a ``LendMoved`` event and a change of the account's free balance:

* ``borrowLendExecute`` (``BorrowLend``): ``Lend q`` repays a borrow first and lends
  the rest; ``Borrow q`` redeems a lend first and borrows the rest. The whole
  transaction is refused, nothing changed, when a part cannot be done: free balance
  short (INSUFFICIENT_FUNDS), the pool's cash short (INSUFFICIENT_LIQUIDITY), an amount
  worth no share (AMOUNT_TOO_SMALL), or the borrow limit (BORROW_LIMIT, the margin
  engine's initial-margin check);
* an order's spot hold (``provide``): with auto-lend on, or ``autoLendRedeem``, what
  the hold lacks is redeemed from the account's lend of that asset; with ``autoBorrow``
  the rest is borrowed within the borrow limit;
* the sweep (``sweep``, periodic phase), once per second of sequenced time: accounts
  whose balances changed repay borrows from free balances when auto-repay is on and
  redeem what covers a negative balance (a perp loss); accounts that have been **idle**
  a whole interval (balances changed before the last sweep, not since) lend their free
  balances when auto-lend is on (the default; never an asset they owe). So an active
  trader's balances are not lent only to be redeemed by its next order, and a pool's
  cash does not swing with trading. An order flagged ``autoLend`` / ``autoBorrowRepay``
  has its account swept (lend, repay) at the end of its block. Cost: O(accounts touched
  in the last two intervals), never a scan of all accounts, and at most ``SWEEP_MAX``
  accounts per block: a burst waits for the next blocks in account order.

Conservation per asset: balances + fees + pool cash (+ insurance) = deposits; every
movement changes a free balance and the pool's cash by the same amount.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from satchel.actors.risk import Balance, Ledger
from satchel.core import lending as pools
from satchel.core.errors import Code
from satchel.core.lending import LendingError, Pool
from satchel.core.messages import (
    AUTO_BORROW, AUTO_BORROW_REPAY, AUTO_LEND, AUTO_LEND_REDEEM, LEND, BadDebt, BorrowLend, LendMoved, LendPosition, PlaceOrder,
    TxRejected,
)
from satchel.core.state import LoanState, LoansState

SWEEP_US = 1_000_000  # idle balances are lent once per second of sequenced time
# accounts one block's sweep handles; the rest wait for the next blocks. ~10 us each: a
# burst of deposits going idle (hundreds of accounts at once) adds at most ~0.6 ms to a
# block instead of several ms to one (measured beside orders, benchmarks/deposits)
SWEEP_MAX = 64
_IDLE = 1 << 8  # a sweep flag beside the orders' AUTO_* bits: the account was idle when chosen

LEND_KIND, REDEEM_KIND, BORROW_KIND, REPAY_KIND = "Lend", "LendRedeem", "Borrow", "BorrowRepay"
MANUAL, AUTO_LEND_SOURCE, AUTO_REDEEM_SOURCE, AUTO_REPAY_SOURCE, SPOT_MARGIN, LIQUIDATION_SOURCE = (
    "Manual", "AutoLend", "AutoLendRedeem", "AutoBorrowRepay", "SpotMargin", "Liquidation")
_SETTLE_FLAGS = AUTO_LEND | AUTO_BORROW_REPAY


class Loan(msgspec.Struct, gc=False):
    lent: int = 0  # scaled
    borrowed: int = 0  # scaled
    principal: int = 0  # lent minus redeemed; borrowed minus repaid counts negative


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Loans:
    """The positions, the block's working pools and the auto-lend sweep."""

    def __init__(self, ledger: Ledger, borrow_ok: Callable[..., bool]) -> None:
        self.ledger = ledger
        self.borrow_ok = borrow_ok  # (account, asset, amount, order=None): within the borrow limit?
        self.pools: dict[str, Pool] = {}  # the block's working copy
        self.changed: dict[str, None] = {}
        self.loans: dict[str, dict[str, Loan]] = {}
        self.debtors: dict[str, None] = {}  # accounts with a debt: re-checked when marks move
        self.auto_lend_off: dict[str, None] = {}
        # whether compliance lets the account lend (``Margin`` sets it): the sweep lends for
        # no one else, default auto-lend included
        self.may_lend: Callable[[str], bool] = lambda account: True
        self.auto_repay_on: dict[str, None] = {}
        self.due: dict[str, None] = {}  # accounts whose balances changed since the last sweep
        self.pending: dict[str, None] = {}  # ... in the interval before it: lent if quiet since
        self.swept: dict[str, None] = {}  # accounts the running sweep moved: not activity (``report``)
        self.backlog: dict[str, int] = {}  # account -> sweep flags, left for the next blocks (SWEEP_MAX)
        self.flagged: dict[str, int] = {}  # account -> settle flags of its orders that filled in this block
        self.order_flags: dict[int, int] = {}
        self.next_sweep = 0
        self.now = 0

    # ------------------------------------------------------------------ pools

    def use(self, pools_: list[Pool]) -> None:
        self.pools = {p.spec.asset: p for p in pools_}
        self.changed = {}

    def used(self) -> list[Pool]:
        out = [self.pools[a] for a in sorted(self.changed)]
        self.changed = {}
        return out

    def cash(self) -> dict[str, int]:
        return {a: p.cash for a, p in self.pools.items()}

    # ------------------------------------------------------------------ figures

    def claim(self, account: str, asset: str) -> int:
        loan = self.loans.get(account, {}).get(asset)
        return pools.claim(self.pools[asset], loan.lent) if loan is not None and loan.lent else 0

    def debt(self, account: str, asset: str) -> int:
        loan = self.loans.get(account, {}).get(asset)
        return pools.owed(self.pools[asset], loan.borrowed) if loan is not None and loan.borrowed else 0

    def on_demand(self, account: str, asset: str) -> int:
        """The part of the account's lend an order redeems by itself: its claim when
        auto-lend is on. Balances shown to clients count it as available, so the sweep
        that lends an idle balance does not change what the account sees."""
        loan = self.loans.get(account, {}).get(asset)
        if loan is None or not loan.lent or account in self.auto_lend_off:
            return 0
        return pools.claim(self.pools[asset], loan.lent)

    def net(self, asset: str, loan: Loan) -> int:
        """The loan's worth to its account: claim (+) or debt (-), asset units."""
        pool = self.pools[asset]
        if loan.lent:
            return pools.claim(pool, loan.lent)
        return -pools.owed(pool, loan.borrowed) if loan.borrowed else 0

    def debts(self, account: str) -> list[tuple[str, int]]:
        """(asset, debt) of every borrow of the account."""
        # sorted: a dict restored from a snapshot is in another order than the live one
        return [(a, pools.owed(self.pools[a], loan.borrowed))
                for a, loan in sorted(self.loans.get(account, {}).items()) if loan.borrowed]

    def positions(self, account: str) -> list[LendPosition]:
        out = []
        for asset, loan in sorted(self.loans.get(account, {}).items()):
            spec = self.pools[asset].spec
            lent, owed = max(self.net(asset, loan), 0), max(-self.net(asset, loan), 0)
            out.append(LendPosition(asset, lent, owed, lent - owed - loan.principal, spec.borrow_imf, spec.borrow_mmf))
        return out

    # ------------------------------------------------------------------ movements

    def _loan(self, account: str, asset: str) -> Loan:
        mine = self.loans.get(account)
        if mine is None:
            mine = self.loans[account] = {}
        loan = mine.get(asset)
        if loan is None:
            loan = mine[asset] = Loan()
        return loan

    def _moved(self, seq: int, account: str, asset: str, kind: str, source: str, amount: int, loan: Loan,
               out: list) -> None:
        pool = self.pools[asset]
        lent = pools.claim(pool, loan.lent) if loan.lent else 0
        owed = pools.owed(pool, loan.borrowed) if loan.borrowed else 0
        if not loan.lent and not loan.borrowed:
            del self.loans[account][asset]
            if not self.loans[account]:
                del self.loans[account]
        if loan.borrowed:
            self.debtors[account] = None
        elif account in self.debtors and not any(x.borrowed for x in self.loans.get(account, {}).values()):
            del self.debtors[account]
        self.changed[asset] = None
        if source != AUTO_LEND_SOURCE or account in self.auto_lend_off:
            # an auto-lend by an auto-lend account changes no balance as shown (``on_demand``)
            self.ledger.touched[(account, asset)] = None
        index = pool.lend_index if kind in (LEND_KIND, REDEEM_KIND) else pool.borrow_index
        out.append(LendMoved(seq, account, asset, kind, source, amount, lent, owed, self.now, loan.lent, loan.borrowed,
                             index))

    def lend(self, seq: int, account: str, asset: str, amount: int, source: str, out: list) -> None:
        bal = self.ledger.bal(account, asset)
        self.pools[asset], scaled = pools.lend(self.pools[asset], amount, priced=False)
        bal.free -= amount
        loan = self._loan(account, asset)
        loan.lent += scaled
        loan.principal += amount
        self._moved(seq, account, asset, LEND_KIND, source, amount, loan, out)

    def redeem(self, seq: int, account: str, asset: str, amount: int, source: str, out: list) -> None:
        loan = self._loan(account, asset)
        self.pools[asset], scaled = pools.redeem(self.pools[asset], amount, loan.lent, priced=False)
        self.ledger.bal(account, asset).free += amount
        loan.lent -= scaled
        loan.principal = loan.principal - amount if loan.lent else 0
        self._moved(seq, account, asset, REDEEM_KIND, source, amount, loan, out)

    def borrow(self, seq: int, account: str, asset: str, amount: int, source: str, out: list) -> None:
        self.pools[asset], scaled = pools.borrow(self.pools[asset], amount, priced=False)
        self.ledger.bal(account, asset).free += amount
        loan = self._loan(account, asset)
        loan.borrowed += scaled
        loan.principal -= amount
        self._moved(seq, account, asset, BORROW_KIND, source, amount, loan, out)

    def repay(self, seq: int, account: str, asset: str, amount: int, source: str, out: list) -> None:
        loan = self._loan(account, asset)
        self.pools[asset], scaled = pools.repay(self.pools[asset], amount, loan.borrowed, priced=False)
        self.ledger.bal(account, asset).free -= amount
        loan.borrowed -= scaled
        loan.principal = loan.principal + amount if loan.borrowed else 0
        self._moved(seq, account, asset, REPAY_KIND, source, amount, loan, out)

    # ------------------------------------------------------------------ borrowLendExecute

    def execute(self, seq: int, tx: BorrowLend, out: list) -> bool:
        """Apply a ``BorrowLend``; False (and a ``TxRejected`` in ``out``) when refused."""
        asset, account, qty = tx.asset, tx.account, tx.quantity
        pool = self.pools.get(asset)
        try:
            if pool is None:
                raise Refused(Code.INVALID_ASSET, f"{asset} has no lending pool")
            loan = self.loans.get(account, {}).get(asset)
            bal = self.ledger.balances.get(account, {}).get(asset) or Balance()
            moves: list[tuple[Callable, int]] = []
            if tx.side == LEND:
                owed = pools.owed(pool, loan.borrowed) if loan is not None and loan.borrowed else 0
                # with auto-lend on, what is already lent is shown as available: it counts first
                lent = self.on_demand(account, asset)
                if bal.free + lent < qty:
                    raise Refused(Code.INSUFFICIENT_FUNDS, f"{qty} exceeds the available balance {bal.free + lent}")
                repay = min(qty, owed)
                moves = [(self.repay, repay), (self.lend, max(qty - repay - lent, 0))]
            else:
                claim = pools.claim(pool, loan.lent) if loan is not None and loan.lent else 0
                redeem = min(qty, claim)
                moves = [(self.redeem, redeem), (self.borrow, qty - redeem)]
            self._dry_run(asset, loan, moves)
            if tx.side != LEND and qty > claim and not self.borrow_ok(account, asset, qty - claim):
                raise Refused(Code.BORROW_LIMIT, f"borrowing {qty - claim} would leave equity below initial margin")
        except Refused as exc:
            out.append(TxRejected(seq, account, exc.code, exc.message))
            return False
        for move, amount in moves:
            if amount:
                move(seq, account, asset, amount, MANUAL, out)
        return True

    def _dry_run(self, asset: str, loan: Loan | None, moves: list) -> None:
        """Raise ``Refused`` if a move would fail: pool operations are pure, so trying them
        on the pool changes nothing."""
        pool = self.pools[asset]
        lent = loan.lent if loan is not None else 0
        borrowed = loan.borrowed if loan is not None else 0
        try:
            for move, amount in moves:
                if not amount:
                    continue
                if move == self.repay:
                    pool, _ = pools.repay(pool, amount, borrowed, priced=False)
                elif move == self.lend:
                    pool, _ = pools.lend(pool, amount, priced=False)
                elif move == self.redeem:
                    pool, _ = pools.redeem(pool, amount, lent, priced=False)
                else:
                    if not pools.within_max(pool, amount):
                        raise Refused(Code.INSUFFICIENT_LIQUIDITY,
                                      f"borrowing {amount} would take {asset}'s utilization past its maximum "
                                      f"{pool.spec.max_utilization // 10_000_000}%: the rest stays for lenders to redeem")
                    pool, _ = pools.borrow(pool, amount, priced=False)
        except LendingError as exc:
            code = {pools.Refusal.INVALID_AMOUNT: Code.INVALID_QUANTITY}.get(exc.code, exc.code.value)
            raise Refused(code, exc.message) from exc

    # ------------------------------------------------------------------ spot orders

    def provide(self, seq: int, tx: PlaceOrder, asset: str, bal: Balance, need: int | None, out: list) -> None:
        """Before a spot hold: redeem (auto-lend on, or ``autoLendRedeem``) and then borrow
        (``autoBorrow``, within the borrow limit) what the hold lacks; ``need`` None means
        the order holds all it can (a market order sized on the other side): redeem all."""
        account = tx.account
        if tx.auto & _SETTLE_FLAGS:
            self.order_flags[seq] = tx.auto & _SETTLE_FLAGS
        pool = self.pools.get(asset)
        if pool is None:
            return
        self.redeem_shortfall(seq, account, asset, bal, need, bool(tx.auto & AUTO_LEND_REDEEM), out)
        if need is not None and tx.auto & AUTO_BORROW and bal.free < need:
            loan = self.loans.get(account, {}).get(asset)
            amount = need - bal.free
            if (loan is None or not loan.lent) and amount <= self.pools[asset].cash \
                    and pools.within_max(self.pools[asset], amount) and self.borrow_ok(account, asset, amount, tx):
                self.borrow(seq, account, asset, amount, SPOT_MARGIN, out)

    def redeem_shortfall(self, seq: int, account: str, asset: str, bal: Balance, need: int | None, forced: bool,
                         out: list) -> None:
        """Redeem what ``bal``'s free balance lacks of ``need`` (None: the whole claim) from
        the account's lend of ``asset``, as far as the pool has cash -- with auto-lend on, or
        ``forced`` (an order's ``autoLendRedeem``). Orders and withdrawals both use it."""
        pool = self.pools.get(asset)
        loan = self.loans.get(account, {}).get(asset)
        if pool is None or loan is None or not loan.lent or not (forced or account not in self.auto_lend_off):
            return
        claim = pools.claim(pool, loan.lent)
        amount = min(claim if need is None else need - bal.free, claim, pool.cash)
        if amount > 0:
            self.redeem(seq, account, asset, amount, AUTO_REDEEM_SOURCE, out)

    def filled(self, account: str, order_id: int) -> None:
        """An order with settle flags filled: its account is swept at the block's end."""
        flags = self.order_flags.get(order_id)
        if flags:
            self.flagged[account] = self.flagged.get(account, 0) | flags

    def order_done(self, order_id: int) -> None:
        self.order_flags.pop(order_id, None)

    # ------------------------------------------------------------------ liquidation

    def unwind(self, seq: int, account: str, out: list) -> None:
        """Liquidation's first step for borrows: redeem every lend the pools have cash
        for, then repay each debt from the free balance of its asset."""
        for asset, loan in sorted(self.loans.get(account, {}).items()):
            if loan.lent:
                amount = min(pools.claim(self.pools[asset], loan.lent), self.pools[asset].cash)
                if amount > 0:
                    self.redeem(seq, account, asset, amount, LIQUIDATION_SOURCE, out)
        self.repay_from_free(seq, account, LIQUIDATION_SOURCE, out)

    def repay_from_free(self, seq: int, account: str, source: str, out: list) -> None:
        balances = self.ledger.balances.get(account, {})
        for asset, loan in sorted(self.loans.get(account, {}).items()):
            bal = balances.get(asset)
            if loan.borrowed and bal is not None and bal.free > 0:
                try:
                    self.repay(seq, account, asset, min(bal.free, pools.owed(self.pools[asset], loan.borrowed)), source, out)
                except LendingError:
                    continue  # dust worth no share of the debt

    def write_off(self, seq: int, account: str, asset: str, covered: int, out: list) -> None:
        """Bad debt: the rest of the account's debt in ``asset`` is cancelled and the pool's
        lenders bear it (``core.lending.write_off``); ``covered`` is what the insurance
        fund repaid before, for the event."""
        loan = self.loans[account][asset]
        self.pools[asset], loss = pools.write_off(self.pools[asset], loan.borrowed, priced=False)
        loan.borrowed = 0
        loan.principal = 0
        self.changed[asset] = None
        if not loan.lent:
            del self.loans[account][asset]
            if not self.loans[account]:
                del self.loans[account]
        if not any(x.borrowed for x in self.loans.get(account, {}).values()):
            self.debtors.pop(account, None)
        out.append(BadDebt(seq, account, asset, loss + covered, covered, loss, self.now))

    # ------------------------------------------------------------------ settings and sweep

    def configure(self, seq: int, account: str, auto_lend: int, auto_repay: int, out: list) -> None:
        """An account's switches. Turning auto-lend off redeems its lends (as far as the
        pools have cash): while it was on they were shown as available, and stay so."""
        if auto_lend == 1:
            self.auto_lend_off.pop(account, None)
            self.due[account] = None
        elif auto_lend == 0 and account not in self.auto_lend_off:
            for asset, loan in sorted(self.loans.get(account, {}).items()):
                if loan.lent:
                    amount = min(pools.claim(self.pools[asset], loan.lent), self.pools[asset].cash)
                    if amount > 0:
                        self.redeem(seq, account, asset, amount, AUTO_REDEEM_SOURCE, out)
            self.auto_lend_off[account] = None
        if auto_repay == 1:
            self.auto_repay_on[account] = None
            self.due[account] = None
        elif auto_repay == 0:
            self.auto_repay_on.pop(account, None)

    def settings(self, account: str) -> tuple[bool, bool]:
        return account not in self.auto_lend_off, account in self.auto_repay_on

    def sweep(self, seq: int, out: list, skip: dict[str, None]) -> None:
        """Lend idle balances, repay borrows, cover negative balances (see the module
        docstring): the flagged accounts every block, the others once per second; never
        the accounts in ``skip`` (in liquidation: their funds repay debts)."""
        if not self.pools:
            return
        accounts = self.backlog
        self.backlog = {}
        for account, flags in self.flagged.items():
            accounts[account] = accounts.get(account, 0) | flags
        self.flagged = {}
        if self.now >= self.next_sweep:
            touched = self.due
            for account in touched:
                accounts.setdefault(account, 0)
            # idle: touched before the last sweep and not since -- a trading account's
            # balances are never lent just to be redeemed by its next order
            for account in self.pending:
                if account not in touched:
                    accounts[account] = accounts.get(account, 0) | _IDLE
            self.pending = touched
            self.due = {}
            self.next_sweep = (self.now // SWEEP_US + 1) * SWEEP_US
        if not accounts:
            return
        chosen = sorted(accounts)
        if len(chosen) > SWEEP_MAX:  # a burst (thousands of deposits going idle) is spread over blocks
            self.backlog = {a: accounts[a] for a in chosen[SWEEP_MAX:]}
            chosen = chosen[:SWEEP_MAX]
        balances = self.ledger.balances
        for account in chosen:
            if account in skip:
                continue
            self.swept[account] = None
            flags = accounts[account]
            lend = (flags & AUTO_LEND or (flags & _IDLE and account not in self.auto_lend_off)) and self.may_lend(account)
            repay = flags & AUTO_BORROW_REPAY or account in self.auto_repay_on
            for asset, bal in sorted(balances.get(account, {}).items()):
                pool = self.pools.get(asset)
                if pool is None or not bal.free:
                    continue
                loan = self.loans.get(account, {}).get(asset)
                try:
                    if bal.free < 0:
                        if loan is not None and loan.lent:
                            amount = min(-bal.free, pools.claim(pool, loan.lent), pool.cash)
                            if amount > 0:
                                self.redeem(seq, account, asset, amount, AUTO_REDEEM_SOURCE, out)
                        continue
                    if loan is not None and loan.borrowed:
                        if not repay:
                            continue  # never lend an asset the account owes
                        self.repay(seq, account, asset, min(bal.free, pools.owed(pool, loan.borrowed)),
                                   AUTO_REPAY_SOURCE, out)
                        if loan.borrowed:
                            continue
                    if lend and bal.free > 0:
                        self.lend(seq, account, asset, bal.free, AUTO_LEND_SOURCE, out)
                except LendingError:
                    continue  # dust worth no share, or the pool full: stays idle

    # ------------------------------------------------------------------ state

    def canonical(self) -> LoansState:
        return LoansState(
            loans=[LoanState(a, s, loan.lent, loan.borrowed, loan.principal)
                   for a, mine in sorted(self.loans.items()) for s, loan in sorted(mine.items())],
            auto_lend_off=sorted(self.auto_lend_off),
            auto_repay_on=sorted(self.auto_repay_on),
            due=sorted(self.due),
            pending=sorted(self.pending),
            order_flags=sorted(self.order_flags.items()),
            next_sweep=self.next_sweep,
            flagged=sorted(self.flagged.items()),
            backlog=sorted(self.backlog.items()),
        )

    def restore(self, state: LoansState | None) -> None:
        if state is None:
            return
        for row in state.loans:
            self.loans.setdefault(row.account, {})[row.asset] = Loan(row.lent, row.borrowed, row.principal)
            if row.borrowed:
                self.debtors[row.account] = None
        self.auto_lend_off = dict.fromkeys(state.auto_lend_off)
        self.auto_repay_on = dict.fromkeys(state.auto_repay_on)
        self.due = dict.fromkeys(state.due)
        self.pending = dict.fromkeys(state.pending)
        self.order_flags = dict(state.order_flags)
        self.next_sweep = state.next_sweep
        self.flagged = dict(state.flagged)
        self.backlog = dict(state.backlog)
