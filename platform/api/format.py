"""Integer state to Backpack's decimal-string payloads: shared by the API and market data.

One place knows how an order, a price level, a balance or a position looks on the wire,
so every front end (WebSocket today, REST later) and every stream shows the same figures.

Fractions (margin factors, weights, funding rates) are PPB integers in the core and
decimal strings here ("0.02"). Figures that are ratios of integers (entry and
break-even prices) are rounded toward zero to the quote asset's decimals (or the
market's price decimals when finer), so they stay exact decimal strings.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from satchel.core import lending, margin as rules
from satchel.core.amounts import format_units
from satchel.core.messages import (
    BY_MARK, GTC, LIMIT, MARKET, ORDER_TYPE_NAMES, PPB, REJECT_TAKER, SIDE_NAMES, STP_NAMES, TIF_NAMES,
    TRIGGER_BY_NAMES, NEW, PARTIALLY_FILLED,
    AssetSpec, CollateralView, FundingPayment, LendPosition, Liquidation, MarketSpec, MarkPrice, OpenInterest,
    PerpPrices, PositionChanged,
)
from satchel.core.state import PositionState

_PPB_DECIMALS = len(str(PPB)) - 1  # a PPB fraction has 9 decimals
_EPOCH = datetime(1970, 1, 1)

# Liquidation.tier -> the name Satchel's liquidation history shows
LIQUIDATION_TIERS = {1: "cancelOrders", 2: "bookUnwind", 3: "backstop", 4: "insuranceFund", 5: "autoDeleverage"}


def fraction(ppb: int) -> str:
    """A PPB fraction as a decimal string (20_000_000 -> "0.02")."""
    return format_units(ppb, _PPB_DECIMALS)


def naive_iso(us: int) -> str:
    """Microseconds since the epoch as Backpack's naive UTC ISO time ("2025-08-01T16:00:00")."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S")


def iso_ms(us: int) -> str:
    """Naive UTC ISO 8601 to the millisecond ("2025-01-01T12:00:00.123"): a fill's
    ``timestamp`` or a withdrawal's ``createdAt`` as Backpack sends it and ccxt parses it
    (``parse8601``)."""
    t = _EPOCH + timedelta(microseconds=us)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}"


# Satchel's withdrawal statuses (``WithdrawalUpdate.status``) as Backpack's clients know them:
# queued (waiting for a cold sweep), pending (to be sent) and sent (on chain, not yet
# confirmed) are all "pending"; a failed withdrawal, whose funds were released, is "void"
# (the value Backpack's Rust client has for a withdrawal that will not happen; ccxt passes
# it through). The withdrawal's own status is in the added ``state`` field.
WITHDRAWAL_STATUS = {"Queued": "pending", "Pending": "pending", "Sent": "pending", "Confirmed": "confirmed",
                     "Failed": "void"}
ADMIN_DEPOSIT_SOURCE = "administrator"  # Backpack's deposit source for credits by the platform (the admin faucet)


def _quotient(num: int, den: int) -> int:
    """num / den rounded toward zero (Python's // floors, which would move negatives away from zero)."""
    q = abs(num) // abs(den)
    return q if (num < 0) == (den < 0) else -q


class PositionFigures(NamedTuple):
    """A position's derived figures as wire strings (shared by ``position`` and ``position_update``)."""

    entry: str  # entryPrice: net cost / contracts
    break_even: str  # breakEvenPrice: entry notional / contracts
    mark: str
    imf: str
    mmf: str
    exposure_quantity: str  # |size|: the position only (open orders are not in the position's view)
    exposure_notional: str  # |size| x mark
    unrealized: str  # size x mark - net cost; "0" while the market has no mark


