"""Blocks' events into the history tables, a batch of blocks per transaction.

A ``Batch`` gathers the rows of many blocks (one list per statement) and writes them
with one ``executemany`` per statement: a batch is one transaction, and per-row Python
work stays at building a tuple. Every statement commutes with the others (see
``schema``: each event kind upserts its own columns, fills add, creation time is a
minimum), so grouping by statement rather than by event order gives the same rows, and
so does writing the blocks of a catch-up after later live blocks.

Lending: every ``LendMoved`` is a ``lend_moves`` row (a ``BadDebt`` write-off too, as
a row of kind ``WriteOff``), and the first ``PoolUpdate`` of each pool and hour is its
``lend_hours`` row: a batch keeps the one of the smallest ``pos`` per (asset, hour), and
the upsert keeps the smaller of that and the stored one.

Deposits and withdrawals: one ``deposits`` row per credited deposit (``ChainCredited``,
or a faucet ``Deposited``), one ``withdrawals`` row per withdrawal that every
``WithdrawalUpdate`` upserts, keeping the latest status by ``pos`` (see ``schema``).

Rejected orders are not history (Backpack answers them with an error, and nothing of
them is kept), with one exception: a trigger order that fired and was then refused at
pre-trade. Its ``OrderDone`` names an order id from an earlier block (below the block's
first sequence number), and the order shows as TriggerFailed.
"""

from __future__ import annotations

import sqlite3

from satchel.api.format import ADMIN_DEPOSIT_SOURCE
from satchel.core.messages import (
    ASK, BID, REJECTED, BadDebt, BlockHeader, ChainCredited, Deposited, Fill, FundingPaid, LendMoved, OrderAccepted,
    OrderDone, PoolUpdate, TriggerPlaced, WithdrawalUpdate,
)

_ACCEPTED = """
INSERT INTO orders (order_id, account, symbol, side, order_type, tif, price, quantity, quote_quantity, client_id,
                    post_only, created, accepted)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
ON CONFLICT (order_id) DO UPDATE SET
    order_type = excluded.order_type, tif = excluded.tif, price = excluded.price, quantity = excluded.quantity,
    quote_quantity = excluded.quote_quantity, client_id = excluded.client_id, post_only = excluded.post_only,
    accepted = 1, created = MIN(created, excluded.created)
"""

_TRIGGER = """
INSERT INTO orders (order_id, account, symbol, side, order_type, price, quantity, client_id, trigger_price, trigger_by,
                    reduce_only, created)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (order_id) DO UPDATE SET
    order_type = excluded.order_type, price = excluded.price, quantity = excluded.quantity,
    client_id = excluded.client_id, trigger_price = excluded.trigger_price, trigger_by = excluded.trigger_by,
    reduce_only = excluded.reduce_only, created = MIN(created, excluded.created)
"""

# price, quantity and client id only when the row is new (OrderAccepted's are the same values)
_DONE = """
INSERT INTO orders (order_id, account, symbol, side, price, quantity, client_id, created, status, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (order_id) DO UPDATE SET
    status = excluded.status, reason = excluded.reason, created = MIN(created, excluded.created)
"""

_EXECUTED = """
INSERT INTO orders (order_id, account, symbol, side, created, executed, executed_quote)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (order_id) DO UPDATE SET
    executed = executed + excluded.executed, executed_quote = executed_quote + excluded.executed_quote,
    created = MIN(created, excluded.created)
"""

_FILL = """
INSERT OR IGNORE INTO fills (symbol, trade_id, is_maker, order_id, account, side, price, quantity, quote, fee, ts,
                             height, ix)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_FUNDING = "INSERT OR IGNORE INTO funding_rates (symbol, interval_end, rate, mark) VALUES (?, ?, ?, ?)"

_LEND = """
INSERT OR IGNORE INTO lend_moves (pos, seq, account, asset, kind, source, amount, lent, borrowed, ts, lent_scaled,
                                  borrowed_scaled, pool_index)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# the hour's first PoolUpdate wins, whichever block is written first
_HOUR = """
INSERT INTO lend_hours (asset, hour, pos, ts, lend_index, borrow_index, lend_rate, borrow_rate)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (asset, hour) DO UPDATE SET
    pos = excluded.pos, ts = excluded.ts, lend_index = excluded.lend_index, borrow_index = excluded.borrow_index,
    lend_rate = excluded.lend_rate, borrow_rate = excluded.borrow_rate
WHERE excluded.pos < lend_hours.pos
"""

