"""History rows as Backpack's payloads, formatted with the gateway's ``Formatter``.

Runs on the trio thread, where the listing (and so the formatter's markets) is kept
current by the durable blocks. A row of a market the formatter does not know is left
out rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable

from satchel.api.format import Formatter, fraction, iso_ms, naive_iso
from satchel.api.klines import bucket, clock_text
from satchel.core.engine import INTERNAL_SEQ_BASE
from satchel.core.messages import ASK, NEW, PARTIALLY_FILLED, REJECTED, SIDE_NAMES, TRIGGER_PENDING
from satchel.history.queries import (
    DepositRow, FillRow, FundingRateRow, InterestRow, KlineRow, LendRow, OrderRow, TradeRow, WithdrawalRow,
)
from satchel.history.writes import HOUR_US

TRIGGER_FAILED = "TriggerFailed"
# Backpack's name for orders and fills of the liquidation engine's book orders
_LIQUIDATION_ORDER = "LiquidatePositionOnBook"


def status(row: OrderRow) -> str:
    """The order's status as clients see it: the final one once the order is done,
    otherwise derived from what it has done so far."""
    if row.status is None:
        if row.trigger_price and not row.accepted:
            return TRIGGER_PENDING
        return PARTIALLY_FILLED if row.executed else NEW
    if row.status == REJECTED:
        return TRIGGER_FAILED  # only fired triggers refused at pre-trade are kept (see ``writes``)
    return row.status


def order(fmt: Formatter, row: OrderRow) -> dict:
    """A ``GET /wapi/v1/history/orders`` item: the shape of ``GET /api/v1/order``, plus
    Backpack's ``expiryReason`` and, for a liquidation order, ``systemOrderType``.
    ``selfTradePrevention`` is the default: the events do not carry an order's own."""
    out = fmt.order(row.symbol, row.order_id, row.client_id, row.side, row.price, row.quantity, row.executed,
                    row.executed_quote, status(row), order_type=row.order_type, tif=row.tif,
                    post_only=bool(row.post_only), quote_quantity=row.quote_quantity, created_us=row.created,
                    reduce_only=bool(row.reduce_only), trigger_price=row.trigger_price, trigger_by=row.trigger_by)
    out["expiryReason"] = row.reason or None
    if row.order_id >= INTERNAL_SEQ_BASE:
        out["systemOrderType"] = _LIQUIDATION_ORDER
    return out


def orders(fmt: Formatter, rows: list[OrderRow]) -> list[dict]:
    return [order(fmt, r) for r in rows if r.symbol in fmt.markets]


def fill(fmt: Formatter, row: FillRow) -> dict:
    """A ``GET /wapi/v1/history/fills`` item. Fees are charged in the market's quote asset."""
    sym = row.symbol
    out = {
        "tradeId": row.trade_id,
        "orderId": str(row.order_id),
        "clientId": row.client_id,
        "symbol": sym,
        "side": SIDE_NAMES[row.side],
        "price": fmt.price(sym, row.price),
        "quantity": fmt.qty(sym, row.quantity),
        "fee": fmt.quote(sym, row.fee),
        "feeSymbol": fmt.markets[sym].quote,
        "isMaker": bool(row.is_maker),
        "timestamp": iso_ms(row.ts),
    }
    if row.order_id >= INTERNAL_SEQ_BASE:
        out["systemOrderType"] = _LIQUIDATION_ORDER
    return out


def fills(fmt: Formatter, rows: list[FillRow]) -> list[dict]:
    return [fill(fmt, r) for r in rows if r.symbol in fmt.markets]


