"""One WebSocket connection: the transport around the API (``satchel.api.handlers``).

A frame goes through, in this order: size limit, envelope schema, rate limit (token
bucket), method, admission (the node is not overloaded); then the request goes to the
``Api`` method of its name (params schema, tick and step checks, signature presence and
window, verification, sequencing), which answers through this session's ``Replies``
methods, turned here into frames. Any failure answers with an error frame and changes
nothing; the connection stays open.

The session is one ``Caller`` of the API: verification runs concurrently, but the
connection's requests (and its private subscriptions) reach the sequencer in the order
they arrived, so "place then cancel" on one connection is never reordered.

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from satchel.api.handlers import BATCHED, CUSTODY_REPORTS, METHODS, PARAMLESS
from satchel.api.marketdata import SILENT_STREAMS
from satchel.gateway import protocol as P
from satchel.gateway.wire import abort, send_frames

if TYPE_CHECKING:
    from satchel.gateway.server import Gateway

log = structlog.get_logger("satchel.gateway")
CUSTODY_PATIENCE_S = 0.05  # a chain adapter's frame waits this long at most for the node to be idle


class Session:
    def __init__(self, gateway: "Gateway", ws: WebSocketConnection, peer: str):
        self.gw = gateway
        self.ws = ws
        self.peer = peer
        s = gateway.settings
        self._out_send, self._out_recv = trio.open_memory_channel(s.send_buffer_frames)
        self._queued_bytes = 0
        self._tokens = s.rate_burst
        self._refilled = time.monotonic()
        self.api = gateway.api
        self.caller = gateway.api.caller(self)  # this connection's replies and request order
        self._streams: list[str] = []
        self._scope: trio.CancelScope | None = None
        self.closed = False
        self.dropped = False
        self._mid_write = False  # the writer is in a socket write (a frame may be half sent)
        self.custody = False  # a chain adapter's connection: its frames wait for the node's quiet moments

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
            if self.dropped and self._mid_write:
                # the writer was cancelled part-way through a write: a close frame now would
                # land inside the frame it was sending (the client reads a torn frame), so the
                # connection is dropped without the close handshake
                await abort(self.ws)
            elif self.dropped:
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
            if self.custody:
                # an adapter in its own process cannot see when the node is idle: each of its
                # reports is handled in a turn of background work, as an adapter in the node's
                # process signs them (``Node.turn``), at the latest after ``CUSTODY_PATIENCE_S``
                async with self.gw.node.turn(CUSTODY_PATIENCE_S):
                    self._handle(text)
            else:
                self._handle(text)

    def _handle(self, text: str | bytes) -> None:
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
                self._mid_write = True
                await send_frames(ws, frames)
                self._mid_write = False
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

    # ------------------------------------------------------------------ the API's replies (api.handlers.Replies)

    def result(self, req_id: Any, result: Any) -> None:
        self.push(P.result_frame(req_id, result))

    def error(self, req_id: Any, code: str | int, message: str) -> None:
        self.push(P.error_frame(req_id, code, message))

    def failed(self, req_id: Any, exc: Exception) -> None:
        self._failed(req_id, exc)

    # ------------------------------------------------------------------ dispatch

    def handle(self, text: str | bytes) -> None:
        self.caller.received = trio.current_time()
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
        if method in CUSTODY_REPORTS:
            self.custody = True
        if handler is None:
            self.push(P.error_frame(req.id, P.UNKNOWN_METHOD, f"Unknown method {method}"))
            return
        if method != "depth" and self.gw.overloaded():
            # bounded memory under overload: refuse now rather than queue without limit
            self.push(P.error_frame(req.id, P.TOO_MANY_REQUESTS, "Node is busy; retry shortly"))
            return
        try:
            handler(self, req)  # the API answers through result / error / failed
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
                if f"account.{stream.split('.')[1]}" in SILENT_STREAMS:
                    continue
                if not md.valid_private(stream):
                    self.push(P.error_frame(req.id, P.INVALID_STREAM, "Invalid stream"))
                    return
                private.append(stream)
            else:
                self.push(P.error_frame(req.id, P.INVALID_STREAM, "Invalid stream"))
                return
        if private:
            try:
                signed = self.api.check_signature("subscribe", {}, req.signature)
            except P.RequestError as exc:
                self.push(P.error_frame(req.id, P.SUBSCRIPTION_AUTH, f"{exc.code}: {exc.message}"))
                return

            def go(message: bytes) -> None:
                self._apply(public + [f"{s}:{signed.account}" for s in private], subscribe)

            self.caller.verified(req.id, signed, go)
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


def _via_api(name: str, paramless: bool) -> Callable[[Session, P.Request], None]:
    split = P.split_batch if name in BATCHED else P.split_params

    def call(session: Session, req: P.Request) -> None:
        texts = {} if paramless else split(req.params)
        getattr(session.api, name)(session.caller, req.id, texts, req.signature)

    call.__name__ = name
    return call


# method name -> how a frame reaches the API
_METHODS: dict[str, Callable[[Session, P.Request], None]] = {name: _via_api(name, name in PARAMLESS) for name in METHODS}
