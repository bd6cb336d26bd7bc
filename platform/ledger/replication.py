"""The block stream: every durable block, from any height, for validators and replicas.

A follower connects over WebSocket and sends a signed hello::

    {"from": <height>, "key": <base64 Ed25519 public key>, "timestamp": <ms>, "window": <ms>,
     "signature": <base64 signature over "instruction=replicate&from=<height>&timestamp=<ms>&window=<ms>">}

The node streams only to keys in its allow-list -- ``<data>/followers`` (one base64
public key per line, ``#`` starts a comment; re-read when it changes) plus
``satchel serve --allow-follower KEY`` -- and only for a hello whose timestamp lies
within its window (at most 60 s) and that it has not seen before. Anything else is
closed with code 1008 and the reason; more than ``max_followers`` at once get 1013.

It then receives binary messages, msgpack ``[payload, events, state_hash]``:
``payload`` is the journal record of one block (exactly the bytes the node fsynced),
``events`` the msgpack of the events the node's engine produced for it (None for
blocks read back from the journal, which stores only transactions), and
``state_hash`` the node's state hash after that block when it took a snapshot there
(else None). Old heights come from the journal files, then the stream continues live
without a gap: the follower's live queue is registered before the journal is read,
and blocks already sent are skipped.

History is read from the segment files a record at a time (``journal.read_heights``),
in batches of at most ``journal.BATCH_BYTES``, and each batch is sent before the next is
read: a follower that stops reading holds one batch, not a copy of the journal. A follower that falls more
than ``buffer_blocks`` behind the live stream, or does not take a message within
``send_timeout`` seconds, is disconnected; it reconnects from its own height.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import orjson
import structlog
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from satchel.ledger import snapshots
from satchel.ledger.journal import JournalCorrupt, read_heights, take_batch
from satchel.core.messages import BlockHeader
from satchel.runtime import contained, peer_name
from satchel.signing import Keypair, decode_key, decode_signature, signing_string, verify

log = structlog.get_logger("satchel.ledger.replication")
_encode = msgspec.msgpack.encode

MAX_WINDOW_MS = 60_000
POLICY_VIOLATION = 1008  # refused hello
TRY_AGAIN_LATER = 1013  # too many followers
_HELLO_TIMEOUT_S = 10.0
_REFUSAL_LOG_EVERY_S = 60.0


# ---------------------------------------------------------------- the signed hello


class Refused(Exception):
    """A hello the node does not accept; ``reason`` is the close reason sent back."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def hello_message(start: int, timestamp: int, window: int) -> bytes:
    return signing_string("replicate", {"from": str(start)}, timestamp, window)


def hello(key: Keypair, start: int, window: int = 10_000, timestamp: int | None = None) -> bytes:
    """The JSON hello a follower sends to stream from height ``start``."""
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    signature = base64.b64encode(key.sign(hello_message(start, ts, window))).decode()
    return orjson.dumps({"from": start, "key": key.api_key, "timestamp": ts, "window": window, "signature": signature})


def check_hello(msg: Any, allowed: set[bytes], now_ms: int) -> tuple[int, bytes, bytes]:
    """(start height, public key, signature) of an acceptable hello; else ``Refused``."""
    if not isinstance(msg, dict):
        raise Refused("send a signed hello: {from, key, timestamp, window, signature}")
    missing = [f for f in ("from", "key", "timestamp", "window", "signature") if f not in msg]
    if missing:
        raise Refused(f"hello lacks {', '.join(missing)}")
    start, ts, window = msg["from"], msg["timestamp"], msg["window"]
    if not all(type(v) is int for v in (start, ts, window)):
        raise Refused("from, timestamp and window must be integers")
    if not 0 < window <= MAX_WINDOW_MS:
        raise Refused(f"window must be 1..{MAX_WINDOW_MS} ms")
    if ts + window < now_ms or ts - window > now_ms:
        raise Refused("hello timestamp is outside its window (check the follower's clock)")
    public = decode_key(msg["key"]) if isinstance(msg["key"], str) else None
    if public is None:
        raise Refused("key must be a base64 Ed25519 public key")
    if public not in allowed:
        raise Refused("follower key not allowed by this node")
    signature = decode_signature(msg["signature"]) if isinstance(msg["signature"], str) else None
    if signature is None or verify(public, (hello_message(start, ts, window),), signature) is None:
        raise Refused("bad signature")
    return max(1, start), public, signature


def parse_followers(text: str, source: str = "followers") -> set[bytes]:
    """Public keys from an allow-list file: one base64 key per line, ``#`` comments."""
    keys = set()
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        public = decode_key(entry)
        if public is None:
            log.warning("replication.bad_follower_key", file=source, line=n)
        else:
            keys.add(public)
    return keys


