"""The oracle adapter: an edge that submits each perpetual's index price.

Two halves, so the interesting part is testable without a node or a clock:

* a **source** is a plain iterator of ``IndexUpdate(delay_s, symbol, price)``: wait
  ``delay_s`` after the previous update, then publish ``price`` (decimal text on the
  market's tick). ``random_walk`` is the default source, seeded and bounded;
  ``replay`` plays a price file (``load_prices``) at its own timestamps.
* the **runner** (``Oracle``) follows a source's schedule, builds each update with the
  declared ``oracleIndex`` instruction, signs it with the node's admin key and submits
  it to the sequencer like any other admin transaction, so validators re-verify it.

Like every edge it never touches ledger state, and nothing in it may stop the node: a
failed update is logged and the next one goes out on time.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import structlog
import trio

from satchel.core import instructions
from satchel.core.amounts import AmountError, format_units, to_units
from satchel.core.errors import RequestError
from satchel.core.messages import MarketSpec, MarksOf, TxRejected
from satchel.config import OracleSettings
from satchel.signing import auth_for

if TYPE_CHECKING:
    from satchel.node import Node

log = structlog.get_logger("satchel.oracle")

INSTRUCTION = "oracleIndex"


class IndexUpdate(NamedTuple):
    delay_s: float  # after the previous update
    symbol: str
    price: str  # decimal text, a multiple of the market's tick


def perps(markets: Iterable[MarketSpec]) -> list[MarketSpec]:
    return [m for m in markets if m.perp is not None]


# ---------------------------------------------------------------- starting prices


def near_tick(text: str, spec: MarketSpec) -> int:
    """A positive decimal text as price units on the nearest tick (at least one tick)."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError):
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{spec.symbol}: price {text!r} is not a positive decimal")
    ticks = (value.scaleb(spec.price_decimals) / spec.tick).to_integral_value(ROUND_HALF_EVEN)
    return max(1, int(ticks)) * spec.tick


def start_prices(markets: Mapping[str, MarketSpec], settings: OracleSettings,
                 demo_prices: Mapping[str, str]) -> dict[str, int]:
    """Each perp's starting index in price units: from ``settings.start``, else the demo
    reference price of a spot market on the same base (same quote first). A perp with
    neither is left out; a bad ``settings.start`` entry raises ``ValueError``."""
    out: dict[str, int] = {}
    spots = [m for m in markets.values() if m.perp is None]
    for spec in perps(markets.values()):
        text = settings.start.get(spec.symbol)
        if text is None:
            same_base = sorted((m for m in spots if m.base == spec.base and m.symbol in demo_prices),
                               key=lambda m: m.quote != spec.quote)
            text = demo_prices[same_base[0].symbol] if same_base else None
        if text is not None:
            out[spec.symbol] = near_tick(text, spec)
    unknown = sorted(set(settings.start) - set(out))
    if unknown:
        raise ValueError(f"oracle start prices for markets that are not listed perpetuals: {', '.join(unknown)}")
    return out


# ---------------------------------------------------------------- source: bounded random walk


class _Walk:
    """One market's walk: a float level (so small steps accumulate instead of rounding
    away), reflected at the bounds, published on the nearest tick within them."""

    def __init__(self, spec: MarketSpec, start: int, settings: OracleSettings, resume: int | None):
        tick = spec.tick
        dev = Decimal(repr(settings.max_deviation))  # exact bounds: in floats 10260 * 1.15 is 11798.999...
        self.lo = max(tick, int((start * (1 - dev) / tick).to_integral_value(ROUND_CEILING)) * tick)
        self.hi = max(self.lo, int((start * (1 + dev) / tick).to_integral_value(ROUND_FLOOR)) * tick)
        self.spec = spec
        self.level = float(min(max(resume or start, self.lo), self.hi))
        self.scale = settings.step_bps / 10_000
        # one generator per market, seeded by its symbol: a market's path does not
        # depend on which other markets are listed
        self.rng = random.Random(f"{settings.seed}/{spec.symbol}")

    def price(self) -> int:
        units = round(self.level / self.spec.tick) * self.spec.tick
        return min(max(units, self.lo), self.hi)

    def step(self) -> None:
        x = self.level * (1 + self.rng.gauss(0.0, 1.0) * self.scale)
        lo, hi = float(self.lo), float(self.hi)
        if x > hi:
            x = 2 * hi - x
        if x < lo:
            x = 2 * lo - x
        self.level = min(max(x, lo), hi)


