"""A small WebSocket client for Satchel: signed requests, replies by id, stream frames.

Used by ``satchel faucet``, the tests and the benchmarks; it speaks exactly the wire
protocol an outside client would.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from satchel.signing import Keypair, sign_batch_request, sign_request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for tests and tools)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReplyError(Exception):
    def __init__(self, code: Any, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    def __init__(self, ws: Any, key: Keypair | None):
        self.ws = ws
        self.key = key
        self._ids = itertools.count(1)
        self._waiting: dict[Any, trio.MemorySendChannel] = {}
        self.errors: list[dict] = []  # error frames with id null (subscription errors)
        self.closed = False
        self.frames_send, self.frames = trio.open_memory_channel(100_000)

    def frame(self, method: str, params: dict | list | None = None, *, sign: bool = True, req_id: Any = None, instruction: str | None = None) -> tuple[Any, bytes]:
        """Build a request frame (signed with the client's key unless ``sign`` is False)."""
        req_id = next(self._ids) if req_id is None else req_id
        body: dict[str, Any] = {"id": req_id, "method": method}
        if params is not None:
            body["params"] = params
        if sign and self.key is not None:
            _, body["signature"] = sign_request(self.key, instruction or method, params or {})
        return req_id, orjson.dumps(body)

    async def request_batch(self, method: str, instruction: str, items: list[dict]) -> Any:
        """A batch request (``orderExecuteBatch``, ``depositConfirmedBatch``): ``items``
        under one signature, one ``instruction`` segment per item."""
        req_id = next(self._ids)
        _, signature = sign_batch_request(self.key, instruction, items)
        return await self.exchange(req_id, orjson.dumps({"id": req_id, "method": method, "params": items,
                                                         "signature": signature}))

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send_message(text.decode() if isinstance(text, bytes) else text)

    async def request(self, method: str, params: dict | None = None, *, sign: bool = True, raw: bool = False) -> Any:
        req_id, text = self.frame(method, params, sign=sign)
        return await self.exchange(req_id, text, raw=raw)

    async def exchange(self, req_id: Any, text: bytes | str, *, raw: bool = False) -> Any:
        """Send a prepared frame and wait for the reply with its id."""
        if self.closed:
            raise ConnectionError("connection closed")
        send, recv = trio.open_memory_channel(1)
        self._waiting[req_id] = send
        await self.send_raw(text)
        try:
            reply = await recv.receive()
        except trio.EndOfChannel:
            raise ConnectionError("connection closed before the reply") from None
        if raw:
            return reply
        if "error" in reply:
            raise ReplyError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    async def subscribe(self, streams: list[str], *, private: bool = False) -> None:
        body: dict[str, Any] = {"method": "SUBSCRIBE", "params": streams}
        if private:
            _, body["signature"] = sign_request(self.key, "subscribe", {})
        await self.send_raw(orjson.dumps(body))

    async def next_frame(self, stream_prefix: str = "", timeout: float = 5) -> dict:
        with trio.fail_after(timeout):
            while True:
                f = await self.frames.receive()
                if f.get("stream", "").startswith(stream_prefix):
                    return f

    async def _read(self) -> None:
        try:
            while True:
                msg = orjson.loads(await self.ws.get_message())
                if "stream" in msg:
                    self.frames_send.send_nowait(msg)
                    continue
                waiter = self._waiting.pop(msg.get("id"), None)
                if waiter is not None:
                    waiter.send_nowait(msg)
                else:
                    self.errors.append(msg)
                    self.frames_send.send_nowait(msg)
        except ConnectionClosed:
            pass
        finally:
            # wake every caller still waiting for a reply: none will come
            self.closed = True
            for waiter in self._waiting.values():
                waiter.close()
            self._waiting.clear()


@asynccontextmanager
async def connect(url: str, key: Keypair | None = None) -> AsyncIterator[Client]:
    async with open_websocket_url(url, max_message_size=1 << 24) as ws:
        client = Client(ws, key)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read)
            yield client
            nursery.cancel_scope.cancel()
