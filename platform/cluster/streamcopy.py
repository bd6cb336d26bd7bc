"""Journal durability's copy of the chain in the stream.

Under ``--durability journal`` a block is released once fsynced to the primary's local
journal; JetStream gets it right after, as a replica. ``StreamCopy`` is the primary's
block listener that does that: durable blocks go to the stream in order, a batch at a
time, through the cluster's ``publish`` (retried while NATS is unreachable; ``Fenced``
ends the node). Blocks wait in memory only up to ``QUEUE_BYTES``: past it (NATS not
keeping up), or for blocks journaled before it ran, the stream catches up from the
journal's files instead, so a long outage costs disk reads, not memory.
"""

from __future__ import annotations

from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from satchel.ledger.journal import read_heights, take_batch

log = structlog.get_logger("satchel.cluster")

QUEUE_BYTES = 256 << 20  # block bytes held for the stream before reading them back from the journal
BATCH = 256  # blocks a publish at most


class Publisher(Protocol):
    published: int  # the stream's last height as this node knows it

    async def publish(self, blocks: list) -> None: ...


class StreamCopy:
    def __init__(self, publisher: Publisher, journal_dir: Path, durable: int):
        self.publisher = publisher
        self.journal_dir = journal_dir
        self.durable = durable  # the node's durable height (what it applied came from the stream or the journal)
        self._queue: deque = deque()  # durable blocks not yet in the stream: (height, payload, state hash)
        self._queue_bytes = 0
        self._queued = trio.Event()
        self._from_journal = False

    def block(self, header: Any, payload: bytes, events_bytes: bytes, state_hash: str | None) -> None:
        """A durable block (the node's block listener)."""
        self.durable = header.height
        if self._from_journal:
            self._queued.set()
            return
        if self._queue_bytes >= QUEUE_BYTES:
            self._queue.clear()
            self._queue_bytes = 0
            self._from_journal = True
            log.warning("cluster.stream_behind", why="NATS is not keeping up: the stream catches up from the journal")
        else:
            self._queue.append((header.height, payload, state_hash))
            self._queue_bytes += len(payload)
        self._queued.set()

    async def run(self) -> None:
        publisher = self.publisher
        while True:
            if publisher.published < self.durable and (self._from_journal or not self._queue
                                                       or self._queue[0][0] > publisher.published + 1):
                # catching up (after an outage, or blocks journaled before we ran): from the files
                self._from_journal = False
                upto = self.durable
                with closing(read_heights(self.journal_dir, publisher.published + 1, upto)) as records:
                    while publisher.published < upto and (batch := await trio.to_thread.run_sync(take_batch, records)):
                        await publisher.publish([(h, p, None) for h, p in batch])
            while self._queue and self._queue[0][0] <= publisher.published:
                self._queue_bytes -= len(self._queue.popleft()[1])
            if not self._queue:
                self._queued = trio.Event()
                await self._queued.wait()
                continue
            blocks = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH))]
            self._queue_bytes -= sum(len(b[1]) for b in blocks)
            await publisher.publish(blocks)
