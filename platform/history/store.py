"""The history store: one thread owns the SQLite database; blocks and reads queue to it.

::

    node publisher --publish(header, events)--> queue --> store thread: batch, one transaction
    edges (API, REST) --read(query, reply)----> queue -'      per batch; reads answered
    catch-up replay --write_caught_up---------> queue         on trio via the trio token

``publish`` runs on the trio thread for every durable block and only appends to the
queue, so the node's publisher never waits on SQLite. Reads go through the same queue,
behind every block published before them: a client that placed an order and then reads
its history (ccxt's ``create_order`` then ``fetch_order``) finds it. Consecutive blocks
are gathered and written in one transaction; the batch is committed before a read runs,
when the queue runs dry, or every ``BATCH_BLOCKS`` blocks, so batches grow with load and
an idle node commits each block at once (the journal's natural batching, again).

Memory: the live queue is not bounded -- ``publish`` must never block or drop a durable
block -- but it is logged when it passes ``QUEUE_WARN`` items (then at each doubling).
The catch-up waits while ``CATCHUP_QUEUE`` of its blocks are pending, so a rebuild never
piles the journal up in memory.

A failed write rolls its batch back and is logged; those blocks are then missing from
``written`` and the next start writes them again from the journal. If the thread itself
fails, the history stops answering (MAINTENANCE) but the node goes on.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from satchel.core.errors import MAINTENANCE, RequestError
from satchel.core.messages import BlockHeader
from satchel.history.schema import Ranges, load_written, open_db, save_written
from satchel.history.writes import Batch

log = structlog.get_logger("satchel.history")

QUEUE_WARN = 10_000  # pending items before a warning
CATCHUP_QUEUE = 64  # replayed blocks pending at most
BATCH_BLOCKS = 1000  # blocks per transaction at most
BATCH_ROWS = 100_000  # rows per transaction at most

_BLOCK, _CATCHUP, _READ, _STOP = range(4)


class Query(Protocol):
    """A read of the history database (``history.queries``), run on the store's thread."""

    def run(self, conn: sqlite3.Connection) -> Any: ...


class _Gaps:
    """The heights 1..``upto`` the database does not hold (read on the store's thread,
    which alone changes ``Store._ranges``)."""

    def __init__(self, store: "Store", upto: int):
        self.store = store
        self.upto = upto

    def run(self, conn: sqlite3.Connection) -> list[tuple[int, int]]:
        return self.store._ranges.gaps(self.upto)


