"""One WebSocket connection: decode, rate-limit, check, verify in order, submit, reply.

A request goes through, in this order: size limit, JSON schema, rate limit (token
bucket), method, params schema and decimal/tick checks, signature presence and window,
then signature verification in worker threads. Any failure answers with an error frame
and changes nothing; the connection stays open.

Verification runs concurrently, but a connection's requests reach the sequencer in the
order they arrived (``_pending`` is drained from the head only), so "place then
cancel" on one connection is never reordered.

Everything sent to the client goes through one bounded queue. When it is full the
client is not reading; the session is closed and its subscriptions dropped, so one slow
reader costs neither memory nor other subscribers' latency.
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

from satchel.gateway import protocol as P
from satchel.gateway.wire import send_frames
from satchel.marketdata import PRIVATE_STREAMS, SILENT_STREAMS
from satchel.messages import (
    REJECTED, Auth, CancelAll, CancelOrder, Deposit, Fill, OrderDone, PlaceOrder, SetFees, SetTrading,
    TxRejected,
)
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

    __slots__ = ("account", "public", "signature", "timestamp", "window", "candidates")


class Session:
    def __init__(self, gateway: "Gateway", ws: WebSocketConnection, peer: str):
        self.gw = gateway
        self.ws = ws
        self.peer = peer
        s = gateway.settings
        self._out_send, self._out_recv = trio.open_memory_channel(s.send_buffer_frames)
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
            except P.RequestError as exc:
                self.push(P.error_frame(None, exc.code, exc.message))

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
        except ConnectionClosed:
            pass
        if self._scope is not None:
            self._scope.cancel()

    def push(self, frame: str) -> None:
        """Queue a frame for the client; drops the session if its queue is full."""
        if self.closed:
            return
        try:
            self._out_send.send_nowait(frame)
        except trio.WouldBlock:
            self.closed = True
            self.dropped = True
            self.gw.marketdata.drop(self, self._streams)
            self.gw.slow_consumers += 1
            log.warning("session.slow_consumer_dropped", peer=self.peer, queued=self.gw.settings.send_buffer_frames)
            if self._scope is not None:
                self._scope.cancel()

    # ------------------------------------------------------------------ dispatch

    def handle(self, text: str | bytes) -> None:
        if len(text) > self.gw.settings.max_frame_bytes:
            raise P.RequestError(P.PAYLOAD_TOO_LARGE, f"Frame larger than {self.gw.settings.max_frame_bytes} bytes")
        try:
            req = P.request_decoder.decode(text)
        except msgspec.ValidationError as exc:
            raise P.RequestError(P.INVALID_REQUEST, str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise P.RequestError(P.INVALID_JSON, "Malformed JSON") from exc
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
        try:
            ts, window = int(sig[2]), int(sig[3])
        except ValueError as exc:
            raise P.RequestError(P.INVALID_REQUEST, "timestamp and window must be integers") from exc
        if not 0 < window <= self.gw.settings.max_window_ms:
            raise P.RequestError(P.INVALID_REQUEST, f"window must be 1..{self.gw.settings.max_window_ms}")
        now = int(time.time() * 1000)
        if ts + window < now or ts - window > now:
            raise P.RequestError(P.EXPIRED, "Request timestamp is outside its window")
        raw = signing_string(instruction, texts, sig[2], sig[3])
        s = _Signed()
        s.account, s.public, s.signature, s.timestamp, s.window = sig[0], public, signature, ts, window
        if needs_quoting(texts):  # ccxt signs percent-encoded values: accept that form too
            s.candidates = (raw, signing_string(instruction, texts, sig[2], sig[3], encoded=True))
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

    def _signed_request(self, req: P.Request, instruction: str, schema: type) -> tuple[Any, _Signed]:
        values, texts = P.split_params(req.params)
        params = P.typed(values, schema)
        return params, self._check_signature(req, instruction, texts)

    def _submit(self, req_id: Any, tx: Any, reply: Callable[[Any, list], str]) -> None:
        def done(events: list) -> None:
            self.push(reply(req_id, events))

        try:
            self.gw.node.submit(tx, done)
        except trio.ClosedResourceError as exc:
            raise P.RequestError(P.MAINTENANCE, "Node is shutting down") from exc

    def _read(self, req_id: Any, fn: Callable, reply: Callable[[Any], str]) -> None:
        try:
            self.gw.node.sequencer.read(fn, lambda result: self.push(reply(result)))
        except trio.ClosedResourceError as exc:
            raise P.RequestError(P.MAINTENANCE, "Node is shutting down") from exc

    def _submit_signed(self, req_id: Any, signed: _Signed, tx: Any, reply: Callable[[Any, list], str]) -> None:
        """Once the signature checks out, sequence ``tx`` carrying the signed request."""

        def go(message: bytes) -> None:
            auth = Auth(message, signed.signature, signed.timestamp, signed.window)
            self._submit(req_id, msgspec.structs.replace(tx, auth=auth), reply)

        self._verified(req_id, signed, go)

    # ------------------------------------------------------------------ order entry

    def order_execute(self, req: P.Request) -> None:
        params, signed = self._signed_request(req, "orderExecute", P.OrderExecuteParams)
        tx = P.order_tx(params, signed.account, self.gw.markets, self.gw.quote_decimals(params.symbol))

        self._submit_signed(req.id, signed, tx, self._order_reply(tx))

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
                status = P.PARTIALLY_FILLED if executed else P.NEW
            result = fmt.order(tx.symbol, oid, tx.client_id, tx.side, tx.price, tx.quantity, executed, executed_quote,
                               status, order_type=tx.order_type, tif=tx.tif, stp=tx.stp, post_only=tx.post_only,
                               quote_quantity=tx.quote_quantity, created_us=self.gw.marketdata.last_timestamp)
            result["fills"] = fills
            if status == REJECTED or reason:
                result["reason"] = reason
            return P.result_frame(req_id, result)

        return reply

    def _order_ref(self, req: P.Request, instruction: str) -> tuple[P.OrderRefParams, _Signed]:
        params, signed = self._signed_request(req, instruction, P.OrderRefParams)
        self.gw.check_symbol(params.symbol)
        if (params.orderId is None) == (params.clientId is None):
            raise P.RequestError(P.INVALID_REQUEST, "Give exactly one of orderId and clientId")
        return params, signed

    def order_cancel(self, req: P.Request) -> None:
        params, signed = self._order_ref(req, "orderCancel")
        tx = CancelOrder(signed.account, params.symbol, params.orderId, params.clientId)
        self._submit_signed(req.id, signed, tx, self._cancel_reply(False))

    def order_cancel_all(self, req: P.Request) -> None:
        params, signed = self._signed_request(req, "orderCancelAll", P.SymbolParams)
        self.gw.check_symbol(params.symbol)
        self._submit_signed(req.id, signed, CancelAll(signed.account, params.symbol), self._cancel_reply(True))

    def _cancel_reply(self, many: bool) -> Callable[[Any, list], str]:
        fmt = self.gw.fmt

        def reply(req_id: Any, events: list) -> str:
            orders = []
            for ev in events:
                if ev.__class__ is TxRejected:
                    return P.error_frame(req_id, ev.code, ev.message)
                if ev.__class__ is OrderDone:
                    orders.append(fmt.order(ev.symbol, ev.order_id, ev.client_id, ev.side, ev.price, ev.quantity,
                                            ev.executed_quantity, ev.executed_quote, ev.status))
            return P.result_frame(req_id, orders if many else orders[0])

        return reply

    # ------------------------------------------------------------------ queries

    def order_query(self, req: P.Request) -> None:
        params, signed = self._order_ref(req, "orderQuery")
        sym = params.symbol

        async def fn(engine: Any) -> Any:
            return await engine.books[sym].call("query", signed.account, params.orderId, params.clientId)

        def reply(view: Any) -> str:
            if view is None:
                return P.error_frame(req.id, P.RESOURCE_NOT_FOUND, "Order not found")
            return P.result_frame(req.id, self.gw.fmt.resting(sym, view))

        self._verified(req.id, signed, lambda m: self._read(req.id, fn, reply))

    def order_query_all(self, req: P.Request) -> None:
        params, signed = self._signed_request(req, "orderQueryAll", P.OptionalSymbolParams)
        symbols = [params.symbol] if params.symbol else list(self.gw.markets)
        for s in symbols:
            self.gw.check_symbol(s)

        async def fn(engine: Any) -> Any:
            return [(s, await engine.books[s].call("open_orders", signed.account)) for s in symbols]

        def reply(result: Any) -> str:
            return P.result_frame(req.id, [self.gw.fmt.resting(s, v) for s, views in result for v in views])

        self._verified(req.id, signed, lambda m: self._read(req.id, fn, reply))

    def balance_query(self, req: P.Request) -> None:
        _, signed = self._signed_request(req, "balanceQuery", P.NoParams)

        async def fn(engine: Any) -> Any:
            return await engine.risk.call("balances", signed.account)

        def reply(balances: dict) -> str:
            fmt = self.gw.fmt
            return P.result_frame(req.id, {
                a: {"available": fmt.asset(a, free), "locked": fmt.asset(a, held), "staked": "0"}
                for a, (free, held) in sorted(balances.items())
            })

        self._verified(req.id, signed, lambda m: self._read(req.id, fn, reply))

    def depth(self, req: P.Request) -> None:
        values, _ = P.split_params(req.params)
        params = P.typed(values, P.SymbolParams)
        self.gw.check_symbol(params.symbol)
        self.push(P.result_frame(req.id, self.gw.marketdata.snapshot(params.symbol)))

    def _admin_request(self, req: P.Request, instruction: str, schema: type) -> tuple[Any, _Signed]:
        params, signed = self._signed_request(req, instruction, schema)
        if signed.account != self.gw.node.admin.api_key:
            raise P.RequestError(P.UNAUTHORIZED, f"{instruction} must be signed by the admin key")
        return params, signed

    def _admin_reply(self, result: dict) -> Callable[[Any, list], str]:
        def reply(req_id: Any, events: list) -> str:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return P.error_frame(req_id, ev.code, ev.message)
            return P.result_frame(req_id, result)

        return reply

    def admin_set_trading(self, req: P.Request) -> None:
        params, signed = self._admin_request(req, "adminSetTrading", P.SetTradingParams)
        if params.symbol is not None:
            self.gw.check_symbol(params.symbol)
        if params.account is None and params.symbol is None:
            raise P.RequestError(P.INVALID_REQUEST, "Give an account, a symbol or both")
        tx = SetTrading(signed.account, params.account, params.symbol, params.enabled)
        self._submit_signed(req.id, signed, tx, self._admin_reply(msgspec.to_builtins(params)))

    def admin_set_fees(self, req: P.Request) -> None:
        params, signed = self._admin_request(req, "adminSetFees", P.SetFeesParams)
        self.gw.check_symbol(params.symbol)
        tx = SetFees(signed.account, params.symbol, params.makerFeeBps, params.takerFeeBps)
        self._submit_signed(req.id, signed, tx, self._admin_reply(msgspec.to_builtins(params)))

    def deposit(self, req: P.Request) -> None:
        params, signed = self._admin_request(req, "deposit", P.DepositParams)
        decimals = self.gw.decimals(params.asset)
        if decimals is None:
            raise P.RequestError(P.INVALID_ASSET, f"Unknown asset {params.asset}")
        amount = P.quote_units(params.quantity, decimals)
        if amount <= 0 or decode_key(params.account) is None:
            raise P.RequestError(P.INVALID_REQUEST, "account must be an API key and quantity positive")
        tx = Deposit(signed.account, params.account, params.asset, amount)
        result = {"account": params.account, "asset": params.asset, "quantity": params.quantity, "status": "Confirmed"}
        self._submit_signed(req.id, signed, tx, self._admin_reply(result))

    # ------------------------------------------------------------------ streams

    def _subscription(self, req: P.Request, subscribe: bool) -> None:
        try:
            streams = P.streams_decoder.decode(req.params)
        except (msgspec.ValidationError, msgspec.DecodeError):
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
                    self.push(P.error_frame(None, P.INVALID_STREAM, "Invalid stream"))
                    return
                private.append(stream)
            else:
                self.push(P.error_frame(None, P.INVALID_STREAM, "Invalid stream"))
                return
        if private:
            try:
                signed = self._check_signature(req, "subscribe", {})
            except P.RequestError as exc:
                self.push(P.error_frame(None, P.SUBSCRIPTION_AUTH, f"{exc.code}: {exc.message}"))
                return

            def go(message: bytes) -> None:
                self._apply(public + [f"{s}:{signed.account}" for s in private], subscribe)

            self._verified(None, signed, go)
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
    "deposit": Session.deposit,
    "adminSetTrading": Session.admin_set_trading,
    "adminSetFees": Session.admin_set_fees,
}
