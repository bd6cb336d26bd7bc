"""Verified transactions from gateway processes into the sequencer, over NATS request/reply.

A gateway verifies each client's signature itself (that is the work spread over
machines), then forwards what it built in batches: one message on ``satchel.intake``
holding ``[gateway key, signature, transactions]``, the transactions the msgpack of a
block's transaction list and the signature the gateway's Ed25519 signature over them.
The sequencer takes a batch only from an allowed gateway key (``<data>/gateways``, one
base64 key per line, or ``satchel serve --allow-gateway KEY``): one signature check per
batch, not per transaction, and nobody else on the NATS network can put a transaction
in front of the sequencer. Validators still re-verify every client signature.

The sequencer answers a batch as soon as it has queued it (``ok``); the gateway learns
each transaction's outcome from the block stream, where its own replay of the block
produces the events (``follower``). A batch nobody answers (no sequencer subscribed
during a failover, or a timeout) is sent again; a transaction a sequencer took but no
block showed is sent again when the heartbeats show a new primary (``primary_changed``),
or after ``RESEND_AFTER_S`` -- not after a few seconds, which a stream re-electing (~5 s)
would pass with the transaction still queued. Both are safe: the engine refuses a
signature it has already sequenced (``DUPLICATE_REQUEST``), and the first copy's events
are the answer.

Why request/reply rather than an intake stream (``benchmarks/cluster``, section 4, the
same signed batches): on a three-server cluster an R3 intake stream carried 43-56% of
request/reply's batches/s, at 3-4x its one-way latency (4.4 against 1.3 ms for 64
transactions, 38-51 against 11-12 ms for 2,048); on one server an R1 stream was on a par
(78-131%), but then it is no more durable than the sequencer's machine. And durability
buys nothing here: a transaction is not acknowledged to its client until its block is in
the block stream, and one that was not is resent by its gateway.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from satchel.cluster import envelope
from satchel.cluster.bus import Bus, BusError, TooLarge
from satchel.core.errors import Code
from satchel.core.messages import Tx, TxRejected, block_encoder
from satchel.ledger.replication import parse_followers
from satchel.signing import Keypair

log = structlog.get_logger("satchel.cluster.intake")

SUBJECT = "satchel.intake"
QUEUE = "sequencer"
MAX_BATCH = 2048  # transactions per intake message
IN_FLIGHT = 4  # intake messages awaiting the sequencer's answer, per gateway
REQUEST_TIMEOUT_S = 2.0
RESEND_AFTER_S = 15.0  # not seen in a block since the sequencer took it, and no new primary meanwhile
# transactions waiting in the sequencer before intake answers "busy": about a second of its
# engine (35-60k tx/s measured, benchmarks/cluster), well inside RESEND_AFTER_S, so a
# gateway never resends what is still queued there
MAX_BACKLOG = 50_000
GIVE_UP_GRACE_S = 30.0  # after the transaction's own window: the engine would refuse it as EXPIRED by then
_txs = msgspec.msgpack.Decoder(list[Tx])


def tx_key(tx: Any) -> bytes | None:
    """What identifies a signed transaction in the stream: its signature (and item, for a
    transaction of a signed batch), exactly what the engine's replay guard remembers."""
    auth = getattr(tx, "auth", None)
    if auth is None:
        return None
    return auth.signature + auth.item.to_bytes(2, "big") if auth.batch else auth.signature


class _Pending:
    __slots__ = ("tx", "callback", "again", "sent", "sending", "give_up")

    def __init__(self, tx: Any, callback: Callable[[list], None] | None, now: float):
        self.tx = tx
        self.callback = callback
        self.again: list[Callable[[list], None]] = []  # the same request sent again by its client
        self.sent = now
        self.sending = True  # in a batch on its way (not to be queued again meanwhile)
        auth = tx.auth
        self.give_up = (auth.timestamp + auth.window) / 1000 + GIVE_UP_GRACE_S


