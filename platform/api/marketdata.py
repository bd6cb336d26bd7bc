"""Market data and private streams, built from each durable block's events.

``MarketData`` mirrors every book as aggregated levels (from the engine's
``DepthDelta`` events, so it never asks the book actors), keeps 24-hour rolling ticker
statistics in one-minute buckets, and turns events into Backpack-shaped frames. Each
public frame is encoded once and the same bytes are handed to every subscriber of its
stream; a subscriber whose bounded queue is full is dropped by its session, so a slow
reader never holds up the others or grows server memory.

Depth ids: one ``DepthDelta`` per market per block that changed its book, with
``U == u == update_id``; update ids are consecutive, so ``U`` is always the previous
``u`` + 1. A depth subscriber first receives a ``depthSnapshot`` frame (the whole book
and its ``lastUpdateId``) on the same stream, then the deltas that follow it.

Depth heartbeats: ccxt caches deltas and asks for its REST snapshot only when the 11th
one arrives, so on a quiet book its ``watch_order_book`` would never resolve. The gateway
calls ``depth_heartbeat`` every ``[gateway] depth_heartbeat_ms``; each market with depth
subscribers that sent no delta since the previous call then gets an empty delta
(``a == b == []``) that repeats the current id, ``U == u == lastUpdateId``. The edge never
invents an id (they are the engine's), so a client that checks ``U == previous u + 1``
must take an empty delta with ``u == previous u`` as a heartbeat. ccxt 4.5.90 handles
them (``pro/backpack.py``): while it buffers, ``get_cache_index`` finds no delta with
``nonce >= U - 1 and nonce < u`` after a snapshot at that id, so none is applied;
once synced, ``handle_order_book`` applies a delta with ``u == nonce`` (nothing to
change) and resolves the watcher. Only markets with depth subscribers are visited.

Candles: ``kline.<interval>.<symbol>`` for every interval of ``api.klines.INTERVALS``.
An open candle is kept only while its stream has subscribers, so an unwatched interval
costs nothing. A block that traded the market updates the candle and sends one frame
(``X`` false); a block whose timestamp reaches the candle's end first sends it once more
with ``X`` true (candles roll over on sequenced time, whether or not the next trade has
come). ``t``/``T`` are the candle's start and end (exclusive) as ISO 8601 UTC text, as
Backpack sends them; ccxt stamps a streamed candle with ``T`` (``parse_ws_ohlcv``), one
interval later than ``fetch_ohlcv`` stamps the same candle, exactly as against Backpack.
A stream's first subscriber gets the open candle rebuilt from what this process kept:
the ticker's one-minute buckets (24 h), or the last ``RECENT_TRADES`` trades for ``1s``;
so a candle that began before the process started, or more than 24 h ago (``3d``,
``1w``, ``1month``), counts only the trades seen since. Later subscribers get the
candle as kept.

Perpetuals add public ``markPrice.<perp>`` and ``openInterest.<perp>`` streams, the
public ``liquidation`` stream (book unwinds, backstop takeovers and auto-deleverages:
the steps that move a position) and the private ``account.positionUpdate[.<perp>]``.
Whether a position update opened or closed a position is decided here, from the size
each (account, perp) had at the previous ``PositionChanged``; a position opened before
this process started is first reported as opened.

Lending adds the public ``borrowLendMarket.<asset>`` (a pool's figures, once per
second of sequenced time, from ``PoolUpdate``) and the private
``account.borrowLendUpdate[.<asset>]`` (each movement between the account and a pool,
from ``LendMoved``). Backpack has no lending streams; these follow its frame style
(``e`` event, ``E`` event time and ``T`` engine time in µs), as does the private
``account.rewardUpdate`` (an account's points moved, from ``RewardUpdate``).

A public stream whose frames are made elsewhere (``platformStats``, ``api.stats``;
``chainStatus``, ``api.chains``) is registered with ``add_feed`` and sent with
``broadcast``: it shares the subscriptions, the subscribe-time snapshot and the
encode-once fan-out.

The markets are those of the formatter's listing at construction, and each market
whose ``ConfigChanged`` event arrives in a published block (listed later); the
formatter's listing must take that event first (``api.listing.Listing``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from sortedcontainers import SortedDict

from satchel.api.format import Formatter, fraction
from satchel.api.klines import INTERVALS, bucket, iso_text
from satchel.core.messages import (
    ASK, BID, CANCELLED, EXPIRED, FILLED, ORDER_TYPE_NAMES, PARTIALLY_FILLED, REJECTED, SIDE_NAMES, TIF_NAMES,
    TRIGGER_BY_NAMES, TRIGGER_PENDING,
    BalanceChanged, BlockHeader, ConfigChanged, DepthDelta, Fill, LendMoved, RewardUpdate, Liquidation, MarkPrice, OpenInterest,
    OrderAccepted, OrderDone, PoolUpdate, PositionChanged, TriggerPlaced,
)
from satchel.clock import now_us
from satchel.core.amounts import format_units

_encode = msgspec.json.encode
_DAY_US = 86_400_000_000
_MINUTE_US = 60_000_000
_TICKER_EVERY_US = 1_000_000
_NEVER = 1 << 62  # a time no candle ends at

RECENT_TRADES = 1000  # per market, for ``GET /api/v1/trades``
PUBLIC_KINDS = ("depth", "trade", "bookTicker", "ticker")
KLINE_KIND = "kline"  # "kline.<interval>.<symbol>", interval among klines.INTERVALS
PERP_KINDS = ("markPrice", "openInterest")  # "<kind>.<symbol>" of a perpetual market only
LIQUIDATION_STREAM = "liquidation"  # every market's, no symbol
LENDING_MARKET_KIND = "borrowLendMarket"  # "borrowLendMarket.<asset>"
LENDING_STREAM = "account.borrowLendUpdate"
REWARDS_STREAM = "account.rewardUpdate"
PRIVATE_STREAMS = ("account.orderUpdate", "account.balanceUpdate", "account.positionUpdate", LENDING_STREAM,
                   REWARDS_STREAM)
SILENT_STREAMS = ("account.rfqUpdate",)  # accepted so ccxt's watchers work
POSITION_STREAM = "account.positionUpdate"
# the liquidation steps that trade a position (book unwind, backstop, auto-deleverage); cancelling
# orders and an insurance-fund cover move no position, so they are not market data
_PUBLIC_TIERS = (2, 3, 5)


class Sink(Protocol):
    def push(self, frame: str) -> None: ...


class _Candle:
    """The open candle of one watched (market, interval), in ticks and lots."""

    __slots__ = ("start", "end", "open", "high", "low", "close", "volume", "trades")

    def __init__(self, start: int, end: int, open_: int, high: int, low: int, close: int, volume: int, trades: int):
        self.start = start  # [start, end) in µs, from klines.bucket
        self.end = end
        self.open = open_
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume
        self.trades = trades


class _Market:
    __slots__ = ("bids", "asks", "update_id", "best", "buckets", "last_ticker", "traded", "trades", "depth_quiet",
                 "candles")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self.update_id = 0
        self.best: tuple = (None, None)
        self.buckets: deque[list] = deque()  # [minute, open, high, low, close, base vol, quote vol, trades]
        self.last_ticker = 0
        self.traded = False
        self.trades: deque[tuple] = deque(maxlen=RECENT_TRADES)  # (id, price, qty, quote, us, buyer is maker)
        self.depth_quiet = False  # no delta since the last depth_heartbeat call
        # interval -> its open candle (None between candles); a key exists iff the stream has subscribers
        self.candles: dict[str, _Candle | None] = {}


class MarketData:
    def __init__(self, fmt: Formatter):
        self.fmt = fmt
        self._markets: dict[str, _Market] = {s: _Market() for s in fmt.markets}
        self._subs: dict[str, dict[Sink, None]] = {}
        self._sizes: dict[tuple[str, str], int] = {}  # (account, perp) -> size at its last PositionChanged, if not 0
        self._depth_watched: dict[str, _Market] = {}  # markets whose depth stream has subscribers (heartbeats)
        self._candles_changed: dict[tuple[str, str], None] = {}  # (symbol, interval) traded in this block
        self._next_close = _NEVER  # no open candle ends before this (a lower bound: a scan makes it exact)
        self.last_timestamp = 0
        self._feeds: dict[str, Callable[[], list[str]]] = {}  # stream kept elsewhere -> a new subscriber's frames

    # ------------------------------------------------------------------ subscriptions

    def add_feed(self, stream: str, latest: Callable[[], list[str]]) -> None:
        """A public stream without a symbol whose frames are made elsewhere (``api.stats``,
        ``api.chains``) and sent with ``broadcast``: it can be subscribed to, and a new
        subscriber first gets the encoded frames ``latest()`` gives (the last frame sent,
        or the current state as a frame per item)."""
        self._feeds[stream] = latest

    def broadcast(self, stream: str, frame: str) -> None:
        """An encoded frame to every subscriber of ``stream``, the same string to each."""
        subs = self._subs.get(stream)
        if subs:
            for sink in list(subs):
                sink.push(frame)

    def valid_public(self, stream: str) -> bool:
        if stream == LIQUIDATION_STREAM or stream in self._feeds:
            return True
        kind, _, symbol = stream.partition(".")
        if kind == LENDING_MARKET_KIND:
            return symbol in self.fmt.assets
        if kind == KLINE_KIND:
            interval, _, symbol = symbol.partition(".")
            return interval in INTERVALS and symbol in self._markets
        if symbol not in self._markets:
            return False
        return kind in PUBLIC_KINDS or (kind in PERP_KINDS and self._is_perp(symbol))

    def valid_private(self, stream: str) -> bool:
        """``account.<name>[.<symbol>]`` among ``PRIVATE_STREAMS``: order updates take any
        listed market, position updates a perpetual one, balance updates none."""
        base, _, symbol = stream.partition(".")[2].partition(".")
        name = f"account.{base}"
        if name not in PRIVATE_STREAMS:
            return False
        if not symbol:
            return True
        if name == POSITION_STREAM:
            return self._is_perp(symbol)
        if name == LENDING_STREAM:
            return symbol in self.fmt.assets
        return name not in ("account.balanceUpdate", REWARDS_STREAM) and symbol in self.fmt.markets

    def _is_perp(self, symbol: str) -> bool:
        spec = self.fmt.markets.get(symbol)
        return spec is not None and spec.perp is not None

    def subscribe(self, stream: str, sink: Sink) -> None:
        subs = self._subs.get(stream)
        first = subs is None
        if first:
            subs = self._subs[stream] = {}
        subs[sink] = None
        kind, _, rest = stream.partition(".")
        if stream in self._feeds:
            for frame in self._feeds[stream]():
                sink.push(frame)
        elif kind == "depth" and rest in self._markets:
            if first:
                m = self._markets[rest]
                m.depth_quiet = False  # the snapshot below is news: a heartbeat waits one full interval
                self._depth_watched[rest] = m
            sink.push(self._frame(stream, self.snapshot(rest, "depthSnapshot")))
        elif kind == KLINE_KIND:
            interval, _, symbol = rest.partition(".")
            m = self._markets.get(symbol)
            if m is None or interval not in INTERVALS:
                return
            if first:
                m.candles[interval] = self._rebuild_candle(symbol, interval)
            candle = m.candles[interval]
            if candle is not None:
                sink.push(self._frame(stream, self._kline(symbol, candle, False)))

    def unsubscribe(self, stream: str, sink: Sink) -> None:
        subs = self._subs.get(stream)
        if subs is not None:
            subs.pop(sink, None)
            if not subs:
                del self._subs[stream]
                self._unwatched(stream)

    def _unwatched(self, stream: str) -> None:
        """``stream`` lost its last subscriber: stop keeping what only it needed."""
        kind, _, rest = stream.partition(".")
        if kind == "depth":
            self._depth_watched.pop(rest, None)
        elif kind == KLINE_KIND:
            interval, _, symbol = rest.partition(".")
            m = self._markets.get(symbol)
            if m is not None:
                m.candles.pop(interval, None)  # _next_close may now be early: the next scan corrects it

    def drop(self, sink: Sink, streams: list[str]) -> None:
        for s in streams:
            self.unsubscribe(s, sink)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, symbol: str, event: str | None = None, limit: int | None = None) -> dict:
        m = self._markets[symbol]
        bids = list(m.bids.items())
        asks = list(m.asks.items())
        if limit:
            bids = bids[-limit:]
            asks = asks[:limit]
        snap = {
            "asks": self.fmt.levels(symbol, asks),
            "bids": self.fmt.levels(symbol, bids),
            "lastUpdateId": str(m.update_id),
            "timestamp": self.last_timestamp,
        }
        if event:
            snap = {"e": event, "E": now_us(), "s": symbol, **snap, "T": self.last_timestamp}
        return snap

    def _day(self, symbol: str) -> tuple[int, int, int, int, int, int, int] | None:
        """24 h rolling (open, close, high, low, volume, quote volume, trades), None without trades."""
        m = self._markets[symbol]
        cutoff = self.last_timestamp - _DAY_US
        while m.buckets and m.buckets[0][0] * _MINUTE_US + _MINUTE_US <= cutoff:
            m.buckets.popleft()
        if not m.buckets:
            return None
        b = m.buckets
        return (b[0][1], b[-1][4], max(x[2] for x in b), min(x[3] for x in b), sum(x[5] for x in b),
                sum(x[6] for x in b), sum(x[7] for x in b))

    def day(self, symbol: str) -> tuple[int, int, int, int, int, int, int] | None:
        """24 h rolling (open, close, high, low, volume, quote volume, trades) in ticks, lots
        and quote units, as of the last published block; None without trades."""
        return self._day(symbol)

    def last_price(self, symbol: str) -> int | None:
        """The market's last trade price (ticks) this process has seen, however old; None before any."""
        trades = self._markets[symbol].trades
        return trades[-1][1] if trades else None

    def ticker(self, symbol: str) -> dict:
        day = self._day(symbol)
        fmt = self.fmt
        if day is None:
            return {"e": "ticker", "E": now_us(), "s": symbol, "o": None, "c": None, "h": None, "l": None,
                    "v": "0", "V": "0", "n": 0, "P": "0"}
        o, c, h, low, v, qv, n = day
        change_bp = (c - o) * 1_000_000 // o  # in 1e-4 percent, integer math
        return {
            "e": "ticker", "E": now_us(), "s": symbol,
            "o": fmt.price(symbol, o), "c": fmt.price(symbol, c), "h": fmt.price(symbol, h), "l": fmt.price(symbol, low),
            "v": fmt.qty(symbol, v), "V": fmt.quote(symbol, qv), "n": n,
            "P": f"{change_bp / 10_000:.4f}",
        }

    def recent_trades(self, symbol: str, limit: int) -> list[dict]:
        """``GET /api/v1/trades``: the latest trades, oldest first (at most ``RECENT_TRADES``)."""
        fmt = self.fmt
        trades = list(self._markets[symbol].trades)[-limit:]
        return [{"id": tid, "price": fmt.price(symbol, p), "quantity": fmt.qty(symbol, q),
                 "quoteQuantity": fmt.quote(symbol, quote), "timestamp": us // 1000, "isBuyerMaker": maker}
                for tid, p, q, quote, us, maker in trades]

    def rest_ticker(self, symbol: str) -> dict:
        """``GET /api/v1/ticker``: 24 h figures; ``priceChangePercent`` is a fraction (ccxt x100s it)."""
        day = self._day(symbol)
        fmt = self.fmt
        if day is None:
            return {"symbol": symbol, "firstPrice": None, "lastPrice": None, "priceChange": "0", "priceChangePercent": "0",
                    "high": None, "low": None, "volume": "0", "quoteVolume": "0", "trades": "0"}
        o, c, h, low, v, qv, n = day
        change = c - o
        return {
            "symbol": symbol, "firstPrice": fmt.price(symbol, o), "lastPrice": fmt.price(symbol, c),
            "priceChange": fmt.price(symbol, change), "priceChangePercent": f"{change / o:.6f}",
            "high": fmt.price(symbol, h), "low": fmt.price(symbol, low), "volume": fmt.qty(symbol, v),
            "quoteVolume": fmt.quote(symbol, qv), "trades": str(n),
        }

    # ------------------------------------------------------------------ publishing

    def _frame(self, stream: str, data: dict) -> str:
        # text frames: clients expect JSON text; encoded once, shared by every subscriber
        return _encode({"stream": stream, "data": data}).decode()

    def _fanout(self, key: str, data: dict, stream: str | None = None) -> None:
        subs = self._subs.get(key)
        if subs:
            frame = self._frame(stream or key, data)
            for sink in list(subs):
                sink.push(frame)

    def _wants(self, account: str, stream: str, symbol: str) -> bool:
        """Whether anyone follows ``stream`` of ``account``, for all markets or ``symbol``'s."""
        subs = self._subs
        return f"{stream}:{account}" in subs or f"{stream}.{symbol}:{account}" in subs

    def _private(self, account: str, stream: str, symbol: str | None, data: dict) -> None:
        # private subscriptions are keyed "<stream>:<account>"; the frame names the stream
        self._fanout(f"{stream}:{account}", data, stream)
        if symbol:
            self._fanout(f"{stream}.{symbol}:{account}", data, f"{stream}.{symbol}")

    def publish(self, header: BlockHeader, events: list) -> None:
        ts = header.timestamp
        self.last_timestamp = ts
        if ts >= self._next_close:
            self._close_candles(ts)  # before this block's trades open the next ones
        subs = self._subs
        fmt = self.fmt
        for ev in events:
            cls = ev.__class__
            if cls is Fill:
                self._on_fill(ev, ts)
            elif cls is DepthDelta:
                self._on_depth(ev, ts)
            elif cls is OrderAccepted or cls is OrderDone or cls is TriggerPlaced:
                if subs:
                    self._on_order(ev, ts)
            elif cls is PositionChanged:
                self._on_position(ev, ts)  # even unwatched: the next update's opened/closed depends on it
            elif cls is MarkPrice:
                key = f"markPrice.{ev.symbol}"
                if key in subs:
                    self._fanout(key, fmt.mark_price_update(ev, now_us(), ts))
            elif cls is OpenInterest:
                key = f"openInterest.{ev.symbol}"
                if key in subs:
                    self._fanout(key, fmt.open_interest_update(ev, now_us()))
            elif cls is Liquidation:
                if ev.tier in _PUBLIC_TIERS and LIQUIDATION_STREAM in subs:
                    self._fanout(LIQUIDATION_STREAM, fmt.liquidation_update(ev, now_us(), ts))
            elif cls is BalanceChanged:
                if subs:
                    self._private(ev.account, "account.balanceUpdate", None, {
                        "e": "balanceUpdate", "E": now_us(), "a": ev.asset,
                        "A": fmt.asset(ev.asset, ev.free), "L": fmt.asset(ev.asset, ev.held), "S": "0", "T": ts,
                    })
            elif cls is PoolUpdate:
                key = f"{LENDING_MARKET_KIND}.{ev.asset}"
                if key in subs:
                    self._fanout(key, pool_frame(fmt, ev, now_us()))
            elif cls is LendMoved:
                if subs:
                    self._private(ev.account, LENDING_STREAM, ev.asset, lend_frame(fmt, ev, now_us()))
            elif cls is RewardUpdate:
                if subs:
                    self._private(ev.account, REWARDS_STREAM, None, reward_frame(ev, now_us(), ts))
            elif cls is ConfigChanged:
                if ev.market is not None and ev.market.symbol not in self._markets:
                    self._markets[ev.market.symbol] = _Market()  # listed: its streams open now
        if self._candles_changed:
            self._send_candles()
        for symbol, m in self._markets.items():
            if m.traded and ts - m.last_ticker >= _TICKER_EVERY_US:
                m.traded = False
                m.last_ticker = ts
                if f"ticker.{symbol}" in subs:
                    self._fanout(f"ticker.{symbol}", self.ticker(symbol))

    def _on_depth(self, ev: DepthDelta, ts: int) -> None:
        m = self._markets[ev.symbol]
        for book, changes in ((m.bids, ev.bids), (m.asks, ev.asks)):
            for price, qty in changes:
                if qty:
                    book[price] = qty
                else:
                    book.pop(price, None)
        m.update_id = ev.update_id
        m.depth_quiet = False
        sym = ev.symbol
        fmt = self.fmt
        if f"depth.{sym}" in self._subs:
            self._fanout(f"depth.{sym}", {
                "e": "depth", "E": now_us(), "s": sym, "a": fmt.levels(sym, ev.asks), "b": fmt.levels(sym, ev.bids),
                "U": ev.update_id, "u": ev.update_id, "T": ts,
            })
        best_bid = m.bids.peekitem(-1) if m.bids else None
        best_ask = m.asks.peekitem(0) if m.asks else None
        if (best_bid, best_ask) != m.best:
            m.best = (best_bid, best_ask)
            if f"bookTicker.{sym}" in self._subs:
                self._fanout(f"bookTicker.{sym}", {
                    "e": "bookTicker", "E": now_us(), "s": sym,
                    "a": fmt.price(sym, best_ask[0]) if best_ask else None, "A": fmt.qty(sym, best_ask[1]) if best_ask else None,
                    "b": fmt.price(sym, best_bid[0]) if best_bid else None, "B": fmt.qty(sym, best_bid[1]) if best_bid else None,
                    "u": ev.update_id, "T": ts,
                })

    # ------------------------------------------------------------------ depth heartbeats

    def depth_heartbeat(self) -> None:
        """An empty delta at the current id to each watched market that sent no delta since
        the previous call (see the module docstring); the gateway calls this on a timer."""
        for sym, m in list(self._depth_watched.items()):  # a push may drop a subscriber (and a stream)
            if m.depth_quiet:
                self._fanout(f"depth.{sym}", {
                    "e": "depth", "E": now_us(), "s": sym, "a": [], "b": [], "U": m.update_id, "u": m.update_id,
                    "T": self.last_timestamp,
                })
            m.depth_quiet = True

    # ------------------------------------------------------------------ candles

    def _kline(self, sym: str, c: _Candle, closed: bool) -> dict:
        fmt = self.fmt
        return {
            "e": "kline", "E": now_us(), "s": sym, "t": iso_text(c.start), "T": iso_text(c.end),
            "o": fmt.price(sym, c.open), "c": fmt.price(sym, c.close), "h": fmt.price(sym, c.high),
            "l": fmt.price(sym, c.low), "v": fmt.qty(sym, c.volume), "n": c.trades, "X": closed,
        }

    def _rebuild_candle(self, sym: str, interval: str) -> _Candle | None:
        """The open ``interval`` candle from the trades kept for the ticker and ``GET
        /api/v1/trades``; None when the last trade's candle has ended (by sequenced time)."""
        m = self._markets[sym]
        if not m.trades:
            return None
        start, end = bucket(m.trades[-1][4], interval)
        if end <= self.last_timestamp:
            return None
        parts = []  # (open, high, low, close, volume, trades), newest first
        if 0 < INTERVALS[interval] < _MINUTE_US:  # finer than the minute buckets (0 is the month): the recent trades
            for _, price, qty, _, us, _ in reversed(m.trades):
                if us < start:
                    break
                parts.append((price, price, price, price, qty, 1))
        else:  # every interval of a minute or more starts on a whole minute: buckets never straddle it
            for b in reversed(m.buckets):
                if b[0] * _MINUTE_US < start:
                    break
                parts.append((b[1], b[2], b[3], b[4], b[5], b[7]))
        if not parts:
            return None
        c = _Candle(start, end, parts[-1][0], max(p[1] for p in parts), min(p[2] for p in parts), parts[0][3],
                    sum(p[4] for p in parts), sum(p[5] for p in parts))
        self._next_close = min(self._next_close, end)
        return c

    def _candle_fill(self, sym: str, m: _Market, price: int, qty: int, ts: int) -> None:
        """A fill at ``ts`` on each watched interval's candle; the frames go out once, after the block."""
        changed = self._candles_changed
        for interval, c in m.candles.items():
            if c is None:  # the first trade of a new candle (the previous one was closed at publish start)
                start, end = bucket(ts, interval)
                m.candles[interval] = _Candle(start, end, price, price, price, price, qty, 1)
                if end < self._next_close:
                    self._next_close = end
            else:
                if price > c.high:
                    c.high = price
                elif price < c.low:
                    c.low = price
                c.close = price
                c.volume += qty
                c.trades += 1
            changed[(sym, interval)] = None

    def _send_candles(self) -> None:
        changed, self._candles_changed = self._candles_changed, {}
        for sym, interval in changed:
            c = self._markets[sym].candles.get(interval)
            if c is not None:  # None: a push dropped the stream's last subscriber meanwhile
                self._fanout(f"{KLINE_KIND}.{interval}.{sym}", self._kline(sym, c, False))

    def _close_candles(self, ts: int) -> None:
        """Send, with ``X`` true, every open candle that ended by ``ts``; recompute ``_next_close``."""
        next_close = _NEVER
        for sym, m in self._markets.items():
            if not m.candles:
                continue
            for interval, c in list(m.candles.items()):
                if c is None or interval not in m.candles:  # not in: a push dropped the stream's last subscriber
                    continue
                if c.end <= ts:
                    m.candles[interval] = None  # before the push, which may drop the stream (and the key)
                    self._fanout(f"{KLINE_KIND}.{interval}.{sym}", self._kline(sym, c, True))
                elif c.end < next_close:
                    next_close = c.end
        self._next_close = next_close

    # ------------------------------------------------------------------ fills, positions, orders

    def _on_fill(self, ev: Fill, ts: int) -> None:
        sym = ev.symbol
        m = self._markets[sym]
        minute = ts // _MINUTE_US
        b = m.buckets[-1] if m.buckets else None
        if b is None or b[0] != minute:
            m.buckets.append([minute, ev.price, ev.price, ev.price, ev.price, ev.quantity, ev.quote, 1])
        else:
            b[2] = max(b[2], ev.price)
            b[3] = min(b[3], ev.price)
            b[4] = ev.price
            b[5] += ev.quantity
            b[6] += ev.quote
            b[7] += 1
        m.traded = True
        m.trades.append((ev.trade_id, ev.price, ev.quantity, ev.quote, ts, ev.taker_side != BID))
        if m.candles:
            self._candle_fill(sym, m, ev.price, ev.quantity, ts)
        subs = self._subs
        if not subs:
            return
        fmt = self.fmt
        buyer_is_taker = ev.taker_side == BID
        if f"trade.{sym}" in subs:
            self._fanout(f"trade.{sym}", {
                "e": "trade", "E": now_us(), "s": sym, "p": fmt.price(sym, ev.price), "q": fmt.qty(sym, ev.quantity),
                "b": str(ev.taker_order if buyer_is_taker else ev.maker_order),
                "a": str(ev.maker_order if buyer_is_taker else ev.taker_order),
                "t": ev.trade_id, "T": ts, "m": not buyer_is_taker,
            })
        for account, oid, side, fee, left, maker in (
            (ev.taker_account, ev.taker_order, ev.taker_side, ev.taker_fee, ev.taker_left, False),
            (ev.maker_account, ev.maker_order, ASK if buyer_is_taker else BID, ev.maker_fee, ev.maker_left, True),
        ):
            self._private(account, "account.orderUpdate", sym, {
                "e": "orderFill", "E": now_us(), "s": sym, "S": SIDE_NAMES[side], "i": str(oid),
                "X": FILLED if left == 0 else PARTIALLY_FILLED, "t": ev.trade_id,
                "l": fmt.qty(sym, ev.quantity), "L": fmt.price(sym, ev.price), "m": maker,
                "n": fmt.quote(sym, fee), "N": fmt.markets[sym].quote, "T": ts, "O": "USER",
            })

    def _on_position(self, ev: PositionChanged, ts: int) -> None:
        key = (ev.account, ev.symbol)
        before = self._sizes.pop(key, 0)
        if ev.size:
            self._sizes[key] = ev.size  # flat positions are forgotten: the map holds open ones only
        if not self._wants(ev.account, POSITION_STREAM, ev.symbol):
            return
        if ev.size == 0:
            kind = "positionClosed"
        elif before == 0:
            kind = "positionOpened"
        else:
            kind = "positionAdjusted"
        self._private(ev.account, POSITION_STREAM, ev.symbol, self.fmt.position_update(ev, kind, now_us(), ts))

    _ORDER_EVENTS = {CANCELLED: "orderCancelled", EXPIRED: "orderExpired", REJECTED: "orderRejected"}

    def _on_order(self, ev: Any, ts: int) -> None:
        sym = ev.symbol
        fmt = self.fmt
        if sym not in fmt.markets:
            return
        if ev.__class__ is TriggerPlaced:
            data = self._trigger_placed(ev, ts)
        elif ev.__class__ is OrderAccepted:
            data = {
                "e": "orderAccepted", "E": now_us(), "s": sym, "c": ev.client_id, "S": SIDE_NAMES[ev.side],
                "o": ORDER_TYPE_NAMES[ev.order_type].upper(), "f": TIF_NAMES[ev.tif],
                "q": fmt.qty(sym, ev.quantity) if ev.quantity else None,
                "Q": fmt.quote(sym, ev.quote_quantity) if ev.quote_quantity else None,
                "p": fmt.price(sym, ev.price) if ev.price else None, "X": "New", "i": str(ev.order_id),
                "z": "0", "Z": "0", "T": ts, "O": "USER",
            }
        else:
            name = self._ORDER_EVENTS.get(ev.status)
            if name is None:  # Filled: the last orderFill already said so
                return
            data = {
                "e": name, "E": now_us(), "s": sym, "c": ev.client_id, "S": SIDE_NAMES[ev.side],
                "q": fmt.qty(sym, ev.quantity) if ev.quantity else None,
                "p": fmt.price(sym, ev.price) if ev.price else None, "X": ev.status, "i": str(ev.order_id),
                "z": fmt.qty(sym, ev.executed_quantity), "Z": fmt.quote(sym, ev.executed_quote), "T": ts, "O": "USER",
            }
            if ev.reason:
                data["R"] = ev.reason
        self._private(ev.account, "account.orderUpdate", sym, data)

    def _trigger_placed(self, ev: TriggerPlaced, ts: int) -> dict:
        """Backpack's ``triggerPlaced`` order update: the order waits for its trigger price
        (``P``, compared with ``B``) and is then placed for ``Y``."""
        sym = ev.symbol
        fmt = self.fmt
        qty = fmt.qty(sym, ev.quantity) if ev.quantity else None
        return {
            "e": "triggerPlaced", "E": now_us(), "s": sym, "c": ev.client_id, "S": SIDE_NAMES[ev.side],
            "o": ORDER_TYPE_NAMES[ev.order_type].upper(), "q": qty,
            "p": fmt.price(sym, ev.price) if ev.price else None, "P": fmt.price(sym, ev.trigger_price),
            "B": TRIGGER_BY_NAMES[ev.trigger_by], "Y": qty, "X": TRIGGER_PENDING, "i": str(ev.order_id),
            "r": ev.reduce_only, "T": ts, "O": "USER",
        }


def pool_frame(fmt: Formatter, ev: PoolUpdate, now: int) -> dict:
    """A ``borrowLendMarket.<asset>`` frame: the pool's totals, rates (APR fractions, as
    ``borrowLend/markets`` gives them) and utilization after a second of sequenced time."""
    a = ev.asset
    return {
        "e": "borrowLendMarket", "E": now, "s": a, "T": ev.timestamp,
        "lentQuantity": fmt.asset(a, ev.lent), "borrowedQuantity": fmt.asset(a, ev.borrowed),
        "availableQuantity": fmt.asset(a, ev.cash), "reserveQuantity": fmt.asset(a, ev.reserve),
        "utilization": fraction(ev.utilization), "borrowInterestRate": fraction(ev.borrow_rate),
        "lendInterestRate": fraction(ev.lend_rate),
    }


def reward_frame(ev: RewardUpdate, now: int, ts: int) -> dict:
    """An ``account.rewardUpdate`` frame: ``s`` season, ``p`` the account's points, ``d``
    this change, ``a`` achievements unlocked (points as decimal strings, up to 6 decimals)."""
    return {"e": "rewardUpdate", "E": now, "T": ts, "s": ev.season, "p": format_units(ev.points, 6),
            "d": format_units(ev.delta, 6), "a": list(ev.achievements)}


def lend_frame(fmt: Formatter, ev: LendMoved, now: int) -> dict:
    """An ``account.borrowLendUpdate`` frame: one movement (``e`` Backpack's eventType in
    lower camel case: lend, lendRedeem, borrow, borrowRepay; ``o`` its source) and the
    account's net position in the asset afterwards (``Q``: + lent, - borrowed)."""
    a = ev.asset
    return {
        "e": ev.kind[0].lower() + ev.kind[1:], "E": now, "s": a, "q": fmt.asset(a, ev.amount),
        "Q": fmt.asset(a, ev.lent - ev.borrowed), "o": ev.source, "T": ev.timestamp,
    }