_DEPOSIT = """
INSERT OR IGNORE INTO deposits (id, account, asset, amount, source, tx_hash, log_index, ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

# the status, hash and reason of the latest update (by pos) win, whichever block is written first
_WITHDRAWAL = """
INSERT INTO withdrawals (id, account, chain, asset, amount, address, client_id, created, pos, status, tx_hash, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    created = MIN(created, excluded.created),
    status = CASE WHEN excluded.pos > pos THEN excluded.status ELSE status END,
    tx_hash = CASE WHEN excluded.pos > pos THEN excluded.tx_hash ELSE tx_hash END,
    reason = CASE WHEN excluded.pos > pos THEN excluded.reason ELSE reason END,
    pos = MAX(pos, excluded.pos)
"""

HOUR_US = 3_600_000_000
WRITE_OFF = "WriteOff"  # a lend_moves kind of Satchel's own: a debt cancelled as bad debt


class Batch:
    """The rows of the blocks written since the last ``write``."""

    def __init__(self) -> None:
        self.heights: set[int] = set()
        self.rows = 0  # rows gathered (to bound a transaction's size)
        self._accepted: list[tuple] = []
        self._triggers: list[tuple] = []
        self._done: list[tuple] = []
        self._fills: list[tuple] = []
        self._funding: list[tuple] = []
        self._lends: list[tuple] = []
        self._hours: dict[tuple[str, int], tuple] = {}  # (asset, hour) -> its first PoolUpdate's row
        self._deposits: dict[int, tuple] = {}  # by id: a chain's row replaces the faucet row of the same credit
        self._withdrawals: list[tuple] = []
        # order id -> [account, symbol, side, earliest fill µs, quantity, quote]: a taker that
        # sweeps many makers is one upsert
        self._executed: dict[int, list] = {}

    def add(self, header: BlockHeader, events: list) -> None:
        """Gather the history rows of one block's events."""
        self.heights.add(header.height)
        ts = header.timestamp
        height = header.height
        first_seq = header.first_seq
        executed = self._executed
        n = 0
        for ix, ev in enumerate(events):
            cls = ev.__class__
            if cls is Fill:
                maker_side = ASK if ev.taker_side == BID else BID
                self._fills.append((ev.symbol, ev.trade_id, 0, ev.taker_order, ev.taker_account, ev.taker_side,
                                    ev.price, ev.quantity, ev.quote, ev.taker_fee, ts, height, ix))
                self._fills.append((ev.symbol, ev.trade_id, 1, ev.maker_order, ev.maker_account, maker_side,
                                    ev.price, ev.quantity, ev.quote, ev.maker_fee, ts, height, ix))
                for oid, account, side in ((ev.taker_order, ev.taker_account, ev.taker_side),
                                           (ev.maker_order, ev.maker_account, maker_side)):
                    row = executed.get(oid)
                    if row is None:
                        executed[oid] = [account, ev.symbol, side, ts, ev.quantity, ev.quote]
                    else:
                        row[3] = min(row[3], ts)
                        row[4] += ev.quantity
                        row[5] += ev.quote
                n += 2
            elif cls is OrderAccepted:
                self._accepted.append((ev.order_id, ev.account, ev.symbol, ev.side, ev.order_type, ev.tif, ev.price,
                                       ev.quantity, ev.quote_quantity, ev.client_id, ev.post_only, ts))
                n += 1
            elif cls is OrderDone:
                if ev.status == REJECTED and ev.order_id >= first_seq:
                    continue  # refused when placed: not history
                self._done.append((ev.order_id, ev.account, ev.symbol, ev.side, ev.price, ev.quantity, ev.client_id,
                                   ev.created or ts, ev.status, ev.reason))
                n += 1
            elif cls is TriggerPlaced:
                self._triggers.append((ev.order_id, ev.account, ev.symbol, ev.side, ev.order_type, ev.price,
                                       ev.quantity, ev.client_id, ev.trigger_price, ev.trigger_by, ev.reduce_only, ts))
                n += 1
            elif cls is FundingPaid:
                self._funding.append((ev.symbol, ev.interval_end, ev.rate, ev.mark))
                n += 1
            elif cls is LendMoved:
                self._lends.append((height << 32 | ix, ev.seq, ev.account, ev.asset, ev.kind, ev.source, ev.amount,
                                    ev.lent, ev.borrowed, ts, ev.lent_scaled, ev.borrowed_scaled, ev.index))
                n += 1
            elif cls is PoolUpdate:
                key = (ev.asset, ts // HOUR_US)
                pos = height << 32 | ix
                first = self._hours.get(key)
                if first is None or pos < first[2]:
                    self._hours[key] = (*key, pos, ts, ev.lend_index, ev.borrow_index, ev.lend_rate, ev.borrow_rate)
                    if first is None:
                        n += 1
            elif cls is BadDebt:
                self._lends.append((height << 32 | ix, ev.seq, ev.account, ev.asset, WRITE_OFF, "Liquidation",
                                    ev.socialized, 0, 0, ts, 0, 0, 0))
                n += 1
            elif cls is Deposited:
                if ev.seq not in self._deposits:
                    self._deposits[ev.seq] = (ev.seq, ev.account, ev.asset, ev.amount, ADMIN_DEPOSIT_SOURCE, None, None, ts)
                    n += 1
            elif cls is ChainCredited:
                if ev.seq not in self._deposits:
                    n += 1
                self._deposits[ev.seq] = (ev.seq, ev.account, ev.asset, ev.amount, ev.chain, ev.tx_hash, ev.log_index, ts)
            elif cls is WithdrawalUpdate:
                self._withdrawals.append((ev.withdrawal_id, ev.account, ev.chain, ev.asset, ev.amount, ev.address,
                                          ev.client_id, ts, height << 32 | ix, ev.status, ev.tx_hash, ev.reason))
                n += 1
        self.rows += n

    def write(self, conn: sqlite3.Connection) -> None:
        """Execute the gathered statements (inside the caller's transaction)."""
        if self._accepted:
            conn.executemany(_ACCEPTED, self._accepted)
        if self._triggers:
            conn.executemany(_TRIGGER, self._triggers)
        if self._done:
            conn.executemany(_DONE, self._done)
        if self._executed:
            conn.executemany(_EXECUTED, [(oid, *row) for oid, row in self._executed.items()])
        if self._fills:
            conn.executemany(_FILL, self._fills)
        if self._funding:
            conn.executemany(_FUNDING, self._funding)
        if self._lends:
            conn.executemany(_LEND, self._lends)
        if self._hours:
            conn.executemany(_HOUR, list(self._hours.values()))
        if self._deposits:
            conn.executemany(_DEPOSIT, list(self._deposits.values()))
        if self._withdrawals:
            conn.executemany(_WITHDRAWAL, self._withdrawals)
