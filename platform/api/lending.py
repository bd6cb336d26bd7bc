"""The lending pool's requests: borrow and lend, positions, the pools' rates, and the
borrow/lend and interest histories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from satchel.api.caller import Caller, Replies, Signature
from satchel.api.requests import NoParams, Requests, request
from satchel.core import instructions
from satchel.core.errors import INVALID_ASSET, INVALID_REQUEST, RequestError
from satchel.core.messages import (
    LEND_SIDE_NAMES, BorrowLend, CollateralOf, LendingOf, LendMoved, PoolsOf, Query, TxRejected,
)
from satchel.history import queries as history_queries
from satchel.history import views as history_views


class _LendPaging(msgspec.Struct):
    """What the lending histories share: one position, a page, a time range (ms,
    inclusive), an order."""

    positionId: str | None = None
    limit: str | None = None
    offset: str | None = None
    since: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    sortDirection: str | None = None


class LendHistoryParams(_LendPaging):
    """``GET /wapi/v1/history/borrowLend``: ``symbol`` is an asset, ``type`` an eventType,
    ``sources`` a comma-separated list of sources."""

    symbol: str | None = None
    type: str | None = None
    sources: str | None = None


class InterestHistoryParams(_LendPaging):
    """``GET /wapi/v1/history/interest``: ``asset`` (or ``symbol``) an asset, ``source``
    BorrowLend (everything here) or UnrealizedPnl (nothing: Satchel charges no interest on
    unrealized PnL); ``from``/``to`` on the hour's end."""

    asset: str | None = None
    symbol: str | None = None
    source: str | None = None


INTEREST_SOURCES = ("BorrowLend", "UnrealizedPnl")


