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


class LendRow(NamedTuple):
    pos: int
    seq: int
    asset: str
    kind: str
    source: str
    amount: int
    lent: int
    borrowed: int
    ts: int
    position_id: int | None  # the ``pos`` of the movement that opened the position


# the ``pos`` of the movement that opened the position row ``m`` belongs to: the first
# movement after the account's last one in that asset that left it flat (see ``schema``)
_OPENED = """(SELECT MIN(o.pos) FROM lend_moves o WHERE o.account = m.account AND o.asset = m.asset AND o.pos >
    IFNULL((SELECT MAX(c.pos) FROM lend_moves c WHERE c.account = m.account AND c.asset = m.asset
            AND c.lent = 0 AND c.borrowed = 0 AND c.pos < m.pos), -1))"""

# Backpack's borrow/lend movement sources (``sources=`` filter), and Satchel's own AutoLendRedeem
LEND_SOURCES = frozenset({
    "AdlProvider", "AutoBorrowRepay", "AutoLend", "AutoLendRedeem", "BackstopProvider", "Interest", "Liquidation",
    "LiquidationAdl", "LiquidationBackstop", "Manual", "Reconciliation", "SpotMargin", "Withdrawal",
})
LEND_KINDS = ("Borrow", "BorrowRepay", "Lend", "LendRedeem")


class LendHistory(msgspec.Struct, frozen=True):
    """An account's borrow and lend movements, newest first (``ascending``: oldest first),
    each with the id of the position it belongs to. ``position_id`` narrows to one
    position: from the movement that opened it to the one that closed it.

    Cost: an index range per page, and two index seeks per row for its position id."""

    account: str
    asset: str | None = None
    kind: str | None = None
    sources: tuple[str, ...] = ()
    position_id: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    ascending: bool = False

    def run(self, conn: sqlite3.Connection) -> list[LendRow]:
        where = ["m.account = ?"]
        args: list = [self.account]
        _narrow(where, args, (("m.asset = ?", self.asset), ("m.kind = ?", self.kind),
                              ("m.ts >= ?", self.since_us), ("m.ts < ?", self.until_us)))
        if self.sources:
            where.append(f"m.source IN ({', '.join('?' * len(self.sources))})")
            args.extend(self.sources)
        if self.position_id is not None:
            span = self._span(conn)
            if span is None:
                return []
            where.append("m.asset = ? AND m.pos >= ? AND m.pos <= ?")
            args.extend(span)
        args += [self.limit, self.offset]
        order = "ASC" if self.ascending else "DESC"
        columns = ", ".join(f"m.{c}" for c in LendRow._fields[:-1])
        return _rows(conn, LendRow, f"SELECT {columns}, {_OPENED} FROM lend_moves m WHERE {' AND '.join(where)} "
                                    f"ORDER BY m.pos {order} LIMIT ? OFFSET ?", args)

    def _span(self, conn: sqlite3.Connection) -> tuple[str, int, int] | None:
        """(asset, first pos, last pos) of the account's position ``position_id``, or None
        if no position of the account opened at that movement."""
        row = conn.execute(f"SELECT m.asset, {_OPENED} FROM lend_moves m WHERE m.pos = ? AND m.account = ?",
                           (self.position_id, self.account)).fetchone()
        if row is None or row[1] != self.position_id:
            return None
        asset = row[0]
        closed = conn.execute("SELECT MIN(pos) FROM lend_moves WHERE account = ? AND asset = ? AND lent = 0 "
                              "AND borrowed = 0 AND pos >= ?", (self.account, asset, self.position_id)).fetchone()[0]
        return asset, self.position_id, closed if closed is not None else 2**63 - 1


class OpenLendPositions(msgspec.Struct, frozen=True):
    """The ids of an account's open positions in ``assets``: asset -> the ``pos`` of the
    movement that opened it (an asset whose movements are not written yet is left out)."""

    account: str
    assets: tuple[str, ...]

    def run(self, conn: sqlite3.Connection) -> dict[str, int]:
        out = {}
        for asset in self.assets:
            row = conn.execute(
                "SELECT MIN(pos) FROM lend_moves WHERE account = ? AND asset = ? AND pos > IFNULL((SELECT MAX(pos) "
                "FROM lend_moves WHERE account = ? AND asset = ? AND lent = 0 AND borrowed = 0), -1)",
                (self.account, asset, self.account, asset)).fetchone()
            if row[0] is not None:
                out[asset] = row[0]
        return out


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
