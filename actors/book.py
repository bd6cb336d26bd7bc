"""One market's order book: price-time priority matching, as a pure state machine.

The book actor owns resting orders, price levels, the last trade price and the trade
and depth-update counters of one market. It receives, once per block, the market's
share of the block in sequence order -- orders that passed the pre-trade hold and
cancels -- and returns the events they produced (see ``messages``). It never touches
balances: the risk actor held the funds before and settles the fills after.

Layout, chosen for speed in pure Python: a dict from price to ``_Level`` per side and
a binary heap of level keys (asks keyed by price, bids by -price, so "best" is always
``heap[0]`` and "crosses" is always ``key <= limit_key``). A cancelled order is marked
dead in place (remaining = 0) and dropped when it reaches the head of its level's
queue, so a cancel is O(1); a level with no live orders is deleted at once, leaving a
stale heap key that matching pops when it surfaces. The heap is rebuilt when stale
keys outnumber live levels, so memory stays proportional to the live book.

Filters applied here, because they need the book's state: tick and step multiples,
minimum quantity, minimum notional, and the price band around the last trade price
(limit prices outside it are rejected; market orders do not trade outside it).

A perpetual's book takes its band from the mark price instead (``Match.mark``): a limit
price must lie within mark x [band_min, band_max]; and a taker fills only up to the
impact bound -- best ask x impact_max for a bid, best bid x impact_min for an ask, both
as the order arrives -- the rest expires (reason ``ImpactBound``) rather than resting
in a crossed book.
"""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop, heappush

from satchel.core.amounts import fee as fee_of
from satchel.core.errors import Code
from satchel.core.messages import (
    PPB,
    LIQUIDATION,
    ASK,
    BID,
    CANCELLED,
    EXPIRED,
    FILLED,
    FOK,
    GTC,
    LIMIT,
    REJECT_BOTH,
    REJECT_MAKER,
    REJECT_TAKER,
    CancelAll,
    CancelOrder,
    DepthDelta,
    DepthOf,
    Entry,
    Fill,
    ListMarketSpec,
    MarketSpec,
    Match,
    Matched,
    OpenOrders,
    OrderAccepted,
    OrderDone,
    OrderOf,
    PlaceOrder,
    Restore,
    StateOf,
    TxRejected,
    order_rejected,
)
from satchel.core.actor import dispatcher
from satchel.core.state import BookSides, BookState, LevelState, RestingOrder

_NO_LIMIT = 1 << 62
# Resting orders one account may have in one market. Bounds what one account can make
# the book hold, and keeps a cancelAll or orderQueryAll reply a reasonable size.
MAX_OPEN_ORDERS = 1000


class _Order:
    __slots__ = ("oid", "account", "side", "price", "remaining", "executed", "executed_quote", "client_id", "quantity",
                 "created")

    def __init__(self, oid: int, account: str, side: int, price: int, remaining: int, client_id: int | None, quantity: int,
                 created: int):
        self.oid = oid
        self.created = created  # block timestamp, us
        self.quantity = quantity
        self.account = account
        self.side = side
        self.price = price
        self.remaining = remaining
        self.executed = 0
        self.executed_quote = 0
        self.client_id = client_id


def _view(o: _Order) -> tuple:
    """(order id, client id, side, price, quantity, executed, executed quote, created us) -- plain values."""
    return (o.oid, o.client_id, o.side, o.price, o.quantity, o.executed, o.executed_quote, o.created)


class _Level:
    __slots__ = ("total", "live", "queue")

    def __init__(self) -> None:
        self.total = 0
        self.live = 0
        self.queue: deque[_Order] = deque()