class LendingRequests(Requests):
    """The lending pool's requests."""

    @request
    def borrowLendExecute(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Backpack's ``POST /api/v1/borrowLend`` (``symbol`` an asset, ``side`` Borrow or
        Lend, ``quantity``): Lend repays a borrow first and lends the rest, Borrow redeems
        a lend first and borrows the rest. Answered once durable with the request and the
        account's position in the asset afterwards (``netQuantity``: lent +, borrowed -);
        REST answers an empty body, as Backpack does. A refusal (INSUFFICIENT_FUNDS,
        INSUFFICIENT_LIQUIDITY, AMOUNT_TOO_SMALL, BORROW_LIMIT, ...) changed nothing."""
        self._transaction(caller, req_id, texts, sig, "borrowLendExecute", self._borrow_lend_reply)

    def _borrow_lend_reply(self, tx: BorrowLend, texts: Mapping[str, str]) -> Callable[[Replies, Any, list], None]:
        fmt = self.fmt

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            net = 0
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is LendMoved and ev.account == tx.account and ev.asset == tx.asset:
                    net = ev.lent - ev.borrowed  # the last one (an auto-lend sweep may follow) is the position now
            replies.result(req_id, {"symbol": tx.asset, "side": LEND_SIDE_NAMES[tx.side],
                                    "quantity": fmt.asset(tx.asset, tx.quantity), "netQuantity": fmt.asset(tx.asset, net)})

        return reply

    @request
    def borrowLendPositionQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's open lend and borrow positions (``GET /api/v1/borrowLend/positions``),
        valued as the margin engine values collateral. A position's ``id`` is the one its
        movements carry in the history (``borrowHistoryQueryAll``); null on a node that
        keeps no history."""
        signed = self.check_signature("borrowLendPositionQuery", texts, sig)
        instructions.params_of(NoParams, texts)
        account = signed.account
        replies = caller.replies
        history = self.history
        fmt = self.fmt

        def answer(positions: list, prices: dict[str, int], ids: Any) -> None:
            ids = ids if isinstance(ids, dict) else {}  # a failed history read costs the ids, not the answer
            try:
                items = [fmt.lend_position(p, prices.get(p.asset, 0), ids.get(p.asset))
                         for p in positions if p.asset in fmt.assets]
            except Exception as exc:  # runs in the publisher's or the history's callback: never raise there
                return replies.failed(req_id, exc)
            replies.result(req_id, items)

        def read(answers: list) -> None:
            positions = [p for p in answers[0] if p.lent or p.borrowed]
            prices = {r.asset: r.price for r in answers[1].assets}
            if history is None or not positions:
                return answer(positions, prices, {})
            # queued after the blocks this state includes: the ids are those of these positions
            history.read(history_queries.OpenLendPositions(account, tuple(p.asset for p in positions)),
                         lambda ids: answer(positions, prices, ids))

        queries = [Query("risk", LendingOf(account)), Query("risk", CollateralOf(account))]  # back to back: one state
        caller.verified(req_id, signed, lambda m: self._read(queries, read))

    @request
    def borrowHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's borrow and lend movements, newest first (``GET /wapi/v1/history/borrowLend``):
        ``type`` (Borrow, BorrowRepay, Lend, LendRedeem), ``sources`` (comma-separated),
        ``symbol`` (an asset), ``positionId``, ``from``/``to`` (ms), ``limit``/``offset``,
        ``sortDirection`` (Asc, Desc)."""
        params = instructions.params_of(LendHistoryParams, texts)

        def query(account: str) -> history_queries.LendHistory:
            if params.symbol is not None and params.symbol not in self.listing.assets:
                raise RequestError(INVALID_ASSET, f"Unknown asset {params.symbol}")
            if params.type is not None and params.type not in history_queries.LEND_KINDS:
                raise RequestError(INVALID_REQUEST, f"type must be one of {', '.join(history_queries.LEND_KINDS)}")
            sources = tuple(sorted({s for s in (params.sources or "").split(",") if s}))
            unknown = [s for s in sources if s not in history_queries.LEND_SOURCES]
            if unknown:
                raise RequestError(INVALID_REQUEST, f"unknown source {unknown[0]}")
            return history_queries.LendHistory(account, asset=params.symbol, kind=params.type, sources=sources,
                                               **self._position_page(params))

        self._history_read(caller, req_id, texts, sig, "borrowHistoryQueryAll", query, history_views.lend_moves)

    @request
    def interestHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's interest per position and hour of sequenced time, newest first
        (``GET /wapi/v1/history/interest``): paymentType Lend (earned) or Borrow (owed).
        Filters ``asset`` (or ``symbol``), ``positionId``, ``source``, ``from``/``to`` (ms,
        on the hour's end), ``limit``/``offset``, ``sortDirection`` (Asc, Desc). An hour is
        listed once it is over (see ``history.queries.InterestHistory``)."""
        params = instructions.params_of(InterestHistoryParams, texts)

        def query(account: str) -> history_queries.InterestHistory:
            if params.asset is not None and params.symbol is not None and params.asset != params.symbol:
                raise RequestError(INVALID_REQUEST, "asset and symbol differ")
            asset = params.asset if params.asset is not None else params.symbol
            if asset is not None and asset not in self.listing.assets:
                raise RequestError(INVALID_ASSET, f"Unknown asset {asset}")
            if params.source is not None and params.source not in INTEREST_SOURCES:
                raise RequestError(INVALID_REQUEST, f"source must be one of {', '.join(INTEREST_SOURCES)}")
            page = self._position_page(params)
            if params.source == "UnrealizedPnl":
                page["limit"] = 0
            return history_queries.InterestHistory(account, asset=asset, **page)

        self._history_read(caller, req_id, texts, sig, "interestHistoryQueryAll", query, history_views.interest)

    def _position_page(self, params: _LendPaging) -> dict[str, Any]:
        """A lending history's position, order and window, checked."""
        if params.sortDirection not in (None, "Asc", "Desc"):
            raise RequestError(INVALID_REQUEST, "sortDirection must be Asc or Desc")
        return {"position_id": instructions.uint(params.positionId, "positionId", 2**63),
                "ascending": params.sortDirection == "Asc", **self._window(params)}

    @request
    def borrowLendMarkets(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Every lending pool's rates and totals (``GET /api/v1/borrowLend/markets``), as of
        the last block."""
        replies = caller.replies
        fmt = self.fmt
        node = self.node

        def reply(answers: list) -> None:
            replies.result(req_id, [fmt.lending_market(p, node.block_timestamp) for p in answers[0]])

        self._read([Query("lending", PoolsOf())], reply)
