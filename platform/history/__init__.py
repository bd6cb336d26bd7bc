"""The history read model: orders, fills, trades, lending movements and the pools' hourly
indices (interest is derived from them on read), deposits and withdrawals, kept in SQLite
outside the deterministic core.

Fed by the node's durable blocks, rebuilt from the journal when missing or behind; the
engine never reads it. In the order a block travels: ``store`` (the thread that owns the
database and its queue), ``writes`` (a batch of blocks' events to rows), ``schema``
(tables, and which blocks the database holds), ``rebuild`` (catch-up from the journal).
Reads: ``queries`` (typed queries, run on the store's thread) and ``views`` (rows to
Backpack's payloads, on the trio thread).
"""

from satchel.history.rebuild import catch_up
from satchel.history.store import Store

__all__ = ["Store", "catch_up"]
