"""One WebSocket connection: decode, rate-limit, check, verify in order, submit, reply.

A request goes through, in this order: size limit, JSON schema, rate limit (token
bucket), method, params schema and decimal/tick checks, signature presence and window,
then signature verification in worker threads. Any failure answers with an error frame
and changes nothing; the connection stays open.

Verification runs concurrently, but a connection's requests reach the sequencer in the
order they arrived (``_pending`` is drained from the head only), so "place then
cancel" on one connection is never reordered.

Everything sent to the client goes through one queue bounded in frames and in bytes.
When it is full the client is not reading; the session is closed and its
subscriptions dropped, so one slow reader costs neither memory nor other subscribers'
latency. A protocol ping every ``ping_interval_s`` that gets no pong within
``ping_timeout_s`` closes the connection too (a peer that went away, or one stuck
half-way through a frame).

No input stops the node: any failure while handling a frame becomes an error frame
(``INTERNAL_ERROR`` when it is not a known refusal), logged once per kind and counted
in ``Gateway.handler_errors``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from satchel.api.marketdata import PRIVATE_STREAMS, SILENT_STREAMS
from satchel.clock import now_ms
from satchel.core import instructions
from satchel.core.engine import MAX_WINDOW_MS
from satchel.core.messages import (
    NEW, PARTIALLY_FILLED, REJECTED, Auth, BalancesOf, Fill, LedgerOf, OpenOrders, OrderDone, OrderOf, PlaceOrder, Query,
    TxRejected,
)
from satchel.gateway import protocol as P
from satchel.gateway.wire import abort, send_frames
from satchel.signing import decode_key, decode_signature, needs_quoting, signing_string

if TYPE_CHECKING:
    from satchel.gateway.server import Gateway

log = structlog.get_logger("satchel.gateway")


class _Pending:
    __slots__ = ("req_id", "action", "verified", "message")

    def __init__(self, req_id: Any, action: Callable[[bytes], None]):
        self.req_id = req_id
        self.action = action
        self.verified = False
        self.message: bytes | None = None


class _Signed:
    """A request's checked signature parts."""

    __slots__ = ("account", "public", "signature", "timestamp", "window", "texts", "candidates")

    def auth(self, message: bytes) -> Auth:
        """The journal's record of this request, given the form the signature covered."""
        encoded = message is not self.candidates[0]
        return Auth(tuple(sorted(self.texts.items())), encoded, self.signature, self.timestamp, self.window)


