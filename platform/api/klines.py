"""Candle intervals: Backpack's names, and the UTC bucket a timestamp falls in.

Shared by the REST ``GET /api/v1/klines`` (candles from the history read model) and
the WebSocket ``kline.<interval>.<symbol>`` stream (the open candle, kept by market
data), so both cut time the same way: fixed-length buckets aligned on the Unix epoch,
weeks starting on Monday (as Backpack's do), months on the calendar month.
"""

from __future__ import annotations

import datetime as dt

_S = 1_000_000  # µs per second

# name -> length in µs (0: the calendar month)
INTERVALS: dict[str, int] = {
    "1s": _S, "1m": 60 * _S, "3m": 180 * _S, "5m": 300 * _S, "15m": 900 * _S, "30m": 1800 * _S,
    "1h": 3600 * _S, "2h": 7200 * _S, "4h": 14400 * _S, "6h": 21600 * _S, "8h": 28800 * _S, "12h": 43200 * _S,
    "1d": 86400 * _S, "3d": 3 * 86400 * _S, "1w": 7 * 86400 * _S, "1month": 0,
}
_MONDAY = 4 * 86400 * _S  # 1970-01-05, the first Monday after the epoch (a Thursday)


def _month(us: int, months: int = 0) -> int:
    t = dt.datetime.fromtimestamp(us // _S, dt.timezone.utc)
    index = t.year * 12 + t.month - 1 + months
    return int(dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.timezone.utc).timestamp()) * _S


def bucket(us: int, interval: str) -> tuple[int, int]:
    """The [start, end) in µs of the ``interval`` candle holding ``us``."""
    length = INTERVALS[interval]
    if length == 0:
        start = _month(us)
        return start, _month(start, 1)
    offset = _MONDAY if interval == "1w" else 0
    start = (us - offset) // length * length + offset
    return start, start + length


def clock_text(us: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, the form ccxt parses from a kline's ``start``."""
    return dt.datetime.fromtimestamp(us // _S, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def iso_text(us: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` in UTC without a zone: a kline frame's ``t``/``T``, as Backpack
    sends them (ccxt's ``parse8601`` reads it as UTC)."""
    return dt.datetime.fromtimestamp(us // _S, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