def trades(fmt: Formatter, symbol: str, rows: list[TradeRow]) -> list[dict]:
    """``GET /api/v1/trades/history`` items, shaped like ``GET /api/v1/trades``'s
    (``timestamp`` in ms; the buyer is the maker when the taker sold)."""
    return [{"id": r.trade_id, "price": fmt.price(symbol, r.price), "quantity": fmt.qty(symbol, r.quantity),
             "quoteQuantity": fmt.quote(symbol, r.quote), "timestamp": r.ts // 1000, "isBuyerMaker": r.taker_side == ASK}
            for r in rows]


def klines(fmt: Formatter, symbol: str, interval: str, rows: list[KlineRow]) -> list[dict]:
    """``GET /api/v1/klines`` items: ``start``/``end`` as "YYYY-MM-DD HH:MM:SS" UTC (ccxt
    reads ``start``), prices, base ``volume``, ``quoteVolume`` and the trade count."""
    out = []
    for r in rows:
        start, end = bucket(r.first_ts, interval)
        out.append({
            "start": clock_text(start), "end": clock_text(end),
            "open": fmt.price(symbol, r.open), "high": fmt.price(symbol, r.high), "low": fmt.price(symbol, r.low),
            "close": fmt.price(symbol, r.close), "volume": fmt.qty(symbol, r.volume),
            "quoteVolume": fmt.quote(symbol, r.quote_volume), "trades": str(r.trades),
        })
    return out


def funding_rates(rows: list[FundingRateRow]) -> list[dict]:
    """``GET /api/v1/fundingRates`` items: the interval's end as naive ISO UTC, the rate a fraction."""
    return [{"symbol": r.symbol, "intervalEndTimestamp": naive_iso(r.interval_end), "fundingRate": fraction(r.rate)}
            for r in rows]


def lend_moves(fmt: Formatter, rows: list[LendRow]) -> list[dict]:
    """``GET /wapi/v1/history/borrowLend`` items: ``quantity`` moved, ``positionQuantity``
    the position afterwards (lent positive, borrowed negative), ``spotMarginOrderId`` the
    order that borrowed (source SpotMargin). An asset the formatter does not know is left out."""
    out = []
    for r in rows:
        if r.asset not in fmt.assets:
            continue
        out.append({
            "eventType": r.kind,
            "positionId": None if r.position_id is None else str(r.position_id),
            "positionQuantity": fmt.asset(r.asset, r.lent - r.borrowed),
            "quantity": fmt.asset(r.asset, r.amount),
            "source": r.source,
            "symbol": r.asset,
            "timestamp": iso_ms(r.ts),
            "spotMarginOrderId": str(r.seq) if r.source == "SpotMargin" else None,
        })
    return out


def interest(fmt: Formatter, rows: list[InterestRow]) -> list[dict]:
    """``GET /wapi/v1/history/interest`` items: per position and hour, ``quantity`` the
    interest earned (paymentType Lend) or owed (Borrow) in the asset, ``interestRate`` the
    pool's annual rate at the hour's start, ``timestamp`` the hour's end. An asset the
    formatter does not know is left out."""
    return [{
        "paymentType": r.kind,
        "interestRate": fraction(r.rate),
        "interval": HOUR_US // 1000,
        "positionId": str(r.position_id),
        "quantity": fmt.asset(r.asset, r.quantity),
        "symbol": r.asset,
        "timestamp": iso_ms(r.hour_end),
    } for r in rows if r.asset in fmt.assets]


def deposits(fmt: Formatter, rows: list[DepositRow], address: Callable[[str, str], str | None]) -> list[dict]:
    """``GET /wapi/v1/capital/deposits`` items; ``address(chain, account)`` gives the
    account's deposit address on the chain (``toAddress``; None where it cannot be
    derived here). An asset the formatter does not know is left out."""
    out = []
    for r in rows:
        if r.asset not in fmt.assets:
            continue
        to = None if r.tx_hash is None else address(r.source, r.account)
        out.append(fmt.deposit(r.id, r.source, r.asset, r.amount, r.tx_hash, to, r.ts))
    return out


def withdrawals(fmt: Formatter, rows: list[WithdrawalRow]) -> list[dict]:
    """``GET /wapi/v1/capital/withdrawals`` items, each as its latest status shows it. An
    asset the formatter does not know is left out."""
    return [fmt.withdrawal(r.id, r.chain, r.asset, r.amount, r.address, r.status, r.tx_hash, r.reason, r.created,
                           r.client_id)
            for r in rows if r.asset in fmt.assets]
