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

from satchel.api.format import ADMIN_DEPOSIT_SOURCE
from satchel.api.klines import INTERVALS, bucket
from satchel.core.engine import INTERNAL_SEQ_BASE
from satchel.core.lending import to_amount
from satchel.history.writes import HOUR_US, WRITE_OFF

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


class _PositionPage(msgspec.Struct, frozen=True):
    """What the lending histories share: an account, optionally one asset or position, a
    time range (us), a page and an order."""

    account: str
    asset: str | None = None
    position_id: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    ascending: bool = False


class LendHistory(_PositionPage, frozen=True):
    """An account's borrow and lend movements, newest first (``ascending``: oldest first),
    each with the id of the position it belongs to. ``position_id`` narrows to one
    position: from the movement that opened it to the one that closed it. A write-off
    (``schema``) closes its position but is not listed.

    Cost: an index range per page, and two index seeks per row for its position id."""

    kind: str | None = None
    sources: tuple[str, ...] = ()

    def run(self, conn: sqlite3.Connection) -> list[LendRow]:
        where = ["m.account = ?", f"m.kind != '{WRITE_OFF}'"]
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
        span = _position_span(conn, self.account, self.position_id)
        return None if span is None else (span[0], span[1], _END if span[2] is None else span[2])


_END = 2**63 - 1  # a pos after every other


def _position_span(conn: sqlite3.Connection, account: str, position_id: int) -> tuple[str, int, int | None] | None:
    """(asset, first pos, closing pos or None while open) of the account's position
    ``position_id``, or None if no position of the account opened at that movement."""
    row = conn.execute(f"SELECT m.asset, {_OPENED} FROM lend_moves m WHERE m.pos = ? AND m.account = ?",
                       (position_id, account)).fetchone()
    if row is None or row[1] != position_id:
        return None
    asset = row[0]
    closed = conn.execute("SELECT MIN(pos) FROM lend_moves WHERE account = ? AND asset = ? AND lent = 0 "
                          "AND borrowed = 0 AND pos >= ?", (account, asset, position_id)).fetchone()[0]
    return asset, position_id, closed


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


class InterestRow(NamedTuple):
    hour_end: int  # µs: the end of the hour the interest is for
    asset: str
    position_id: int
    kind: str  # Lend (earned) or Borrow (owed)
    rate: int  # the pool's annual rate for the side, PPB, at the hour's mark
    quantity: int  # asset units


class _Mark(NamedTuple):
    hour: int
    pos: int
    lend_index: int
    borrow_index: int
    lend_rate: int
    borrow_rate: int


class _Move(NamedTuple):
    pos: int
    kind: str
    amount: int
    lent: int
    borrowed: int
    lent_scaled: int
    borrowed_scaled: int
    pool_index: int


_MARK = "SELECT hour, pos, lend_index, borrow_index, lend_rate, borrow_rate FROM lend_hours"
_MOVE_COLUMNS = ", ".join(f"m.{c}" for c in _Move._fields)
FIRST_CHUNK_HOURS = 24  # hours computed at once when paging, doubling up to MAX_CHUNK_HOURS
MAX_CHUNK_HOURS = 4096


