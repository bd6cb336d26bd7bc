"""Trigger orders waiting for their price (status TriggerPending), part of the margin actor.

A trigger order is stored at pre-trade with its direction fixed then: it fires when the
``trigger_by`` price (mark, last trade or index) reaches ``trigger_price`` from the side
it was on when placed (a trigger at or beyond the current price fires at the next
check). Checks run in the periodic phase for the markets whose prices changed in the
block; a fired order keeps its order id and goes through pre-trade (margin included),
matching and settlement in the same block, like an order just placed.
"""

from __future__ import annotations

import msgspec

from satchel.core.messages import BY_INDEX, BY_LAST, TRIGGERED, MarkView, PlaceOrder
from satchel.core.state import TriggerState
from satchel.core.tally import tally


class Trigger(msgspec.Struct, gc=False):
    order: PlaceOrder
    rising: bool


def reference(view: MarkView | None, by: int) -> int:
    """The price a trigger compares with (0: none yet)."""
    if view is None:
        return 0
    return view.last if by == BY_LAST else view.index if by == BY_INDEX else view.mark


class Triggers:
    def __init__(self) -> None:
        self.pending: dict[int, Trigger] = {}  # order id -> trigger
        self.by_market: dict[str, dict[int, None]] = {}
        self.counts: dict[tuple[str, str], int] = {}  # (account, symbol) -> its pending triggers

    def count(self, account: str, symbol: str) -> int:
        return self.counts.get((account, symbol), 0)

    def place(self, order_id: int, tx: PlaceOrder, view: MarkView | None) -> None:
        ref = reference(view, tx.trigger_by)
        rising = tx.trigger_price > ref
        self._add(order_id, Trigger(msgspec.structs.replace(tx, auth=None), rising))

    def _add(self, order_id: int, t: Trigger) -> None:
        self.pending[order_id] = t
        self.by_market.setdefault(t.order.symbol, {})[order_id] = None
        tally(self.counts, (t.order.account, t.order.symbol), 1)

    def find(self, account: str, order_id: int | None, client_id: int | None) -> int | None:
        """The id of one of the account's pending triggers, by order id or client id."""
        if order_id is not None:
            t = self.pending.get(order_id)
            return order_id if t is not None and t.order.account == account else None
        for oid, t in self.pending.items():
            if t.order.account == account and t.order.client_id == client_id and client_id is not None:
                return oid
        return None

    def remove(self, order_id: int) -> PlaceOrder:
        t = self.pending.pop(order_id)
        market = self.by_market[t.order.symbol]
        del market[order_id]
        if not market:
            del self.by_market[t.order.symbol]
        tally(self.counts, (t.order.account, t.order.symbol), -1)
        return t.order

    def of(self, account: str, symbol: str) -> list[int]:
        return [oid for oid in self.by_market.get(symbol, ()) if self.pending[oid].order.account == account]

    def fire(self, views: dict[str, MarkView]) -> list[tuple[int, PlaceOrder]]:
        """(order id, order) for every trigger reached, markets in ``views`` order, ids ascending."""
        fired = []
        for symbol, view in views.items():
            ids = self.by_market.get(symbol)
            if not ids:
                continue
            for oid in sorted(ids):
                t = self.pending[oid]
                ref = reference(view, t.order.trigger_by)
                if ref and (ref >= t.order.trigger_price if t.rising else ref <= t.order.trigger_price):
                    order = self.remove(oid)
                    fired.append((oid, msgspec.structs.replace(order, trigger_price=0, origin=TRIGGERED)))
        return fired

    def rows(self) -> list[TriggerState]:
        return [TriggerState(oid, t.order, t.rising) for oid, t in sorted(self.pending.items())]

    def restore(self, rows: list[TriggerState]) -> None:
        self.pending = {}
        self.by_market = {}
        self.counts = {}
        for row in rows:
            self._add(row.order_id, Trigger(row.order, row.rising))
