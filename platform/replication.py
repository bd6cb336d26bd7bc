"""The block stream: every durable block, from any height, for validators and replicas.

A follower connects over WebSocket and sends ``{"from": <height>}``. It receives binary
messages, msgpack ``[payload, events, state_hash]``: ``payload`` is the journal record
of one block (exactly the bytes the node fsynced), ``events`` the msgpack of the
events the node's engine produced for it (None for blocks read back from the journal,
which stores only transactions), and ``state_hash`` the node's state hash after that
block when it took a snapshot there (else None). Old heights come from the journal
files, then the stream continues live without a gap: the follower's live queue is
registered before the journal is read, and blocks already sent are skipped.

A follower that falls more than ``buffer_blocks`` behind the live stream is
disconnected; it reconnects from its own height.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import structlog
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from satchel import snapshots
from satchel.journal import read_records
from satchel.messages import BlockHeader, header_decoder

log = structlog.get_logger("satchel.replication")
_encode = msgspec.msgpack.encode


def _history(journal: Path, snaps: Path, start: int, upto: int) -> list[bytes]:
    """Messages for heights start..upto from the journal (blocking: run in a thread)."""
    checkpoints = {}
    for path in sorted(snaps.glob("*.snap")):
        try:
            snap = snapshots.read(path)
            checkpoints[snap.height] = snap.state_hash
        except (OSError, ValueError, msgspec.DecodeError):
            continue
    out = []
    for payload in read_records(journal):
        height = header_decoder.decode(payload).header.height
        if start <= height <= upto:
            out.append(_encode([payload, None, checkpoints.get(height)]))
    return out


class Replicator:
    def __init__(self, node: Any, host: str = "127.0.0.1", port: int = 8766, buffer_blocks: int = 10_000):
        self.node = node
        self.host = host
        self.port = port
        self.buffer_blocks = buffer_blocks
        self.durable_height = 0
        self._followers: dict[trio.MemorySendChannel, None] = {}
        node.block_listeners.append(self)

    def block(self, header: BlockHeader, payload: bytes, events_bytes: bytes, state_hash: str | None) -> None:
        self.durable_height = header.height
        if not self._followers:
            return
        msg = (header.height, _encode([payload, events_bytes, state_hash]))
        for send in list(self._followers):
            try:
                send.send_nowait(msg)
            except trio.WouldBlock:
                del self._followers[send]
                send.close()
                log.warning("replication.follower_dropped", reason="too far behind")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.durable_height = self.node.chain.height
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: serve_websocket(
                self._handle, self.host, self.port, None, max_message_size=1 << 16, task_status=task_status))
            self.port = server.port
            log.info("replication.listening", url=f"ws://{self.host}:{self.port}")
            task_status.started(self)

    async def _handle(self, request: Any) -> None:
        ws = await request.accept()
        try:
            hello = orjson.loads(await ws.get_message())
            start = max(1, int(hello.get("from", 1)))
        except (ConnectionClosed, orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
            await ws.aclose(code=1003, reason="send {\"from\": height}")
            return
        send, recv = trio.open_memory_channel(self.buffer_blocks)
        self._followers[send] = None
        upto = self.durable_height
        log.info("replication.follower", start=start, durable=upto)
        try:
            data = self.node.data
            for msg in await trio.to_thread.run_sync(_history, data / "journal", data / "snapshots", start, upto):
                await ws.send_message(msg)
            async for height, msg in recv:
                if height > upto and height >= start:
                    await ws.send_message(msg)
        except ConnectionClosed:
            pass
        finally:
            self._followers.pop(send, None)
