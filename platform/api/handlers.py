"""The exchange's request handlers, apart from any transport.

``Api`` has one method per request (``orderExecute``, ``orderCancel``, ...), each taking
the caller, the request id, the params as the literal texts the client signed (see
``gateway.protocol.split_params``) and the signature parts ``[apiKey, signature,
timestamp, window]`` (or None). A method never raises: it answers through the caller's
``Replies`` -- ``result(id, payload)``, ``error(id, code, message)``, or ``failed(id,
exc)`` for a failure that is not a known refusal -- now, or once the request's block is
durable. The WebSocket session turns those into frames; a REST front end or a remote
gateway would turn them into its own responses.

A request is checked (params, tick and step, signature presence and window) before
anything else happens; its signature is then verified (possibly in a worker), and only
then is it sequenced or read. Verification runs concurrently, but a ``Caller``'s
requests are acted on in the order they arrived (its queue is drained from the head
only), so "place then cancel" from one client is never reordered. The transport makes
one ``Caller`` per client (per connection), and sets ``Caller.received`` to the time
each request arrived (for the per-stage latencies).
"""

from __future__ import annotations

from collections import deque
from datetime import date, timedelta
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, Protocol

import msgspec
import trio

from satchel.api.chains import Addresses, ChainStatus, Reconciliation
from satchel.api.rewards import board_view, rewards_view
from satchel.api.format import Formatter
from satchel.api.listing import Listing
from satchel.api.marketdata import MarketData
from satchel.api.stats import PlatformStats
from satchel.clock import now_ms
from satchel.core import instructions
from satchel.core.amounts import asset_decimals
from satchel.core.engine import MAX_WINDOW_MS
from satchel.core.errors import (
    EXPIRED, INVALID_ASSET, INVALID_REQUEST, INVALID_SIGNATURE, INVALID_SYMBOL, MAINTENANCE, RESOURCE_NOT_FOUND, UNAUTHORIZED,
    Code, RequestError,
)
from satchel.core.messages import (
    LEND_SIDE_NAMES, NEW, PARTIALLY_FILLED, REJECTED, TRIGGER_PENDING, Auth, BalancesOf, BorrowLend, ChainCredited,
    CollateralOf, Fill, HistoryOf, LedgerOf, LendingOf, LendMoved, LeverageSet, MarksOf, OpenOrders, OrderDone, OrderOf,
    LeaderboardOf, PermissionsOf, PlaceOrder, MovesOf, PoolsOf, PositionsOf, Query, RewardsOf, TriggerPlaced, TxRejected, Withdraw, WithdrawalsOf,
    WithdrawalUpdate,
)
from satchel.history import queries as history_queries, views as history_views
from satchel.history.store import Store
from satchel.signing import batch_signing_string, decode_key, decode_signature, needs_quoting, signing_string

# the requests, by the name a client calls them (each is a method of ``Api``)
METHODS = (
    "orderExecute", "orderCancel", "orderCancelAll", "orderQuery", "orderQueryAll", "balanceQuery", "depth",
    "ledgerTotals", "nodeStats", "deposit", "adminSetTrading", "adminSetFees",
    "positionQuery", "collateralQuery", "fundingHistoryQueryAll", "liquidationHistoryQueryAll", "markPrices",
    "openInterest", "accountUpdate", "accountQuery", "orderExecuteBatch", "orderHistoryQueryAll", "fillHistoryQueryAll",
    "borrowLendMarkets", "platformStats", "borrowLendExecute", "borrowLendPositionQuery", "borrowHistoryQueryAll",
    "interestHistoryQueryAll", "withdraw", "withdrawalQueryAll", "depositQueryAll", "depositAddressQuery",
    "chainStatusQuery", "chainWorkQuery", "reconcileQuery", "chainStatus", "approveSweep", "depositConfirmed", "depositConfirmedBatch",
    "withdrawalSent", "withdrawalConfirmed", "withdrawalFailed", "custodyMoveDone", "adminSetProfile", "adminSetTierLimits",
    "adminSetPermission", "accountPermissionsQuery", "adminSetSeason", "adminSetMultiplier", "referralCodeCreate",
    "referralCodeUse", "rewardsQuery", "leaderboard", "adminTransfer",
)
MAX_BATCH = 50  # orders in one POST /api/v1/orders (each journaled record keeps the whole signed batch)
# requests whose params are a list of objects, each signed as its own segment
BATCHED = frozenset({"orderExecuteBatch", "depositConfirmedBatch"})
WORK_LIMIT = 1_000  # withdrawals and custody moves a chainWorkQuery answer lists at most, oldest first
# a chain adapter's requests (``satchel chains``): a connection that sends one is handled
# between orders from then on (``gateway.session``)
CUSTODY_REPORTS = frozenset({"depositConfirmed", "depositConfirmedBatch", "withdrawalSent", "withdrawalConfirmed",
                             "withdrawalFailed", "custodyMoveDone", "chainWorkQuery"})