class InterestHistory(_PositionPage, frozen=True):
    """An account's interest, one row per position and hour of sequenced time in which it
    earned (a lend) or owed (a borrow) any; newest hour first (``ascending``: oldest), then
    by asset and position. ``since_us``/``until_us`` bound the hour's end. Derived from the
    movements and the hour marks (``lend_hours``) by the rule in ``schema``: a position's
    open hour is listed once the next hour's mark is written; a closed position's last
    hour at once.

    Cost: the rows are computed a chunk of hours at a time (from the newest, or the
    oldest), 24 hours first and doubling, until the page is full: per chunk and asset a
    range of marks (one per hour), the account's movements in it, and a few index seeks.
    So a page costs about the hours it covers, never the account's whole history."""

    def run(self, conn: sqlite3.Connection) -> list[InterestRow]:
        spans = self._spans(conn) if self.limit > 0 else {}
        if not spans:
            return []
        lo = min(first for first, _ in spans.values())
        hi = max(last for _, last in spans.values())
        if self.since_us is not None:  # the hour ends at or after since: (hour + 1) * HOUR_US >= since_us
            lo = max(lo, -(-self.since_us // HOUR_US) - 1)
        if self.until_us is not None:  # ... and before until
            hi = min(hi, -(-self.until_us // HOUR_US) - 2)
        need = self.offset + self.limit
        out: list[InterestRow] = []
        width = FIRST_CHUNK_HOURS
        while lo <= hi and len(out) < need:
            if self.ascending:
                a, b = lo, min(hi, lo + width - 1)
                lo = b + 1
            else:
                a, b = max(lo, hi - width + 1), hi
                hi = a - 1
            rows = []
            for asset, (first, last) in spans.items():
                if first <= b and last >= a:
                    rows += self._hours(conn, asset, max(first, a), min(last, b))
            rows.sort(key=lambda r: (r.hour_end, r.asset, r.position_id), reverse=not self.ascending)
            out += rows
            width = min(width * 2, MAX_CHUNK_HOURS)
        return out[self.offset:need]

    def _spans(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        """asset -> (first, last) hour whose mark may start interest of the account's
        positions (of ``position_id`` only, if given)."""
        account = self.account
        bounds: dict[str, tuple[int, int | None]] = {}  # asset -> (first pos, closing pos or None)
        if self.position_id is not None:
            span = _position_span(conn, account, self.position_id)
            if span is None or (self.asset is not None and span[0] != self.asset):
                return {}
            bounds[span[0]] = (span[1], span[2])
        else:
            asset = self.asset
            while True:
                if self.asset is None:  # the account's next asset: an index seek each
                    asset = conn.execute("SELECT MIN(asset) FROM lend_moves WHERE account = ? AND asset > ?",
                                         (account, asset or "")).fetchone()[0]
                if asset is None:
                    break
                first = conn.execute("SELECT MIN(pos) FROM lend_moves WHERE account = ? AND asset = ?",
                                     (account, asset)).fetchone()[0]
                if first is not None:
                    last, lent, borrowed = conn.execute(
                        "SELECT pos, lent, borrowed FROM lend_moves WHERE account = ? AND asset = ? "
                        "ORDER BY pos DESC LIMIT 1", (account, asset)).fetchone()
                    bounds[asset] = (first, last if lent == 0 and borrowed == 0 else None)
                if self.asset is not None:
                    break
        out = {}
        for asset, (first, closed) in bounds.items():
            start = _hour_at(conn, asset, first)
            if start is None:  # no mark before it yet (a catch-up is writing older blocks): from the first one
                start = conn.execute("SELECT MIN(hour) FROM lend_hours WHERE asset = ?", (asset,)).fetchone()[0]
            end = (conn.execute("SELECT MAX(hour) FROM lend_hours WHERE asset = ?", (asset,)).fetchone()[0]
                   if closed is None else _hour_at(conn, asset, closed))
            if start is not None and end is not None and start <= end:
                out[asset] = (start, end)
        return out

    def _hours(self, conn: sqlite3.Connection, asset: str, lo: int, hi: int) -> list[InterestRow]:
        """The rows of the hours ``lo``..``hi`` (their marks'), in no particular order."""
        account = self.account
        marks = [_Mark._make(r) for r in conn.execute(f"{_MARK} WHERE asset = ? AND hour >= ? AND hour <= ? "
                                                       "ORDER BY hour", (asset, lo, hi))]
        if not marks:
            return []
        row = conn.execute(f"{_MARK} WHERE asset = ? AND hour > ? ORDER BY hour LIMIT 1", (asset, hi)).fetchone()
        end = None if row is None else _Mark._make(row)
        moves = [_Move._make(r) for r in conn.execute(
            f"SELECT {_MOVE_COLUMNS} FROM lend_moves m WHERE m.account = ? AND m.asset = ? AND m.pos > ? AND m.pos < ? "
            "ORDER BY m.pos",
            (account, asset, marks[0].pos, _END if end is None else end.pos))]
        # the position at the first mark: the one the account's last movement before it left
        row = conn.execute(f"SELECT {_MOVE_COLUMNS}, {_OPENED} FROM lend_moves m WHERE m.account = ? "
                           "AND m.asset = ? AND m.pos < ? ORDER BY m.pos DESC LIMIT 1",
                           (account, asset, marks[0].pos)).fetchone()
        before = None if row is None or (row[3] == 0 and row[4] == 0) else _Move._make(row[:-1])
        if not moves and before is None:
            return []  # no position in these hours

        # the walk over the points in chain order: the position (id, side, scaled size, worth
        # at the last point) and the mark whose hour the interest goes to
        pid = side = None
        scaled = worth = 0
        period = marks[0]
        if before is not None:
            pid = row[-1]
            side, scaled = _side(before)
            worth = _worth(scaled, side, period)
        hours: dict[tuple[int, int], list] = {}  # (hour, position) -> [side, rate, quantity]
        points = sorted(marks[1:] + moves, key=lambda p: p.pos)
        if end is not None:
            points.append(end)
        for p in points:
            is_mark = p.__class__ is _Mark
            if pid is not None:
                if is_mark:
                    now = _worth(scaled, side, p)
                elif p.kind == WRITE_OFF:
                    now = p.amount  # the debt as it was cancelled
                else:
                    now = to_amount(scaled, p.pool_index, up=side == "Borrow")
                if now != worth:
                    key = (period.hour, pid)
                    item = hours.get(key)
                    if item is None:
                        rate = period.lend_rate if side == "Lend" else period.borrow_rate
                        item = hours[key] = [side, rate, 0]
                    item[2] += now - worth
                worth = now
            if is_mark:
                period = p
            elif p.lent == 0 and p.borrowed == 0:
                pid = None  # closed
            else:
                if pid is None:
                    pid = p.pos  # opened
                side, scaled = _side(p)
                worth = to_amount(scaled, p.pool_index, up=side == "Borrow")
        if end is None and pid is not None:
            hours.pop((period.hour, pid), None)  # the open hour: not over yet
        return [InterestRow((hour + 1) * HOUR_US, asset, position, side, rate, quantity)
                for (hour, position), (side, rate, quantity) in hours.items()
                if quantity and (self.position_id is None or position == self.position_id)]


def _side(move: _Move) -> tuple[str, int]:
    """The side of the position a movement left, and its scaled size."""
    return ("Lend", move.lent_scaled) if move.lent_scaled else ("Borrow", move.borrowed_scaled)


def _worth(scaled: int, side: str, mark: _Mark) -> int:
    """A position's claim (rounded down) or debt (up) at ``mark``'s indices."""
    if side == "Lend":
        return to_amount(scaled, mark.lend_index, up=False)
    return to_amount(scaled, mark.borrow_index, up=True)


def _hour_at(conn: sqlite3.Connection, asset: str, pos: int) -> int | None:
    """The hour of the last mark before the movement at ``pos``: from the movement's hour
    back (marks are in hour order), so a row or two is read."""
    row = conn.execute("SELECT h.hour FROM lend_hours h WHERE h.asset = ? AND h.pos < ? AND h.hour <= "
                       "(SELECT ts FROM lend_moves WHERE pos = ?) / ? ORDER BY h.hour DESC LIMIT 1",
                       (asset, pos, pos, HOUR_US)).fetchone()
    return None if row is None else row[0]


class DepositRow(NamedTuple):
    id: int
    account: str
    asset: str
    amount: int
    source: str  # the chain, or ADMIN_DEPOSIT_SOURCE
    tx_hash: str | None
    ts: int


class DepositHistory(msgspec.Struct, frozen=True):
    """An account's credited deposits, newest first; ``chains_only`` leaves out the admin
    faucet's (Backpack's ``excludePlatform``)."""

    account: str
    since_us: int | None = None
    until_us: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    chains_only: bool = False

    def run(self, conn: sqlite3.Connection) -> list[DepositRow]:
        where = ["account = ?"]
        args: list = [self.account]
        _narrow(where, args, (("ts >= ?", self.since_us), ("ts < ?", self.until_us),
                              ("source != ?", ADMIN_DEPOSIT_SOURCE if self.chains_only else None)))
        args += [self.limit, self.offset]
        return _rows(conn, DepositRow, f"SELECT {', '.join(DepositRow._fields)} FROM deposits "
                                       f"WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?", args)


class WithdrawalRow(NamedTuple):
    id: int
    account: str
    chain: str
    asset: str
    amount: int
    address: str
    client_id: int | None
    created: int
    status: str
    tx_hash: str
    reason: str


class WithdrawalHistory(msgspec.Struct, frozen=True):
    """An account's withdrawals, each with its latest status, newest first; optionally one
    id or client id. ``since_us``/``until_us`` bound the request's time."""

    account: str
    withdrawal_id: int | None = None
    client_id: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def run(self, conn: sqlite3.Connection) -> list[WithdrawalRow]:
        where = ["account = ?"]
        args: list = [self.account]
        _narrow(where, args, (("id = ?", self.withdrawal_id), ("client_id = ?", self.client_id),
                              ("created >= ?", self.since_us), ("created < ?", self.until_us)))
        args += [self.limit, self.offset]
        return _rows(conn, WithdrawalRow, f"SELECT {', '.join(WithdrawalRow._fields)} FROM withdrawals "
                                          f"WHERE {' AND '.join(where)} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
                     args)


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
