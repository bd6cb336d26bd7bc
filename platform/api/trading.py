"""Order entry and the trader's reads: orders (one, a batch, cancels), balances and
settings, depth, perpetual positions, collateral, marks and open interest, and the order,
fill, funding and liquidation histories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from satchel.api.caller import BatchReplies, Caller, Replies, Signature
from satchel.api.requests import NoParams, Requests, request
from satchel.core import instructions
from satchel.core.errors import INVALID_REQUEST, INVALID_SYMBOL, RESOURCE_NOT_FOUND, RequestError
from satchel.core.messages import (
    NEW, PARTIALLY_FILLED, REJECTED, TRIGGER_PENDING, BalancesOf, CollateralOf, Fill, HistoryOf, LeverageSet, MarksOf,
    OpenOrders, OrderDone, OrderOf, PlaceOrder, PositionsOf, Query, TriggerPlaced, TxRejected,
)
from satchel.history import queries as history_queries
from satchel.history import views as history_views

MAX_BATCH = 50  # orders in one POST /api/v1/orders (each journaled record keeps the whole signed batch)


class OptionalSymbolParams(msgspec.Struct):
    symbol: str | None = None
    limit: str | None = None
    offset: str | None = None


class OrderHistoryParams(msgspec.Struct):
    """``GET /wapi/v1/history/orders``: ``from``/``to`` in ms (inclusive)."""

    symbol: str | None = None
    orderId: str | None = None
    limit: str | None = None
    offset: str | None = None
    since: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


class FillHistoryParams(OrderHistoryParams):
    """``GET /wapi/v1/history/fills``: also ``fillType`` (ccxt sends ``User``)."""

    fillType: str | None = None


class TradingRequests(Requests):
    """Order entry and the trader's reads."""

    @request
    def orderExecute(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "orderExecute", lambda tx, texts: self._order_reply(tx))

    @request
    def orderExecuteBatch(self, caller: Caller, req_id: Any, items: list[Mapping[str, str]], sig: Signature) -> None:
        """Several orders under one signature (``POST /api/v1/orders``), sequenced in the
        body's order and answered with one entry per item once all are durable: the order,
        or ``{code, message}`` for an item the engine refused. An item that fails its
        checks (params, tick, step) refuses the whole batch, so nothing is placed."""
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise RequestError(INVALID_REQUEST, f"a batch holds 1..{MAX_BATCH} orders")
        signed = self.check_batch_signature("orderExecute", items, sig)
        txs = []
        for i, texts in enumerate(items):
            try:
                txs.append(instructions.build("orderExecute", texts, signed.account, self.listing))
            except RequestError as exc:
                raise RequestError(exc.code, f"order {i}: {exc.message}") from exc
        batch = BatchReplies(caller.replies, req_id, len(txs))
        received = caller.received

        def go(message: bytes) -> None:
            for i, tx in enumerate(txs):
                order_reply = self._order_reply(tx)
                item = batch.item(i)
                self._submit(caller, req_id, msgspec.structs.replace(tx, auth=signed.auth(message, i)),
                             lambda replies, rid, events, r=order_reply, it=item: r(it, rid, events), received)

        caller.verified(req_id, signed, go)

    def _order_reply(self, tx: PlaceOrder) -> Callable[[Replies, Any, list], None]:
        fmt = self.fmt
        node = self.node

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            status = None
            reason = ""
            executed = executed_quote = 0
            fills = []
            oid = events[0].seq if events else 0
            for ev in events:
                cls = ev.__class__
                if cls is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if cls is Fill and ev.taker_order == oid:
                    executed += ev.quantity
                    executed_quote += ev.quote
                    fills.append({
                        "tradeId": ev.trade_id, "price": fmt.price(tx.symbol, ev.price),
                        "quantity": fmt.qty(tx.symbol, ev.quantity), "fee": fmt.quote(tx.symbol, ev.taker_fee),
                        "feeSymbol": fmt.markets[tx.symbol].quote, "isMaker": False,
                    })
                elif cls is OrderDone and ev.order_id == oid:
                    status, reason = ev.status, ev.reason
                elif cls is TriggerPlaced and ev.order_id == oid:
                    status = TRIGGER_PENDING  # held by the margin engine until its trigger price is crossed
            if status is None:
                status = PARTIALLY_FILLED if executed else NEW
            result = fmt.order(tx.symbol, oid, tx.client_id, tx.side, tx.price, tx.quantity, executed, executed_quote,
                               status, order_type=tx.order_type, tif=tx.tif, stp=tx.stp, post_only=tx.post_only,
                               quote_quantity=tx.quote_quantity, created_us=node.block_timestamp,
                               reduce_only=tx.reduce_only, trigger_price=tx.trigger_price, trigger_by=tx.trigger_by)
            result["fills"] = fills
            if status == REJECTED or reason:
                result["reason"] = reason
            replies.result(req_id, result)

        return reply

    @request
    def orderCancel(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "orderCancel", lambda tx, texts: self._cancel_reply(False))

    @request
    def orderCancelAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "orderCancelAll", lambda tx, texts: self._cancel_reply(True))

    def _cancel_reply(self, many: bool) -> Callable[[Replies, Any, list], None]:
        fmt = self.fmt

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            orders = []
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is OrderDone:
                    orders.append(fmt.order(ev.symbol, ev.order_id, ev.client_id, ev.side, ev.price, ev.quantity,
                                            ev.executed_quantity, ev.executed_quote, ev.status, created_us=ev.created))
            replies.result(req_id, orders if many else orders[0])

        return reply

    @request
    def deposit(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "deposit",
                          lambda tx, texts: self._ack_reply({**texts, "status": "Confirmed"}))

    @request
    def accountUpdate(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Backpack's ``PATCH /api/v1/account``: the account's ``leverageLimit`` (its IMF is
        at least 1/leverageLimit from this transaction on), ``autoLend`` and
        ``autoRepayBorrows``. Answers the settings the request named, as they now are."""
        self._transaction(caller, req_id, texts, sig, "accountUpdate", self._settings_reply)

    def _settings_reply(self, tx: Any, texts: Mapping[str, str]) -> Callable[[Replies, Any, list], None]:
        top = instructions.max_leverage(self.listing)

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is LeverageSet:
                    now = {"leverageLimit": str(ev.leverage or top), "autoLend": ev.auto_lend,
                           "autoRepayBorrows": ev.auto_repay}
                    return replies.result(req_id, {k: v for k, v in now.items() if k in texts})
            replies.result(req_id, {})

        return reply

    def _page(self, params: OptionalSymbolParams) -> slice:
        """The ``limit``/``offset`` window of a list (at most ``max_page`` items)."""
        top = self.max_page
        limit = instructions.page_limit(params.limit, top, top)
        offset = instructions.uint(params.offset, "offset") if params.offset is not None else 0
        return slice(offset, offset + limit)

    @request
    def orderQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        signed = self.check_signature("orderQuery", texts, sig)
        sym, order_id, client_id = instructions.order_ref(instructions.params_of(instructions.OrderRefParams, texts), self.listing)
        replies = caller.replies

        def reply(answers: list) -> None:
            view = answers[0]
            if view is None:
                replies.error(req_id, RESOURCE_NOT_FOUND, "Order not found")
            else:
                replies.result(req_id, self.fmt.resting(sym, view))

        query = Query(sym, OrderOf(signed.account, order_id, client_id))
        caller.verified(req_id, signed, lambda m: self._read([query], reply))

    @request
    def orderQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Resting orders, oldest first per market, a page at a time (``limit``/``offset``)."""
        signed = self.check_signature("orderQueryAll", texts, sig)
        params = instructions.params_of(OptionalSymbolParams, texts)
        symbols = [params.symbol] if params.symbol else list(self.listing.markets)
        for s in symbols:
            self.listing.check_symbol(s)
        page = self._page(params)
        replies = caller.replies

        def reply(answers: list) -> None:
            views = [(s, v) for s, vs in zip(symbols, answers) for v in vs][page]
            replies.result(req_id, [self.fmt.resting(s, v) for s, v in views])

        queries = [Query(s, OpenOrders(signed.account)) for s in symbols]
        caller.verified(req_id, signed, lambda m: self._read(queries, reply))

    @request
    def balanceQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        signed = self.check_signature("balanceQuery", texts, sig)
        instructions.params_of(NoParams, texts)
        replies = caller.replies

        def reply(answers: list) -> None:
            balances = answers[0]
            fmt = self.fmt
            replies.result(req_id, {
                a: {"available": fmt.asset(a, free), "locked": fmt.asset(a, held), "staked": "0"}
                for a, (free, held) in sorted(balances.items())
            })

        caller.verified(req_id, signed, lambda m: self._read([Query("risk", BalancesOf(signed.account))], reply))

    @request
    def depth(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        params = instructions.params_of(instructions.SymbolParams, texts)
        self.listing.check_symbol(params.symbol)
        caller.replies.result(req_id, self.marketdata.snapshot(params.symbol))

    def _perps(self, symbol: str | None) -> list[str]:
        """``[symbol]`` if it is a listed perpetual (INVALID_SYMBOL if not), else every perp in listing order."""
        if symbol is None:
            return [s for s, m in self.listing.markets.items() if m.perp is not None]
        self.listing.check_symbol(symbol)
        if self.listing.markets[symbol].perp is None:
            raise RequestError(INVALID_SYMBOL, f"{symbol} is not a perpetual market")
        return [symbol]

    def _account_read(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature, instruction: str,
                      message: Any, reply: Callable[[Any], Any]) -> None:
        """A signed read of the margin engine: ``message`` built for the signer's account,
        answered with ``reply(answer)``."""
        signed = self.check_signature(instruction, texts, sig)
        query = Query("risk", message(signed.account))
        replies = caller.replies
        caller.verified(req_id, signed, lambda m: self._read([query], lambda a: replies.result(req_id, reply(a[0]))))

    @request
    def positionQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Open perp positions (``GET /api/v1/position``), all or one market's, valued at the marks."""
        symbols = self._perps(instructions.params_of(OptionalSymbolParams, texts).symbol)

        def reply(view: Any) -> list:
            marks = view.marks
            return [self.fmt.position(p, marks[p.symbol].mark if p.symbol in marks else 0)
                    for p in view.positions if p.size and p.symbol in symbols]

        self._account_read(caller, req_id, texts, sig, "positionQuery", PositionsOf, reply)

    @request
    def collateralQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's collateral, equity and margin (``GET /api/v1/capital/collateral``)."""
        instructions.params_of(NoParams, texts)
        if self.fmt.settlement_asset() is None:
            raise RequestError(RESOURCE_NOT_FOUND, "No perpetual market is listed")
        self._account_read(caller, req_id, texts, sig, "collateralQuery", CollateralOf, self.fmt.collateral)

    @request
    def accountQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's settings (``GET /api/v1/account``)."""
        instructions.params_of(NoParams, texts)
        top = instructions.max_leverage(self.listing)
        self._account_read(caller, req_id, texts, sig, "accountQuery", CollateralOf,
                           lambda view: self.fmt.account(view, top))

    def _history(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature, instruction: str,
                 kind: str, item: Callable[[Any], dict]) -> None:
        """An account's funding payments or liquidation steps, newest first, optionally one
        market's, a page at a time (``limit``/``offset``)."""
        params = instructions.params_of(OptionalSymbolParams, texts)
        symbol = params.symbol
        if symbol is not None:
            self._perps(symbol)
        page = self._page(params)

        def reply(events: list) -> list:
            return [item(ev) for ev in [ev for ev in events if symbol is None or ev.symbol == symbol][page]]

        self._account_read(caller, req_id, texts, sig, instruction, lambda account: HistoryOf(account, kind), reply)

    @request
    def fundingHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Funding payments (``GET /wapi/v1/history/funding``)."""
        self._history(caller, req_id, texts, sig, "fundingHistoryQueryAll", "funding", self.fmt.funding_payment)

    @request
    def liquidationHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The steps of the account's liquidations (Satchel's own; tiers in ``format.LIQUIDATION_TIERS``)."""
        self._history(caller, req_id, texts, sig, "liquidationHistoryQueryAll", "liquidation", self.fmt.liquidation)

    def _order_filters(self, params: OrderHistoryParams) -> dict:
        """The filters of order and fill history: one market, one order, the window."""
        if params.symbol is not None:
            self.listing.check_symbol(params.symbol)
        return {"symbol": params.symbol, "order_id": instructions.uint(params.orderId, "orderId"), **self._window(params)}

    @request
    def orderHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's orders, open and done, newest first (``GET /wapi/v1/history/orders``;
        ccxt's ``fetch_order`` and ``fetch_orders``). A cancelled order keeps what it executed."""
        params = instructions.params_of(OrderHistoryParams, texts)
        self._history_read(caller, req_id, texts, sig, "orderHistoryQueryAll",
                           lambda account: history_queries.OrderHistory(account, **self._order_filters(params)),
                           history_views.orders)

    @request
    def fillHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's fills, newest first (``GET /wapi/v1/history/fills``; ccxt's ``fetch_my_trades``)."""
        params = instructions.params_of(FillHistoryParams, texts)
        kind = "all"
        if params.fillType is not None:
            kind = history_queries.FILL_TYPES.get(params.fillType)
            if kind is None:
                raise RequestError(INVALID_REQUEST, f"fillType must be one of {', '.join(history_queries.FILL_TYPES)}")
        self._history_read(caller, req_id, texts, sig, "fillHistoryQueryAll",
                           lambda account: history_queries.FillHistory(account, kind=kind, **self._order_filters(params)),
                           history_views.fills)

    def _marks(self, caller: Caller, req_id: Any, texts: Mapping[str, str], item: Callable[[str, Any], dict]) -> None:
        """A public read of every perp's prices (``MarksOf``), one item per perp it has figures for."""
        symbols = self._perps(instructions.params_of(OptionalSymbolParams, texts).symbol)
        replies = caller.replies

        def reply(answers: list) -> None:
            prices = answers[0]
            replies.result(req_id, [item(s, prices[s]) for s in symbols if s in prices])

        self._read([Query("risk", MarksOf())], reply)

    @request
    def markPrices(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Mark and index prices and the running interval's funding estimate (``GET /api/v1/markPrices``);
        a perp that has no mark yet is left out."""
        self._marks(caller, req_id, texts, self.fmt.mark_price)

    @request
    def openInterest(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Open interest in contracts (``GET /api/v1/openInterest``), as of the last published
        block; a perp that has no mark yet (so no position either) is left out."""
        ts = self.marketdata.last_timestamp
        self._marks(caller, req_id, texts, lambda s, p: self.fmt.open_interest(s, p.open_interest, ts))