# requests that read no params: whatever params arrive, even malformed ones, are ignored
PARAMLESS = frozenset({"ledgerTotals", "platformStats", "chainStatusQuery"})

Signature = list[str] | None


class AccountParams(msgspec.Struct):
    account: str | None = None


class ChainWorkParams(msgspec.Struct):
    chain: str
    after: str | None = None


class RewardsParams(msgspec.Struct):
    account: str | None = None
    season: str | None = None


class LeaderboardParams(msgspec.Struct):
    season: str | None = None
    limit: str | None = None


class OptionalSymbolParams(msgspec.Struct):
    symbol: str | None = None
    limit: str | None = None
    offset: str | None = None


class NoParams(msgspec.Struct):
    pass


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


class _CapitalPaging(msgspec.Struct):
    """What the deposit and withdrawal histories share: a page and a time range (ms, inclusive)."""

    limit: str | None = None
    offset: str | None = None
    since: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


class DepositHistoryParams(_CapitalPaging):
    """``GET /wapi/v1/capital/deposits``: ``excludePlatform`` leaves out the admin faucet's
    credits. ccxt's ``endTime`` (and anything else unknown) is ignored."""

    excludePlatform: instructions.Bool = "false"


class WithdrawalHistoryParams(_CapitalPaging):
    """``GET /wapi/v1/capital/withdrawals``: ``id`` one withdrawal, ``clientId`` the ones
    requested with that client id."""

    id: str | None = None
    clientId: str | None = None


class DepositAddressParams(msgspec.Struct):
    blockchain: str


class Replies(Protocol):
    """Where a caller's answers go; provided by the transport."""

    closed: bool  # once set, nothing more is answered or acted on for this caller

    def result(self, req_id: Any, result: Any) -> None: ...

    def error(self, req_id: Any, code: str | int, message: str) -> None: ...

    def failed(self, req_id: Any, exc: Exception) -> None: ...


class Verifier(Protocol):
    def check(self, public: bytes, candidates: tuple, signature: bytes, done: Callable[[bytes | None], None]) -> None: ...


class Signed:
    """A request's checked signature parts."""

    __slots__ = ("account", "public", "signature", "timestamp", "window", "texts", "candidates", "batch")

    def auth(self, message: bytes, item: int | None = 0) -> Auth:
        """The journal's record of this request (of item ``item`` of a batch; None: of a
        transaction carrying the whole batch), given the form the signature covered."""
        encoded = message is not self.candidates[0]
        if self.batch:
            params = () if item is None else self.batch[item]
            return Auth(params, encoded, self.signature, self.timestamp, self.window, self.batch, item or 0)
        return Auth(tuple(sorted(self.texts.items())), encoded, self.signature, self.timestamp, self.window)


class _Pending:
    __slots__ = ("req_id", "action", "verified", "message")

    def __init__(self, req_id: Any, action: Callable[[bytes], None]):
        self.req_id = req_id
        self.action = action
        self.verified = False
        self.message: bytes | None = None


class Caller:
    """One client of the API: its replies, and the queue that keeps its signed requests
    in arrival order."""

    __slots__ = ("replies", "received", "_pending", "_verifier")

    def __init__(self, replies: Replies, verifier: Verifier):
        self.replies = replies
        self.received = 0.0  # trio time the request being handled arrived
        self._pending: deque[_Pending] = deque()
        self._verifier = verifier

    def verified(self, req_id: Any, signed: Signed, action: Callable[[bytes], None]) -> None:
        """Run ``action(message)`` once the signature checks out, in arrival order;
        ``INVALID_SIGNATURE`` if it does not."""
        pending = _Pending(req_id, action)
        self._pending.append(pending)

        def done(message: bytes | None) -> None:
            pending.verified = True
            pending.message = message
            self._drain()

        self._verifier.check(signed.public, signed.candidates, signed.signature, done)

    def _drain(self) -> None:
        q = self._pending
        replies = self.replies
        while q and q[0].verified:
            p = q.popleft()
            if replies.closed:
                continue
            if p.message is None:
                replies.error(p.req_id, INVALID_SIGNATURE, "Signature does not match")
                continue
            try:
                p.action(p.message)
            except RequestError as exc:
                replies.error(p.req_id, exc.code, exc.message)
            except Exception as exc:  # runs in the verifier's task: never let it fail there
                replies.failed(p.req_id, exc)


class _BatchReplies:
    """Collects a batch's per-item answers; answers the request once all are in."""

    def __init__(self, replies: Replies, req_id: Any, n: int):
        self.replies = replies
        self.req_id = req_id
        self.results: list = [None] * n
        self.left = n

    def item(self, i: int) -> Replies:
        return _BatchItem(self, i)

    def _done(self, i: int, answer: Any) -> None:
        self.results[i] = answer
        self.left -= 1
        if self.left == 0:
            self.replies.result(self.req_id, self.results)


