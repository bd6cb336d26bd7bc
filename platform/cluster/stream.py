"""The block stream on JetStream: one message per block, stream sequence = block height.

Subject ``satchel.blocks`` in stream ``SATCHEL_BLOCKS``. A message is the block's
journal record (the bytes the sequencer journaled, so a follower's copy is
byte-identical), with headers:

- ``Nats-Msg-Id: <height>:<block hash, 16 bytes hex>``: JetStream drops a re-publish of
  the same block within its duplicate window (a sequencer retrying after a lost ack);
- ``Nats-Expected-Last-Sequence: <height - 1>`` and ``Nats-Expected-Last-Msg-Id: <the id
  of the block it extends>``: JetStream stores the block only if it extends exactly the
  stream's last one. Two sequencers can then never both extend the chain: the stale
  one's publish fails and it stops (``Fenced``);
- ``Satchel-State: <hash>`` at the heights where the sequencer took a snapshot, so a
  validator compares whole-state hashes there, as on the WebSocket block stream;
- ``Satchel-Sig: <base64>``: the admin key's signature over ``satchel-block:`` and the
  block's hash. Gateways, standbys and validators take a block only so signed
  (``check_signed``): whoever else can publish on the subject can disturb the stream
  (fence the primary), but cannot feed a follower a block of its own.

JetStream checks the message id before the expected sequence (measured on 2.9.10): had
the id been the height alone, a stale sequencer's *different* block at a height already
stored would come back as a "duplicate", not as a failure. With the hash in the id it
fails; a duplicate ack is still believed only when the stored message is this very
block (read back and compared).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from satchel.cluster.bus import Bus, BusError, Fenced
from satchel.signing import Keypair, decode_key, verify
from satchel.core.messages import header_decoder
from satchel.ledger.chain import header_hash

log = structlog.get_logger("satchel.cluster.stream")

STREAM = "SATCHEL_BLOCKS"
SUBJECT = "satchel.blocks"
STATE_HEADER = "Satchel-State"
SIG_HEADER = "Satchel-Sig"
DUPLICATE_WINDOW_S = 120.0
FETCH_BATCH = 256
CONSUMER_TIMEOUT_S = 2.0  # creating one waits no longer (a cluster re-electing answers late)
STALL_CHECK_S = 2.0  # a follower idle this long checks that its consumer still delivers


class Forged(BusError):
    """A block in the stream that no sequencer holding the admin key signed."""


@dataclass(frozen=True)
class StreamBlock:
    """A block as read from the stream."""

    height: int
    payload: bytes
    state_hash: str | None
    signature: bytes | None = None  # the sequencer's, over the block's hash (``check_signed``)


def _block(height: int, data: bytes, headers: dict | None) -> StreamBlock:
    headers = headers or {}
    sig = headers.get(SIG_HEADER)
    try:
        signature = base64.b64decode(sig, validate=True) if sig else None
    except ValueError:
        signature = None
    return StreamBlock(height, data, headers.get(STATE_HEADER), signature)


def block_message(block_hash: bytes) -> bytes:
    """What a sequencer signs for a block: a prefix of its own, then the block's hash."""
    return b"satchel-block:" + block_hash


def check_signed(item: StreamBlock, header: Any, admin: str | None, block: Any = None) -> None:
    """``Forged`` unless the block carries the admin key's signature over its hash. The
    admin key is the one the chain names; block 1 names it (``SetAdmin``) and must be
    signed by that very key. So a follower trusts nothing NATS delivers but what a
    sequencer holding the admin key sent, whoever else may publish on the stream."""
    if admin is None and block is not None and block.txs and block.txs[0].__class__.__name__ == "SetAdmin":
        admin = block.txs[0].key
    public = decode_key(admin) if admin else None
    if public is None or item.signature is None or verify(public, (block_message(header_hash(header)),),
                                                          item.signature) is None:
        raise Forged(f"block {item.height} in the stream is not signed by the admin key")