class Formatter:
    """Integer state to Backpack's decimal-string payloads, per market."""

    def __init__(self, markets: dict[str, MarketSpec], assets: dict[str, AssetSpec]):
        self.markets = markets
        self.assets = assets

    def price(self, symbol: str, units: int) -> str:
        return format_units(units, self.markets[symbol].price_decimals)

    def qty(self, symbol: str, units: int) -> str:
        return format_units(units, self.markets[symbol].quantity_decimals)

    def quote(self, symbol: str, units: int) -> str:
        return format_units(units, self.assets[self.markets[symbol].quote].decimals)

    def asset(self, asset: str, units: int) -> str:
        return format_units(units, self.assets[asset].decimals)

    def asset_info(self, spec: AssetSpec, chains: list[tuple[str, bool]] = ()) -> dict:
        """A ``GET /api/v1/assets`` item: a token per chain that takes the asset, ``chains``
        as (name, paused). ccxt builds a currency's networks from them (the network code is
        the chain's name, e.g. ``sim``), and ``withdraw`` needs one. No fees, no minimum
        but the asset's smallest unit, no maximum."""
        least = self.asset(spec.symbol, 1)
        return {"symbol": spec.symbol, "displayName": spec.symbol, "tokens": [
            {"blockchain": name, "contractAddress": None, "depositEnabled": not paused, "withdrawEnabled": not paused,
             "displayName": spec.symbol, "minimumDeposit": least, "minimumWithdrawal": least, "maximumWithdrawal": None,
             "withdrawalFee": "0"}
            for name, paused in chains]}

    def withdrawal(self, wid: int, chain: str, asset: str, amount: int, address: str, status: str, tx_hash: str,
                   reason: str, created_us: int, client_id: int | None) -> dict:
        """A withdrawal as Backpack shows it (``POST`` and ``GET /wapi/v1/capital/withdrawals``):
        ``id`` its request's sequence number, ``status`` Backpack's (``WITHDRAWAL_STATUS``),
        no fee; Satchel adds ``state`` (queued, pending, sent, confirmed, failed) and
        ``reason`` (why it failed)."""
        return {
            "id": wid, "blockchain": chain, "clientId": None if client_id is None else str(client_id),
            "quantity": self.asset(asset, amount), "fee": "0", "symbol": asset,
            "status": WITHDRAWAL_STATUS.get(status, status.lower()), "toAddress": address,
            "transactionHash": tx_hash or None, "createdAt": iso_ms(created_us), "isInternal": False,
            "state": status.lower(), "reason": reason or None,
        }

    def deposit(self, deposit_id: int, source: str, asset: str, amount: int, tx_hash: str | None,
                to_address: str | None, created_us: int) -> dict:
        """A ``GET /wapi/v1/capital/deposits`` item: ``id`` the crediting transaction's
        sequence number, ``source`` the chain (or ``administrator``: the faucet), credited
        (``confirmed``) once the chain's confirmations were reached. The sender is not known
        to the ledger (``fromAddress`` null)."""
        return {
            "id": deposit_id, "symbol": asset, "quantity": self.asset(asset, amount), "source": source,
            "status": "confirmed", "fromAddress": None, "toAddress": to_address, "transactionHash": tx_hash,
            "createdAt": iso_ms(created_us),
        }

    def collateral_info(self, spec: AssetSpec) -> dict | None:
        """A ``GET /api/v1/collateral`` item: how the asset counts as collateral (None if
        it does not). The settlement asset counts at its full value."""
        if spec.symbol == self.settlement_asset():
            kind = {"type": "identity"}
            weight = PPB
        elif spec.collateral_weight:
            kind = {"type": "inverseSqrt", "base": "1.1", "positiveCurvePenalty": fraction(spec.haircut_penalty)}
            weight = spec.collateral_weight
        else:
            return None
        return {"symbol": spec.symbol, "imfFunction": None, "mmfFunction": None,
                "haircutFunction": {"weight": fraction(weight), "kind": kind}}

    def market_info(self, spec: MarketSpec) -> dict:
        """A ``GET /api/v1/markets`` item: the fields ccxt reads, and a perp's margin functions."""
        sym = spec.symbol
        info = {
            "symbol": sym, "baseSymbol": spec.base, "quoteSymbol": spec.quote,
            "marketType": "PERP" if spec.perp is not None else "SPOT", "orderBookState": "Open",
            "filters": {
                "price": {"tickSize": self.price(sym, spec.tick), "minPrice": self.price(sym, spec.tick), "maxPrice": None},
                "quantity": {"stepSize": self.qty(sym, spec.step), "minQuantity": self.qty(sym, spec.min_quantity),
                             "maxQuantity": None},
            },
            "createdAt": "2025-01-01T00:00:00",
        }
        perp = spec.perp
        if perp is not None:
            info.update({
                "imfFunction": self.margin_function(perp.imf_base, perp.imf_factor),
                "mmfFunction": self.margin_function(perp.mmf_base, perp.mmf_factor),
                "fundingInterval": perp.funding_interval_us // 1000,
                "fundingRateUpperBound": str(perp.funding_cap * 10_000 // PPB),
                "fundingRateLowerBound": str(perp.funding_floor * 10_000 // PPB),
                "openInterestLimit": self.qty(sym, perp.open_interest_limit),
            })
        return info

    def levels(self, symbol: str, levels: list[tuple[int, int]]) -> list[list[str]]:
        d = self.markets[symbol]
        pd, qd = d.price_decimals, d.quantity_decimals
        return [[format_units(p, pd), format_units(q, qd)] for p, q in levels]

    def order(self, symbol: str, order_id: int, client_id: int | None, side: int, price: int, quantity: int,
              executed: int, executed_quote: int, status: str, *, order_type: int | None = None, tif: int = GTC,
              stp: int = REJECT_TAKER, post_only: bool = False, quote_quantity: int = 0, created_us: int = 0,
              reduce_only: bool = False, trigger_price: int = 0, trigger_by: int = BY_MARK) -> dict:
        """An order object shaped like Backpack's REST order; a trigger order adds
        ``triggerPrice``, ``triggerBy`` and ``triggerQuantity``."""
        if order_type is None:
            order_type = LIMIT if price else MARKET
        out = {
            "id": str(order_id),
            "clientId": client_id,
            "createdAt": created_us // 1000,
            "orderType": ORDER_TYPE_NAMES[order_type],
            "symbol": symbol,
            "side": SIDE_NAMES[side],
            "price": self.price(symbol, price) if price else None,
            "quantity": self.qty(symbol, quantity) if quantity else None,
            "quoteQuantity": self.quote(symbol, quote_quantity) if quote_quantity else None,
            "executedQuantity": self.qty(symbol, executed),
            "executedQuoteQuantity": self.quote(symbol, executed_quote),
            "timeInForce": TIF_NAMES[tif],
            "selfTradePrevention": STP_NAMES[stp],
            "postOnly": post_only,
            "reduceOnly": reduce_only,
            "status": status,
        }
        if trigger_price:
            # ccxt reads the amount from triggerQuantity when quantity is absent; both are given
            out["triggerPrice"] = self.price(symbol, trigger_price)
            out["triggerBy"] = TRIGGER_BY_NAMES[trigger_by]
            out["triggerQuantity"] = out["quantity"]
        return out

    def resting(self, symbol: str, view: tuple) -> dict:
        """A resting order from the book's snapshot tuple (see ``Book.query``)."""
        oid, cid, side, price, qty, executed, executed_quote, created = view
        return self.order(symbol, oid, cid, side, price, qty, executed, executed_quote,
                          PARTIALLY_FILLED if executed else NEW, created_us=created)

    # ------------------------------------------------------------------ perpetuals

    def settlement_asset(self) -> str | None:
        """The asset perps settle in (every perp settles in its quote asset), None with no perp listed."""
        return next((m.quote for m in self.markets.values() if m.perp is not None), None)

    @staticmethod
    def margin_function(base: int, factor: int) -> dict:
        """Backpack's ``imfFunction``/``mmfFunction``: max(base, factor x sqrt(notional))."""
        return {"type": "sqrt", "base": fraction(base), "factor": fraction(factor)}

    def _avg_price(self, symbol: str, cost: int, contracts: int) -> str:
        """cost (quote units) / contracts (quote units per price unit), in price terms."""
        if not contracts:
            return "0"
        spec = self.markets[symbol]
        decimals = max(spec.price_decimals, self.assets[spec.quote].decimals)
        return format_units(_quotient(cost * 10 ** (decimals - spec.price_decimals), contracts), decimals)

    def position_figures(self, symbol: str, size: int, net_cost: int, entry_notional: int, mark: int) -> PositionFigures:
        """A position's prices, margin fractions (at the market's maximum leverage) and PnL at ``mark``."""
        spec = self.markets[symbol]
        perp = spec.perp
        quote_unit = 10 ** self.assets[spec.quote].decimals
        contracts = size * spec.notional_mult
        notional = rules.notional(size, mark, spec.notional_mult)
        return PositionFigures(
            entry=self._avg_price(symbol, net_cost, contracts),
            break_even=self._avg_price(symbol, entry_notional, contracts),
            mark=self.price(symbol, mark),
            imf=fraction(rules.imf(perp, notional, quote_unit)),
            mmf=fraction(rules.mmf(perp, notional, quote_unit)),
            exposure_quantity=self.qty(symbol, abs(size)),
            exposure_notional=self.quote(symbol, notional),
            unrealized=self.quote(symbol, contracts * mark - net_cost if mark else 0),
        )

    def position(self, pos: PositionState, mark: int) -> dict:
        """A position shaped like Backpack's ``GET /api/v1/position`` item (ccxt takes the
        side from the sign of ``netCost``, the contracts from ``netExposureQuantity``)."""
        sym = pos.symbol
        perp = self.markets[sym].perp
        f = self.position_figures(sym, pos.size, pos.net_cost, pos.entry_notional, mark)
        return {
            "positionId": str(pos.position_id),
            "symbol": sym,
            "netQuantity": self.qty(sym, pos.size),
            "netCost": self.quote(sym, pos.net_cost),
            "entryPrice": f.entry,
            "breakEvenPrice": f.break_even,
            "markPrice": f.mark,
            "estLiquidationPrice": "0",
            "imf": f.imf,
            "imfFunction": self.margin_function(perp.imf_base, perp.imf_factor),
            "mmf": f.mmf,
            "mmfFunction": self.margin_function(perp.mmf_base, perp.mmf_factor),
            "netExposureQuantity": f.exposure_quantity,
            "netExposureNotional": f.exposure_notional,
            "pnlRealized": self.quote(sym, pos.realized),
            "pnlUnrealized": f.unrealized,
            # Backpack's sign: what the account received (a payment made is negative)
            "cumulativeFundingPayment": self.quote(sym, -pos.funding),
            "subaccountId": None,
            "userId": pos.account,
        }

    def position_update(self, ev: PositionChanged, event: str, emitted_us: int, ts: int) -> dict:
        """An ``account.positionUpdate`` frame's data; ``event`` is positionOpened,
        positionAdjusted or positionClosed. The event carries no position id (``i`` is null)."""
        sym = ev.symbol
        f = self.position_figures(sym, ev.size, ev.net_cost, ev.entry_notional, ev.mark)
        return {
            "e": event, "E": emitted_us, "s": sym, "b": f.break_even, "B": f.entry, "f": f.imf, "M": f.mark,
            "m": f.mmf, "q": self.qty(sym, ev.size), "Q": f.exposure_quantity, "n": f.exposure_notional, "i": str(ev.position_id) if ev.position_id else None,
            "p": self.quote(sym, ev.realized), "P": f.unrealized, "l": "0", "T": ts,
        }

    def collateral(self, view: CollateralView) -> dict:
        """An account's margin, shaped like Backpack's ``GET /api/v1/capital/collateral``.
        Figures are in the settlement asset; ``marginFraction`` is null with no exposure
        (0 would read as an account about to be liquidated). Per asset, ``totalQuantity``
        nets lends and debts in; ``lendQuantity`` is the lent claim (auto-lend's sweep
        included, so an idle balance moves from ``availableQuantity`` to it) and
        ``borrowLiability`` values every debt."""
        settle = self.settlement_asset()
        money = self.assets[settle].decimals
        rows = []
        assets_value = liabilities = 0
        for r in view.assets:
            notional = _quotient(r.total * r.price, 10 ** self.assets[r.asset].decimals)
            if notional >= 0:
                assets_value += notional
            else:
                liabilities -= notional
            rows.append({
                "symbol": r.asset,
                "assetMarkPrice": format_units(r.price, money),
                "totalQuantity": self.asset(r.asset, r.total),
                "balanceNotional": format_units(notional, money),
                "collateralWeight": fraction(r.weight),
                "collateralValue": format_units(r.value, money),
                "openOrderQuantity": self.asset(r.asset, r.held),
                "lendQuantity": self.asset(r.asset, r.lent),
                # the free balance: total = free + held + lent - borrowed
                "availableQuantity": self.asset(r.asset, r.total - r.held - r.lent + r.borrowed),
            })
        return {
            "assetsValue": format_units(assets_value, money),
            "borrowLiability": format_units(view.borrow_liability, money),
            "liabilitiesValue": format_units(liabilities, money),
            "imf": fraction(view.imf),
            "mmf": fraction(view.mmf),
            "marginFraction": fraction(view.margin_fraction) if view.exposure else None,
            "netEquity": format_units(view.equity, money),
            "netEquityAvailable": format_units(view.equity - view.initial, money),
            "netEquityLocked": format_units(view.initial, money),
            "netExposureFutures": format_units(view.exposure, money),
            "pnlUnrealized": format_units(view.unrealized, money),
            "liquidating": view.liquidating,
            "collateral": rows,
        }

    def account(self, view: CollateralView, max_leverage: int) -> dict:
        """Backpack's ``GET /api/v1/account``: the account's settings. Fees are per market
        in Satchel (``GET /api/v1/markets``); these are the first listed spot and perp
        market's, in basis points. ``autoLend`` and ``autoRepayBorrows`` are the account's
        switches (``PATCH /api/v1/account``); settlements are never auto-borrowed."""
        fees = {}
        for spec in self.markets.values():
            kind = "futures" if spec.perp is not None else "spot"
            if f"{kind}MakerFee" not in fees:
                fees[f"{kind}MakerFee"] = str(spec.maker_fee_bps)
                fees[f"{kind}TakerFee"] = str(spec.taker_fee_bps)
        return {
            "autoBorrowSettlements": False, "autoLend": view.auto_lend, "autoRealizePnl": True,
            "autoRepayBorrows": view.auto_repay,
            "borrowLimit": "0", "leverageLimit": str(view.leverage or max_leverage), "liquidating": view.liquidating,
            **fees,
        }

    def lending_market(self, pool: Any, timestamp_us: int) -> dict:
        """A ``GET /api/v1/borrowLend/markets`` item. Rates are annual (APR) fractions, as
        Backpack's; ``borrowApy``/``lendApy`` add them compounded hourly (display only)."""
        asset = pool.spec.asset
        borrowed, lent = lending.borrowed_total(pool), lending.lent_total(pool)
        return {
            "symbol": asset, "state": "Open",
            "borrowInterestRate": fraction(pool.borrow_rate), "lendInterestRate": fraction(pool.lend_rate),
            "borrowApy": fraction(lending.apy_from_apr(pool.borrow_rate)),
            "lendApy": fraction(lending.apy_from_apr(pool.lend_rate)),
            "borrowedQuantity": self.asset(asset, borrowed), "lentQuantity": self.asset(asset, lent),
            "availableQuantity": self.asset(asset, pool.cash), "reserveQuantity": self.asset(asset, pool.reserve),
            "utilization": fraction(lending.pool_utilization(pool)),
            "optimalUtilization": fraction(pool.spec.optimal_utilization),
            "maxUtilization": fraction(pool.spec.max_utilization), "fee": fraction(pool.spec.reserve_factor),
            "timestamp": naive_iso(timestamp_us),
        }

    def lend_position(self, pos: LendPosition, price: int, position_id: int | None) -> dict:
        """A ``GET /api/v1/borrowLend/positions`` item: ``netQuantity`` lent (+) or borrowed
        (-), valued at ``price`` (settlement-asset units per whole unit of the asset, as
        margin values collateral: "1" for the settlement asset, "0" without a perp mark).
        ``cumulativeInterest`` is earned (+) or owed (-) since the position opened. A
        borrow's IMF/MMF are flat fractions of its value (the pool's ``borrow_imf``/
        ``borrow_mmf``), so the functions' ``factor`` is 0; the estimated liquidation
        price is not computed ("0", as for perp positions)."""
        asset = pos.asset
        money = self.assets[self.settlement_asset() or asset].decimals
        net = pos.lent - pos.borrowed
        notional = _quotient(abs(net) * price, 10 ** self.assets[asset].decimals)
        return {
            "id": None if position_id is None else str(position_id),
            "symbol": asset,
            "netQuantity": self.asset(asset, net),
            "markPrice": format_units(price, money),
            "cumulativeInterest": self.asset(asset, pos.interest),
            "imf": fraction(pos.imf),
            "imfFunction": self.margin_function(pos.imf, 0),
            "mmf": fraction(pos.mmf),
            "mmfFunction": self.margin_function(pos.mmf, 0),
            "netExposureQuantity": self.asset(asset, abs(net)),
            "netExposureNotional": format_units(notional, money),
            "estLiquidationPrice": "0",
        }

    def funding_payment(self, p: FundingPayment) -> dict:
        """A ``GET /wapi/v1/history/funding`` item; ``quantity`` is what the account
        received (negative when it paid, as Backpack shows it)."""
        return {
            "userId": p.account,
            "subaccountId": None,
            "symbol": p.symbol,
            "quantity": self.quote(p.symbol, -p.amount),
            "intervalEndTimestamp": naive_iso(p.interval_end),
            "fundingRate": fraction(p.rate),
        }

    def mark_price(self, symbol: str, p: PerpPrices) -> dict:
        """A ``GET /api/v1/markPrices`` item."""
        return {
            "symbol": symbol,
            "markPrice": self.price(symbol, p.mark),
            "indexPrice": self.price(symbol, p.index),
            "fundingRate": fraction(p.funding_rate),
            "nextFundingTimestamp": p.next_funding // 1000,
        }

    def mark_price_update(self, ev: MarkPrice, emitted_us: int, ts: int) -> dict:
        """A ``markPrice.<symbol>`` frame's data (``n``: next funding time in ms)."""
        sym = ev.symbol
        return {
            "e": "markPrice", "E": emitted_us, "s": sym, "p": self.price(sym, ev.mark), "f": fraction(ev.funding_rate),
            "i": self.price(sym, ev.index), "n": ev.next_funding // 1000, "T": ts,
        }

    def open_interest(self, symbol: str, contracts: int, ts: int) -> dict:
        """A ``GET /api/v1/openInterest`` item (``timestamp`` in ms)."""
        return {"symbol": symbol, "openInterest": self.qty(symbol, contracts), "timestamp": ts // 1000}

    def open_interest_update(self, ev: OpenInterest, emitted_us: int) -> dict:
        """An ``openInterest.<symbol>`` frame's data (``o``: open interest in contracts)."""
        return {"e": "openInterest", "E": emitted_us, "s": ev.symbol, "o": self.qty(ev.symbol, ev.open_interest)}

    def liquidation(self, ev: Liquidation) -> dict:
        """One step of a liquidation, every field of the event (Satchel's own history).
        Tiers 1 and 4 may name no market: quantity and prices are then null."""
        sym = ev.symbol or None
        money = self.assets[self.settlement_asset()].decimals
        return {
            "seq": ev.seq,  # the transaction whose block decided the step (steps may share it)
            "userId": ev.account,
            "tier": ev.tier,
            "tierName": LIQUIDATION_TIERS.get(ev.tier, str(ev.tier)),
            "symbol": sym,
            "side": SIDE_NAMES[ev.side] if sym else None,
            "quantity": self.qty(sym, ev.quantity) if sym else None,
            "price": self.price(sym, ev.price) if sym else None,
            "markPrice": self.price(sym, ev.mark) if sym else None,
            "equity": format_units(ev.equity, money),
            "maintenance": format_units(ev.maintenance, money),
            "autoclose": format_units(ev.autoclose, money),
            "amount": format_units(ev.amount, money),
            "counterparty": ev.counterparty or None,
            "timestamp": naive_iso(ev.timestamp),
        }

    def liquidation_update(self, ev: Liquidation, emitted_us: int, ts: int) -> dict:
        """A public ``liquidation`` frame's data: a position taken over at a price."""
        sym = ev.symbol
        return {
            "e": "liquidation", "E": emitted_us, "q": self.qty(sym, ev.quantity), "p": self.price(sym, ev.price),
            "S": SIDE_NAMES[ev.side], "s": sym, "T": ts,
        }