class _BatchItem:
    """One item's ``Replies``: its answer goes into the batch's list."""

    __slots__ = ("batch", "i")

    def __init__(self, batch: _BatchReplies, i: int):
        self.batch = batch
        self.i = i

    @property
    def closed(self) -> bool:
        return self.batch.replies.closed

    def result(self, req_id: Any, result: Any) -> None:
        self.batch._done(self.i, result)

    def error(self, req_id: Any, code: str | int, message: str) -> None:
        self.batch._done(self.i, {"code": str(code), "message": message})

    def failed(self, req_id: Any, exc: Exception) -> None:
        self.batch.replies.failed(req_id, exc)


def _request(method: Callable) -> Callable:
    """An API method answers refusals through the caller and never raises."""

    def call(self: "Api", caller: Caller, req_id: Any, texts: Mapping[str, str], signature: Signature) -> None:
        try:
            method(self, caller, req_id, texts, signature)
        except RequestError as exc:
            caller.replies.error(req_id, exc.code, exc.message)
        except Exception as exc:
            caller.replies.failed(req_id, exc)

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _acked(instruction: str, doc: str | None = None) -> Callable:
    """The API method for a signed transaction answered with its params once applied."""

    def method(self: "Api", caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, instruction, lambda tx, texts: self._ack_reply(texts))

    method.__name__ = instruction
    method.__doc__ = doc
    return _request(method)


