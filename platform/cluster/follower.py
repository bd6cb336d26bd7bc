"""A node that follows the block stream (a gateway, a read replica, a standby sequencer).

It takes the place of the node's ``Sequencer`` as its source of work: blocks come from
JetStream (``stream.follow``) and are replayed by the node's own engine (checked
against the chain and the block's event commitment, as a validator does), reads are
answered between them, and transactions are forwarded to the sequencer
(``intake.Forwarder``). A transaction's reply comes from this node's own replay of the
block that holds it, matched by its signature: the answer, the fills on the private
streams and market data all come from the same applied block, so a client never sees
its reply before the state a following query reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
import trio

from satchel.cluster import stream
from satchel.cluster.bus import Bus
from satchel.ledger.chain import decode_block
from satchel.ledger.sequencer import Read

log = structlog.get_logger("satchel.cluster.follower")

MAX_QUEUED_BYTES = 64 << 20  # fetched ahead of the engine at most (one fetch batch more): a block is up to MBs


class Received:
    """A block from the stream on its way to the engine (the follower's ``Stamped``)."""

    __slots__ = ("block", "payload", "state_hash", "callbacks", "cut_at")

    def __init__(self, block: Any, payload: bytes, state_hash: str | None, callbacks: list):
        self.block = block
        self.payload = payload
        self.state_hash = state_hash
        self.callbacks = callbacks
        self.cut_at = trio.current_time()

    @property
    def first_seq(self) -> int:
        return self.block.header.first_seq

    @property
    def txs(self) -> list:
        return self.block.txs


class StreamSource:
    """Blocks from the stream and reads, in the order the node's engine stage takes them;
    ``submit`` forwards to the sequencer. Stops at the stream's end when ``drain`` is
    called (a standby taking over)."""

    def __init__(self, bus: Bus, forwarder: Any, next_height: int, admin: Callable[[], str | None] = lambda: None):
        self.bus = bus
        self.admin = admin  # the admin key the chain names, which signs every block in the stream
        self.forwarder = forwarder
        self.next_height = next_height
        self._reads: deque = deque()
        self._blocks: deque = deque()
        self._arrived = trio.Event()
        self._taken = trio.Event()
        self.closed = False
        self._drain_to: int | None = None
        self.fetched = next_height - 1
        self._queued_bytes = 0

    # ------------------------------------------------------------------ the node's side

    def submit(self, tx: Any, callback: Callable[[list], None] | None) -> None:
        if self.closed:
            raise trio.ClosedResourceError("node is shutting down")
        self.forwarder.forward(tx, callback)

    def read(self, query: Any, callback: Callable[[Any], None]) -> None:
        if self.closed:
            raise trio.ClosedResourceError("node is shutting down")
        self._reads.append(Read(query, callback))
        self._arrived.set()

    async def next_item(self) -> Any:
        while True:
            if self._reads:
                return self._reads.popleft()
            if self._blocks:
                item = self._blocks.popleft()
                self._queued_bytes -= len(item.payload)
                self._taken.set()
                block = decode_block(item.payload)
                stream.check_signed(item, block.header, self.admin(), block)
                self.next_height = block.header.height + 1
                return Received(block, item.payload, item.state_hash, self.forwarder.claim(block))
            if self.closed or (self._drain_to is not None and self.next_height > self._drain_to):
                return None
            self._arrived = trio.Event()
            await self._arrived.wait()

    @property
    def idle(self) -> bool:
        return not self._reads and not self._blocks

    @property
    def backlog(self) -> int:
        """Transactions forwarded and not yet seen in a block."""
        return self.forwarder.pending

    def close(self) -> None:
        self.closed = True
        self._arrived.set()

    def drain(self, last: int) -> None:
        """Stop once block ``last`` has been handed over (``next_item`` returns None)."""
        self._drain_to = last
        self._arrived.set()

    def take_reads(self) -> deque:
        reads, self._reads = self._reads, deque()
        return reads

    # ------------------------------------------------------------------ the stream's side

    async def run(self) -> None:
        """Fetch blocks from the stream into the queue, at most ``MAX_QUEUED_BYTES`` ahead."""
        async for batch in stream.follow(self.bus, self.next_height):
            while self._queued_bytes >= MAX_QUEUED_BYTES:
                self._taken = trio.Event()
                await self._taken.wait()
            if self._drain_to is not None:
                batch = [b for b in batch if b.height <= self._drain_to]
            self._blocks.extend(batch)
            self._queued_bytes += sum(len(b.payload) for b in batch)
            if batch:
                self.fetched = batch[-1].height
            self._arrived.set()
            if self._drain_to is not None and self.fetched >= self._drain_to:
                return  # this node sequences from here: its own blocks need no fetching back
