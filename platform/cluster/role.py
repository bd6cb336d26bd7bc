"""A node's part in a cluster: following the block stream, and sequencing when it is the
primary.

Every node of a cluster starts by following the stream (``follower.StreamSource``) from
its own recovered height. A gateway or read replica stays that way. A sequencer
(``satchel serve --nats``) listens for the primary's heartbeat on
``satchel.sequencer.heartbeat``; when none came for ``takeover_after`` seconds it takes
over: it reads the stream's last height, lets its engine apply up to it, then
sequences from the next height -- takes the intake, sends heartbeats, and publishes
every block with ``Nats-Expected-Last-Sequence``. A sequencer started beside a live
primary is thus a standby. The heartbeat only decides *when* to try; that two
sequencers never both extend the chain is JetStream's expected-last-sequence check
(``stream.publish_blocks``): the one that loses a height stops with ``Fenced``.

Durability (``--durability``):

- ``journal`` (the embedded default's model): a block is released once fsynced to the
  local journal; JetStream gets it right after, as a replica (``streamcopy``: in
  order, catching up from the journal after an outage). A primary lost with its disk
  may take its last, unpublished blocks with it: use it with one sequencer.
- ``stream``: a block is released only once JetStream stored it (all replicas of an R3
  stream acknowledge); it is journaled locally after that. Nothing acknowledged is lost
  when the primary's machine is, so a standby can take over: use it for failover.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
import trio

from satchel.cluster import envelope, reports, stream
from satchel.cluster.bus import Bus, BusError, TooLarge
from satchel.cluster.follower import StreamSource
from satchel.cluster.intake import Forwarder, IntakeServer
from satchel.cluster.streamcopy import StreamCopy
from satchel.signing import Keypair, decode_key

log = structlog.get_logger("satchel.cluster")

HEARTBEAT = "satchel.sequencer.heartbeat"
HEARTBEAT_EVERY_S = 0.2
TAKEOVER_AFTER_S = 3.0
HEARTBEAT_FRESH_MS = 10_000  # a heartbeat stamped further from this node's clock is ignored
_RETRY_S = 0.2
STOP_PATIENCE_S = 5.0  # a node asked to stop gives up storing its last blocks after this long


class Cluster:
    """What a node needs to take part in a cluster: its NATS bus and its role."""

    def __init__(self, bus: Bus, key: Keypair, *, sequencer: bool, durability: str = "stream", replicas: int = 1,
                 takeover_after: float = TAKEOVER_AFTER_S, allow_gateways: tuple[bytes, ...] = ()):
        if durability not in ("journal", "stream"):
            raise ValueError("durability is 'journal' or 'stream'")
        self.bus = bus
        # a gateway's key signs its intake batches; a sequencer's is the admin key, which
        # also signs its blocks and heartbeats (every sequencer of the cluster holds it)
        self.key = key
        self.can_sequence = sequencer
        self.durability = durability
        self.replicas = replicas
        self.takeover_after = takeover_after
        self.allow_gateways = allow_gateways
        self.id = os.urandom(6).hex()
        self.role = "follower"
        self.forwarder = Forwarder(bus, key)
        self.source: StreamSource | None = None
        self.intake: IntakeServer | None = None
        self.published = 0  # the stream's last height as this node knows it
        self.promoted = trio.Event()
        self._last_beat = 0.0
        self._admin: Callable[[], str | None] = lambda: None
        self._others_seen = False  # another sequencer's heartbeat was heard
        self._primary_id: str | None = None  # the id in the primary's heartbeats
        self._stopping = False
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.validator_reports = reports.BusReports()  # validators following the stream (nodeStats, /ops)

    @property
    def stream_durable(self) -> bool:
        return self.durability == "stream"

    # ------------------------------------------------------------------ following

    async def start(self, node: Any) -> StreamSource:
        """Make sure the stream exists; the source the node's engine stage reads from."""
        self.published = await stream.ensure_stream(self.bus, self.replicas, create=self.can_sequence)
        self._admin = lambda: node.engine.admin  # the key the chain names: blocks and heartbeats are its
        self.source = StreamSource(self.bus, self.forwarder, node.chain.height + 1, self._admin)
        log.info("cluster.following", height=node.chain.height, stream=self.published,
                 role="sequencer candidate" if self.can_sequence else "follower")
        return self.source

    async def run(self, node: Any) -> None:
        """The follower's tasks, and the takeover watch of a sequencer; cancelled by ``stop``."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.bus.subscribe(reports.SUBJECT, self.validator_reports.on_message)
                await self.bus.subscribe(HEARTBEAT, self._beat)
                nursery.start_soon(self.source.run)
                nursery.start_soon(self.forwarder.run)
                if self.can_sequence:
                    nursery.start_soon(self._watch, node)

    def stop(self) -> None:
        self._stopping = True
        self._scope.cancel()

    def _beat(self, msg: Any) -> None:
        """A heartbeat counts only signed by the admin key the chain names (once it names
        one), and only if recent: nobody else can hold a standby back. A new primary's
        first one has this node's gateway send again what the old one took and never
        sequenced (rather than after a timeout, which a stream re-electing would pass)."""
        opened = envelope.unpack(msg.data)
        if opened is None:
            return
        public, signature, body = opened
        admin = self._admin()
        if admin is not None and (public != decode_key(admin)
                                  or not envelope.signed(public, signature, envelope.HEARTBEAT, body)):
            return
        try:
            beat = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(beat, dict) or beat.get("id") == self.id or not isinstance(beat.get("at"), int):
            return
        if abs(beat["at"] - time.time() * 1000) > HEARTBEAT_FRESH_MS:
            return  # an old one sent again
        self._last_beat = trio.current_time()
        self._others_seen = True
        if beat["id"] != self._primary_id:
            if self._primary_id is not None:
                log.info("cluster.new_primary", id=beat["id"], height=beat.get("height"))
                self.forwarder.primary_changed()
            self._primary_id = beat["id"]

    async def _watch(self, node: Any) -> None:
        self._last_beat = trio.current_time()  # a new node waits a full period before it takes over
        while trio.current_time() - self._last_beat < self.takeover_after:
            await trio.sleep(0.05)
        if self._others_seen and not self.stream_durable:
            # under journal durability the primary's last blocks may exist only on its disk:
            # taking over could fork the chain, so a second sequencer only ever follows
            log.error("cluster.no_takeover", why="journal durability: one sequencer only; the primary's heartbeat "
                                                 "lapsed, use --durability stream for a standby that takes over")
            await trio.sleep_forever()
        while True:  # the stream may be re-electing (the primary's machine held a NATS node too)
            try:
                last = await stream.last_height(self.bus)
                break
            except BusError as exc:
                log.warning("cluster.takeover_waits", error=str(exc))
                await trio.sleep(0.2)
        log.warning("cluster.taking_over", why=f"no primary heartbeat for {self.takeover_after} s",
                    stream_height=last, applied=node.chain.height)
        self.published = last
        self.source.drain(last)  # the engine stage calls ``become_primary`` once it applied ``last``

    # ------------------------------------------------------------------ sequencing

    def become_primary(self, node: Any, genesis: Callable[[], Awaitable[None]]) -> None:
        """Called by the node's engine stage once it applied the stream to its end and
        sequences itself; the rest runs as a task, behind the blocks it submits."""
        self.role = "primary"
        self._nursery.start_soon(self._heartbeat, node)
        self._nursery.start_soon(self._primary, node, genesis)

    async def _primary(self, node: Any, genesis: Callable[[], Awaitable[None]]) -> None:
        await genesis()  # on an empty stream: the first block, before anyone's transactions
        if not self.stream_durable:  # the stream gets each block once it is durable here
            copy = StreamCopy(self, Path(node.data) / "journal", node.chain.height)
            node.block_listeners.append(copy)
            self._nursery.start_soon(copy.run)
        self.intake = IntakeServer(node, self.bus, self.allow_gateways)
        await self._nursery.start(self.intake.run)
        # what this node's own gateway forwarded and never saw sequenced goes in now (a
        # transaction the old primary did sequence is refused as a duplicate by the engine)
        for p in self.forwarder.requeue_all():
            node.submit(p.tx, p.callback)
        self.promoted.set()
        log.warning("cluster.primary", height=node.chain.height, durability=self.durability)

    async def _heartbeat(self, node: Any) -> None:
        while True:
            body = orjson.dumps({"id": self.id, "height": node.chain.height, "at": int(time.time() * 1000)})
            self.bus.publish_nowait(HEARTBEAT, envelope.seal(self.key, envelope.HEARTBEAT, body))
            await trio.sleep(HEARTBEAT_EVERY_S)

    async def publish(self, blocks: list) -> None:
        """Stream durability: store these consecutive blocks in the stream before they are
        released; retried while NATS is unreachable, ``Fenced`` ends the node."""
        since = trio.current_time()
        while True:
            try:
                await stream.publish_blocks(self.bus, blocks, self.key)
                self.published = blocks[-1][0]
                return
            except (stream.Fenced, TooLarge):
                raise
            except BusError as exc:
                if self._stopping and trio.current_time() - since > STOP_PATIENCE_S:
                    # never released nor journaled: nothing of them was seen outside
                    raise BusError(f"stopping with blocks {blocks[0][0]}..{blocks[-1][0]} not stored in the stream "
                                   f"(they were never released): {exc}") from exc
                log.warning("cluster.publish_retry", height=blocks[0][0], error=str(exc))
                await trio.sleep(_RETRY_S)

    def validators(self, height: int) -> list[dict]:
        return self.validator_reports.reports.rows(height)

    def status(self) -> dict:
        height = self.published if self.role == "primary" or self.source is None else self.source.fetched
        return {"role": self.role, "durability": self.durability, "stream_height": height,
                "forwarded_pending": self.forwarder.pending,
                "intake": None if self.intake is None else {"batches": self.intake.batches, "txs": self.intake.txs,
                                                            "refused": self.intake.refused, "busy": self.intake.busy}}
