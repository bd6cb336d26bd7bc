"""The chain of blocks: applying each block in order against the one it extends,
recovery from the newest snapshot plus the journal, and offline replay.

Shared by the node (which extends the chain with new blocks) and the validator (which
checks every block it is given): both apply blocks with the same engine and refuse a
block of other rules or one that does not extend the chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

from satchel.core.engine import RULES_VERSION, Engine, events_hash
from satchel.core.messages import Block, BlockHeader, block_decoder, block_encoder, events_encoder, header_decoder
from satchel.ledger import liabilities, snapshots
from satchel.ledger.journal import Journal, read_records
from satchel.runtime import fatal_errors_unwrapped

if TYPE_CHECKING:
    from satchel.ledger.sequencer import Stamped

log = structlog.get_logger("satchel.chain")

_hash_encoder = block_encoder


class DivergedError(RuntimeError):
    """The journal disagrees with this code's replay of it: stop, never guess."""


def decode_block(payload: bytes) -> Block:
    """A journal record as a block, once its transactions match the header's commitment:
    the hash chain then binds every journaled transaction, not only the events."""
    raw = header_decoder.decode(payload)
    if hashlib.sha256(raw.txs).digest() != raw.header.txs_hash:
        raise DivergedError(f"block {raw.header.height}: its transactions do not match the header's commitment")
    return block_decoder.decode(payload)


def header_hash(header: BlockHeader) -> bytes:
    return hashlib.sha256(_hash_encoder.encode(header)).digest()


class Applied:
    """A block the engine has applied, on its way to the journal and then out."""

    __slots__ = ("item", "header", "payload", "events", "events_bytes", "followed", "snapshot", "applied_at",
                 "durable_at")

    def __init__(self, item: "Stamped", header: BlockHeader, payload: bytes, events: list, events_bytes: bytes,
                 followed: bool = False):
        self.item = item
        self.followed = followed  # sequenced elsewhere: a cluster's stream holds it already
        self.header = header
        self.payload = payload
        self.events = events
        self.events_bytes = events_bytes
        self.snapshot: snapshots.Snapshot | None = None
        self.applied_at = self.durable_at = 0.0


class Chain:
    """Applies blocks in order, checking each against the chain it extends."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.height = 0
        self.next_seq = 1
        self.last_timestamp = 0
        self.prev_hash = b""
        self.txs = 0

    def check(self, h: BlockHeader) -> None:
        """Refuse a block of other rules, or one that does not extend this chain."""
        if h.rules_version != RULES_VERSION:
            raise DivergedError(f"block {h.height} has rules version {h.rules_version}; this code runs {RULES_VERSION}")
        if h.height != self.height + 1 or h.first_seq != self.next_seq or h.prev_hash != self.prev_hash:
            raise DivergedError(f"block {h.height} does not extend block {self.height}")

    async def apply(self, block: Block) -> list:
        """Apply a checked block and advance; returns its events (the caller compares them)."""
        h = block.header
        events = await self.engine.apply(h.first_seq, h.timestamp, block.txs, h.height)
        self.advance(h)
        return events

    async def replay(self, block: Block) -> list:
        """Check, apply and compare with the block's event commitment."""
        self.check(block.header)
        events = await self.apply(block)
        if events_hash(events) != block.header.events_hash:
            raise DivergedError(f"block {block.header.height}: replayed events differ from the journal's commitment")
        return events

    async def extend(self, item: Stamped) -> "Applied":
        events = await self.engine.apply(item.first_seq, item.timestamp, item.txs, item.height)
        ev_bytes = events_encoder.encode(events)
        txs_bytes = block_encoder.encode(item.txs)
        header = BlockHeader(item.height, item.first_seq, item.timestamp, self.prev_hash, RULES_VERSION, len(item.txs),
                             hashlib.sha256(ev_bytes).digest(), hashlib.sha256(txs_bytes).digest())
        # the transactions' bytes go into the record as they were hashed
        payload = block_encoder.encode(Block(header, msgspec.Raw(txs_bytes)))
        self.advance(header)
        return Applied(item, header, payload, events, ev_bytes)

    async def follow(self, item: Any) -> "Applied":
        """A block someone else sequenced (``item``: a ``cluster.follower.Received`` from
        the cluster's block stream): checked, applied and compared with its event
        commitment, then on its way like one of ours."""
        block = item.block
        h = block.header
        self.check(h)
        events = await self.engine.apply(h.first_seq, h.timestamp, block.txs, h.height)
        ev_bytes = events_encoder.encode(events)
        if hashlib.sha256(ev_bytes).digest() != h.events_hash:
            raise DivergedError(f"block {h.height}: this node's events differ from the sequencer's commitment")
        self.advance(h)
        return Applied(item, h, item.payload, events, ev_bytes, followed=True)

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

    def advance(self, h: BlockHeader) -> None:
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
        await chain.replay(decode_block(payload))
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


async def replay(data: str | Path) -> tuple[int, int, str]:
    """Rebuild state from the journal alone: (blocks, txs, state hash)."""
    with fatal_errors_unwrapped():
        async with trio.open_nursery() as actors:
            chain = Chain(Engine(actors))
            for payload in read_records(Path(data) / "journal"):
                await chain.replay(decode_block(payload))
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