class Forwarder:
    """The gateway's side: queue, batch, sign and send; match blocks' transactions back."""

    def __init__(self, bus: Bus, key: Keypair):
        self.bus = bus
        self.key = key
        self._pending: dict[bytes, _Pending] = {}
        self._queue: deque = deque()
        self._arrived = trio.Event()
        self.batches = 0
        self.resent = 0
        self.busy = 0  # batches the sequencer turned away for a while (its backlog)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def forward(self, tx: Any, callback: Callable[[list], None] | None) -> None:
        key = tx_key(tx)
        if key is None:
            raise ValueError("only signed transactions are forwarded to the sequencer")
        p = self._pending.get(key)
        if p is not None:  # answered as the engine answers a repeated signature, once the first is
            if callback is not None:
                p.again.append(callback)
            return
        self._pending[key] = _Pending(tx, callback, time.time())
        self._queue.append(tx)
        self._arrived.set()

    def claim(self, block: Any) -> list:
        """The callbacks of this gateway's transactions in ``block`` (by position), taken
        off the pending list: the first copy sequenced answers."""
        pending = self._pending
        if not pending:
            return []
        out = [None] * len(block.txs)
        for i, tx in enumerate(block.txs):
            key = tx_key(tx)
            if key is not None:
                p = pending.pop(key, None)
                if p is not None:
                    out[i] = p.callback if not p.again else _with_repeats(p)
        return out

    def primary_changed(self) -> None:
        """Another sequencer took over: what the old one took and no block showed is sent
        again at the next watch (the new one refuses what was in fact sequenced)."""
        for p in self._pending.values():
            if not p.sending:
                p.sent = 0.0

    def requeue_all(self) -> list[Any]:
        """Everything still pending, for a standby that became the sequencer itself."""
        items = list(self._pending.values())
        self._pending.clear()
        self._queue.clear()
        return items

    def seal(self, txs: list) -> bytes:
        body = block_encoder.encode(txs)
        return envelope.seal(self.key, envelope.INTAKE, body)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            slots = trio.Semaphore(IN_FLIGHT)
            nursery.start_soon(self._watch)
            while True:
                while not self._queue:
                    self._arrived = trio.Event()
                    await self._arrived.wait()
                await slots.acquire()
                n = min(len(self._queue), MAX_BATCH)
                txs = [self._queue.popleft() for _ in range(n)]
                nursery.start_soon(self._send, txs, slots)

    async def _send(self, txs: list, slots: trio.Semaphore) -> None:
        try:
            for part, payload in self._parts(txs):
                await self._send_part(part, payload)
        finally:
            slots.release()

    def _parts(self, txs: list) -> list[tuple[list, bytes]]:
        """The batch sealed, halved until each part is at most half the servers'
        ``max_payload`` (batch orders carry their whole batch in every item)."""
        payload = self.seal(txs)
        if len(txs) == 1 or len(payload) <= self.bus.max_payload // 2:
            return [(txs, payload)]
        mid = len(txs) // 2
        return self._parts(txs[:mid]) + self._parts(txs[mid:])

    async def _send_part(self, txs: list, payload: bytes) -> None:
        delay = 0.05
        while True:
            # what a block already showed is not sent again (after a failover, say)
            still = [tx for tx in txs if tx_key(tx) in self._pending]
            if not still:
                return
            if len(still) < len(txs):
                txs, payload = still, self.seal(still)
            try:
                answer = await self.bus.request(SUBJECT, payload, REQUEST_TIMEOUT_S)
            except TooLarge as exc:
                self._fail(txs, Code.PAYLOAD_TOO_LARGE, str(exc))
                return
            except BusError as exc:
                log.warning("intake.retry", txs=len(txs), why=str(exc))
            else:
                if answer == b"ok":
                    self.batches += 1
                    now = time.time()  # queued at the sequencer: the resend clock starts now
                    for tx in txs:
                        p = self._pending.get(tx_key(tx))
                        if p is not None:
                            p.sent, p.sending = now, False
                    return
                if answer == b"busy":
                    self.busy += 1
                else:
                    log.warning("intake.refused", txs=len(txs), why=answer.decode(errors="replace"))
                    if answer.startswith(b"refused"):
                        self._fail(txs, Code.UNAUTHORIZED, answer.decode(errors="replace"))
                        return
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _fail(self, txs: Iterable[Any], code: str, message: str) -> None:
        for tx in txs:
            p = self._pending.pop(tx_key(tx), None)
            if p is not None:
                for cb in (p.callback, *p.again):
                    if cb is not None:
                        cb([TxRejected(0, getattr(tx, "account", ""), code, message)])

    async def _watch(self) -> None:
        """Resend what the stream has not shown for a while; give up once the engine
        could no longer take it anyway."""
        while True:
            await trio.sleep(1.0)
            now = time.time()
            lost = []
            for key, p in list(self._pending.items()):
                if now > p.give_up:
                    lost.append(p.tx)
                elif not p.sending and now - p.sent > RESEND_AFTER_S:
                    p.sent, p.sending = now, True
                    self._queue.append(p.tx)
                    self.resent += 1
            if lost:
                self._fail(lost, Code.MAINTENANCE, "not seen in the block stream within its window: its outcome is "
                                                   "unknown to this gateway; query the order before sending it again")
            if self._queue:
                self._arrived.set()


