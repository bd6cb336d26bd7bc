"""The sequencer: the single writer that puts every transaction into one total order.

Edges call ``submit`` (a transaction plus a callback for its events) or ``read`` (a
query to run against the engine's state between blocks). The engine stage pulls with
``next_item``: when it is free, everything submitted so far becomes one block, stamped
with the next sequence numbers and a microsecond timestamp that never decreases (also
across restarts: it starts from the journal's last stamp). This is natural batching,
as LMAX does it: on an idle pipeline a single order waits for nothing, and while the
engine is busy arrivals gather into the next block, so blocks grow with load (up to
``max_txs``) and latency stays low when it is light. A read is queued behind the
transactions submitted before it, so it sees their effects.

*Background* transactions (``background``: a chain adapter's reports, declared per
instruction with their weight, a report's deposits) never make a block of their own while
anyone else's are coming: they ride along in blocks cut for other transactions, at most
``background_budget`` of weight a block, oldest first, or go all together once the oldest
has waited ``background_wait`` seconds. A block costs the engine its fixed phases and the
journal an fsync whatever it carries (~450 us on a 2-core machine), and on one event loop an
order arriving meanwhile waits for all of it: a block of reports of its own delays every
order that comes during it, a report riding along adds only its own share (~160-180 us
for 8 deposits, ``benchmarks/ridealong``) to a block that was being cut anyway (orders' p99
beside 1,250 deposits a second: ``benchmarks/deposits``, see the README).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import trio

from satchel.clock import now_us


class Stamped:
    """A block's worth of transactions, stamped, on its way to the engine."""

    __slots__ = ("height", "first_seq", "timestamp", "txs", "callbacks", "cut_at")

    def __init__(self, height: int, first_seq: int, timestamp: int, txs: list, callbacks: list):
        self.height = height
        self.first_seq = first_seq
        self.timestamp = timestamp
        self.txs = txs
        self.callbacks = callbacks
        self.cut_at = trio.current_time()  # for the node's stage latencies


class Read:
    """A typed query the engine answers between blocks; the answer goes out once prior
    blocks are durable."""

    __slots__ = ("query", "callback", "result")

    def __init__(self, query: Any, callback: Callable[[Any], None]):
        self.query = query
        self.callback = callback
        self.result: Any = None


class Sequencer:
    def __init__(self, next_height: int, next_seq: int, last_timestamp: int, max_txs: int = 4096,
                 clock: Callable[[], int] = now_us, background: Mapping[type, Callable[[Any], int]] | None = None,
                 background_budget: int = 8, background_wait: float = 0.25):
        self.next_height = next_height
        self.next_seq = next_seq
        self.last_timestamp = last_timestamp
        self.max_txs = max_txs
        self._clock = clock
        self._txs: list = []
        self._callbacks: list = []
        self.background = background or {}  # class -> the weight of one of its transactions
        self.background_budget = background_budget
        self.background_wait = background_wait
        self._bg: deque = deque()  # (arrived, weight, tx, callback), oldest first
        self._queue: deque = deque()  # Read items, and blocks cut ahead of them, in order
        self._arrived = trio.Event()
        self.closed = False

    def submit(self, tx: Any, callback: Callable[[list], None] | None) -> None:
        """Queue a transaction; ``callback(events)`` runs once its block is durable."""
        if self.closed:
            raise trio.ClosedResourceError("sequencer is shut down")
        weight = self.background.get(tx.__class__)
        if weight is not None:
            self._bg.append((trio.current_time(), weight(tx), tx, callback))
        else:
            self._txs.append(tx)
            self._callbacks.append(callback)
        self._arrived.set()

    def read(self, query: Any, callback: Callable[[Any], None]) -> None:
        """Queue a ``core.messages.Query`` behind everything submitted so far."""
        if self.closed:
            raise trio.ClosedResourceError("sequencer is shut down")
        self._cut_all()
        self._queue.append(Read(query, callback))
        self._arrived.set()

    def _due(self) -> float:
        """When the oldest background transaction waiting goes, alone if need be."""
        return self._bg[0][0] + self.background_wait if self._bg else math.inf

    def _cut(self, everything: bool = False) -> Stamped:
        n = self.max_txs
        txs, self._txs = self._txs[:n], self._txs[n:]
        callbacks, self._callbacks = self._callbacks[:n], self._callbacks[n:]
        bg = self._bg
        if bg and len(txs) < n:  # the background rides along, after the others
            overdue = everything or self.closed or trio.current_time() >= self._due()
            budget = self.background_budget
            while bg and len(txs) < n and (overdue or bg[0][1] <= budget):
                _, weight, tx, callback = bg.popleft()
                budget -= weight
                txs.append(tx)
                callbacks.append(callback)
        ts = max(self._clock(), self.last_timestamp)
        block = Stamped(self.next_height, self.next_seq, ts, txs, callbacks)
        self.next_height += 1
        self.next_seq += len(txs)
        self.last_timestamp = ts
        return block

    def _cut_all(self) -> None:
        while self._txs or self._bg:
            self._queue.append(self._cut(everything=True))

    async def next_item(self) -> "Stamped | Read | None":
        """The next block (everything waiting, up to ``max_txs``) or read; None once
        closed and drained. Called by the engine stage whenever it is free."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._txs or (self._bg and (self.closed or trio.current_time() >= self._due())):
                return self._cut()
            if self.closed:
                return None
            self._arrived = trio.Event()
            with trio.move_on_at(self._due()):
                await self._arrived.wait()

    @property
    def idle(self) -> bool:
        """Nothing submitted or queued that the engine has not taken yet, but background
        transactions waiting for a block to ride along in (they go on their own)."""
        return not self._txs and not self._queue

    @property
    def backlog(self) -> int:
        """Transactions accepted but not yet handed to the engine."""
        return len(self._txs) + len(self._bg) + sum(len(i.txs) for i in self._queue if i.__class__ is Stamped)

    def close(self) -> None:
        """Stop accepting; what was submitted is still sequenced and made durable."""
        self.closed = True
        self._arrived.set()
