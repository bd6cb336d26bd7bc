"""The reads of the history database, as typed query objects.

Each query is a small frozen struct (what to read) with ``run(conn)``, executed on the
store's thread (``Store.read``) and answering integer rows; the edges format them
(``views``) on the trio thread. Pages are bounded by ``limit`` (at most ``MAX_LIMIT``),
so no answer holds more than that many rows, and klines at most ``MAX_KLINES`` candles.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

import msgspec

from satchel.api.klines import INTERVALS, bucket
from satchel.core.engine import INTERNAL_SEQ_BASE

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_KLINES = 1000


class OrderRow(NamedTuple):
    order_id: int
    account: str
    symbol: str
    side: int
    order_type: int | None
    tif: int
    price: int
    quantity: int
    quote_quantity: int
    client_id: int | None
    post_only: int
    reduce_only: int
    trigger_price: int
    trigger_by: int
    accepted: int
    created: int
    executed: int
    executed_quote: int
    status: str | None
    reason: str


class FillRow(NamedTuple):
    symbol: str
    trade_id: int
    is_maker: int
    order_id: int
    account: str
    side: int
    price: int
    quantity: int
    quote: int
    fee: int
    ts: int
    client_id: int | None


class TradeRow(NamedTuple):
    trade_id: int
    price: int
    quantity: int
    quote: int
    ts: int
    taker_side: int


class KlineRow(NamedTuple):
    first_ts: int  # of the candle's first and last trades (the candle's bounds come from klines.bucket)
    last_ts: int
    low: int
    high: int
    volume: int
    quote_volume: int
    trades: int
    open: int
    close: int


def _rows(conn: sqlite3.Connection, row: type, sql: str, args: list | dict) -> list:
    cur = conn.execute(sql, args)
    return [row._make(r) for r in cur]


def _narrow(where: list[str], args: list, conditions: tuple[tuple[str, object], ...]) -> None:
    """Add each ``(sql, value)`` condition whose value is given (None: no filter)."""
    for sql, value in conditions:
        if value is not None:
            where.append(sql)
            args.append(value)


class FundingRateRow(NamedTuple):
    symbol: str
    interval_end: int
    rate: int


class FundingRates(msgspec.Struct, frozen=True):
    """A perpetual market's funding rates, newest interval first."""

    symbol: str
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def run(self, conn: sqlite3.Connection) -> list[FundingRateRow]:
        return _rows(conn, FundingRateRow, "SELECT symbol, interval_end, rate FROM funding_rates WHERE symbol = ? "
                                           "ORDER BY interval_end DESC LIMIT ? OFFSET ?",
                     [self.symbol, self.limit, self.offset])


class OrderHistory(msgspec.Struct, frozen=True):
    """An account's orders, newest first (by creation time, then order id)."""

    account: str
    symbol: str | None = None
    order_id: int | None = None
    since_us: int | None = None  # created at or after
    until_us: int | None = None  # created before
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def run(self, conn: sqlite3.Connection) -> list[OrderRow]:
        where = ["account = ?", "(status IS NULL OR status != 'Rejected' OR trigger_price != 0)"]
        args: list = [self.account]
        _narrow(where, args, (("symbol = ?", self.symbol), ("order_id = ?", self.order_id),
                              ("created >= ?", self.since_us), ("created < ?", self.until_us)))
        args += [self.limit, self.offset]
        return _rows(conn, OrderRow, f"SELECT {', '.join(OrderRow._fields)} FROM orders WHERE {' AND '.join(where)} "
                                     "ORDER BY created DESC, order_id DESC LIMIT ? OFFSET ?", args)


# Backpack's fillType -> the fills it selects: of the account's own orders ("user"), of the
# liquidation engine's book orders ("liquidation"), or "none": backstop takeovers,
# auto-deleverage and collateral conversions are transfers in Satchel (its liquidation
# history), not fills
FILL_TYPES: dict[str, str] = {
    "User": "user", "BookLiquidation": "liquidation", "Liquidation": "liquidation", "AllLiquidation": "liquidation",
    "Adl": "none", "Backstop": "none", "CollateralConversion": "none", "CollateralConversionAndSpotLiquidation": "none",
}


