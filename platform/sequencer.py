"""The sequencer: the single writer that puts every transaction into one total order.

Edges call ``submit`` (a transaction plus a callback for its events) or ``read`` (a
query to run against the engine's state between blocks). The sequencer's task cuts a
block when ``max_txs`` transactions are waiting or ``interval`` seconds after the
first of them arrived, stamps it with the next sequence numbers and a microsecond
timestamp that never decreases (also across restarts: it starts from the journal's
last stamp), and passes it down the pipeline. A read is queued behind the transactions
submitted before it, so it sees their effects.

Backpressure: the queue towards the engine is bounded; when the pipeline is busy the
pending list grows and the next block is simply bigger (group commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio


class Stamped:
    """A block's worth of transactions, stamped, on its way to the engine."""

    __slots__ = ("height", "first_seq", "timestamp", "txs", "callbacks")

    def __init__(self, height: int, first_seq: int, timestamp: int, txs: list, callbacks: list):
        self.height = height
        self.first_seq = first_seq
        self.timestamp = timestamp
        self.txs = txs
        self.callbacks = callbacks


class Read:
    """A query that runs on the engine between blocks; answered once prior blocks are durable."""

    __slots__ = ("fn", "callback", "result")

    def __init__(self, fn: Callable, callback: Callable[[Any], None]):
        self.fn = fn
        self.callback = callback
        self.result: Any = None


def now_us() -> int:
    return time.time_ns() // 1000


class Sequencer:
    def __init__(self, next_height: int, next_seq: int, last_timestamp: int, max_txs: int = 4096, interval: float = 0.002):
        self.next_height = next_height
        self.next_seq = next_seq
        self.last_timestamp = last_timestamp
        self.max_txs = max_txs
        self.interval = interval
        self._txs: list = []
        self._callbacks: list = []
        self._queue: list = []  # Stamped | Read in order, waiting for the engine
        self._arrived = trio.Event()
        self._first_at = 0.0
        self._queued_txs = 0  # in cut blocks not yet handed to the engine
        self.closed = False

    def submit(self, tx: Any, callback: Callable[[list], None] | None) -> None:
        """Queue a transaction; ``callback(events)`` runs once its block is durable."""
        if self.closed:
            raise trio.ClosedResourceError("sequencer is shut down")
        txs = self._txs
        if not txs:
            self._first_at = trio.current_time()
            self._arrived.set()  # wake the task only for a block's first transaction...
        txs.append(tx)
        self._callbacks.append(callback)
        if len(txs) >= self.max_txs:
            self._cut()
            self._arrived.set()  # ...or when a full block is ready

    def read(self, fn: Callable, callback: Callable[[Any], None]) -> None:
        if self.closed:
            raise trio.ClosedResourceError("sequencer is shut down")
        self._cut()
        self._queue.append(Read(fn, callback))
        self._arrived.set()

    def _cut(self) -> None:
        if not self._txs:
            return
        ts = max(now_us(), self.last_timestamp)
        block = Stamped(self.next_height, self.next_seq, ts, self._txs, self._callbacks)
        self.next_height += 1
        self.next_seq += len(self._txs)
        self.last_timestamp = ts
        self._txs = []
        self._callbacks = []
        self._queue.append(block)
        self._queued_txs += len(block.txs)

    async def run(self, out: trio.MemorySendChannel) -> None:
        """Feed stamped blocks and reads to the engine until closed and drained."""
        async with out:
            while True:
                if not self._queue:
                    if self._txs:
                        deadline = self._first_at + self.interval
                        with trio.move_on_at(deadline):
                            while not self._queue:
                                self._arrived = trio.Event()
                                await self._arrived.wait()
                        self._cut()
                    elif self.closed:
                        return
                    else:
                        self._arrived = trio.Event()
                        await self._arrived.wait()
                        continue
                queue, self._queue = self._queue, []
                for item in queue:
                    await out.send(item)
                    if item.__class__ is Stamped:
                        self._queued_txs -= len(item.txs)

    @property
    def backlog(self) -> int:
        """Transactions accepted but not yet handed to the engine."""
        return len(self._txs) + self._queued_txs

    def close(self) -> None:
        """Stop accepting; what was submitted is still sequenced and made durable."""
        self.closed = True
        self._cut()
        self._arrived.set()