class Api:
    """The requests, against a node (``submit``, ``sequencer.read``, ``admin``,
    ``latency``), the listing the edges know, the payload formatter, a signature
    verifier and the market data (for ``depth``). ``stats()`` adds the transport's
    figures to ``nodeStats``."""

    def __init__(self, node: Any, listing: Listing, fmt: Formatter, verifier: Verifier, marketdata: MarketData, *,
                 max_page: int = 1000, stats: Callable[[], dict] = dict, history: Store | None = None,
                 platform_stats: PlatformStats | None = None, chains: ChainStatus | None = None,
                 reconciliation: Reconciliation | None = None):
        self.node = node
        self.listing = listing
        self.fmt = fmt
        self.verifier = verifier
        self.marketdata = marketdata
        self.max_page = max_page
        self.stats = stats
        self.history = history  # the order and fill history (``satchel.history``); None: not kept
        self.platform_stats = platform_stats  # the headline figures (``satchel.api.stats``); None: not kept
        self.chains = chains  # the chains' status (``satchel.api.chains``); None: not kept
        self.addresses = Addresses(node)  # deposit addresses
        self.reconciliation = reconciliation  # chains against books (``satchel.api.chains``); None: not offered

    def caller(self, replies: Replies) -> Caller:
        """A new client (one per connection), answered through ``replies``."""
        return Caller(replies, self.verifier)

    # ------------------------------------------------------------------ signatures

    def check_signature(self, instruction: str, texts: Mapping[str, str], sig: Signature) -> Signed:
        """The signature parts checked for shape and window (not yet verified), or RequestError."""
        s = self._signed(sig)
        s.texts, s.batch = texts, ()
        # the signed string uses the integers as parsed, so the journal can rebuild it
        raw = signing_string(instruction, texts, s.timestamp, s.window)
        if needs_quoting(texts):  # ccxt signs percent-encoded values: accept that form too
            s.candidates = (raw, signing_string(instruction, texts, s.timestamp, s.window, encoded=True))
        else:
            s.candidates = (raw,)
        return s

    def check_batch_signature(self, instruction: str, items: list[Mapping[str, str]], sig: Signature) -> Signed:
        """As ``check_signature``, for a batch whose one signature covers every item."""
        s = self._signed(sig)
        s.texts, s.batch = {}, tuple(tuple(sorted(t.items())) for t in items)
        raw = batch_signing_string(instruction, s.batch, s.timestamp, s.window)
        if any(needs_quoting(t) for t in items):
            s.candidates = (raw, batch_signing_string(instruction, s.batch, s.timestamp, s.window, encoded=True))
        else:
            s.candidates = (raw,)
        return s

    def _signed(self, sig: Signature) -> Signed:
        if not sig:
            raise RequestError(UNAUTHORIZED, "Missing signature")
        if len(sig) != 4:
            raise RequestError(INVALID_REQUEST, "signature must be [apiKey, signature, timestamp, window]")
        public = decode_key(sig[0])
        signature = decode_signature(sig[1])
        if public is None or signature is None:
            raise RequestError(INVALID_SIGNATURE, "Malformed API key or signature")
        ts = instructions.uint(sig[2], "timestamp")
        window = instructions.uint(sig[3], "window")
        if not 0 < window <= MAX_WINDOW_MS:
            raise RequestError(INVALID_REQUEST, f"window must be 1..{MAX_WINDOW_MS}")
        now = now_ms()
        if ts + window < now or ts - window > now:
            raise RequestError(EXPIRED, "Request timestamp is outside its window")
        s = Signed()
        s.account, s.public, s.signature, s.timestamp, s.window = sig[0], public, signature, ts, window
        return s

    # ------------------------------------------------------------------ sequencing and reads

    def _submit(self, caller: Caller, req_id: Any, tx: Any, reply: Callable[[Replies, Any, list], None],
                received: float) -> None:
        node = self.node
        verified = trio.current_time()
        replies = caller.replies

        def done(events: list) -> None:
            reply(replies, req_id, events)
            if node.latency.sampled():
                cut, _, durable = node.block_times
                node.latency.record_request(received, verified, cut, durable, trio.current_time())

        try:
            node.submit(tx, done)
        except trio.ClosedResourceError as exc:
            raise RequestError(MAINTENANCE, "Node is shutting down") from exc

    def _read(self, queries: list[Query], reply: Callable[[list], None]) -> None:
        """Ask the engine typed queries between blocks; ``reply(answers)`` once all are in."""
        answers: list = []

        def collect(answer: Any) -> None:
            answers.append(answer)  # reads are answered in the order they were queued
            if len(answers) == len(queries):
                reply(answers)

        try:
            for q in queries:
                self.node.sequencer.read(q, collect)
        except trio.ClosedResourceError as exc:
            raise RequestError(MAINTENANCE, "Node is shutting down") from exc

    def _transaction(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature, instruction: str,
                     reply_for: Callable[[Any, Mapping[str, str]], Callable[[Replies, Any, list], None]]) -> None:
        """Check, build (``instructions.build``), verify and sequence a signed transaction;
        ``reply_for(tx, texts)`` gives the function that answers with its events."""
        signed = self.check_signature(instruction, texts, sig)
        decl = instructions.BY_NAME[instruction]
        if decl.admin and signed.account != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, f"{instruction} must be signed by the admin key")
        tx = instructions.build(instruction, texts, signed.account, self.listing)
        reply = reply_for(tx, texts)
        received = caller.received

        def go(message: bytes) -> None:
            self._submit(caller, req_id, msgspec.structs.replace(tx, auth=signed.auth(message)), reply, received)

        caller.verified(req_id, signed, go)

    # ------------------------------------------------------------------ order entry

    @_request
    def orderExecute(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "orderExecute", lambda tx, texts: self._order_reply(tx))

    @_request
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
        batch = _BatchReplies(caller.replies, req_id, len(txs))
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

    @_request
    def orderCancel(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "orderCancel", lambda tx, texts: self._cancel_reply(False))

    @_request
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

    # ------------------------------------------------------------------ admin and account settings

    def _ack_reply(self, result: Mapping[str, str]) -> Callable[[Replies, Any, list], None]:
        """Answers ``result`` once the transaction applied, or the engine's refusal."""

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
            replies.result(req_id, result)

        return reply

    # transactions answered with their params once applied, or the engine's refusal
    adminSetTrading = _acked("adminSetTrading")
    adminSetFees = _acked("adminSetFees")
    # compliance (``actors.compliance``), each in force from its sequence number
    adminSetProfile = _acked("adminSetProfile", """An account's KYC tier, jurisdiction and tags
        (``{"account", "kycTier", "jurisdiction", "tags"}``, tags comma-separated; admin).""")
    adminSetTierLimits = _acked("adminSetTierLimits", """A KYC tier's limits (``{"tier",
        "withdrawalsPerDay", "maxOrderNotional"}``: withdrawals a UTC day, absent for none;
        ``ASSET:decimal`` pairs, the largest order notional per quote asset; admin).""")
    adminTransfer = _acked("adminTransfer", """Move ``quantity`` of ``asset`` from ``source``'s free
        balance to ``target``'s (admin; ``satchel compensate`` pays losers from a treasury).""")
    # points seasons (``actors.rewards``)
    adminSetSeason = _acked("adminSetSeason", """A points season (``{"id", "name", "start", "end"
        (ms of sequenced time), "asset", "makerWeight", "takerWeight" (percent of a point per
        whole unit traded), "referralBps"}``; admin).""")
    adminSetMultiplier = _acked("adminSetMultiplier", """A points multiplier (``{"factor"
        (decimal), "fromHeight", "toHeight", "account" or "tag" or neither for everyone}``;
        admin); a range already past applies to the points earned there.""")
    referralCodeCreate = _acked("referralCodeCreate", """The account's referral code (``{"code"}``).""")
    referralCodeUse = _acked("referralCodeUse", """Join under a referrer's code (``{"code"}``), once.""")
    adminSetPermission = _acked("adminSetPermission", """Allow, deny or ``inherit`` (remove the
        rule) a ``product`` or a market (``symbol``) for an ``account`` or a ``jurisdiction``
        (``*``: every jurisdiction); admin.""")
    # chains: the admin's control (chainStatus is also the adapter's), and the reports of an
    # adapter running in its own process, signed with its key
    chainStatus = _acked("chainStatus", """Pause or resume a chain's deposits and withdrawals
        (``{"chain", "paused", "reason"}``), signed by the admin key or the chain's adapter key
        (the engine checks which).""")
    approveSweep = _acked("approveSweep", """Move ``quantity`` of ``symbol`` from cold storage to
        the hot wallet of ``chain`` (admin); queued withdrawals it covers become pending.""")
    depositConfirmed = _acked("depositConfirmed")

    @_request
    def depositConfirmedBatch(self, caller: Caller, req_id: Any, items: list[Mapping[str, str]], sig: Signature) -> None:
        """An adapter's deposits of a block under one signature (signed as a batch of
        ``depositConfirmed`` segments), applied as one transaction: answered with one
        ``{"txHash", "logIndex", "credited"}`` per item (false: credited before)."""
        if not isinstance(items, list):
            raise RequestError(INVALID_REQUEST, "params must be an array of deposits")
        signed = self.check_batch_signature("depositConfirmed", items, sig)
        tx = instructions.build("depositConfirmed", items, signed.account, self.listing)
        received = caller.received

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            credited = set()
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is ChainCredited:
                    credited.add((ev.tx_hash, ev.log_index))
            replies.result(req_id, [{"txHash": d.tx_hash, "logIndex": d.log_index,
                                     "credited": (d.tx_hash, d.log_index) in credited} for d in tx.deposits])

        def go(message: bytes) -> None:
            # the items are journaled once, in the transaction, when their texts are canonical
            signed_tx = msgspec.structs.replace(tx, auth=signed.auth(message, None))
            decimals = asset_decimals(self.listing.assets.values())
            self._submit(caller, req_id, instructions.compact(signed_tx, decimals), reply, received)

        caller.verified(req_id, signed, go)

    withdrawalSent = _acked("withdrawalSent")
    withdrawalConfirmed = _acked("withdrawalConfirmed")
    withdrawalFailed = _acked("withdrawalFailed")
    custodyMoveDone = _acked("custodyMoveDone", """A custody move (``chainWorkQuery``'s ``moves``: ``seq``,
        ``symbol``) carried out on chain, from the chain's adapter: the books stop asking for it.""")

    @_request
    def deposit(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, "deposit",
                          lambda tx, texts: self._ack_reply({**texts, "status": "Confirmed"}))

    @_request
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

    # ------------------------------------------------------------------ lending

    @_request
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

    @_request
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

    @_request
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

    @_request
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

    # ------------------------------------------------------------------ queries

    def _page(self, params: OptionalSymbolParams) -> slice:
        """The ``limit``/``offset`` window of a list (at most ``max_page`` items)."""
        top = self.max_page
        limit = instructions.uint(params.limit, "limit", top + 1) if params.limit is not None else top
        offset = instructions.uint(params.offset, "offset") if params.offset is not None else 0
        return slice(offset, offset + limit)

    @_request
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

    @_request
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

    @_request
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

    @_request
    def ledgerTotals(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Per asset: deposits, withdrawals, fees collected and the sum of all balances,
        so anyone can check that deposits - withdrawals = balances + fees."""
        replies = caller.replies

        def reply(answers: list) -> None:
            ledger = answers[0]
            fmt = self.fmt
            replies.result(req_id, {
                a: {"deposits": fmt.asset(a, dep), "withdrawals": fmt.asset(a, wd), "fees": fmt.asset(a, fees),
                    "balances": fmt.asset(a, bal)}
                for a, (dep, wd, fees, bal) in sorted(ledger.items())
            })

        self._read([Query("risk", LedgerOf())], reply)

    @_request
    def nodeStats(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Per-stage latency percentiles (us) since the node started or was last reset
        (``{"reset": true}``, signed by the admin key); see ``satchel.latency``."""
        latency = self.node.latency
        result = {"stages": latency.summary(), **self.stats()}
        if texts.get("reset") != "true":
            caller.replies.result(req_id, result)
            return
        signed = self.check_signature("nodeStats", texts, sig)
        if signed.account != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, "reset must be signed by the admin key")

        def go(message: bytes) -> None:
            latency.reset()
            caller.replies.result(req_id, result)

        caller.verified(req_id, signed, go)

    @_request
    def depth(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        params = instructions.params_of(instructions.SymbolParams, texts)
        self.listing.check_symbol(params.symbol)
        caller.replies.result(req_id, self.marketdata.snapshot(params.symbol))

    # ------------------------------------------------------------------ perpetuals

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

    @_request
    def accountPermissionsQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's effective permissions and where each comes from: its profile, each
        product and market allowed or not with the rule's source (``account``,
        ``jurisdiction:<code>``, ``jurisdiction:*`` or ``default``) and sequence number, its
        tier's limits and today's withdrawals. The admin key may name another ``account``."""
        params = instructions.params_of(AccountParams, texts)
        signed = self.check_signature("accountPermissionsQuery", texts, sig)
        account = self._subject(signed.account, params.account, "permissions")
        fmt = self.fmt
        query = Query("risk", PermissionsOf(account))
        replies = caller.replies

        def reply(answers: list) -> None:
            view = answers[0]
            if view["withdrawals"] is not None:  # days since the epoch, as the UTC date
                view["withdrawals"]["day"] = (date(1970, 1, 1) + timedelta(days=view["withdrawals"]["day"])).isoformat()
            if view["limits"] is not None:
                view["limits"]["maxOrderNotional"] = {a: fmt.asset(a, v) for a, v in view["limits"]["maxOrderNotional"].items()
                                                      if a in fmt.assets}
            replies.result(req_id, view)

        caller.verified(req_id, signed, lambda m: self._read([query], reply))

    @_request
    def rewardsQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's points in a season (``season``, default the latest): total and by
        source, rank, volume, streak, achievements with their block heights, referral code,
        referrer and referees, the points of each block it traded in (the last 1,000 at
        least) and the multipliers that apply. The admin key may name another ``account``."""
        params = instructions.params_of(RewardsParams, texts)
        season = instructions.uint(params.season, "season", 2**32)
        signed = self.check_signature("rewardsQuery", texts, sig)
        account = self._subject(signed.account, params.account, "rewards")
        query = Query("rewards", RewardsOf(account, season))
        replies = caller.replies
        caller.verified(req_id, signed, lambda m: self._read([query], lambda a: self._found(replies, req_id,
                                                                                             rewards_view(a[0]))))

    @_request
    def leaderboard(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """A season's leaderboard (``season``, default the latest; ``limit`` 1..1000, default
        100): ``{season, accounts, rows: [{rank, account, points}]}`` as of the last block."""
        params = instructions.params_of(LeaderboardParams, texts)
        season = instructions.uint(params.season, "season", 2**32)
        limit = instructions.uint(params.limit, "limit", self.max_page + 1) if params.limit is not None else 100
        if not limit:
            raise RequestError(INVALID_REQUEST, f"limit must be 1..{self.max_page}")
        replies = caller.replies
        self._read([Query("rewards", LeaderboardOf(season, limit))],
                   lambda a: self._found(replies, req_id, board_view(a[0])))

    @staticmethod
    def _found(replies: Replies, req_id: Any, answer: Any) -> None:
        if answer is None:
            replies.error(req_id, RESOURCE_NOT_FOUND, "No such season")
        else:
            replies.result(req_id, answer)

    def _subject(self, signer: str, named: str | None, what: str) -> str:
        """The account a signed read is about: the signer's, or one the admin key names."""
        if named is None or named == signer:
            return signer
        if signer != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, f"only the admin key may read another account's {what}")
        return named

    @_request
    def positionQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Open perp positions (``GET /api/v1/position``), all or one market's, valued at the marks."""
        symbols = self._perps(instructions.params_of(OptionalSymbolParams, texts).symbol)

        def reply(view: Any) -> list:
            marks = view.marks
            return [self.fmt.position(p, marks[p.symbol].mark if p.symbol in marks else 0)
                    for p in view.positions if p.size and p.symbol in symbols]

        self._account_read(caller, req_id, texts, sig, "positionQuery", PositionsOf, reply)

    @_request
    def collateralQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's collateral, equity and margin (``GET /api/v1/capital/collateral``)."""
        instructions.params_of(NoParams, texts)
        if self.fmt.settlement_asset() is None:
            raise RequestError(RESOURCE_NOT_FOUND, "No perpetual market is listed")
        self._account_read(caller, req_id, texts, sig, "collateralQuery", CollateralOf, self.fmt.collateral)

    @_request
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

    @_request
    def fundingHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Funding payments (``GET /wapi/v1/history/funding``)."""
        self._history(caller, req_id, texts, sig, "fundingHistoryQueryAll", "funding", self.fmt.funding_payment)

    @_request
    def liquidationHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The steps of the account's liquidations (Satchel's own; tiers in ``format.LIQUIDATION_TIERS``)."""
        self._history(caller, req_id, texts, sig, "liquidationHistoryQueryAll", "liquidation", self.fmt.liquidation)

    # ------------------------------------------------------------------ order and fill history

    def _history_read(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature, instruction: str,
                      query: Callable[[str], Any], view: Callable[[Formatter, list], list]) -> None:
        """A signed read of the history database (``satchel.history``): ``query(account)``
        checks the params and gives the query, which is run after every block published so
        far, and ``view(fmt, rows)`` answers."""
        signed = self.check_signature(instruction, texts, sig)
        history = self.history
        if history is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node keeps no order history")
        q = query(signed.account)
        replies = caller.replies

        def reply(rows: Any) -> None:
            if isinstance(rows, RequestError):
                replies.error(req_id, rows.code, rows.message)
            elif isinstance(rows, Exception):
                replies.failed(req_id, rows)
            else:
                replies.result(req_id, view(self.fmt, rows))

        caller.verified(req_id, signed, lambda m: history.read(q, reply))

    @staticmethod
    def _window(params: Any) -> dict:
        """A history read's ``from``/``to`` (ms, inclusive) as µs bounds and its page:
        ``limit`` defaults to 100 (at most 1000)."""
        uint = instructions.uint
        # below 2**53 ms, so their µs stay within SQLite's 64-bit integers
        since, until = uint(params.since, "from", 2**53), uint(params.to, "to", 2**53)
        return {
            "since_us": None if since is None else since * 1000,
            "until_us": None if until is None else (until + 1) * 1000,
            "limit": history_queries.DEFAULT_LIMIT if params.limit is None else
            uint(params.limit, "limit", history_queries.MAX_LIMIT + 1),
            "offset": uint(params.offset, "offset") or 0,
        }

    def _order_filters(self, params: OrderHistoryParams) -> dict:
        """The filters of order and fill history: one market, one order, the window."""
        if params.symbol is not None:
            self.listing.check_symbol(params.symbol)
        return {"symbol": params.symbol, "order_id": instructions.uint(params.orderId, "orderId"), **self._window(params)}

    @_request
    def orderHistoryQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's orders, open and done, newest first (``GET /wapi/v1/history/orders``;
        ccxt's ``fetch_order`` and ``fetch_orders``). A cancelled order keeps what it executed."""
        params = instructions.params_of(OrderHistoryParams, texts)
        self._history_read(caller, req_id, texts, sig, "orderHistoryQueryAll",
                           lambda account: history_queries.OrderHistory(account, **self._order_filters(params)),
                           history_views.orders)

    @_request
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

    @_request
    def borrowLendMarkets(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Every lending pool's rates and totals (``GET /api/v1/borrowLend/markets``), as of
        the last block."""
        replies = caller.replies
        fmt = self.fmt
        node = self.node

        def reply(answers: list) -> None:
            replies.result(req_id, [fmt.lending_market(p, node.block_timestamp) for p in answers[0]])

        self._read([Query("lending", PoolsOf())], reply)

    @_request
    def markPrices(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Mark and index prices and the running interval's funding estimate (``GET /api/v1/markPrices``);
        a perp that has no mark yet is left out."""
        self._marks(caller, req_id, texts, self.fmt.mark_price)

    @_request
    def openInterest(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Open interest in contracts (``GET /api/v1/openInterest``), as of the last published
        block; a perp that has no mark yet (so no position either) is left out."""
        ts = self.marketdata.last_timestamp
        self._marks(caller, req_id, texts, lambda s, p: self.fmt.open_interest(s, p.open_interest, ts))

    @_request
    def platformStats(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The platform's headline figures (``GET /api/v1/stats``) as of the last published
        block: the ``platformStats`` stream's, or fresher (``satchel.api.stats``)."""
        stats = self.platform_stats
        if stats is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node keeps no platform statistics")
        replies = caller.replies
        stats.when_ready(lambda figures: replies.result(req_id, figures))

    # ------------------------------------------------------------------ deposits and withdrawals

    @_request
    def withdraw(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Backpack's ``POST /wapi/v1/capital/withdrawals`` (``blockchain`` the chain's name,
        ``symbol``, ``quantity``, ``address``, ``clientId``): the amount is held at once.
        Answered once durable with the withdrawal, status ``pending`` (Satchel's ``state``:
        queued while the hot wallet's books do not cover it, else pending); refused
        (nothing changed) with CHAIN_PAUSED, INVALID_CHAIN, INVALID_ASSET, INVALID_ADDRESS,
        INSUFFICIENT_FUNDS or INSUFFICIENT_MARGIN. Backpack's ``twoFactorToken``,
        ``autoBorrow`` and ``autoLendRedeem`` are accepted and ignored: there is no second
        factor, a withdrawal never borrows, and an auto-lent claim is always redeemed for it."""
        self._transaction(caller, req_id, texts, sig, "withdraw", self._withdraw_reply)

    def _withdraw_reply(self, tx: Withdraw, texts: Mapping[str, str]) -> Callable[[Replies, Any, list], None]:
        fmt = self.fmt

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is WithdrawalUpdate and ev.withdrawal_id == ev.seq:
                    return replies.result(req_id, fmt.withdrawal(
                        ev.withdrawal_id, ev.chain, ev.asset, ev.amount, ev.address, ev.status, ev.tx_hash, ev.reason,
                        ev.timestamp, ev.client_id))
            replies.failed(req_id, RuntimeError("the withdrawal applied without a WithdrawalUpdate"))

        return reply

    @_request
    def depositAddressQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Backpack's ``GET /wapi/v1/capital/deposit/address?blockchain=``: the signer's
        deposit address on the chain, ``{"address": ...}``, the same every time (derived
        from the account key and the custody seed, see ``api.chains``)."""
        signed = self.check_signature("depositAddressQuery", texts, sig)
        chain = instructions.chain_name(self.listing, instructions.params_of(DepositAddressParams, texts).blockchain)
        addresses = self.addresses
        addresses.require(chain, self.listing.chains)
        replies = caller.replies
        caller.verified(req_id, signed, lambda m: replies.result(req_id, {"address": addresses.issue(chain, signed.account)}))

    @_request
    def depositQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's credited deposits, newest first (``GET /wapi/v1/capital/deposits``):
        chain deposits (``source`` the chain) and the admin faucet's (``administrator``;
        left out with ``excludePlatform=true``); ``from``/``to`` (ms), ``limit``/``offset``."""
        params = instructions.params_of(DepositHistoryParams, texts)
        derive = self.addresses.derive
        self._history_read(
            caller, req_id, texts, sig, "depositQueryAll",
            lambda account: history_queries.DepositHistory(account, chains_only=params.excludePlatform == "true",
                                                           **self._window(params)),
            lambda fmt, rows: history_views.deposits(fmt, rows, derive))

    @_request
    def withdrawalQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's withdrawals, newest first, each with its latest status
        (``GET /wapi/v1/capital/withdrawals``): ``id``, ``clientId``, ``from``/``to`` (ms,
        on the request's time), ``limit``/``offset``."""
        params = instructions.params_of(WithdrawalHistoryParams, texts)
        wid = instructions.uint(params.id, "id", 2**63)
        client_id = instructions.uint(params.clientId, "clientId", 2**32)
        self._history_read(
            caller, req_id, texts, sig, "withdrawalQueryAll",
            lambda account: history_queries.WithdrawalHistory(account, withdrawal_id=wid, client_id=client_id,
                                                              **self._window(params)),
            history_views.withdrawals)

    @_request
    def reconcileQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Per asset and chain what the chain holds against the custody books, and per asset
        the ledger's liabilities against every chain's books (``satchel reconcile``).
        Signed by the admin key: reading the chains costs their providers' calls."""
        signed = self.check_signature("reconcileQuery", texts, sig)
        if signed.account != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, "reconcileQuery must be signed by the admin key")
        reconciliation = self.reconciliation
        if reconciliation is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node runs no reconciliation")
        replies = caller.replies

        def answer(result: dict | Exception) -> None:
            if isinstance(result, Exception):
                replies.error(req_id, MAINTENANCE, f"Cannot read the chains now: {result}")
            else:
                replies.result(req_id, result)

        caller.verified(req_id, signed, lambda m: reconciliation.request(answer))

    @_request
    def chainWorkQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """What a chain's adapter running in its own process (``satchel chains``) is to do:
        the chain's pause, its open withdrawals (``Pending``: to send; ``Sent``: to confirm)
        and its open custody moves (booked, not yet reported done with ``custodyMoveDone``)
        after sequence number ``after``, the oldest ``WORK_LIMIT`` of each (the next poll
        gets the next ones once those are done). Signed by the chain's adapter key or the admin
        key; answered once earlier blocks are durable."""
        params = instructions.params_of(ChainWorkParams, texts)
        after = instructions.uint(params.after, "after", 2**63) or 0
        signed = self.check_signature("chainWorkQuery", texts, sig)
        chains = self.chains
        spec = None if chains is None else chains.chains.get(params.chain)
        if spec is None:
            raise RequestError(Code.INVALID_CHAIN, f"Unknown chain {params.chain}")
        if signed.account not in (spec.adapter, self.node.admin.api_key):
            raise RequestError(UNAUTHORIZED, f"chainWorkQuery must be signed by {spec.name}'s adapter key or the admin key")
        fmt, chain, replies = self.fmt, spec.name, caller.replies

        def reply(answers: list) -> None:
            status = chains.status.get(chain, (False, ""))
            # the oldest WORK_LIMIT of each, formatted only those
            withdrawals = islice(((wid, w) for wid, w in answers[0] if w.chain == chain and w.status in ("Pending", "Sent")),
                                 WORK_LIMIT)
            replies.result(req_id, {
                "chain": chain, "paused": status[0], "reason": status[1] or None,
                "withdrawals": [{"id": wid, "account": w.account, "symbol": w.asset, "quantity": fmt.asset(w.asset, w.amount),
                                 "address": w.address, "status": w.status, "txHash": w.tx_hash or None}
                                for wid, w in withdrawals],
                "moves": [{"seq": m.seq, "symbol": m.asset, "quantity": fmt.asset(m.asset, m.amount), "toCold": m.to_cold}
                          for m in islice((m for m in answers[1] if m.seq > after), WORK_LIMIT)]})

        caller.verified(req_id, signed, lambda m: self._read([Query("risk", WithdrawalsOf(None)),
                                                               Query("risk", MovesOf(chain))], reply))

    @_request
    def chainStatusQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Every chain's status and custody books (``GET /api/v1/chains``), as of the last
        published block: kind, assets, confirmations, paused and why, per asset the hot
        wallet, cold storage, what of the hot wallet is reserved for withdrawals out and
        its limit, withdrawals queued for a cold sweep, deposits credited. Unsigned."""
        chains = self.chains
        if chains is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node keeps no chain status")
        replies = caller.replies
        chains.when_ready(lambda views: replies.result(req_id, chains.payload(views)))
