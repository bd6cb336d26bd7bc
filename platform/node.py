"""One node: journal recovery, then the pipeline sequencer -> engine -> journal -> publish.

::

    edges --submit--> Sequencer --Stamped--> engine stage --(block, events)--> writer
                                                                                (fsync)
                                                   publisher <--durable-------'
                                     (replies, market data, private streams)

The engine applies a block before it is durable (its header commits to the events it
produced), but nothing it produced leaves the node until the writer has fsynced it: a
reply, a fill or a depth update is never seen for a block a crash could lose. A crash
in between loses the in-memory state too, and replaying the journal on restart
reproduces exactly the durable prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog
import trio
import trio.testing

from satchel import config as config_mod
from satchel.clock import now_us
from satchel.core.engine import Engine
from satchel.core.instructions import INSTRUCTIONS
from satchel.core.messages import BlockHeader, Query
from satchel.latency import StageLatency
from satchel.ledger import snapshots
from satchel.ledger.chain import Applied, Chain, DivergedError, recover_chain
from satchel.ledger.durability import Durability
from satchel.ledger.journal import Journal
from satchel.ledger.sequencer import Read, Sequencer
from satchel.runtime import fatal_errors_unwrapped, raise_fd_limit, tune_gc
from satchel.chains.addresses import AddressBook, load_seed
from satchel.signing import Keypair, load_key
from satchel.cluster.follower import Received

if TYPE_CHECKING:
    from satchel.cluster.role import Cluster

log = structlog.get_logger("satchel.node")
# transactions the sequencer lets ride along in others' blocks (a chain adapter's reports), by weight
BACKGROUND = {i.tx: i.background for i in INSTRUCTIONS if i.background is not None}


class Subscriber(Protocol):
    def publish(self, header: BlockHeader, events: list) -> None: ...


class BlockListener(Protocol):
    def block(self, header: BlockHeader, payload: bytes, events_bytes: bytes, state_hash: str | None) -> None: ...


class Node:
    """Recover, run the pipeline, and shut down with everything durable."""

    def __init__(self, data: str | Path, cfg: config_mod.Config | None = None, cluster: "Cluster | None" = None):
        self.data = Path(data)
        self.cfg = cfg or config_mod.load()
        # in a cluster (``satchel.cluster``) blocks come from the stream until this node sequences
        self.cluster = cluster
        self.journal = Journal(self.data / "journal", self.cfg.node.segment_bytes)
        self.durability = Durability(self.journal, cluster)
        if cluster is not None and not cluster.can_sequence:
            # a gateway or read replica holds no secret of the exchange: admin requests are
            # checked against the admin key the chain itself names, deposit addresses are
            # handed out where the custody seed is (a sequencer's own gateway)
            self.cfg = msgspec.structs.replace(self.cfg, chains={})
            self.admin: Any = _ChainAdmin(self)
            self.chain_keys: dict[str, Keypair] = {}
            self.custody_seed = b""
        else:
            self.admin = load_key(self.data, "admin.key")
            # each chain's adapter signs its reports with its own key; the seed derives deposit addresses
            self.chain_keys = {name: load_key(self.data, f"chain-{name}.key") for name in self.cfg.chains}
            self.custody_seed = load_seed(self.data)
        # deposit addresses handed out, each derived by its chain kind's rule
        self.addresses = AddressBook(self.data, self.custody_seed, {n: c.kind for n, c in self.cfg.chains.items()})
        self.chain_adapters: dict[str, Any] = {}  # name -> the running chain adapter (``satchel reconcile`` reads through it)
        self.subscribers: list[Subscriber] = []
        self.sequencer: Sequencer | None = None
        self.chain: Chain | None = None
        self._stopped = trio.Event()
        self.block_listeners: list[BlockListener] = []  # replication: every durable block
        self.block_timestamp = 0  # of the block whose replies are being published
        self.block_times = (0.0, 0.0, 0.0)  # its (sequenced, applied, durable) trio times
        self.latency = StageLatency()
        self._in_pipeline = 0  # blocks and reads taken by the engine and not yet answered
        self._quiet = trio.Event()  # set when the pipeline ran dry (``quiet``)
        self._turns = trio.Lock()  # background work's steps, one at a time (``turn``)

    @property
    def engine(self) -> Engine:
        return self.chain.engine

    def _last_snapshot_height(self) -> int:
        snaps = sorted((self.data / "snapshots").glob("*.snap"))
        return int(snaps[-1].stem) if snaps else 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``shutdown``; ``task_status.started()`` once ready for submissions.

        A damaged journal or a replay that disagrees with it raises ``JournalCorrupt`` or
        ``DivergedError`` itself (not wrapped in an exception group), so callers and
        operators see the file and offset or the block at fault.
        """
        with fatal_errors_unwrapped():
            await self._run(task_status)

    async def _run(self, task_status: Any) -> None:
        tune_gc()
        raise_fd_limit()
        async with trio.open_nursery() as actors:
            self.chain = Chain(Engine(actors))
            await self._recover()
            async with trio.open_nursery() as pipeline:
                to_writer_send, to_writer = trio.open_memory_channel(64)
                to_pub_send, to_pub = trio.open_memory_channel(64)
                if self.cluster is None:
                    self.sequencer = self._new_sequencer()
                else:
                    self.sequencer = await self.cluster.start(self)
                    pipeline.start_soon(self.cluster.run, self)
                pipeline.start_soon(self._engine_stage, to_writer_send)
                pipeline.start_soon(self._writer_stage, to_writer, to_pub_send)
                pipeline.start_soon(self._publisher, to_pub)
                if self.cluster is None:
                    await self._genesis()
                log.info("node.ready", height=self.chain.height, data=str(self.data))
                task_status.started(self)
            self.journal.close()
            if self.chain.height and self.chain.height != self._last_snapshot_height():
                await self._write_snapshot(await self.chain.snapshot())
            log.info("node.stopped", height=self.chain.height, txs=self.chain.txs, state=await self.engine.state_hash())
            actors.cancel_scope.cancel()
        self._stopped.set()

    async def _write_snapshot(self, snap: snapshots.Snapshot) -> None:
        """A snapshot shortens recovery; the journal holds the truth without it. One that
        cannot be written now (out of file descriptors or disk space) is logged and the
        node goes on: the next snapshot height tries again."""
        try:
            await trio.to_thread.run_sync(snapshots.write, self.data / "snapshots", snap)
        except OSError as exc:
            log.warning("node.snapshot_failed", height=snap.height, error=str(exc))

    def _new_sequencer(self) -> Sequencer:
        return Sequencer(self.chain.height + 1, self.chain.next_seq, self.chain.last_timestamp, self.cfg.node.block_max_txs,
                         background=BACKGROUND)

    async def _genesis(self) -> None:
        if self.chain.height == 0:
            adapters = {name: key.api_key for name, key in self.chain_keys.items()}
            *first, last = config_mod.genesis(self.cfg, self.admin, adapters)
            for tx in first:
                self.sequencer.submit(tx, None)
            await self.submit_wait(last)

    def _take_over(self, following: Any) -> None:
        """The stream is applied to its end: sequence from here (a cluster's new primary).
        The rest (heartbeats, genesis on an empty stream, the intake) runs as a task: it
        waits for blocks this engine stage applies."""
        self.sequencer = self._new_sequencer()
        for read in following.take_reads():
            self.sequencer.read(read.query, read.callback)
        self.cluster.become_primary(self, self._genesis)

    async def _recover(self) -> None:
        started = trio.current_time()
        await recover_chain(self.chain, self.data, self.journal.recover(), journal=self.journal)
        if self.chain.last_timestamp > now_us():
            log.warning("node.clock_behind_journal", journal_us=self.chain.last_timestamp)
        log.info(
            "journal.recovered",
            blocks=self.chain.height,
            txs=self.chain.txs,
            state=await self.engine.state_hash(),
            seconds=round(trio.current_time() - started, 3),
        )

    async def _engine_stage(self, send: trio.MemorySendChannel) -> None:
        """Pull the next block whenever the engine is free (natural batching)."""
        async with send:
            while True:
                source = self.sequencer
                await self.durability.before_cut()
                item = await source.next_item()
                if item is None:
                    if source.closed or self.cluster is None:
                        break
                    self._take_over(source)  # a follower drained to the stream's end
                    continue
                self._in_pipeline += 1
                if item.__class__ is Read:
                    item.result = await self.engine.ask(item.query)
                    await send.send(item)
                else:
                    if item.__class__ is Received:
                        applied = await self.chain.follow(item)
                    else:
                        applied = await self.chain.extend(item)
                        self.durability.sequenced()
                    applied.applied_at = trio.current_time()
                    if applied.header.height % self.cfg.node.snapshot_blocks == 0:
                        # written by the writer right after this block is durable
                        applied.snapshot = await self.chain.snapshot()
                        if applied.followed and item.state_hash not in (None, applied.snapshot.state_hash):
                            raise DivergedError(f"block {applied.header.height}: this node's state differs from the sequencer's")
                    await send.send(applied)

    async def _writer_stage(self, recv: trio.MemoryReceiveChannel, send: trio.MemorySendChannel) -> None:
        """Group commit: every block that piled up during the last fsync goes in the next."""
        async with recv, send:
            async for first in recv:
                batch = [first]
                while len(batch) < 256:
                    try:
                        batch.append(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                blocks = [a for a in batch if a.__class__ is Applied]
                if blocks:
                    await self.durability.store(blocks)
                    durable = trio.current_time()
                    for a in blocks:
                        a.durable_at = durable
                        if a.snapshot is not None:
                            await self._write_snapshot(a.snapshot)
                for entry in batch:
                    await send.send(entry)

    async def _publisher(self, recv: trio.MemoryReceiveChannel) -> None:
        async with recv:
            async for applied in recv:
                self._in_pipeline -= 1
                if applied.__class__ is Read:
                    applied.callback(applied.result)
                    self._ran_dry()
                    continue
                item, header, events = applied.item, applied.header, applied.events
                self.block_timestamp = header.timestamp
                self.block_times = (item.cut_at, applied.applied_at, applied.durable_at)
                self.latency.record_block(item.cut_at, applied.applied_at, applied.durable_at, len(item.txs))
                callbacks = item.callbacks
                first = item.first_seq
                n = len(callbacks)
                routed: list = [None] * n
                for ev in events:
                    i = ev.seq - first
                    if 0 <= i < n:
                        bucket = routed[i]
                        if bucket is None:
                            routed[i] = [ev]
                        else:
                            bucket.append(ev)
                for i, cb in enumerate(callbacks):
                    if cb is not None:
                        try:
                            cb(routed[i] or [])
                        except Exception:
                            log.exception("publisher.callback_failed", seq=first + i)
                for sub in self.subscribers:
                    sub.publish(header, events)
                state = applied.snapshot.state_hash if applied.snapshot is not None else None
                for listener in self.block_listeners:
                    listener.block(header, applied.payload, applied.events_bytes, state)
                self._ran_dry()

    def _idle(self) -> bool:
        return not self._in_pipeline and self.sequencer.idle

    def _ran_dry(self) -> None:
        if self._idle():
            self._quiet.set()

    def submit(self, tx: Any, callback: Callable[[list], None] | None = None) -> None:
        self.sequencer.submit(tx, callback)

    async def submit_wait(self, tx: Any) -> list:
        """Submit and wait until the transaction's block is durable; returns its events."""
        return await _answer(lambda cb: self.sequencer.submit(tx, cb))

    async def quiet(self, patience: float) -> bool:
        """Wait until the pipeline has nothing to do (no transaction or read waiting,
        applied, being made durable or answered), or ``patience`` seconds at most; True if
        it ran dry, False if the patience ran out (the node is saturated).

        Background work at the edges calls this before each step (a chain adapter's sweeps;
        its other steps take ``turn``s, which wait for this too), so it runs between orders
        rather than beside them: on one event loop an order in flight waits for every step
        that runs meanwhile (measured: a block's deposits handled beside orders tripled
        their p99, ``benchmarks/deposits``).
        ``patience`` bounds the wait, so under saturation that work still goes on."""
        with trio.move_on_after(patience):
            while not self._idle():
                if self._quiet.is_set():
                    self._quiet = trio.Event()
                await self._quiet.wait()
            return True
        return False

    @asynccontextmanager
    async def turn(self, patience: float = 0.05) -> AsyncIterator[None]:
        """A step of background work on the node's loop (a chain adapter's report or scan,
        a simulated chain sealing a few transfers): one step at a time, each once the
        pipeline is idle (``quiet``, ``patience`` at most), and nothing awaited inside.

        Trio has no task priorities: background work cut into small steps otherwise runs
        in the same scheduler batches as the engine's actor round trips, and an order's
        block waits for every step that runs meanwhile, a few each round trip (measured,
        ``benchmarks/deposits``: orders' p99 x4.4 beside deposits, against x1.2-1.5 with turns).
        With turns an order waits at most for the one step that began before it came."""
        async with self._turns:
            with trio.move_on_after(patience):
                await self.quiet(patience)
                # and the loop itself idle: the tasks an order's answer woke run first
                await trio.testing.wait_all_tasks_blocked()
            yield

    async def ask(self, target: str, message: Any) -> Any:
        """A typed query (``core.messages``) to ``target`` between blocks; answered once
        earlier blocks are durable."""
        return await _answer(lambda cb: self.sequencer.read(Query(target, message), cb))

    def shutdown(self) -> None:
        """Stop taking transactions; the pipeline drains and the journal is flushed."""
        if self.sequencer is not None:
            self.sequencer.close()
        if self.cluster is not None:
            self.cluster.stop()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


class _ChainAdmin:
    """The admin key a follower checks admin requests against: the one its chain names."""

    def __init__(self, node: Node):
        self._node = node

    @property
    def api_key(self) -> str | None:
        return self._node.engine.admin


async def _answer(register: Callable[[Callable[[Any], None]], None]) -> Any:
    """Await the value a callback-style API delivers."""
    done = trio.Event()
    box: list = []

    def cb(value: Any) -> None:
        box.append(value)
        done.set()

    register(cb)
    await done.wait()
    return box[0]


