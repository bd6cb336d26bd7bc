"""One node: journal recovery, then the pipeline sequencer -> engine -> journal -> publish.

::

    edges --submit--> Sequencer --Stamped--> engine stage --(block, events)--> writer
                                                                           (fsync, thread)
                                                   publisher <--durable-------'
                                     (replies, market data, private streams)

The engine applies a block before it is durable (its header commits to the events it
produced), but nothing it produced leaves the node until the writer has fsynced it: a
reply, a fill or a depth update is never seen for a block a crash could lose. A crash
in between loses the in-memory state too, and replaying the journal on restart
reproduces exactly the durable prefix.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog
import trio

from satchel import config as config_mod
from satchel.engine import RULES_VERSION, Engine, events_hash
from satchel.journal import Journal, JournalCorrupt, read_records
from satchel.latency import StageLatency
from satchel import liabilities, snapshots
from satchel.messages import Block, BlockHeader, block_decoder, block_encoder, events_encoder, header_decoder
from satchel.sequencer import Read, Sequencer, Stamped, now_us
from satchel.signing import Keypair

log = structlog.get_logger("satchel.node")

_hash_encoder = block_encoder


class DivergedError(RuntimeError):
    """The journal disagrees with this code's replay of it: stop, never guess."""


class Subscriber(Protocol):
    def publish(self, header: BlockHeader, events: list) -> None: ...


def tune_gc() -> None:
    """Collect young objects every 50,000 allocations instead of every 700.

    The engine allocates a few short-lived, acyclic objects per transaction (events,
    entries, tuples); with CPython's default threshold the cyclic collector runs every
    few hundred transactions and costs about a third of the engine's throughput
    (benchmarks/engine: ~85k tx/s at the default, ~138k tuned). Memory is still
    reclaimed by reference counting; only cycle detection runs less often.
    """
    gc.set_threshold(50_000, 20, 100)


def header_hash(header: BlockHeader) -> bytes:
    return hashlib.sha256(_hash_encoder.encode(header)).digest()


def load_admin_key(data: Path, name: str = "admin.key") -> Keypair:
    """The key in ``data/name`` (the node's admin key by default), created on first use (file mode 0600)."""
    path = data / name
    if path.exists():
        return Keypair.from_secret(path.read_text().strip())
    key = Keypair.generate()
    data.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key.secret + "\n")
    tmp.chmod(0o600)
    tmp.rename(path)
    return key


class Applied:
    """A block the engine has applied, on its way to the journal and then out."""

    __slots__ = ("item", "header", "payload", "events", "events_bytes", "snapshot", "applied_at", "durable_at")

    def __init__(self, item: Stamped, header: BlockHeader, payload: bytes, events: list, events_bytes: bytes):
        self.item = item
        self.header = header
        self.payload = payload
        self.events = events
        self.events_bytes = events_bytes
        self.snapshot: snapshots.Snapshot | None = None
        self.applied_at = self.durable_at = 0.0


class BlockListener(Protocol):
    def block(self, header: BlockHeader, payload: bytes, events_bytes: bytes, state_hash: str | None) -> None: ...