class Book:
    """The state of one market: ``handle(Match(...))`` once per block, and queries."""

    def __init__(self, spec: MarketSpec):
        self.spec = spec
        self.last_price = 0
        self._band: int | None = None  # allowed distance from last_price; None = no band yet
        self.trade_id = 0
        self.update_id = 0
        # index 0 = bids (keyed -price), 1 = asks (keyed price)
        self._levels: tuple[dict[int, _Level], dict[int, _Level]] = ({}, {})
        self._heaps: tuple[list[int], list[int]] = ([], [])
        self._orders: dict[int, _Order] = {}
        self._by_client: dict[tuple[str, int], int] = {}
        self._by_account: dict[str, dict[int, None]] = {}
        self._changed: tuple[dict[int, None], dict[int, None]] = ({}, {})
        self._now = 0  # the current block's timestamp, us
        self._mark = 0  # a perp's mark for this block (0: none yet)

    # ------------------------------------------------------------------ public

    def _set_spec(self, msg: ListMarketSpec) -> None:
        self.spec = msg.spec
        if self.last_price:
            self._set_last_price(self.last_price)

    def _run(self, msg: Match) -> Matched:
        """Apply one block's commands in order: their events and the levels they changed."""
        self._now = msg.timestamp
        self._mark = msg.mark
        out: list = []
        last_seq = 0
        for cmd in msg.commands:
            if cmd.__class__ is Entry:
                self._place(cmd, out)
                last_seq = cmd.seq
            else:
                seq, tx = cmd
                last_seq = seq
                if tx.__class__ is CancelOrder:
                    self._cancel_one(seq, tx, out)
                else:
                    self._cancel_all(seq, tx, out)
        changed_bids, changed_asks = self._changed
        if changed_bids or changed_asks:
            self.update_id += 1
            bids_lv, asks_lv = self._levels
            bids = [(-k, bids_lv[k].total if k in bids_lv else 0) for k in changed_bids]
            asks = [(k, asks_lv[k].total if k in asks_lv else 0) for k in changed_asks]
            changed_bids.clear()
            changed_asks.clear()
            return Matched(out, DepthDelta(last_seq, self.spec.symbol, self.update_id, bids, asks), self._top())
        return Matched(out, None, self._top())

    def _top(self) -> tuple[int, int, int]:
        bid = self._best_key(BID)
        ask = self._best_key(ASK)
        return (-bid if bid is not None else 0, ask if ask is not None else 0, self.last_price)

    def _open_orders(self, msg: OpenOrders) -> list[tuple]:
        """Snapshots of an account's resting orders, oldest first (see ``_view``)."""
        return [_view(self._orders[oid]) for oid in self._by_account.get(msg.account, ())]

    def _order_of(self, msg: OrderOf) -> tuple | None:
        """Snapshot of one of the account's resting orders, by id or client id."""
        account = msg.account
        o = self._orders.get(msg.order_id) if msg.order_id is not None else self.order_by_client(account, msg.client_id)
        return _view(o) if o is not None and o.account == account else None

    def order_by_client(self, account: str, client_id: int | None) -> _Order | None:
        oid = self._by_client.get((account, client_id))
        return self._orders.get(oid) if oid is not None else None

    def _depth(self, msg: DepthOf) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Aggregated (price, quantity) levels, best first."""
        limit = msg.limit
        bids = sorted(((-k, lv.total) for k, lv in self._levels[BID].items()), reverse=True)
        asks = sorted((k, lv.total) for k, lv in self._levels[ASK].items())
        return (bids[:limit], asks[:limit]) if limit else (bids, asks)

    def _state(self, msg: StateOf) -> BookState:
        """Full state in a fixed order (levels best first, orders in priority), for the state hash."""
        sides = []
        for side in (BID, ASK):
            levels = []
            for key in sorted(self._levels[side]):
                lv = self._levels[side][key]
                levels.append(LevelState(key, lv.total, [
                    RestingOrder(o.oid, o.account, o.remaining, o.executed, o.executed_quote, o.client_id, o.quantity,
                                 o.created)
                    for o in lv.queue if o.remaining
                ]))
            sides.append(levels)
        return BookState(self.spec.symbol, self.last_price, self.trade_id, self.update_id, BookSides(*sides))

    def _restore(self, msg: Restore) -> None:
        """Rebuild from a ``BookState`` (a snapshot): same orders, same priority."""
        state: BookState = msg.state
        self.trade_id, self.update_id = state.trade_id, state.update_id
        if state.last_price:
            self._set_last_price(state.last_price)
        for side, levels in ((BID, state.sides.bids), (ASK, state.sides.asks)):
            for level in levels:
                price = -level.key if side == BID else level.key
                for r in level.orders:
                    o = _Order(r.order_id, r.account, side, price, r.remaining, r.client_id, r.quantity, r.created)
                    o.executed = r.executed
                    o.executed_quote = r.executed_quote
                    self._rest(o)
        self._changed[BID].clear()
        self._changed[ASK].clear()

    # ------------------------------------------------------------------ placing

    def _reject(self, seq: int, tx: PlaceOrder, reason: str, out: list) -> None:
        out.append(order_rejected(seq, tx, reason))

    def _done(self, seq: int, o: _Order, status: str, reason: str, out: list) -> None:
        out.append(OrderDone(seq, o.oid, o.account, self.spec.symbol, o.client_id, o.side, o.price, o.quantity, status, reason,
                             o.executed, o.executed_quote, o.created))

    def _place(self, entry: Entry, out: list) -> None:
        tx = entry.tx
        seq = entry.seq
        spec = self.spec
        side = tx.side
        price = tx.price
        is_limit = tx.order_type == LIMIT
        if is_limit:
            if price <= 0 or price % spec.tick:
                return self._reject(seq, tx, "InvalidPrice", out)
            if tx.quantity < spec.min_quantity or tx.quantity % spec.step:
                return self._reject(seq, tx, "InvalidQuantity", out)
            if price * tx.quantity * spec.notional_mult < spec.min_notional:
                return self._reject(seq, tx, "BelowMinNotional", out)
            perp = spec.perp
            if perp is not None:
                mark = self._mark
                if mark and not mark * perp.band_min <= price * PPB <= mark * perp.band_max:
                    return self._reject(seq, tx, "PriceOutOfBand", out)
            else:
                band = self._band
                # a liquidation is priced from the oracle's mark, which a crash can take far
                # from the last trade: it may fill past the band (at its own limit)
                if band is not None and abs(price - self.last_price) > band and tx.origin != LIQUIDATION:
                    return self._reject(seq, tx, "PriceOutOfBand", out)
        else:
            if tx.quantity and (tx.quantity < spec.min_quantity or tx.quantity % spec.step):
                return self._reject(seq, tx, "InvalidQuantity", out)
            if not tx.quantity and tx.quote_quantity < spec.min_notional:
                return self._reject(seq, tx, "BelowMinNotional", out)
            band = self._band
            if band is not None and spec.perp is None:
                # in opposite-side keys: asks are keyed +price, bids -price
                limit_key = self.last_price + band if side == BID else -(self.last_price - band)
            else:
                limit_key = _NO_LIMIT
        if tx.client_id is not None and (tx.account, tx.client_id) in self._by_client:
            return self._reject(seq, tx, "DuplicateClientId", out)
        if is_limit and tx.tif == GTC and len(self._by_account.get(tx.account, ())) >= MAX_OPEN_ORDERS:
            return self._reject(seq, tx, "TooManyOpenOrders", out)
        if is_limit:
            limit_key = price if side == BID else -price  # the taker's limit in opposite-side keys
            if tx.post_only:
                best = self._best_key(ASK if side == BID else BID)
                if best is not None and best <= limit_key:
                    return self._reject(seq, tx, "PostOnlyWouldTake", out)
        out.append(
            OrderAccepted(seq, seq, tx.account, tx.symbol, side, tx.order_type, tx.tif, price, tx.quantity, tx.quote_quantity, tx.client_id, tx.post_only)
        )
        impact_key = self._impact_key(side) if spec.perp is not None else None
        order_key = limit_key
        if impact_key is not None and impact_key < limit_key:
            limit_key = impact_key
        margin_key = None  # a perp market order's worst price its margin affords (``Entry.price_cap``)
        if entry.price_cap is not None:
            margin_key = entry.price_cap if side == BID else -entry.price_cap
            if margin_key < limit_key:
                limit_key = margin_key
        want = entry.qty_cap
        if tx.tif == FOK and not self._fok_fillable(tx, limit_key, want, entry.quote_cap):
            out.append(OrderDone(seq, seq, tx.account, tx.symbol, tx.client_id, side, price, tx.quantity, EXPIRED, "FillOrKill",
                                 0, 0, self._now))
            return
        taker = _Order(seq, tx.account, side, price, want, tx.client_id, tx.quantity, self._now)
        opp_heap = self._heaps[ASK if side == BID else BID]
        # heap[0] is at most the best live key (stale keys only sit lower), so a heap
        # top above the limit proves nothing crosses: most resting orders stop here
        if opp_heap and opp_heap[0] <= limit_key:
            halt = self._match(seq, taker, tx.stp, limit_key, entry.quote_cap, out)
        else:
            halt = ""
            self._capped = False
        if halt:
            status, reason = CANCELLED, halt
        elif taker.remaining == 0 or (tx.quote_quantity and self._capped):
            status, reason = FILLED, ""
        elif limit_key == margin_key and (self._best_key(ASK if side == BID else BID) or _NO_LIMIT) <= order_key:
            status, reason = EXPIRED, "InsufficientMargin"  # the rest would fill at a loss its margin cannot take
        elif limit_key != order_key and (self._best_key(ASK if side == BID else BID) or _NO_LIMIT) <= order_key:
            status, reason = EXPIRED, "ImpactBound"  # resting would cross the book beyond the bound
        elif not is_limit or tx.tif != GTC:
            status, reason = EXPIRED, ""
        else:
            self._rest(taker)
            return
        self._done(seq, taker, status, reason, out)

    def _impact_key(self, side: int) -> int | None:
        """The furthest a taker on ``side`` may fill, in opposite-side keys (None: no bound)."""
        perp = self.spec.perp
        if side == BID:
            best = self._best_key(ASK)
            return None if best is None else best * perp.impact_max // PPB
        best = self._best_key(BID)
        if best is None:
            return None
        floor_price = -(best * perp.impact_min // PPB)  # best bid x impact_min, rounded up (best is -bid)
        return -floor_price

    def _best_key(self, side: int) -> int | None:
        heap = self._heaps[side]
        levels = self._levels[side]
        while heap and heap[0] not in levels:
            heappop(heap)
        return heap[0] if heap else None

    def _fok_fillable(self, tx: PlaceOrder, cross_key: int, want: int, quote_cap: int | None) -> bool:
        """Whether a fill-or-kill can fill completely, walking the book without changing it.

        Complete means: the whole quantity, within the funds held (``quote_cap``) for an
        order sized in base; the whole ``quoteQuantity`` for one sized in quote. Own
        resting orders stop the walk under RejectTaker/RejectBoth (the order would be
        cancelled part-way) and are skipped under RejectMaker (they would be cancelled).
        """
        opp = ASK if tx.side == BID else BID
        levels = self._levels[opp]
        mult = self.spec.notional_mult
        got = spent = 0
        for key in sorted(k for k in levels if k <= cross_key):
            price = key if opp == ASK else -key
            for o in levels[key].queue:
                if not o.remaining:
                    continue
                if o.account == tx.account:
                    if tx.stp == REJECT_MAKER:
                        continue
                    return False
                qty = min(want - got, o.remaining)
                quote = price * qty * mult
                if quote_cap is not None and spent + quote > quote_cap:
                    return bool(tx.quote_quantity)  # the quote target is reached here
                got += qty
                spent += quote
                if got >= want:
                    return not tx.quote_quantity  # sized in quote: base ran out first
        return False

    _capped = False

    def _match(self, seq: int, taker: _Order, stp: int, limit_key: int, quote_cap: int | None, out: list) -> str:
        """Match ``taker`` against the opposite side; returns an STP stop reason or "".

        Sets ``_capped`` when the order stopped because its quote cap was reached.
        """
        spec = self.spec
        mult = spec.notional_mult
        maker_bps = spec.maker_fee_bps
        taker_bps = spec.taker_fee_bps
        symbol = spec.symbol
        taker_side = taker.side
        opp = ASK if taker_side == BID else BID
        heap = self._heaps[opp]
        levels = self._levels[opp]
        changed = self._changed[opp]
        account = taker.account
        remaining = taker.remaining
        executed = 0
        executed_quote = 0
        halt = ""
        capped = False
        last = 0
        while remaining and heap:
            key = heap[0]
            level = levels.get(key)
            if level is None:
                heappop(heap)
                continue
            if key > limit_key:
                break
            price = key if opp == ASK else -key
            queue = level.queue
            traded = False
            while remaining and queue:
                maker = queue[0]
                left = maker.remaining
                if not left:
                    queue.popleft()
                    continue
                if maker.account == account:
                    if stp == REJECT_TAKER:
                        halt = "SelfTradePrevention"
                        break
                    queue.popleft()
                    self._kill(maker, level, key, opp, seq, "SelfTradePrevention", out)
                    if stp == REJECT_BOTH:
                        halt = "SelfTradePrevention"
                        break
                    continue
                qty = remaining if remaining < left else left
                quote = price * qty * mult
                if quote_cap is not None and executed_quote + quote > quote_cap:
                    capped = True
                    qty = (quote_cap - executed_quote) // (price * mult)
                    if qty <= 0:
                        break
                    quote = price * qty * mult
                left -= qty
                remaining -= qty
                executed += qty
                executed_quote += quote
                maker.remaining = left
                maker.executed += qty
                maker.executed_quote += quote
                level.total -= qty
                self.trade_id += 1
                traded = True
                out.append(
                    Fill(seq, symbol, self.trade_id, price, qty, quote, taker.oid, maker.oid, account, maker.account,
                         taker_side, fee_of(quote, taker_bps), fee_of(quote, maker_bps), left, remaining)
                )
                if not left:
                    queue.popleft()
                    level.live -= 1
                    self._forget(maker)
                    self._done(seq, maker, FILLED, "", out)
                if capped:
                    break
            if traded:
                changed[key] = None
                last = price
            if level.live == 0:
                del levels[key]
                heappop(heap)
            if halt or capped:
                break
        taker.remaining = remaining
        taker.executed = executed
        taker.executed_quote = executed_quote
        self._capped = capped
        if last:
            self._set_last_price(last)
        return halt

    def _set_last_price(self, price: int) -> None:
        self.last_price = price
        bps = self.spec.price_band_bps
        self._band = price * bps // 10_000 if bps else None

    def _rest(self, order: _Order) -> None:
        side = order.side
        key = -order.price if side == BID else order.price
        levels = self._levels[side]
        level = levels.get(key)
        if level is None:
            level = levels[key] = _Level()
            heap = self._heaps[side]
            heappush(heap, key)
            if len(heap) > 2 * len(levels) + 64:
                heap[:] = list(levels)
                heapify(heap)
        level.queue.append(order)
        level.total += order.remaining
        level.live += 1
        self._changed[side][key] = None
        self._orders[order.oid] = order
        acct = self._by_account.get(order.account)
        if acct is None:
            acct = self._by_account[order.account] = {}
        acct[order.oid] = None
        if order.client_id is not None:
            self._by_client[(order.account, order.client_id)] = order.oid

    # ------------------------------------------------------------------ cancelling

    def _forget(self, order: _Order) -> None:
        del self._orders[order.oid]
        acct = self._by_account[order.account]
        del acct[order.oid]
        if not acct:
            del self._by_account[order.account]
        if order.client_id is not None:
            self._by_client.pop((order.account, order.client_id), None)

    def _kill(self, order: _Order, level: _Level, key: int, side: int, seq: int, reason: str, out: list) -> None:
        """Remove a resting order (cancel or STP); leaves the dead entry in the queue."""
        level.total -= order.remaining
        level.live -= 1
        order.remaining = 0
        self._changed[side][key] = None
        self._forget(order)
        self._done(seq, order, CANCELLED, reason, out)

    def _cancel_resting(self, order: _Order, seq: int, out: list) -> None:
        side = order.side
        key = -order.price if side == BID else order.price
        level = self._levels[side][key]
        self._kill(order, level, key, side, seq, "", out)
        if level.live == 0:
            del self._levels[side][key]

    def _cancel_one(self, seq: int, tx: CancelOrder, out: list) -> None:
        if tx.order_id is not None:
            order = self._orders.get(tx.order_id)
        elif tx.client_id is not None:
            order = self.order_by_client(tx.account, tx.client_id)
        else:
            order = None
        if order is None or order.account != tx.account:
            out.append(TxRejected(seq, tx.account, Code.RESOURCE_NOT_FOUND, "Order not found"))
            return
        self._cancel_resting(order, seq, out)

    def _cancel_all(self, seq: int, tx: CancelAll, out: list) -> None:
        for oid in sorted(self._by_account.get(tx.account, ())):
            self._cancel_resting(self._orders[oid], seq, out)

    handle = dispatcher({
        Match: _run, ListMarketSpec: _set_spec, OpenOrders: _open_orders, OrderOf: _order_of, DepthOf: _depth,
        StateOf: _state, Restore: _restore,
    })
