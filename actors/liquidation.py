"""Tiered liquidation, part of the margin actor; every step is a ``Liquidation`` event
carrying the inputs that decided it (mark, equity, maintenance, auto-close level).

An account is checked in the periodic phase whenever its margin can change. When its
equity falls below its maintenance margin:

1. its open orders are cancelled (every market it has orders in, triggers included);
2. each position is unwound in the book by a reduce-only IOC order for a slice of it
   (``liquidation_slice``, at least the market's minimum) priced at the edge of the
   market's band (mark x band_min to sell, mark x band_max to buy), one slice per
   position per check; liquidation fills pay ``liquidation_fee_bps`` to the insurance
   fund. The orders run through pre-trade, matching and settlement within the block.

After they ran (``escalate``), an account whose equity is back above maintenance leaves
liquidation; one still above its auto-close level keeps unwinding at later checks; one
below it is closed out at once, every position at the **bankruptcy price** -- the price
that leaves the account with zero equity (its equity is shared over its positions in
proportion to their mark value, rounded toward zero, the last taking the rest):

4. if equity is negative, the insurance fund pays in what it can (up to the deficit);
3. if equity is then zero or more, the backstop account takes each position up to what
   its own initial margin allows;
5. the rest is auto-deleveraged: opposite positions ranked by unrealized PnL x
   notional / equity (most profitable x most leveraged first; ties by account) are
   reduced against it at the bankruptcy price.

Every transfer is a trade between two accounts at one notional, so money stays
conserved and long open interest stays equal to short.

Borrows (``loans``) join the same tiers. An account with debts below maintenance has its
orders cancelled (1), its lends redeemed and each debt repaid from the free balance of
its asset; what is still owed is repaid by selling collateral in the book (2): a
limit IOC order on the spot market between a collateral asset and the debt's asset,
priced at the collateral's mark beyond the perp's band (x band_min to sell, x band_max
to buy; exempt from the spot book's band around its last trade) and sized to cover the
debt, its proceeds repaying the debt when the block ends (``autoBorrowRepay``). When no collateral with a market to the debt is
left and a debt remains, it is bad debt: the insurance fund repays what it can of a
debt in the settlement asset (4), and the rest is written off against the pool's
lenders by lowering its lend index (``BadDebt`` event, ``core.lending.write_off``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from satchel.core.margin import share
from satchel.core.lending import LendingError
from satchel.core.messages import (
    ASK, AUTO_BORROW_REPAY, BID, BY_MARK, IOC, LIMIT, LIQUIDATION, PPB, REJECT_TAKER, CancelAll, Liquidation, MarketSpec,
    PlaceOrder,
)

if TYPE_CHECKING:
    from satchel.actors.margin import Figures, Margin, Position

CANCEL, UNWIND, BACKSTOP, INSURANCE, ADL = 1, 2, 3, 4, 5


class Liquidator:
    def __init__(self, margin: "Margin") -> None:
        self.m = margin

    def _event(self, seq: int, account: str, tier: int, f: "Figures", auto: int, symbol: str = "", side: int = 0,
               qty: int = 0, price: int = 0, amount: int = 0, counterparty: str = "", out: list | None = None) -> None:
        ev = Liquidation(seq, account, tier, symbol, side, qty, price, self.m.mark(symbol) if symbol else 0, f.equity,
                         f.maintenance, auto, amount, counterparty, self.m.now)
        out.append(ev)
        self.m.remember(account, ev)

    # ------------------------------------------------------------------ tiers 1-2

    def check(self, accounts: list[str], seq: int, out: list) -> list:
        """Maintenance checks; the cancels and book orders of tiers 1-2 to run in this block."""
        m = self.m
        orders: list = []
        debtors = m.loans.debtors
        for account in accounts:
            if account not in m.positions and account not in debtors:
                continue  # nothing to unwind; ``escalate`` settles a deficit left behind
            if m.equity(account) >= m.maintenance(account):  # the common case, without the full figures
                m.liquidating.pop(account, None)
                continue
            f = m.figures(account)
            auto = m.autoclose_requirement(f)
            if account not in m.liquidating:
                m.liquidating[account] = None
                cancels = self._cancels(account)
                orders.extend(cancels)
                self._event(seq, account, CANCEL, f, auto, qty=len(cancels), out=out)
            for symbol, pos in sorted(m.positions.get(account, {}).items()):
                order = self._slice(account, symbol, pos)
                if order is not None:
                    orders.append(order)
                    self._event(seq, account, UNWIND, f, auto, symbol, order.side, order.quantity, order.price, out=out)
            if account in debtors:
                m.loans.unwind(seq, account, out)
                for order in self._debt_orders(account):
                    orders.append(order)
                    self._event(seq, account, UNWIND, f, auto, order.symbol, order.side, order.quantity, order.price,
                                out=out)
        return orders

    # ------------------------------------------------------------------ borrows

    def _debt_orders(self, account: str) -> list[PlaceOrder]:
        """One spot order per remaining debt, selling collateral for the debt's asset."""
        m = self.m
        out = []
        for asset, debt in m.loans.debts(account):
            for spec, sell in self._paths(account, asset):
                order = self._debt_order(account, spec, sell, debt)
                if order is not None:
                    out.append(order)
                    break
        return out

    def _paths(self, account: str, debt_asset: str) -> list[tuple[MarketSpec, bool]]:
        """Spot markets (listing order) where a free collateral asset the account does
        not owe trades against ``debt_asset``: (market, True) to sell the collateral as
        base, (market, False) to buy the debt's asset as base with it."""
        m = self.m
        balances = m.ledger.balances.get(account, {})
        owed = {a for a, _ in m.loans.debts(account)}
        out = []
        for spec in m.markets.values():
            if spec.perp is not None:
                continue
            if spec.quote == debt_asset and spec.base not in owed:
                other, sell = spec.base, True
            elif spec.base == debt_asset and spec.quote not in owed:
                other, sell = spec.quote, False
            else:
                continue
            bal = balances.get(other)
            if bal is not None and bal.free > 0:
                out.append((spec, sell))
        return out

    def _unit_price(self, spec: MarketSpec) -> int:
        """The market's price of its base at the base's collateral mark (0: none)."""
        m = self.m
        value = m.asset_value(spec.base, spec.base_mult)[0] if spec.base != m.settle_asset else spec.base_mult
        if spec.quote != m.settle_asset:
            return 0  # only markets quoted in the settlement asset are priced by the marks
        return value // spec.notional_mult

    def _debt_order(self, account: str, spec: MarketSpec, sell: bool, debt: int) -> PlaceOrder | None:
        """A limit IOC order at the collateral's mark beyond the perp's band (x band_min to
        sell, x band_max to buy; liquidation orders are exempt from the spot book's band
        around its last trade, which a crash leaves behind), sized to cover ``debt``."""
        m = self.m
        price = self._unit_price(spec)
        perp = m.collateral_perp.get(spec.base)
        if not price or perp is None:
            return None
        tick, step = spec.tick, spec.step
        if sell:  # collateral is the base: sell enough of it for the debt
            price = -(-(price * perp.perp.band_min // PPB) // tick) * tick
            if price <= 0:
                return None
            free = m.ledger.balances[account][spec.base].free
            qty = -(-debt // (price * spec.notional_mult))
            qty = min(-(-qty // step) * step, free // spec.base_mult // step * step)
        else:  # the debt is the base: buy it with the collateral
            price = price * perp.perp.band_max // PPB // tick * tick
            if price <= 0:
                return None
            free = m.ledger.balances[account][spec.quote].free
            qty = -(-debt // spec.base_mult)
            # what the free collateral pays for, fee included (fees are at most 10%, ``SetFees``)
            qty = min(-(-qty // step) * step, free * 10 // 11 // (price * spec.notional_mult) // step * step)
        if qty < max(spec.min_quantity, 1):
            return None
        return PlaceOrder(account, spec.symbol, ASK if sell else BID, LIMIT, IOC, False, price, qty, 0, None, REJECT_TAKER,
                          False, 0, BY_MARK, LIQUIDATION, auto=AUTO_BORROW_REPAY)

    def _bad_debt(self, account: str, f: "Figures", seq: int, out: list) -> None:
        """Tier 4 for debts, then the write-off: see the module docstring."""
        m = self.m
        for asset, debt in m.loans.debts(account):
            covered = 0
            if asset == m.settle_asset and m.insurance > 0:
                covered = min(debt, m.insurance)
                m.insurance -= covered
                m.credit(account, covered)
                try:
                    m.loans.repay(seq, account, asset, covered, "Liquidation", out)
                except LendingError:  # dust worth no share of the debt: the fund keeps it
                    m.credit(account, -covered)
                    m.insurance += covered
                    covered = 0
                if covered:
                    self._event(seq, account, INSURANCE, f, 0, amount=covered, out=out)
            if asset in m.loans.loans.get(account, {}) and m.loans.loans[account][asset].borrowed:
                m.loans.write_off(seq, account, asset, covered, out)

    def _cancels(self, account: str) -> list[CancelAll]:
        m = self.m
        symbols = dict.fromkeys(m.open.get(account, ()))
        symbols.update((t.order.symbol, None) for t in m.triggers.pending.values() if t.order.account == account)
        if any(b.held for b in m.ledger.balances.get(account, {}).values()):
            symbols.update((s, None) for s, spec in m.markets.items() if spec.perp is None)
        return [CancelAll(account, s) for s in m.markets if s in symbols]

    def _slice(self, account: str, symbol: str, pos: "Position") -> PlaceOrder | None:
        m = self.m
        spec = m.markets[symbol]
        mark = m.mark(symbol)
        size = abs(pos.size)
        if not size or not mark:
            return None
        step = spec.step
        qty = -(-size * m.spec.liquidation_slice // PPB)
        qty = max(-(-qty // step) * step, spec.min_quantity)
        qty = min(qty, size)
        tick = spec.tick
        if pos.size > 0:  # sell at the band's floor, rounded up onto a tick
            side = ASK
            price = -(-(-(-mark * spec.perp.band_min // PPB)) // tick) * tick
        else:
            side = BID
            price = mark * spec.perp.band_max // PPB // tick * tick
        if price <= 0:
            return None
        return PlaceOrder(account, symbol, side, LIMIT, IOC, False, price, qty, 0, None, REJECT_TAKER, True, 0, BY_MARK,
                          LIQUIDATION)

    # ------------------------------------------------------------------ tiers 3-5

    def escalate(self, seq: int, out: list) -> None:
        m = self.m
        for account in sorted(m.liquidating):
            f = m.figures(account)
            positions = sorted((s, p) for s, p in m.positions.get(account, {}).items() if p.size)
            if not positions and account in m.loans.debtors:
                m.loans.repay_from_free(seq, account, "Liquidation", out)  # the collateral sold in this block
                f = m.figures(account)
                if f.equity >= f.maintenance or account not in m.loans.debtors:
                    del m.liquidating[account]
                elif not self._debt_orders(account):  # nothing left the book could turn into the debt
                    self._bad_debt(account, f, seq, out)
                    del m.liquidating[account]
                continue  # else: more collateral is sold at the next checks
            if not positions:
                if f.equity < 0:
                    self._cover(account, f, seq, out)
                del m.liquidating[account]
                continue
            if f.equity >= f.maintenance:
                del m.liquidating[account]
                continue
            auto = m.autoclose_requirement(f)
            if f.equity >= auto:
                continue  # keep unwinding in the book at the next checks
            self._close_out(account, f, auto, positions, seq, out)
            del m.liquidating[account]

    def _cover(self, account: str, f: "Figures", seq: int, out: list, auto: int = 0) -> int:
        """Tier 4: the insurance fund pays in up to the deficit; returns what it paid."""
        m = self.m
        cover = min(-f.equity, m.insurance)
        if cover > 0:
            m.insurance -= cover
            m.credit(account, cover)
            self._event(seq, account, INSURANCE, f, auto, amount=cover, out=out)
        return max(cover, 0)

    def _close_out(self, account: str, f: "Figures", auto: int, positions: list, seq: int, out: list) -> None:
        m = self.m
        equity = f.equity
        if equity < 0:
            equity += self._cover(account, f, seq, out, auto)
        values = [(s, p, p.size * m.mark(s) * m.markets[s].notional_mult) for s, p in positions]
        whole = sum(abs(v) for _, _, v in values) or 1
        left = equity
        for i, (symbol, pos, value) in enumerate(values):
            portion = left if i == len(values) - 1 else share(equity, abs(value), whole)
            left -= portion
            # the account's side of the close: it gives up ``size`` for value - portion of its equity
            size = pos.size
            total = value - portion  # what the taker of the position pays (signed like size)
            taken = 0
            if equity >= 0 and m.spec.backstop and m.spec.backstop != account:
                taken = self._backstop_capacity(symbol, size)
                if taken:
                    part = total if taken == abs(size) else share(total, taken, abs(size))
                    self._transfer(account, m.spec.backstop, symbol, taken if size > 0 else -taken, part, seq)
                    self._event(seq, account, BACKSTOP, f, auto, symbol, ASK if size > 0 else BID, taken,
                                self._price(symbol, part, taken), part, m.spec.backstop, out)
                    total -= part
            rest = abs(size) - taken
            if rest:
                self._deleverage(account, f, auto, symbol, size, rest, total, seq, out)

    def _backstop_capacity(self, symbol: str, size: int) -> int:
        """How much of ``size`` the backstop can take while keeping its initial margin
        (checked for the whole, then halves, on the market's step)."""
        m = self.m
        backstop = m.spec.backstop
        spec = m.markets[symbol]
        qty = abs(size)
        side = BID if size > 0 else ASK
        for _ in range(12):
            if qty < spec.min_quantity:
                return 0
            f = m.figures(backstop, (symbol, side, qty))
            if f.equity >= f.initial:
                return qty
            qty = qty // 2 // spec.step * spec.step
        return 0

    def _deleverage(self, account: str, f: "Figures", auto: int, symbol: str, size: int, qty: int, total: int, seq: int,
                    out: list) -> None:
        """Tier 5: close ``qty`` of the account's ``size`` against ranked opposite positions
        for ``total`` (signed like size)."""
        m = self.m
        mark = m.mark(symbol)
        mult = m.markets[symbol].notional_mult
        ranked = []
        for other in m.holders[symbol]:
            if other == account:
                continue
            pos = m.positions.get(other, {}).get(symbol)
            if pos is None or not pos.size or (pos.size > 0) == (size > 0):
                continue
            upnl = pos.size * mark * mult - pos.net_cost
            score = upnl * abs(pos.size) * mark * mult // max(m.equity(other), 1)
            ranked.append((-score, other, pos))
        ranked.sort(key=lambda r: (r[0], r[1]))
        left_qty, left_total = qty, total
        for _, other, pos in ranked:
            if not left_qty:
                break
            q = min(left_qty, abs(pos.size))
            part = left_total if q == left_qty else share(left_total, q, left_qty)
            self._transfer(account, other, symbol, q if size > 0 else -q, part, seq)
            self._event(seq, account, ADL, f, auto, symbol, ASK if size > 0 else BID, q, self._price(symbol, part, q),
                        part, other, out)
            left_qty -= q
            left_total -= part

    def _transfer(self, seller: str, buyer: str, symbol: str, qty: int, total: int, seq: int) -> None:
        """``seller`` gives ``qty`` (signed like its position) to ``buyer`` for ``total``."""
        m = self.m
        m.trade(seller, symbol, -qty, -total, seq)
        m.trade(buyer, symbol, qty, total, seq)
        m.drop_if_flat(seller, symbol)
        m.drop_if_flat(buyer, symbol)

    def _price(self, symbol: str, total: int, qty: int) -> int:
        return abs(total) // (qty * self.m.markets[symbol].notional_mult) if qty else 0