class Session:
    def __init__(self, gateway: "Gateway", ws: WebSocketConnection, peer: str):
        self.gw = gateway
        self.ws = ws
        self.peer = peer
        s = gateway.settings
        self._out_send, self._out_recv = trio.open_memory_channel(s.send_buffer_frames)
        self._queued_bytes = 0
        self._received = 0.0  # when the frame being handled arrived (stage latencies)
        self._tokens = s.rate_burst
        self._refilled = time.monotonic()
        self._pending: deque[_Pending] = deque()
        self._streams: list[str] = []
        self._scope: trio.CancelScope | None = None
        self.closed = False
        self.dropped = False

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                nursery.start_soon(self._keepalive)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            self.gw.marketdata.drop(self, self._streams)
            if self.dropped:
                with trio.move_on_after(1) as cs:
                    cs.shield = True
                    await self.ws.aclose(code=1008, reason="slow consumer")

    async def _reader(self) -> None:
        ws = self.ws
        while True:
            try:
                text = await ws.get_message()
            except ConnectionClosed:
                return
            try:
                self.handle(text)
            except Exception as exc:  # no input may stop the node: answer, count, go on
                self._failed(P.request_id(text) if isinstance(text, str) else None, exc)

    def _failed(self, req_id: Any, exc: Exception) -> None:
        gw = self.gw
        gw.handler_errors += 1
        kind = f"{type(exc).__name__}:{exc.__traceback__.tb_frame.f_code.co_name if exc.__traceback__ else ''}"
        if kind not in gw.logged_failures:
            gw.logged_failures.add(kind)
            log.exception("session.request_failed", peer=self.peer, kind=kind)
        self.push(P.error_frame(req_id, P.INTERNAL_ERROR, "The request could not be handled"))

    async def _keepalive(self) -> None:
        s = self.gw.settings
        while True:
            await trio.sleep(s.ping_interval_s)
            with trio.move_on_after(s.ping_timeout_s):
                try:
                    await self.ws.ping()
                except ConnectionClosed:
                    return
                continue
            log.info("session.unresponsive_closed", peer=self.peer, timeout_s=s.ping_timeout_s)
            self.closed = True
            self.gw.marketdata.drop(self, self._streams)
            await abort(self.ws)  # a close handshake would wait on the same silent peer
            if self._scope is not None:
                self._scope.cancel()
            return

    async def _writer(self) -> None:
        ws = self.ws
        recv = self._out_recv
        try:
            async for frame in recv:
                frames = [frame]
                while len(frames) < 256:  # whatever else is queued goes in the same write
                    try:
                        frames.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                await send_frames(ws, frames)
                self._queued_bytes -= sum(len(f) for f in frames)
        except ConnectionClosed:
            pass
        if self._scope is not None:
            self._scope.cancel()

    def push(self, frame: str) -> None:
        """Queue a frame for the client; drops the session if its queue is full."""
        if self.closed:
            return
        size = len(frame)
        try:
            if self._queued_bytes + size > self.gw.settings.send_buffer_bytes:
                raise trio.WouldBlock
            self._out_send.send_nowait(frame)
            self._queued_bytes += size
        except trio.WouldBlock:
            self.closed = True
            self.dropped = True
            self.gw.marketdata.drop(self, self._streams)
            self.gw.slow_consumers += 1
            log.warning("session.slow_consumer_dropped", peer=self.peer, queued_bytes=self._queued_bytes)
            if self._scope is not None:
                self._scope.cancel()

    # ------------------------------------------------------------------ dispatch

    def handle(self, text: str | bytes) -> None:
        self._received = trio.current_time()
        if isinstance(text, bytes):  # a binary frame: accepted if it is UTF-8 JSON
            try:
                text = text.decode()
            except UnicodeDecodeError:
                self.push(P.error_frame(None, P.INVALID_JSON, "Frame is not UTF-8 text"))
                return
        limit = self.gw.settings.max_frame_bytes
        if len(text) > limit:
            self.push(P.error_frame(P.request_id(text), P.PAYLOAD_TOO_LARGE, f"Frame larger than {limit} bytes"))
            return
        try:
            req = P.request_decoder.decode(text)
        except msgspec.ValidationError as exc:
            self.push(P.error_frame(P.request_id(text), P.INVALID_REQUEST, str(exc)))
            return
        except (msgspec.DecodeError, RecursionError):
            self.push(P.error_frame(None, P.INVALID_JSON, "Malformed JSON"))
            return
        if not self._take_token():
            self.push(P.error_frame(req.id, P.TOO_MANY_REQUESTS, "Rate limit exceeded"))
            return
        method = req.method
        if method == "SUBSCRIBE" or method == "UNSUBSCRIBE":
            return self._subscription(req, method == "SUBSCRIBE")
        handler = _METHODS.get(method)
        if handler is None:
            self.push(P.error_frame(req.id, P.UNKNOWN_METHOD, f"Unknown method {method}"))
            return
        if method != "depth" and self.gw.overloaded():
            # bounded memory under overload: refuse now rather than queue without limit
            self.push(P.error_frame(req.id, P.TOO_MANY_REQUESTS, "Node is busy; retry shortly"))
            return
        try:
            handler(self, req)
        except P.RequestError as exc:
            self.push(P.error_frame(req.id, exc.code, exc.message))
        except Exception as exc:
            self._failed(req.id, exc)

    def _take_token(self) -> bool:
        s = self.gw.settings
        now = time.monotonic()
        self._tokens = min(s.rate_burst, self._tokens + (now - self._refilled) * s.rate_per_second)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    # ------------------------------------------------------------------ signatures

    def _check_signature(self, req: P.Request, instruction: str, texts: dict[str, str]) -> _Signed:
        sig = req.signature
        if not sig:
            raise P.RequestError(P.UNAUTHORIZED, "Missing signature")
        if len(sig) != 4:
            raise P.RequestError(P.INVALID_REQUEST, "signature must be [apiKey, signature, timestamp, window]")
        public = decode_key(sig[0])
        signature = decode_signature(sig[1])
        if public is None or signature is None:
            raise P.RequestError(P.INVALID_SIGNATURE, "Malformed API key or signature")
        ts = instructions.uint(sig[2], "timestamp")
        window = instructions.uint(sig[3], "window")
        if not 0 < window <= MAX_WINDOW_MS:
            raise P.RequestError(P.INVALID_REQUEST, f"window must be 1..{MAX_WINDOW_MS}")
        now = now_ms()
        if ts + window < now or ts - window > now:
            raise P.RequestError(P.EXPIRED, "Request timestamp is outside its window")
        # the signed string uses the integers as parsed, so the journal can rebuild it
        raw = signing_string(instruction, texts, ts, window)
        s = _Signed()
        s.account, s.public, s.signature, s.timestamp, s.window, s.texts = sig[0], public, signature, ts, window, texts
        if needs_quoting(texts):  # ccxt signs percent-encoded values: accept that form too
            s.candidates = (raw, signing_string(instruction, texts, ts, window, encoded=True))
        else:
            s.candidates = (raw,)
        return s

    def _verified(self, req_id: Any, signed: _Signed, action: Callable[[bytes], None]) -> None:
        """Run ``action(message)`` once the signature checks out, in arrival order."""
        pending = _Pending(req_id, action)
        self._pending.append(pending)

        def done(message: bytes | None) -> None:
            pending.verified = True
            pending.message = message
            self._drain()

        self.gw.verifier.check(signed.public, signed.candidates, signed.signature, done)

    def _drain(self) -> None:
        q = self._pending
        while q and q[0].verified:
            p = q.popleft()
            if self.closed:
                continue
            if p.message is None:
                self.push(P.error_frame(p.req_id, P.INVALID_SIGNATURE, "Signature does not match"))
                continue
            try:
                p.action(p.message)
            except P.RequestError as exc:
                self.push(P.error_frame(p.req_id, exc.code, exc.message))
            except Exception as exc:  # runs in the verifier's task: never let it fail there
                self._failed(p.req_id, exc)

    def _signed_texts(self, req: P.Request, instruction: str) -> tuple[dict[str, str], _Signed]:
        texts = P.split_params(req.params)
        return texts, self._check_signature(req, instruction, texts)

    def _signed_request(self, req: P.Request, instruction: str, schema: type) -> tuple[Any, _Signed]:
        texts, signed = self._signed_texts(req, instruction)
        return P.typed(texts, schema), signed

    def _submit(self, req_id: Any, tx: Any, reply: Callable[[Any, list], str], received: float) -> None:
        node = self.gw.node
        verified = trio.current_time()

        def done(events: list) -> None:
            self.push(reply(req_id, events))
            if node.latency.sampled():
                cut, _, durable = node.block_times
                node.latency.record_request(received, verified, cut, durable, trio.current_time())

        try:
            self.gw.node.submit(tx, done)
        except trio.ClosedResourceError as exc:
            raise P.RequestError(P.MAINTENANCE, "Node is shutting down") from exc

    def _read(self, queries: list[Query], reply: Callable[[list], str]) -> None:
        """Ask the engine typed queries between blocks; ``reply(answers)`` once all are in."""
        answers: list = []

        def collect(answer: Any) -> None:
            answers.append(answer)  # reads are answered in the order they were queued
            if len(answers) == len(queries):
                self.push(reply(answers))

        try:
            for q in queries:
                self.gw.node.sequencer.read(q, collect)
        except trio.ClosedResourceError as exc:
            raise P.RequestError(P.MAINTENANCE, "Node is shutting down") from exc

    def _transaction(self, req: P.Request, instruction: str, reply_for: Callable[[Any, dict], Callable[[Any, list], str]]) -> None:
        """Check, build (``instructions.build``), verify and sequence a signed transaction;
        ``reply_for(tx, texts)`` gives the function that turns its events into the reply."""
        texts, signed = self._signed_texts(req, instruction)
        decl = instructions.BY_NAME[instruction]
        if decl.admin and signed.account != self.gw.node.admin.api_key:
            raise P.RequestError(P.UNAUTHORIZED, f"{instruction} must be signed by the admin key")
        tx = instructions.build(instruction, texts, signed.account, self.gw)
        reply = reply_for(tx, texts)

        received = self._received

        def go(message: bytes) -> None:
            self._submit(req.id, msgspec.structs.replace(tx, auth=signed.auth(message)), reply, received)

        self._verified(req.id, signed, go)

    # ------------------------------------------------------------------ order entry

    def order_execute(self, req: P.Request) -> None:
        self._transaction(req, "orderExecute", lambda tx, texts: self._order_reply(tx))

    def _order_reply(self, tx: PlaceOrder) -> Callable[[Any, list], str]:
        fmt = self.gw.fmt

        def reply(req_id: Any, events: list) -> str:
            status = None
            reason = ""
            executed = executed_quote = 0
            fills = []
            oid = events[0].seq if events else 0
            for ev in events:
                cls = ev.__class__
                if cls is TxRejected:
                    return P.error_frame(req_id, ev.code, ev.message)
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
            if status is None:
                status = PARTIALLY_FILLED if executed else NEW
            result = fmt.order(tx.symbol, oid, tx.client_id, tx.side, tx.price, tx.quantity, executed, executed_quote,
                               status, order_type=tx.order_type, tif=tx.tif, stp=tx.stp, post_only=tx.post_only,
                               quote_quantity=tx.quote_quantity, created_us=self.gw.node.block_timestamp)
            result["fills"] = fills
            if status == REJECTED or reason:
                result["reason"] = reason
            return P.result_frame(req_id, result)

        return reply

    def order_cancel(self, req: P.Request) -> None:
        self._transaction(req, "orderCancel", lambda tx, texts: self._cancel_reply(False))

    def order_cancel_all(self, req: P.Request) -> None:
        self._transaction(req, "orderCancelAll", lambda tx, texts: self._cancel_reply(True))

    def _cancel_reply(self, many: bool) -> Callable[[Any, list], str]:
        fmt = self.gw.fmt

        def reply(req_id: Any, events: list) -> str:
            orders = []
            for ev in events:
                if ev.__class__ is TxRejected:
                    return P.error_frame(req_id, ev.code, ev.message)
                if ev.__class__ is OrderDone:
                    orders.append(fmt.order(ev.symbol, ev.order_id, ev.client_id, ev.side, ev.price, ev.quantity,
                                            ev.executed_quantity, ev.executed_quote, ev.status, created_us=ev.created))
            return P.result_frame(req_id, orders if many else orders[0])

        return reply

    # ------------------------------------------------------------------ queries

    def order_query(self, req: P.Request) -> None:
        texts, signed = self._signed_texts(req, "orderQuery")
        sym, order_id, client_id = instructions.order_ref(P.typed(texts, instructions.OrderRefParams), self.gw)

        def reply(answers: list) -> str:
            view = answers[0]
            if view is None:
                return P.error_frame(req.id, P.RESOURCE_NOT_FOUND, "Order not found")
            return P.result_frame(req.id, self.gw.fmt.resting(sym, view))

        query = Query(sym, OrderOf(signed.account, order_id, client_id))
        self._verified(req.id, signed, lambda m: self._read([query], reply))

    def order_query_all(self, req: P.Request) -> None:
        """Resting orders, oldest first per market, a page at a time (``limit``/``offset``)."""
        params, signed = self._signed_request(req, "orderQueryAll", P.OptionalSymbolParams)
        symbols = [params.symbol] if params.symbol else list(self.gw.markets)
        for s in symbols:
            self.gw.check_symbol(s)
        page = self.gw.settings.max_page
        limit = instructions.uint(params.limit, "limit", page + 1) if params.limit is not None else page
        offset = instructions.uint(params.offset, "offset") if params.offset is not None else 0

        def reply(answers: list) -> str:
            views = [(s, v) for s, vs in zip(symbols, answers) for v in vs][offset:offset + limit]
            return P.result_frame(req.id, [self.gw.fmt.resting(s, v) for s, v in views])

        queries = [Query(s, OpenOrders(signed.account)) for s in symbols]
        self._verified(req.id, signed, lambda m: self._read(queries, reply))

    def balance_query(self, req: P.Request) -> None:
        _, signed = self._signed_request(req, "balanceQuery", P.NoParams)

        def reply(answers: list) -> str:
            balances = answers[0]
            fmt = self.gw.fmt
            return P.result_frame(req.id, {
                a: {"available": fmt.asset(a, free), "locked": fmt.asset(a, held), "staked": "0"}
                for a, (free, held) in sorted(balances.items())
            })

        self._verified(req.id, signed, lambda m: self._read([Query("risk", BalancesOf(signed.account))], reply))

    def ledger_totals(self, req: P.Request) -> None:
        """Per asset: deposits, withdrawals, fees collected and the sum of all balances,
        so anyone can check that deposits - withdrawals = balances + fees."""

        def reply(answers: list) -> str:
            ledger = answers[0]
            fmt = self.gw.fmt
            return P.result_frame(req.id, {
                a: {"deposits": fmt.asset(a, dep), "withdrawals": "0", "fees": fmt.asset(a, fees),
                    "balances": fmt.asset(a, bal)}
                for a, (dep, fees, bal) in sorted(ledger.items())
            })

        self._read([Query("risk", LedgerOf())], reply)

    def node_stats(self, req: P.Request) -> None:
        """Per-stage latency percentiles (us) since the node started or was last reset
        (``{"reset": true}``, signed by the admin key); see ``satchel.latency``."""
        texts = P.split_params(req.params)
        latency = self.gw.node.latency
        result = {"stages": latency.summary(), "sessions": self.gw.sessions, "slowConsumers": self.gw.slow_consumers,
                  "handlerErrors": self.gw.handler_errors}
        if texts.get("reset") != "true":
            self.push(P.result_frame(req.id, result))
            return
        signed = self._check_signature(req, "nodeStats", texts)
        if signed.account != self.gw.node.admin.api_key:
            raise P.RequestError(P.UNAUTHORIZED, "reset must be signed by the admin key")

        def go(message: bytes) -> None:
            latency.reset()
            self.push(P.result_frame(req.id, result))

        self._verified(req.id, signed, go)

    def depth(self, req: P.Request) -> None:
        params = P.typed(P.split_params(req.params), instructions.SymbolParams)
        self.gw.check_symbol(params.symbol)
        self.push(P.result_frame(req.id, self.gw.marketdata.snapshot(params.symbol)))

    def _admin_reply(self, result: dict) -> Callable[[Any, list], str]:
        def reply(req_id: Any, events: list) -> str:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return P.error_frame(req_id, ev.code, ev.message)
            return P.result_frame(req_id, result)

        return reply

    def admin_set_trading(self, req: P.Request) -> None:
        self._transaction(req, "adminSetTrading", lambda tx, texts: self._admin_reply(texts))

    def admin_set_fees(self, req: P.Request) -> None:
        self._transaction(req, "adminSetFees", lambda tx, texts: self._admin_reply(texts))

    def deposit(self, req: P.Request) -> None:
        self._transaction(req, "deposit", lambda tx, texts: self._admin_reply({**texts, "status": "Confirmed"}))

    # ------------------------------------------------------------------ streams

    def _subscription(self, req: P.Request, subscribe: bool) -> None:
        try:
            streams = P.streams_decoder.decode(req.params)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            self.push(P.error_frame(req.id, P.INVALID_SUBSCRIPTION, "params must be a list of stream names"))
            return
        md = self.gw.marketdata
        public, private = [], []
        for stream in streams:
            if md.valid_public(stream):
                public.append(stream)
            elif stream.startswith("account."):
                base, _, symbol = stream.partition(".")[2].partition(".")
                name = f"account.{base}"
                if name in SILENT_STREAMS:
                    continue
                if name not in PRIVATE_STREAMS or (symbol and (name == "account.balanceUpdate" or symbol not in self.gw.markets)):
                    self.push(P.error_frame(req.id, P.INVALID_STREAM, "Invalid stream"))
                    return
                private.append(stream)
            else:
                self.push(P.error_frame(req.id, P.INVALID_STREAM, "Invalid stream"))
                return
        if private:
            try:
                signed = self._check_signature(req, "subscribe", {})
            except P.RequestError as exc:
                self.push(P.error_frame(req.id, P.SUBSCRIPTION_AUTH, f"{exc.code}: {exc.message}"))
                return

            def go(message: bytes) -> None:
                self._apply(public + [f"{s}:{signed.account}" for s in private], subscribe)

            self._verified(req.id, signed, go)
        else:
            self._apply(public, subscribe)

    def _apply(self, keys: list[str], subscribe: bool) -> None:
        md = self.gw.marketdata
        for key in keys:
            if subscribe:
                if key not in self._streams:
                    self._streams.append(key)
                    md.subscribe(key, self)
            elif key in self._streams:
                self._streams.remove(key)
                md.unsubscribe(key, self)


_METHODS: dict[str, Callable[[Session, P.Request], None]] = {
    "orderExecute": Session.order_execute,
    "orderCancel": Session.order_cancel,
    "orderCancelAll": Session.order_cancel_all,
    "orderQuery": Session.order_query,
    "orderQueryAll": Session.order_query_all,
    "balanceQuery": Session.balance_query,
    "depth": Session.depth,
    "ledgerTotals": Session.ledger_totals,
    "nodeStats": Session.node_stats,
    "deposit": Session.deposit,
    "adminSetTrading": Session.admin_set_trading,
    "adminSetFees": Session.admin_set_fees,
}
