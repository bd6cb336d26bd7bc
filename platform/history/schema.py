"""The history database: its tables, how it is opened, and which blocks it holds.

Integers only, as in the core: prices in price units, quantities in quantity units,
notionals and fees in quote units, times in µs. Formatting to decimal strings happens
on read (``views``), with the gateway's ``Formatter``.

``orders`` has one row per order id (the sequence number of the transaction that placed
it). Each kind of event writes only its own columns (``writes``), so the rows come out
the same whatever order blocks are written in:

* ``OrderAccepted`` the order's terms and ``accepted``; ``TriggerPlaced`` its terms and
  the trigger fields; the creation time is the earliest either one (or a fill) gave;
* every ``Fill`` adds to ``executed`` and ``executed_quote`` (a cancelled, partly filled
  order keeps them);
* ``OrderDone`` sets the final ``status`` and ``reason``. While ``status`` is NULL the
  order is open: New, PartiallyFilled or TriggerPending is derived on read.

``fills`` has one row per account side of each trade, keyed by (symbol, trade id,
maker): trade ids count per market. ``height`` and ``ix`` (the event's index in its
block) order fills exactly; public trades are the taker rows.

``funding_rates`` has one row per perpetual market and funding interval (``FundingPaid``).

``lend_moves`` has one row per movement between an account and a lending pool
(``LendMoved``), keyed by ``pos`` = height << 32 | the event's index in its block: the
order of movements, the same on every rebuild (so a position's id, the ``pos`` of the
movement that opened it, is stable). A row whose ``lent`` and ``borrowed`` are both 0
closed its position; the next movement in that asset opens a new one. Nothing here
depends on the order rows are written in: position ids are found on read. Each row also
keeps the position as the pool holds it afterwards (``lent_scaled`` or
``borrowed_scaled``) and the index the movement used (``pool_index``: the lend index for
Lend/LendRedeem, the borrow index for Borrow/BorrowRepay). A debt written off as bad
debt (``BadDebt``) is a row of kind ``WriteOff`` that closes the position (``amount``: the
debt cancelled, where the position's interest ends; ``pool_index`` 0: the event does
not carry it); the borrow/lend history
does not list it.

``lend_hours`` keeps, per pool and hour of sequenced time, the hour's first ``PoolUpdate``
(by ``pos``): its indices and rates. The upsert keeps the row of the smaller ``pos``, so
live blocks and a catch-up's converge on the same row in any order. These rows are the
*hour marks* interest is read at.

**Interest** (``queries.InterestHistory``) is derived on read from a position's movements
and the hour marks, in ``pos`` order. Between two consecutive points (a movement or a
mark) the position's scaled size ``s`` is constant, and its interest is the change of its
worth: ``to_amount(s, index_b) - to_amount(s, index_a)``, a claim rounded down and a debt
up, as the engine rounds them (so over a stretch without movements the amounts add up to
exactly how much the claim or debt grew). A span belongs to the hour of the last mark at
or before its start: the interest the first block of an hour accrues (since the block
before) is the previous hour's, and an hour without blocks has no mark, its interest being
accrued by the next block and counted in the hour of the mark before. The sum of a
position's hours is its ``cumulativeInterest`` (``borrowLendPositionQuery``: the worth now
minus the principal; a borrow's negated) as of the last mark, less each movement's
rounding remainder (under ``index / RAY + 1`` units: what the pool keeps when it scales
an amount).

``deposits`` has one row per credited deposit, keyed by the crediting transaction's
sequence number: a chain deposit (``ChainCredited``: its chain, transaction hash and log
index) or a credit by the admin faucet (a ``Deposited`` without one: source
``administrator``). Both events of a chain deposit are in the same block, so the batch
keeps the chain's row; a block is written once.

``withdrawals`` has one row per withdrawal (its id: the request's sequence number),
upserted by every ``WithdrawalUpdate``. The row keeps the status, transaction hash and
reason of the update with the highest ``pos`` (height << 32 | the event's index), and the
earliest block time as its creation, so blocks written in any order give the same row.

``written`` lists the blocks whose events are in the database, as disjoint [lo, hi]
height ranges, updated in the same transaction as the rows: live writes and a catch-up
from the journal can then run at once, each block is written exactly once, and after a
crash the database knows precisely which blocks it is missing.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from pathlib import Path

import structlog

SCHEMA_VERSION = 5  # 2: funding_rates; 3: lend_moves; 4: scaled positions, lend_hours, write-offs; 5: deposits, withdrawals

log = structlog.get_logger("satchel.history")

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS written (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side INTEGER NOT NULL,
    order_type INTEGER,                       -- NULL until OrderAccepted/TriggerPlaced is written
    tif INTEGER NOT NULL DEFAULT 0,
    price INTEGER NOT NULL DEFAULT 0,         -- 0: a market order
    quantity INTEGER NOT NULL DEFAULT 0,      -- 0: sized in quote
    quote_quantity INTEGER NOT NULL DEFAULT 0,
    client_id INTEGER,
    post_only INTEGER NOT NULL DEFAULT 0,
    reduce_only INTEGER NOT NULL DEFAULT 0,
    trigger_price INTEGER NOT NULL DEFAULT 0, -- 0: not a trigger order
    trigger_by INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,      -- reached the book (a trigger: it fired)
    created INTEGER NOT NULL,                 -- µs
    executed INTEGER NOT NULL DEFAULT 0,
    executed_quote INTEGER NOT NULL DEFAULT 0,
    status TEXT,                              -- final: Filled, Cancelled, Expired, Rejected; NULL while open
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS orders_by_account ON orders (account, created DESC, order_id DESC);
CREATE TABLE IF NOT EXISTS fills (
    symbol TEXT NOT NULL,
    trade_id INTEGER NOT NULL,
    is_maker INTEGER NOT NULL,
    order_id INTEGER NOT NULL,
    account TEXT NOT NULL,
    side INTEGER NOT NULL,
    price INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    quote INTEGER NOT NULL,
    fee INTEGER NOT NULL,                     -- quote units, negative: a rebate
    ts INTEGER NOT NULL,                      -- the block's timestamp, µs
    height INTEGER NOT NULL,
    ix INTEGER NOT NULL,
    PRIMARY KEY (symbol, trade_id, is_maker)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fills_by_account ON fills (account, height, ix);
CREATE INDEX IF NOT EXISTS fills_by_order ON fills (order_id);
CREATE INDEX IF NOT EXISTS trades_by_symbol ON fills (symbol, ts, height, ix) WHERE is_maker = 0;
CREATE TABLE IF NOT EXISTS funding_rates (
    symbol TEXT NOT NULL,
    interval_end INTEGER NOT NULL,            -- µs
    rate INTEGER NOT NULL,                    -- PPB per interval; positive: longs pay shorts
    mark INTEGER NOT NULL,
    PRIMARY KEY (symbol, interval_end)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lend_moves (
    pos INTEGER PRIMARY KEY,                  -- height << 32 | the event's index in its block
    seq INTEGER NOT NULL,                     -- the transaction (a SpotMargin borrow: the order's id)
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    kind TEXT NOT NULL,                       -- Lend, LendRedeem, Borrow, BorrowRepay
    source TEXT NOT NULL,                     -- Manual, AutoLend, AutoLendRedeem, AutoBorrowRepay, SpotMargin, ...
    amount INTEGER NOT NULL,                  -- asset units
    lent INTEGER NOT NULL,                    -- the account's claim in the asset afterwards
    borrowed INTEGER NOT NULL,                -- its debt afterwards
    ts INTEGER NOT NULL,                      -- the block's timestamp, µs
    lent_scaled INTEGER NOT NULL,             -- the position as the pool holds it afterwards
    borrowed_scaled INTEGER NOT NULL,
    pool_index INTEGER NOT NULL               -- RAY; the lend index for Lend/LendRedeem, else the borrow index
);
CREATE INDEX IF NOT EXISTS lend_moves_by_account ON lend_moves (account, pos);
CREATE INDEX IF NOT EXISTS lend_moves_by_asset ON lend_moves (account, asset, pos);
CREATE INDEX IF NOT EXISTS lend_moves_closing ON lend_moves (account, asset, pos) WHERE lent = 0 AND borrowed = 0;
CREATE TABLE IF NOT EXISTS lend_hours (
    asset TEXT NOT NULL,
    hour INTEGER NOT NULL,                    -- the block's timestamp // 3600 s
    pos INTEGER NOT NULL,                     -- of the hour's first PoolUpdate: height << 32 | index
    ts INTEGER NOT NULL,                      -- the block's timestamp, µs
    lend_index INTEGER NOT NULL,              -- RAY
    borrow_index INTEGER NOT NULL,
    lend_rate INTEGER NOT NULL,               -- annual, PPB
    borrow_rate INTEGER NOT NULL,
    PRIMARY KEY (asset, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deposits (
    id INTEGER PRIMARY KEY,                   -- the crediting transaction's sequence number
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount INTEGER NOT NULL,                  -- asset units
    source TEXT NOT NULL,                     -- the chain, or 'administrator' (the admin faucet)
    tx_hash TEXT,                             -- the chain transaction; NULL for the faucet
    log_index INTEGER,
    ts INTEGER NOT NULL                       -- the block's timestamp, µs
);
CREATE INDEX IF NOT EXISTS deposits_by_account ON deposits (account, ts DESC, id DESC);
CREATE TABLE IF NOT EXISTS withdrawals (
    id INTEGER PRIMARY KEY,                   -- the request's sequence number
    account TEXT NOT NULL,
    chain TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount INTEGER NOT NULL,
    address TEXT NOT NULL,
    client_id INTEGER,
    created INTEGER NOT NULL,                 -- µs: the block of its first status
    pos INTEGER NOT NULL,                     -- of the latest status: height << 32 | the event's index
    status TEXT NOT NULL,                     -- Queued, Pending, Sent, Confirmed, Failed
    tx_hash TEXT NOT NULL,                    -- '' until sent
    reason TEXT NOT NULL                      -- why it failed
);
CREATE INDEX IF NOT EXISTS withdrawals_by_account ON withdrawals (account, created DESC, id DESC);
"""


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` for this thread's exclusive use.

    ``locking_mode=EXCLUSIVE`` makes a second writer (another gateway or process on the
    same data directory) fail here with "database is locked" rather than double-count
    fills. A file of another schema version is a read model of other rules: it is
    replaced, and the catch-up rebuilds it from the journal.
    """
    conn = None
    try:
        conn = _connect(path)
        version = _version(conn)
    except sqlite3.OperationalError:
        raise  # locked by another writer, unreadable, ...: never delete what someone else holds
    except sqlite3.DatabaseError:
        version = -1  # not a database at all
    if version not in (None, SCHEMA_VERSION):
        if conn is not None:
            conn.close()
        log.warning("history.schema_replaced", file=str(path), found=version, expected=SCHEMA_VERSION)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        conn = _connect(path)
    conn.executescript(_TABLES)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # autocommit mode: the store issues BEGIN and COMMIT itself, one transaction per batch
    # opened in a worker thread, then used by the store's own thread only (one at a time)
    conn = sqlite3.connect(path, isolation_level=None, timeout=1.0, check_same_thread=False)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_mode=WAL")
    # a crash may lose the last transactions but never corrupts the file, and the lost
    # blocks are simply not in ``written``: the next start writes them again
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _version(conn: sqlite3.Connection) -> int | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return row[0] if row else None


class Ranges:
    """A set of block heights as sorted, disjoint, non-adjacent [lo, hi] ranges: one
    range in steady state, two after a catch-up was interrupted."""

    def __init__(self, pairs: list[tuple[int, int]] | None = None):
        self.pairs: list[list[int]] = [[lo, hi] for lo, hi in sorted(pairs or ())]

    def _index(self, height: int) -> int:
        """Index of the first range starting above ``height``."""
        return bisect_right(self.pairs, [height, float("inf")])

    def __contains__(self, height: int) -> bool:
        i = self._index(height)
        return i > 0 and self.pairs[i - 1][1] >= height

    def add(self, height: int) -> None:
        pairs = self.pairs
        i = self._index(height)
        if i and pairs[i - 1][1] >= height:
            return
        left = i > 0 and pairs[i - 1][1] == height - 1
        right = i < len(pairs) and pairs[i][0] == height + 1
        if left and right:
            pairs[i - 1][1] = pairs[i][1]
            del pairs[i]
        elif left:
            pairs[i - 1][1] = height
        elif right:
            pairs[i][0] = height
        else:
            pairs.insert(i, [height, height])

    def gaps(self, upto: int) -> list[tuple[int, int]]:
        """The [lo, hi] ranges of heights 1..``upto`` not in the set."""
        out = []
        nxt = 1
        for lo, hi in self.pairs:
            if lo > upto:
                break
            if lo > nxt:
                out.append((nxt, lo - 1))
            nxt = max(nxt, hi + 1)
        if nxt <= upto:
            out.append((nxt, upto))
        return out

    def copy(self) -> "Ranges":
        return Ranges([(lo, hi) for lo, hi in self.pairs])

    def highest(self) -> int:
        return self.pairs[-1][1] if self.pairs else 0


def load_written(conn: sqlite3.Connection) -> Ranges:
    return Ranges(conn.execute("SELECT lo, hi FROM written").fetchall())


def save_written(conn: sqlite3.Connection, ranges: Ranges) -> None:
    """Replace the stored ranges (inside the caller's transaction; there are one or two)."""
    conn.execute("DELETE FROM written")
    conn.executemany("INSERT INTO written VALUES (?, ?)", [(lo, hi) for lo, hi in ranges.pairs])