def random_walk(markets: Sequence[MarketSpec], starts: Mapping[str, int], settings: OracleSettings,
                resume: Mapping[str, int] | None = None) -> Iterator[IndexUpdate]:
    """Endless updates: every market's price now, then a step of each every ``interval_s``.

    A step multiplies the price by ``1 + N(0, 1) * step_bps / 1e4``; the price stays
    within ``start * (1 +- max_deviation)`` on the market's tick. Markets without a
    start price are skipped. ``resume`` (current index prices) continues a walk after a
    restart from where the ledger is, inside the same bounds.
    """
    resume = resume or {}
    walks = [_Walk(m, starts[m.symbol], settings, resume.get(m.symbol)) for m in markets if m.symbol in starts]
    delay = 0.0
    while walks:
        for i, w in enumerate(walks):
            yield IndexUpdate(delay if i == 0 else 0.0, w.spec.symbol, format_units(w.price(), w.spec.price_decimals))
            w.step()
        delay = settings.interval_s


# ---------------------------------------------------------------- source: a price file


class PriceRow(NamedTuple):
    timestamp_ms: int
    symbol: str
    price: str  # canonical decimal text on the market's tick


class PriceFileError(ValueError):
    """A price file that cannot be replayed; the message names the file and the line."""


_COLUMNS = ("timestamp_ms", "symbol", "price")


def load_prices(path: str | Path, markets: Mapping[str, MarketSpec] | Iterable[MarketSpec]) -> list[PriceRow]:
    """Every row of a price file, checked against the listed perps.

    CSV with the header ``timestamp_ms,symbol,price`` (any column order), or a JSON list
    of ``{"timestamp_ms", "symbol", "price"}`` objects (the first character tells). Prices
    must be positive multiples of the market's tick and timestamps (integer ms, any
    origin) may not go backwards. Checked in full before the first row is replayed, so a
    typo on line 5,000 is found at start-up, not an hour in.
    """
    specs = dict(markets) if isinstance(markets, Mapping) else {m.symbol: m for m in markets}
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not part of the header
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path}: cannot read: {exc}") from exc
    items = _json_items(text, path) if text.lstrip().startswith("[") else _csv_items(text, path)
    rows: list[PriceRow] = []
    for line, item in items:
        row = _row(item, specs, f"{path} line {line}")
        if rows and row.timestamp_ms < rows[-1].timestamp_ms:
            raise PriceFileError(f"{path} line {line}: timestamp_ms {row.timestamp_ms} is earlier than the "
                                 f"previous row's {rows[-1].timestamp_ms}")
        rows.append(row)
    if not rows:
        raise PriceFileError(f"{path}: no price rows")
    return rows


def _csv_items(text: str, path: str | Path) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text), strict=True)
    header = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise PriceFileError(f"{path} line {reader.line_num}: not CSV: {exc}") from exc
        if not any(f.strip() for f in fields):
            continue  # blank line
        fields = [f.strip() for f in fields]
        if header is None:
            if sorted(fields) != sorted(_COLUMNS):
                raise PriceFileError(f"{path} line {reader.line_num}: the header must be "
                                     f"{','.join(_COLUMNS)}, not {','.join(fields)!r}")
            header = fields
            continue
        if len(fields) != len(header):
            raise PriceFileError(f"{path} line {reader.line_num}: {len(fields)} fields, expected "
                                 f"{len(header)} ({','.join(header)})")
        yield reader.line_num, dict(zip(header, fields))


_WS = re.compile(r"[ \t\n\r]*")