# ---------------------------------------------------------------- reading history


def _checkpoints(snaps: Path) -> dict[int, str]:
    """Height -> state hash of the snapshots on disk (blocking; read once, at start)."""
    found = {}
    for path in sorted(snaps.glob("*.snap")):
        try:
            snap = snapshots.read(path)
            found[snap.height] = snap.state_hash
        except (OSError, ValueError, msgspec.DecodeError):
            continue
    return found


class _Stalled(Exception):
    pass


class FollowerReport(msgspec.Struct, forbid_unknown_fields=True):
    """What a follower says after its hello: the height it verified up to, or the block at
    which it diverged (``{"verified": 120}``, ``{"verified": 119, "diverged": 120}``)."""

    verified: int = 0
    diverged: int | None = None


_report = msgspec.json.Decoder(FollowerReport)


class ValidatorReports:
    """The last progress report of each follower key (allow-listed or signed, so bounded),
    kept after it leaves so that a validator that stopped on a divergence stays visible."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict] = {}

    def update(self, key: str, report: FollowerReport) -> None:
        self._by_key[key] = {"connected": True, "verified": report.verified, "diverged": report.diverged}

    def left(self, key: str) -> None:
        if key in self._by_key:
            self._by_key[key]["connected"] = False

    def rows(self, durable_height: int) -> list[dict]:
        """Each follower that reported: key, connected, verified height, lag behind the
        durable height, and whether it agrees (no divergence reported)."""
        out = []
        for key, r in sorted(self._by_key.items()):
            out.append({"key": key, "connected": r["connected"], "height": r["verified"],
                        "lag": max(0, durable_height - r["verified"]), "diverged": r["diverged"],
                        "agrees": r["diverged"] is None})
        return out


async def _until_closed(ws: Any, scope: trio.CancelScope, reported: Any) -> None:
    """Read the follower's progress reports until it hangs up, then stop serving it; a
    message that is not a report is ignored (it changes nothing)."""
    try:
        while True:
            text = await ws.get_message()
            try:
                reported(_report.decode(text))
            except msgspec.DecodeError:
                pass
    except ConnectionClosed:
        scope.cancel()


# ---------------------------------------------------------------- the server


class Replicator:
    def __init__(self, node: Any, host: str = "127.0.0.1", port: int = 8766, buffer_blocks: int = 10_000,
                 max_followers: int = 8, allow: Iterable[bytes] = (), send_timeout: float = 30.0):
        self.node = node
        self.host = host
        self.port = port
        self.buffer_blocks = buffer_blocks
        self.max_followers = max_followers
        self.send_timeout = send_timeout
        self.durable_height = 0
        self.active = 0  # authenticated followers being served
        self.checkpoints: dict[int, str] = {}
        self._cli_keys = frozenset(allow)
        self._file_keys: set[bytes] = set()
        self._file_stamp: tuple[int, int] | str | None = None
        self._seen: dict[bytes, int] = {}  # hello signature -> when its window closes (ms): no replays
        self._refusals: dict[str, float] = {}  # peer -> last logged
        self._followers: dict[trio.MemorySendChannel, None] = {}
        self.reports = ValidatorReports()
        node.block_listeners.append(self)

    def validators(self) -> list[dict]:
        return self.reports.rows(self.durable_height)

    @property
    def followers_file(self) -> Path:
        return Path(self.node.data) / "followers"

    def allowed(self) -> set[bytes]:
        """The allow-list; the file is re-read when it changes, so adding a follower needs no restart."""
        path = self.followers_file
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._file_stamp:
                self._file_keys = parse_followers(path.read_text(), str(path))
        except FileNotFoundError:
            stamp, self._file_keys = None, set()
        except (OSError, UnicodeDecodeError) as exc:  # refuse rather than take the node down
            if self._file_stamp != "unreadable":
                log.error("replication.followers_unreadable", file=str(path), error=str(exc))
            stamp, self._file_keys = "unreadable", set()
        self._file_stamp = stamp
        return self._file_keys | self._cli_keys

    def block(self, header: BlockHeader, payload: bytes, events_bytes: bytes, state_hash: str | None) -> None:
        self.durable_height = header.height
        if state_hash is not None:
            self.checkpoints[header.height] = state_hash
        if not self._followers:
            return
        msg = (header.height, _encode([payload, events_bytes, state_hash]))  # one copy, shared by every follower
        for send in list(self._followers):
            try:
                send.send_nowait(msg)
            except trio.WouldBlock:
                del self._followers[send]
                send.close()
                log.warning("replication.follower_dropped", reason="too far behind")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.durable_height = self.node.chain.height
        self.checkpoints.update(await trio.to_thread.run_sync(_checkpoints, Path(self.node.data) / "snapshots"))
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: serve_websocket(
                contained(self._handle, log, "replication.connection_failed"), self.host, self.port, None,
                max_message_size=1 << 12, connect_timeout=_HELLO_TIMEOUT_S,
                disconnect_timeout=5.0, task_status=task_status))
            self.port = server.port
            keys = len(self.allowed())
            if keys:
                log.info("replication.listening", url=f"ws://{self.host}:{self.port}", allowed_followers=keys,
                         max_followers=self.max_followers)
            else:
                log.warning("replication.listening_refusing_all", url=f"ws://{self.host}:{self.port}",
                            why=f"no follower keys allowed: add them to {self.followers_file} or pass --allow-follower")
            task_status.started(self)

    async def _handle(self, request: Any) -> None:
        peer = peer_name(request)
        ws = await request.accept()
        try:
            with trio.fail_after(_HELLO_TIMEOUT_S):
                text = await ws.get_message()
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise Refused("hello must be JSON") from None
            now = int(time.time() * 1000)
            start, public, signature = check_hello(msg, self.allowed(), now)
            self._seen = {s: until for s, until in self._seen.items() if until >= now}
            if signature in self._seen:
                raise Refused("hello replayed")
            self._seen[signature] = msg["timestamp"] + msg["window"]
        except trio.TooSlowError:
            self._log_refusal(peer, "no hello in time")
            await ws.aclose(code=POLICY_VIOLATION, reason=f"send a signed hello within {_HELLO_TIMEOUT_S:.0f} s")
            return
        except Refused as exc:
            self._log_refusal(peer, exc.reason)
            await ws.aclose(code=POLICY_VIOLATION, reason=exc.reason)
            return
        except ConnectionClosed:
            return
        if self.active >= self.max_followers:
            self._log_refusal(peer, "too many followers")
            await ws.aclose(code=TRY_AGAIN_LATER, reason=f"too many followers (max {self.max_followers})")
            return
        self.active += 1
        try:
            await self._stream(ws, peer, base64.b64encode(public).decode(), start)
        finally:
            self.active -= 1

    async def _stream(self, ws: Any, peer: str, key: str, start: int) -> None:
        send, recv = trio.open_memory_channel(self.buffer_blocks)
        self._followers[send] = None
        upto = self.durable_height
        log.info("replication.follower", peer=peer, key=key, start=start, durable=upto)
        try:
            async with trio.open_nursery() as tasks:
                # an idle follower's slot must come free when it hangs up, not at the next block
                tasks.start_soon(_until_closed, ws, tasks.cancel_scope, lambda r: self.reports.update(key, r))
                await self._send_blocks(ws, peer, key, start, upto, recv)
                tasks.cancel_scope.cancel()
        finally:
            self._followers.pop(send, None)
            self.reports.left(key)

    async def _send_blocks(self, ws: Any, peer: str, key: str, start: int, upto: int,
                           recv: trio.MemoryReceiveChannel) -> None:
        try:
            records = read_heights(Path(self.node.data) / "journal", start, upto)
            with closing(records):
                while batch := await trio.to_thread.run_sync(take_batch, records):
                    for height, payload in batch:
                        await self._send(ws, _encode([payload, None, self.checkpoints.get(height)]))
                    del batch  # before the next read: one batch per follower at a time
            async for height, msg in recv:
                if height > upto and height >= start:
                    await self._send(ws, msg)
        except ConnectionClosed:
            pass
        except _Stalled:
            log.warning("replication.follower_dropped", peer=peer, key=key, reason=f"took no data for {self.send_timeout} s")
        except JournalCorrupt as exc:
            log.error("replication.history_unreadable", peer=peer, error=str(exc))
            await ws.aclose(code=1011, reason="the node cannot read its journal")

    async def _send(self, ws: Any, msg: bytes) -> None:
        with trio.move_on_after(self.send_timeout) as scope:
            await ws.send_message(msg)
        if scope.cancelled_caught:
            raise _Stalled

    def _log_refusal(self, peer: str, reason: str) -> None:
        """At most one line per peer address a minute: a scanner must not flood the log."""
        host = peer.rsplit(":", 1)[0]
        now = time.monotonic()
        if now - self._refusals.get(host, -_REFUSAL_LOG_EVERY_S) < _REFUSAL_LOG_EVERY_S:
            return
        if len(self._refusals) > 1024:
            self._refusals.clear()
        self._refusals[host] = now
        log.warning("replication.follower_refused", peer=peer, reason=reason)