class FillHistory(msgspec.Struct, frozen=True):
    """An account's fills, newest first; ``kind`` "all" or a value of ``FILL_TYPES``."""

    account: str
    symbol: str | None = None
    order_id: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    kind: str = "all"
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def run(self, conn: sqlite3.Connection) -> list[FillRow]:
        if self.kind == "none":
            return []
        where = ["f.account = ?"]
        args: list = [self.account]
        _narrow(where, args, (("f.symbol = ?", self.symbol), ("f.order_id = ?", self.order_id),
                              ("f.ts >= ?", self.since_us), ("f.ts < ?", self.until_us)))
        if self.kind != "all":
            where.append("f.order_id < ?" if self.kind == "user" else "f.order_id >= ?")
            args.append(INTERNAL_SEQ_BASE)
        args += [self.limit, self.offset]
        columns = ", ".join(f"f.{c}" for c in FillRow._fields[:-1])
        return _rows(conn, FillRow, f"SELECT {columns}, o.client_id FROM fills f LEFT JOIN orders o "
                                    f"ON o.order_id = f.order_id WHERE {' AND '.join(where)} "
                                    "ORDER BY f.height DESC, f.ix DESC, f.is_maker LIMIT ? OFFSET ?", args)


class TradeHistory(msgspec.Struct, frozen=True):
    """A market's public trades: ``limit`` of them, ``offset`` back from the newest,
    answered oldest first (as ``GET /api/v1/trades`` answers the latest ones)."""

    symbol: str
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def run(self, conn: sqlite3.Connection) -> list[TradeRow]:
        rows = _rows(conn, TradeRow, "SELECT trade_id, price, quantity, quote, ts, side FROM fills "
                                     "WHERE symbol = ? AND is_maker = 0 ORDER BY ts DESC, height DESC, ix DESC "
                                     "LIMIT ? OFFSET ?", [self.symbol, self.limit, self.offset])
        rows.reverse()
        return rows


class Klines(msgspec.Struct, frozen=True):
    """Candles of a market's trades: every ``interval`` candle that overlaps
    [start_us, end_us] and had trades, oldest first, at most ``MAX_KLINES``.

    Whole candles: trades are taken from the start of the candle holding ``start_us`` to
    the end of the one holding ``end_us``. Aggregation runs in SQLite (one pass over the
    range on the trades index); open and close are then looked up per candle.
    """

    symbol: str
    interval: str
    start_us: int
    end_us: int

    def run(self, conn: sqlite3.Connection) -> list[KlineRow]:
        length = INTERVALS[self.interval]
        lo = bucket(max(self.start_us, 0), self.interval)[0]
        hi = bucket(max(self.end_us, 0), self.interval)[1]
        if length:
            offset = bucket(0, self.interval)[0] % length  # weeks start on a Monday, not on the epoch's Thursday
            key = f"(ts - {offset}) / {length}"
        else:  # calendar months
            key = "strftime('%Y-%m', ts / 1000000, 'unixepoch')"
        sql = f"""
            SELECT g.first_ts, g.last_ts, g.low, g.high, g.volume, g.quote_volume, g.trades,
                (SELECT price FROM fills WHERE symbol = :s AND is_maker = 0 AND ts >= g.first_ts
                 ORDER BY ts, height, ix LIMIT 1),
                (SELECT price FROM fills WHERE symbol = :s AND is_maker = 0 AND ts <= g.last_ts
                 ORDER BY ts DESC, height DESC, ix DESC LIMIT 1)
            FROM (SELECT {key} AS b, MIN(ts) AS first_ts, MAX(ts) AS last_ts, MIN(price) AS low, MAX(price) AS high,
                         SUM(quantity) AS volume, SUM(quote) AS quote_volume, COUNT(*) AS trades
                  FROM fills WHERE symbol = :s AND is_maker = 0 AND ts >= :lo AND ts < :hi
                  GROUP BY b ORDER BY b LIMIT :cap) AS g
            ORDER BY g.first_ts"""
        return _rows(conn, KlineRow, sql, {"s": self.symbol, "lo": lo, "hi": hi, "cap": MAX_KLINES})