class Chain:
    """Applies blocks in order, checking each against the chain it extends."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.height = 0
        self.next_seq = 1
        self.last_timestamp = 0
        self.prev_hash = b""
        self.txs = 0

    async def replay(self, block: Block) -> list:
        h = block.header
        if h.rules_version != RULES_VERSION:
            raise DivergedError(f"block {h.height} has rules version {h.rules_version}; this code runs {RULES_VERSION}")
        if h.height != self.height + 1 or h.first_seq != self.next_seq or h.prev_hash != self.prev_hash:
            raise DivergedError(f"block {h.height} does not extend block {self.height}")
        events = await self.engine.apply(h.first_seq, h.timestamp, block.txs)
        if events_hash(events) != h.events_hash:
            raise DivergedError(f"block {h.height}: replayed events differ from the journal's commitment")
        self._advance(h)
        return events

    async def extend(self, item: Stamped) -> "Applied":
        events = await self.engine.apply(item.first_seq, item.timestamp, item.txs)
        ev_bytes = events_encoder.encode(events)
        header = BlockHeader(item.height, item.first_seq, item.timestamp, self.prev_hash, RULES_VERSION, len(item.txs),
                             hashlib.sha256(ev_bytes).digest())
        payload = block_encoder.encode(Block(header, item.txs))
        self._advance(header)
        return Applied(item, header, payload, events, ev_bytes)

    async def load(self, snap: snapshots.Snapshot) -> None:
        """Start from a snapshot instead of genesis."""
        await self.engine.restore(snapshots.decode_state(snap))
        self.height = snap.height
        self.next_seq = snap.next_seq
        self.last_timestamp = snap.last_timestamp
        self.prev_hash = snap.block_hash
        self.txs = snap.txs

    async def snapshot(self) -> snapshots.Snapshot:
        state = await self.engine.canonical()
        raw, digest = snapshots.encode_state(state)
        return snapshots.Snapshot(self.height, self.next_seq, self.last_timestamp, self.prev_hash, self.txs, digest,
                                  msgspec.Raw(raw), liabilities.root(state, self.height))

    def _advance(self, h: BlockHeader) -> None:
        self.height = h.height
        self.next_seq = h.first_seq + h.tx_count
        self.last_timestamp = h.timestamp
        self.prev_hash = header_hash(h)
        self.txs += h.tx_count


async def recover_chain(chain: Chain, data: Path, records: Iterable[bytes], use_snapshots: bool = True,
                        journal: Journal | None = None) -> snapshots.Snapshot | None:
    """Bring ``chain`` to the end of the journal, from the newest snapshot if there is one.

    Reads only; with ``journal`` given (the node's own), it then opens it for appending.
    One gap is recoverable: the journal's last record torn although a snapshot already
    covers it (a disk that lost an fsynced write). The snapshot's state is kept, the
    torn bytes are set aside, and the journal continues in a new segment after the gap.
    """
    snap = snapshots.newest(data / "snapshots") if use_snapshots else None
    covered = snap is None
    last = 0
    if snap is not None:
        await chain.load(snap)
        log.info("snapshot.loaded", height=snap.height, state=snap.state_hash)
    for payload in records:
        if not covered:
            h = header_decoder.decode(payload).header
            last = h.height
            if h.height < snap.height:
                continue
            if h.height == snap.height:
                if header_hash(h) != snap.block_hash:
                    raise DivergedError(f"snapshot at height {snap.height} does not match the journal's block")
                covered = True
                continue
            if h.height > snap.height + 1:
                raise DivergedError(f"journal skips from before height {snap.height} to {h.height}")
            covered = True  # the block after the snapshot: replay checks that it extends it
        await chain.replay(block_decoder.decode(payload))
    gap = False
    if not covered:
        torn = journal is not None and journal.torn is not None
        if not (torn and last == snap.height - 1):
            raise DivergedError(f"the journal ends at height {last}, before the snapshot's height {snap.height}")
        log.warning("journal.torn_block_covered_by_snapshot", height=snap.height,
                    note="the torn block's transactions are only in the snapshot; the journal continues after it")
        gap = True
    if journal is not None:
        journal.open(new_segment_at=chain.height + 1 if gap else None)
    return snap


class Node:
    """Recover, run the pipeline, and shut down with everything durable."""

    def __init__(self, data: str | Path, cfg: config_mod.Config | None = None):
        self.data = Path(data)
        self.cfg = cfg or config_mod.load()
        self.journal = Journal(self.data / "journal", self.cfg.node.segment_bytes)
        self.admin = load_admin_key(self.data)
        self.subscribers: list[Subscriber] = []
        self.sequencer: Sequencer | None = None
        self.chain: Chain | None = None
        self._stopped = trio.Event()
        self.block_listeners: list[BlockListener] = []  # replication: every durable block
        self.block_timestamp = 0  # of the block whose replies are being published
        self.block_times = (0.0, 0.0, 0.0)  # its (sequenced, applied, durable) trio times
        self.latency = StageLatency()

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
        async with trio.open_nursery() as actors:
            self.chain = Chain(Engine(actors))
            await self._recover()
            s = self.cfg.node
            self.sequencer = Sequencer(self.chain.height + 1, self.chain.next_seq, self.chain.last_timestamp, s.block_max_txs)
            async with trio.open_nursery() as pipeline:
                to_writer_send, to_writer = trio.open_memory_channel(64)
                to_pub_send, to_pub = trio.open_memory_channel(64)
                pipeline.start_soon(self._engine_stage, to_writer_send)
                pipeline.start_soon(self._writer_stage, to_writer, to_pub_send)
                pipeline.start_soon(self._publisher, to_pub)
                if self.chain.height == 0:
                    *first, last = config_mod.genesis(self.cfg, self.admin)
                    for tx in first:
                        self.sequencer.submit(tx, None)
                    await self.submit_wait(last)
                log.info("node.ready", height=self.chain.height, data=str(self.data))
                task_status.started(self)
            self.journal.close()
            if self.chain.height and self.chain.height != self._last_snapshot_height():
                await trio.to_thread.run_sync(snapshots.write, self.data / "snapshots", await self.chain.snapshot())
            log.info("node.stopped", height=self.chain.height, txs=self.chain.txs, state=await self.engine.state_hash())
            actors.cancel_scope.cancel()
        self._stopped.set()

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
            while (item := await self.sequencer.next_item()) is not None:
                if item.__class__ is Read:
                    item.result = await item.fn(self.engine)
                    await send.send(item)
                else:
                    applied = await self.chain.extend(item)
                    applied.applied_at = trio.current_time()
                    if applied.header.height % self.cfg.node.snapshot_blocks == 0:
                        # written by the writer right after this block is durable
                        applied.snapshot = await self.chain.snapshot()
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
                    await trio.to_thread.run_sync(self.journal.append, [(a.header.height, a.payload) for a in blocks])
                    durable = trio.current_time()
                    for a in blocks:
                        a.durable_at = durable
                        if a.snapshot is not None:
                            await trio.to_thread.run_sync(snapshots.write, self.data / "snapshots", a.snapshot)
                for entry in batch:
                    await send.send(entry)

    async def _publisher(self, recv: trio.MemoryReceiveChannel) -> None:
        async with recv:
            async for applied in recv:
                if applied.__class__ is Read:
                    applied.callback(applied.result)
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

    def submit(self, tx: Any, callback: Callable[[list], None] | None = None) -> None:
        self.sequencer.submit(tx, callback)

    async def submit_wait(self, tx: Any) -> list:
        """Submit and wait until the transaction's block is durable; returns its events."""
        return await _answer(lambda cb: self.sequencer.submit(tx, cb))

    async def read(self, fn: Callable) -> Any:
        """Run ``await fn(engine)`` between blocks; returns once earlier blocks are durable."""
        return await _answer(lambda cb: self.sequencer.read(fn, cb))

    def shutdown(self) -> None:
        """Stop taking transactions; the pipeline drains and the journal is flushed."""
        if self.sequencer is not None:
            self.sequencer.close()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


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


@contextmanager
def fatal_errors_unwrapped() -> Iterator[None]:
    """Re-raise a JournalCorrupt or DivergedError found inside trio's exception groups
    as itself, so callers and operators see the file, offset or block at fault."""
    try:
        yield
    except BaseExceptionGroup as eg:
        fatal = _first_leaf(eg, (JournalCorrupt, DivergedError))
        if fatal is not None:
            raise fatal from eg
        raise


def _first_leaf(eg: BaseExceptionGroup, types: tuple) -> BaseException | None:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_leaf(exc, types)
            if found is not None:
                return found
        elif isinstance(exc, types):
            return exc
    return None


async def replay(data: str | Path) -> tuple[int, int, str]:
    """Rebuild state from the journal alone: (blocks, txs, state hash)."""
    with fatal_errors_unwrapped():
        async with trio.open_nursery() as actors:
            chain = Chain(Engine(actors))
            for payload in read_records(Path(data) / "journal"):
                await chain.replay(block_decoder.decode(payload))
            state = await chain.engine.state_hash()
            actors.cancel_scope.cancel()
    return chain.height, chain.txs, state


async def take_snapshot(data: str | Path) -> snapshots.Snapshot:
    """Offline: newest snapshot + journal tail (read-only) -> a snapshot at the journal's end."""
    data = Path(data)
    with fatal_errors_unwrapped():
        async with trio.open_nursery() as actors:
            chain = Chain(Engine(actors))
            await recover_chain(chain, data, read_records(data / "journal"))
            snap = await chain.snapshot()
            actors.cancel_scope.cancel()
    await trio.to_thread.run_sync(snapshots.write, data / "snapshots", snap)
    return snap