class Store:
    """The history database at ``path``, written and read by one thread (``run``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._catchup_room = threading.Semaphore(CATCHUP_QUEUE)
        self._token: trio.lowlevel.TrioToken | None = None
        self._closing = False  # set on the trio thread when the stop is queued
        self._failed = False  # set by the store's thread when it failed
        self._warn_at = QUEUE_WARN
        self._ranges = Ranges()  # blocks in the database; the store's thread alone changes it
        self.blocks_written = 0  # since this process started

    # ------------------------------------------------------------------ the trio side

    def publish(self, header: BlockHeader, events: list) -> None:
        """A durable block (the node's subscriber call): queued, written by the thread."""
        if self._closing or self._failed:
            return  # not written: the next start finds it missing and writes it from the journal
        q = self._queue
        q.put((_BLOCK, header, events))
        n = q.qsize()
        if n >= self._warn_at:
            self._warn_at = n * 2
            log.warning("history.queue_large", pending=n, file=str(self.path))

    def pending(self) -> int:
        return self._queue.qsize()

    def read(self, query: Query, reply: Callable[[Any], None]) -> None:
        """Run ``query`` after every block published so far; ``reply(rows)`` on the trio
        thread, or ``reply(exception)`` if it failed (a ``RequestError`` once closed)."""
        if self._closing or self._failed:
            reply(RequestError(MAINTENANCE, "The history is not available"))
            return
        self._queue.put((_READ, query, reply))

    async def fetch(self, query: Query) -> Any:
        """``read``, awaited: the rows, or the exception raised."""
        done = trio.Event()
        box: list = []

        def reply(value: Any) -> None:
            box.append(value)
            done.set()

        self.read(query, reply)
        await done.wait()
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    async def gaps(self, upto: int) -> list[tuple[int, int]]:
        """The [lo, hi] height ranges in 1..``upto`` the database does not hold yet."""
        return await self.fetch(_Gaps(self, upto))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database, then serve the queue in the store's thread until cancelled;
        on cancellation write what is queued, commit and close. ``task_status.started()``
        once the database is open (a locked or unusable file raises here)."""
        self._token = trio.lowlevel.current_trio_token()
        conn = await trio.to_thread.run_sync(open_db, self.path)
        self._ranges = await trio.to_thread.run_sync(load_written, conn)
        log.info("history.opened", file=str(self.path), height=self._ranges.highest(), ranges=self._ranges.pairs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_when_cancelled)
            task_status.started()
            # not cancellable: it returns once the stop queued by _stop_when_cancelled is reached
            # its own limiter: a thread held for the store's life takes no slot from trio's default one
            await trio.to_thread.run_sync(self._serve, conn, limiter=trio.CapacityLimiter(1))
            log.info("history.closed", file=str(self.path), blocks_written=self.blocks_written, ranges=self._ranges.pairs)
            nursery.cancel_scope.cancel()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stop()

    def _stop(self) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put((_STOP,))

    # ------------------------------------------------------------------ the catch-up's side

    def write_caught_up(self, header: BlockHeader, events: list, stop: threading.Event) -> bool:
        """Queue a block the catch-up replayed, waiting while ``CATCHUP_QUEUE`` of them are
        pending. False (not queued) once ``stop`` is set or the store is closing. Called
        from the catch-up's thread, never the trio thread."""
        while not self._catchup_room.acquire(timeout=0.1):
            if stop.is_set() or self._closing:
                return False
        if stop.is_set() or self._closing:
            self._catchup_room.release()
            return False
        self._queue.put((_CATCHUP, header, events))
        return True

    # ------------------------------------------------------------------ the store's thread

    def _serve(self, conn: sqlite3.Connection) -> None:
        try:
            self._loop(conn)
            return
        except Exception:
            log.exception("history.failed", file=str(self.path), note="history reads answer MAINTENANCE until restart")
            self._failed = True
        finally:
            conn.close()
        self._refuse_until_stopped()

    def _loop(self, conn: sqlite3.Connection) -> None:
        q = self._queue
        batch = Batch()
        while True:
            item = q.get()
            while True:
                kind = item[0]
                if kind == _READ:
                    batch = self._flush(conn, batch)  # the read sees every block queued before it
                    self._answer(conn, item[1], item[2])
                elif kind == _STOP:
                    self._flush(conn, batch)
                    return
                else:
                    if kind == _CATCHUP:
                        self._catchup_room.release()
                    height = item[1].height
                    if height not in self._ranges and height not in batch.heights:
                        batch.add(item[1], item[2])
                        if len(batch.heights) >= BATCH_BLOCKS or batch.rows >= BATCH_ROWS:
                            batch = self._flush(conn, batch)
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            batch = self._flush(conn, batch)
            if self._warn_at > QUEUE_WARN:
                self._warn_at = QUEUE_WARN
                log.info("history.queue_drained", file=str(self.path))

    def _flush(self, conn: sqlite3.Connection, batch: Batch) -> Batch:
        """Write and commit ``batch`` with the heights it adds; a fresh batch to go on with."""
        if not batch.heights:
            return batch
        ranges = self._ranges.copy()
        for h in batch.heights:
            ranges.add(h)
        try:
            conn.execute("BEGIN")
            batch.write(conn)
            save_written(conn, ranges)
            conn.execute("COMMIT")
        except sqlite3.Error:
            log.exception("history.write_failed", blocks=len(batch.heights), first=min(batch.heights),
                          last=max(batch.heights), note="these blocks are written again at the next start")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return Batch()
        self._ranges = ranges
        self.blocks_written += len(batch.heights)
        return Batch()

    def _answer(self, conn: sqlite3.Connection, query: Query, reply: Callable[[Any], None]) -> None:
        try:
            value = query.run(conn)
        except Exception as exc:
            log.exception("history.read_failed", query=repr(query))
            value = exc
        self._deliver(reply, value)

    def _deliver(self, reply: Callable[[Any], None], value: Any) -> None:
        try:
            self._token.run_sync_soon(_call, reply, value)
        except trio.RunFinishedError:
            pass  # the process is exiting: nobody waits for the answer

    def _refuse_until_stopped(self) -> None:
        """After a failure of the thread: answer every read with an error and let the
        catch-up go, until the stop arrives (so that no read ever waits forever)."""
        closed = RequestError(MAINTENANCE, "The history is not available")
        while True:
            item = self._queue.get()
            if item[0] == _STOP:
                return
            if item[0] == _READ:
                self._deliver(item[2], closed)
            elif item[0] == _CATCHUP:
                self._catchup_room.release()


def _call(reply: Callable[[Any], None], value: Any) -> None:
    """Runs on the trio thread: an exception here would crash the whole run, so it is logged."""
    try:
        reply(value)
    except Exception:
        log.exception("history.reply_failed")