def _with_repeats(p: _Pending) -> Callable[[list], None]:
    """The first request gets the block's events; the same request sent again meanwhile
    gets what the engine answers a signature it has seen."""

    def answer(events: list) -> None:
        if p.callback is not None:
            p.callback(events)
        refusal = [TxRejected(0, getattr(p.tx, "account", ""), Code.DUPLICATE_REQUEST, "This signed request was already received")]
        for cb in p.again:
            cb(refusal)

    return answer


# ---------------------------------------------------------------- the sequencer's side


class IntakeServer:
    """Takes batches from allowed gateways and submits their transactions in order."""

    def __init__(self, node: Any, bus: Bus, allow: Iterable[bytes] = ()):
        self.node = node
        self.bus = bus
        self._cli_keys = set(allow)
        self.batches = 0
        self.txs = 0
        self.refused = 0
        self.busy = 0
        self._sub: Any = None
        self._file_keys: set[bytes] = set()
        self._file_stamp: Any = None
        self._inbox: deque = deque()
        self._arrived = trio.Event()

    def allowed(self) -> set[bytes]:
        """The allowed gateway keys; ``DATA/gateways`` (the followers file's format) is read
        again only when it changed, so a stranger's batches cost no file read each."""
        path = Path(self.node.data) / "gateways"
        try:
            st = path.stat()
            stamp: Any = (st.st_mtime_ns, st.st_size)
            if stamp != self._file_stamp:
                self._file_keys = parse_followers(path.read_text(), str(path))
        except FileNotFoundError:
            stamp, self._file_keys = None, set()
        except (OSError, UnicodeDecodeError):
            if self._file_stamp != "unreadable":
                log.error("intake.gateways_unreadable", file=str(path))
            stamp, self._file_keys = "unreadable", set()
        self._file_stamp = stamp
        return self._cli_keys | self._file_keys

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, then take the batches one at a time, each a step of its own: the
        engine's steps run between them rather than behind a burst of them."""
        self._allowed = self.allowed()
        self._sub = await self.bus.subscribe(SUBJECT, self._handle, queue=QUEUE)
        log.info("intake.listening", subject=SUBJECT, gateways=len(self._allowed))
        task_status.started()
        try:
            while True:
                while not self._inbox:
                    self._arrived = trio.Event()
                    await self._arrived.wait()
                msg = self._inbox.popleft()
                answer = self.take(msg.data)
                # answers go only to a requester's inbox: a reply subject is the sender's to
                # choose, and one naming satchel.blocks would have this sequencer write into
                # its own block stream
                if msg.reply.startswith("_INBOX."):
                    self.bus.publish_nowait(msg.reply, answer)
                await trio.lowlevel.checkpoint()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.bus.unsubscribe(self._sub)

    def _handle(self, msg: Any) -> None:
        # at most IN_FLIGHT batches per gateway wait here: they wait for their answer
        self._inbox.append(msg)
        self._arrived.set()

    def take(self, data: bytes) -> bytes:
        if self.node.sequencer.backlog > MAX_BACKLOG:
            self.busy += 1
            return b"busy"  # before any work: the gateway sends it again after a pause
        opened = envelope.unpack(data)
        if opened is None:
            self.refused += 1
            return b"refused: not an intake batch"
        public, signature, body = opened
        if public not in self._allowed:
            self._allowed = self.allowed()  # re-read: a gateway added since start
            if public not in self._allowed:
                self.refused += 1
                return b"refused: gateway key not allowed by this sequencer"
        if not envelope.signed(public, signature, envelope.INTAKE, body):
            self.refused += 1
            return b"refused: bad gateway signature"
        try:
            txs = _txs.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.refused += 1
            return f"refused: {exc}".encode()
        if any(tx_key(tx) is None for tx in txs):
            # a gateway forwards only what a client signed; an unsigned record (a deposit,
            # an admin change) through here would need nothing but a gateway's key
            self.refused += 1
            return b"refused: unsigned transaction in the batch"
        try:
            for tx in txs:
                self.node.submit(tx, None)
        except trio.ClosedResourceError:
            return b"closed"
        self.batches += 1
        self.txs += len(txs)
        return b"ok"