def _json_items(text: str, path: str | Path) -> Iterator[tuple[int, Any]]:
    """The items of a top-level JSON list with the line each starts on (``json.loads``
    would lose the lines, and an error without one is hard to find in a long file)."""
    decoder = json.JSONDecoder(parse_float=Decimal)  # keep "150.10" exact, never a float

    def line_at(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def fail(pos: int, what: str) -> PriceFileError:
        return PriceFileError(f"{path} line {line_at(pos)}: {what}")

    pos = _WS.match(text, text.index("[") + 1).end()
    if text.startswith("]", pos):
        pos = _WS.match(text, pos + 1).end()
    else:
        while True:
            try:
                item, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise PriceFileError(f"{path} line {exc.lineno}: not JSON: {exc.msg}") from exc
            yield line_at(pos), item
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos = _WS.match(text, pos + 1).end()
                break
            else:
                raise fail(pos, "expected ',' or ']' after an item")
    if pos != len(text):
        raise fail(pos, "unexpected text after the list")


def _row(item: Any, specs: Mapping[str, MarketSpec], where: str) -> PriceRow:
    if not isinstance(item, dict):
        raise PriceFileError(f"{where}: expected an object with {', '.join(_COLUMNS)}")
    missing = [c for c in _COLUMNS if c not in item]
    if missing:
        raise PriceFileError(f"{where}: missing {', '.join(missing)}")
    ts, symbol, price = item["timestamp_ms"], item["symbol"], item["price"]
    if isinstance(ts, str) and ts.isascii() and ts.isdigit():
        ts = int(ts)
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise PriceFileError(f"{where}: timestamp_ms must be a whole number of milliseconds, not {ts!r}")
    spec = specs.get(symbol) if isinstance(symbol, str) else None
    if spec is None or spec.perp is None:
        listed = ", ".join(m.symbol for m in perps(specs.values()))
        raise PriceFileError(f"{where}: {symbol!r} is not a listed perpetual market ({listed})")
    if isinstance(price, (int, Decimal)) and not isinstance(price, bool):
        price = str(price)
    try:
        units = to_units(price, spec.price_decimals) if isinstance(price, str) else -1
    except AmountError:
        units = -1
    tick = format_units(spec.tick, spec.price_decimals)
    if units <= 0 or units % spec.tick:
        raise PriceFileError(f"{where}: price {price!r} is not a positive multiple of {symbol}'s tick {tick}")
    return PriceRow(ts, symbol, format_units(units, spec.price_decimals))


def replay(rows: Sequence[PriceRow], speed: float = 1.0) -> Iterator[IndexUpdate]:
    """The rows at their timestamps relative to the first, ``speed`` times faster."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    previous = rows[0].timestamp_ms if rows else 0
    for row in rows:
        yield IndexUpdate((row.timestamp_ms - previous) / 1000 / speed, row.symbol, row.price)
        previous = row.timestamp_ms


def hold(last: Mapping[str, str], interval_s: float) -> Iterator[IndexUpdate]:
    """The same prices again every ``interval_s``: after a file's last row, so the index
    does not go stale (an index older than ``stale_index_s`` refuses risk-increasing orders)."""
    while last:
        for i, (symbol, price) in enumerate(last.items()):
            yield IndexUpdate(interval_s if i == 0 else 0.0, symbol, price)


# ---------------------------------------------------------------- the runner

# Behind the schedule by more than this (a suspended process, a stalled node), the
# oracle starts its clock again rather than bursting every missed update at once.
_MAX_LAG_S = 5.0


class Oracle:
    """Signs and submits what a source yields, on the source's schedule.

    ``rows`` is a price file already loaded (``load_prices``; the CLI loads it before the
    node starts, so a bad file is an error at the command line). Without rows and
    without ``settings.file`` the oracle walks from ``start_prices``. Either way, when a
    finite source ends its last prices are held (``hold``).
    """

    def __init__(self, node: Node, settings: OracleSettings | None = None, rows: Sequence[PriceRow] | None = None):
        self.node = node
        self.settings = settings or node.cfg.oracle
        self.rows = rows
        self.last: dict[str, str] = {}  # symbol -> the last price submitted
        self.sent = 0
        self.rejected = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            source = await self._source()
            if source is None:
                return
            await self._follow(source)
            if self.last:
                log.info("oracle.source_ended", holding=dict(self.last))
        except trio.ClosedResourceError:
            log.info("oracle.stopped", reason="the node is shutting down")
            return
        except Exception:
            # a broken source must not take the node down; keep the last prices fresh
            log.exception("oracle.source_failed", holding=dict(self.last))
        try:
            await self._follow(hold(dict(self.last), self.settings.interval_s))
        except trio.ClosedResourceError:
            log.info("oracle.stopped", reason="the node is shutting down")
        except Exception:
            log.exception("oracle.stopped")

    async def _source(self) -> Iterator[IndexUpdate] | None:
        s = self.settings
        markets = self.node.engine.markets
        if not perps(markets.values()):
            log.info("oracle.idle", reason="no perpetual markets listed")
            return None
        rows = self.rows
        if rows is None and s.file is not None:
            try:
                rows = await trio.to_thread.run_sync(load_prices, s.file, markets)
            except PriceFileError as exc:
                log.error("oracle.bad_file", error=str(exc))
                return None
        if rows is not None:
            log.info("oracle.started", source="file", file=s.file, rows=len(rows), speed=s.speed,
                     seconds=(rows[-1].timestamp_ms - rows[0].timestamp_ms) / 1000 / s.speed)
            return replay(rows, s.speed)
        starts = start_prices(markets, s, self.node.cfg.demo.prices)
        missing = [m.symbol for m in perps(markets.values()) if m.symbol not in starts]
        if missing:
            log.warning("oracle.no_start_price", markets=missing, hint="set [oracle] start or [demo] prices")
        # after a restart, walk on from the ledger's index instead of jumping back to the start
        current = {sym: p.index for sym, p in (await self.node.ask("risk", MarksOf())).items() if p.index}
        log.info("oracle.started", source="walk", seed=s.seed, interval_s=s.interval_s, step_bps=s.step_bps,
                 max_deviation=s.max_deviation, markets=list(starts), resumed=sorted(current))
        return random_walk(perps(markets.values()), starts, s, current)

    async def _follow(self, source: Iterable[IndexUpdate]) -> None:
        deadline = trio.current_time()
        for update in source:
            deadline += update.delay_s
            now = trio.current_time()
            if now - deadline > _MAX_LAG_S:
                log.warning("oracle.behind_schedule", seconds=round(now - deadline, 1))
                deadline = now
            await trio.sleep_until(deadline)
            self.submit(update.symbol, update.price)

    def submit(self, symbol: str, price: str) -> None:
        """Build, sign and submit one index price; never raises except when the node is
        shutting down (``trio.ClosedResourceError``)."""
        texts = {"symbol": symbol, "price": price}
        admin = self.node.admin
        try:
            # the declared builder checks symbol and tick exactly as a validator will
            tx = instructions.build(INSTRUCTION, texts, admin.api_key, self.node.engine)
            tx = msgspec.structs.replace(tx, auth=auth_for(admin, INSTRUCTION, texts))
            self.node.submit(tx, partial(self._done, symbol, price))
        except trio.ClosedResourceError:
            raise
        except RequestError as exc:
            self.rejected += 1
            log.warning("oracle.refused", symbol=symbol, price=price, code=exc.code, error=str(exc))
            return
        except Exception:
            log.exception("oracle.submit_failed", symbol=symbol, price=price)
            return
        self.last[symbol] = price
        self.sent += 1

    def _done(self, symbol: str, price: str, events: list) -> None:
        # runs in the node's publisher once the block is durable: only look, never block
        for ev in events:
            if ev.__class__ is TxRejected:
                self.rejected += 1
                log.warning("oracle.rejected", symbol=symbol, price=price, code=ev.code, error=ev.message)