async def ensure_stream(bus: Bus, replicas: int = 1, create: bool = True) -> int:
    """The stream's last height. A sequencer (``create``) creates the stream if it is
    missing, with ``replicas`` copies on a cluster's nodes; a follower waits for it,
    so a gateway started first never creates it with the wrong number of replicas."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    async def ensure() -> int | None:
        try:
            info = await bus.js.stream_info(STREAM)
        except NotFoundError:
            if not create:
                return None
            info = await bus.js.add_stream(StreamConfig(
                name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE, num_replicas=replicas,
                duplicate_window=DUPLICATE_WINDOW_S, description="Satchel's sequenced blocks; sequence = height"))
            log.info("stream.created", stream=STREAM, replicas=replicas)
        else:
            if create and info.config.num_replicas != replicas:
                log.warning("stream.replicas_differ", stream=STREAM, has=info.config.num_replicas, asked=replicas,
                            why="the stream exists already; change it with the nats CLI (nats stream edit)")
        return info.state.last_seq

    # a cluster that just started elects its JetStream meta leader first: retry a while
    deadline = trio.current_time() + 30.0
    waiting = False
    while True:
        try:
            last = await bus.call(ensure)
        except Exception as exc:
            if trio.current_time() > deadline:
                raise BusError(f"cannot create or read stream {STREAM}: {exc or type(exc).__name__}") from exc
            log.info("stream.not_ready", error=str(exc) or type(exc).__name__)
            await trio.sleep(0.25)
            continue
        if last is not None:
            return last
        if not waiting:
            waiting = True
            log.info("stream.waiting", stream=STREAM, why="no sequencer has created it yet")
        await trio.sleep(0.25)


async def last_height(bus: Bus) -> int:
    async def last() -> int:
        return (await bus.js.stream_info(STREAM)).state.last_seq

    return await bus.call(last)


async def read_block(bus: Bus, height: int) -> bytes | None:
    from nats.js.errors import NotFoundError

    async def get() -> bytes | None:
        try:
            return (await bus.js.get_msg(STREAM, height)).data
        except NotFoundError:
            return None

    return await bus.call(get)


def message_id(height: int, block_hash: bytes) -> str:
    """A block's message id: its height, then its hash (so a different block at the same
    height is not a "duplicate", and the next block can name exactly this one)."""
    return f"{height}:{block_hash[:16].hex()}"


async def publish_blocks(bus: Bus, blocks: Sequence[tuple[int, bytes, str | None]], key: Keypair) -> None:
    """Append consecutive blocks ``(height, payload, state hash or None)`` to the stream,
    each only if it extends the one before; returns once JetStream has stored them all
    (acknowledged by the stream's quorum). ``Fenced`` if another sequencer got there first.

    Each names the block it extends twice: ``Nats-Expected-Last-Sequence`` (the height
    before) and ``Nats-Expected-Last-Msg-Id`` (that block's id, its hash in it). The id
    matters when blocks are pipelined: if another sequencer took height H, this one's H+1
    still expects sequence H and would be stored on top of the other's H; it does not
    expect the other's id, so it is refused too. ``key`` (the admin key every sequencer
    holds) signs each block's hash: followers take only signed blocks."""
    items = []
    for height, payload, state in blocks:
        header = header_decoder.decode(payload).header
        block_hash = header_hash(header)
        headers = {"Nats-Msg-Id": message_id(height, block_hash), "Nats-Expected-Last-Sequence": str(height - 1),
                   SIG_HEADER: base64.b64encode(key.sign(block_message(block_hash))).decode()}
        if height > 1:
            headers["Nats-Expected-Last-Msg-Id"] = message_id(height - 1, header.prev_hash)
        if state is not None:
            headers[STATE_HEADER] = state
        items.append((payload, headers))
    acks = await bus.publish_ordered(SUBJECT, items)
    for (height, payload, _), ack in zip(blocks, acks):
        if ack.get("seq") != height:
            raise Fenced(f"block {height} was stored as stream sequence {ack.get('seq')}")
        if ack.get("duplicate") and await read_block(bus, height) != payload:  # belt and braces: ids carry the hash
            raise Fenced(f"the stream already holds another block at height {height}")


async def follow(bus: Bus, start: int, idle_timeout: float = 1.0) -> AsyncIterator[list[StreamBlock]]:
    """Batches of blocks from height ``start`` on, forever: history first, then live.

    An ephemeral pull consumer (no acks: the follower's own height is its cursor) fetched
    ``FETCH_BATCH`` messages at a time, so a slow follower holds one batch, never a
    backlog. When the consumer is lost (its NATS node went away), blocks are read one by
    one from the stream itself (served by the stream's leader, there as soon as the stream
    is) until a new consumer starts from the next height: a NATS node lost costs a
    follower (and a standby about to take over) the stream's own re-election, not the
    consumer's. Nothing is skipped or repeated."""
    import asyncio

    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    nxt = max(1, start)
    sub: Any = None
    degraded = False  # the last consumer failed: read directly until a new one starts

    async def open_consumer(at: int) -> Any:
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=at,
                             ack_policy=AckPolicy.NONE, inactive_threshold=30.0, max_waiting=8)
        return await asyncio.wait_for(bus.js.pull_subscribe(SUBJECT, durable=None, stream=STREAM, config=cfg),
                                      CONSUMER_TIMEOUT_S)

    async def fetch(s: Any) -> list[StreamBlock]:
        try:
            msgs = await s.fetch(FETCH_BATCH, timeout=idle_timeout)
        except (NatsTimeout, TimeoutError):
            return []
        return [_block(m.metadata.sequence.stream, m.data, m.headers) for m in msgs]

    async def direct(at: int) -> list[StreamBlock]:
        out = []
        for height in range(at, at + FETCH_BATCH):
            try:
                m = await bus.js.get_msg(STREAM, height)
            except NotFoundError:
                break
            out.append(_block(height, m.data, m.headers))
        return out

    idle_since = trio.current_time()
    try:
        while True:
            try:
                if sub is None and degraded:
                    batch = await bus.call(direct, nxt)
                    if len(batch) < FETCH_BATCH:  # at the stream's end: try a consumer again
                        sub = await bus.call(open_consumer, nxt + len(batch))
                        degraded = False
                        idle_since = trio.current_time()
                else:
                    if sub is None:
                        sub = await bus.call(open_consumer, nxt)
                        idle_since = trio.current_time()
                    batch = await bus.call(fetch, sub)
                    if batch:
                        idle_since = trio.current_time()
                    elif trio.current_time() - idle_since > STALL_CHECK_S:
                        # quiet, or a consumer whose server went away (its fetches just time
                        # out): the stream's own last height tells which
                        idle_since = trio.current_time()
                        if await last_height(bus) >= nxt:
                            raise BusError(f"consumer stalled before height {nxt}")
            except trio.Cancelled:
                raise
            except Exception as exc:  # the consumer's server went away, or a request timed out
                log.warning("stream.consumer_lost", next=nxt, error=str(exc) or type(exc).__name__)
                degraded = True
                if sub is not None:
                    old, sub = sub, None
                    with trio.move_on_after(1):
                        try:
                            await bus.call(old.unsubscribe)
                        except Exception:
                            pass
                await trio.sleep(0.1)
                continue
            batch = [b for b in batch if b.height >= nxt]
            if batch:
                if batch[0].height != nxt:  # never guess across a gap: start over from nxt
                    log.warning("stream.gap", expected=nxt, got=batch[0].height)
                    sub, degraded = None, True
                    continue
                nxt = batch[-1].height + 1
                yield batch
    finally:
        if sub is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await bus.call(sub.unsubscribe)
                except Exception:
                    pass


__all__ = ["STREAM", "SUBJECT", "StreamBlock", "BusError", "Fenced", "ensure_stream", "last_height", "read_block",
           "publish_blocks", "follow"]
