"""Ed25519 keys and Backpack-style request signing (PyNaCl / libsodium).

The signed string of a request is
``instruction=<name>&<params sorted by key as k=v joined by &>&timestamp=<ms>&window=<ms>``
(no params: ``instruction=<name>&timestamp=<ms>&window=<ms>``); a batch signs one
``instruction=..&<params>`` segment per item, then the timestamp and window. Clients differ in
whether they percent-encode the values (ccxt does, others do not), so a verifier tries
the raw form first and then the encoded one. Values are taken as the literal JSON text
that arrived, because re-formatting a number would change what was signed.

PyNaCl releases the GIL while verifying, so ``Verifier`` batches signatures and checks
them in worker threads, giving the second core work while the trio thread runs.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec
import nacl.exceptions
from nacl.bindings import crypto_sign_open
import nacl.signing
import trio

from satchel.core.instructions import is_api_key

if TYPE_CHECKING:
    from satchel.core.messages import Auth

DEFAULT_WINDOW_MS = 5000


class Keypair:
    """An account key. ``api_key`` is the base64 public key, ``secret`` the base64 seed."""

    def __init__(self, seed: bytes):
        self._signing = nacl.signing.SigningKey(seed)
        self.seed = seed
        self.public = bytes(self._signing.verify_key)

    @classmethod
    def generate(cls) -> "Keypair":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_secret(cls, secret: str) -> "Keypair":
        seed = base64.b64decode(secret, validate=True)
        if len(seed) != 32:
            raise ValueError("secret must be a base64 32-byte seed")
        return cls(seed)

    @property
    def api_key(self) -> str:
        return base64.b64encode(self.public).decode()

    @property
    def secret(self) -> str:
        return base64.b64encode(self.seed).decode()

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature


def param_text(value: object) -> str:
    """How a parameter value appears in the signed string."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9_.~-]")


def needs_quoting(params: Mapping[str, str]) -> bool:
    """Whether percent-encoding would change any key or value (rarely: most are plain)."""
    return any(_NEEDS_QUOTING.search(k) or _NEEDS_QUOTING.search(v) for k, v in params.items())


def _segment(instruction: str, params: Mapping[str, str] | tuple, encoded: bool) -> str:
    items = sorted(params.items()) if isinstance(params, Mapping) else sorted(params)
    if encoded:
        body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in items)
    else:
        body = "&".join(f"{k}={v}" for k, v in items)
    return f"instruction={instruction}&{body}" if body else f"instruction={instruction}"


def signing_string(instruction: str, params: Mapping[str, str], timestamp: int | str, window: int | str, encoded: bool = False) -> bytes:
    """The string a client signs; ``encoded`` percent-encodes keys and values as ccxt
    does (Python's ``quote(safe='')``: a space is %20, never +)."""
    return f"{_segment(instruction, params, encoded)}&timestamp={timestamp}&window={window}".encode()


def batch_signing_string(instruction: str, items: "list[Mapping[str, str]] | tuple", timestamp: int | str,
                         window: int | str, encoded: bool = False) -> bytes:
    """The string a client signs for a batch (``POST /api/v1/orders``): one
    ``instruction=<name>&<sorted params>`` segment per item, in the body's order, then
    ``&timestamp&window`` once. Each item is sorted on its own, whatever its key order."""
    body = "&".join(_segment(instruction, item, encoded) for item in items)
    return f"{body}&timestamp={timestamp}&window={window}".encode()


def signed_message(instruction: str, auth: "Auth") -> bytes:
    """The exact string an ``Auth`` record's signature covers. A batch item's record
    keeps the whole batch (the signature covers all of it); its own params must be the
    batch's item it names, or nothing verifies. A record with the batch and no params of
    its own is a transaction carrying every item (``instructions.signed_params``)."""
    if auth.batch:
        if auth.params and (not 0 <= auth.item < len(auth.batch) or auth.batch[auth.item] != auth.params):
            return b""
        return batch_signing_string(instruction, auth.batch, auth.timestamp, auth.window, auth.encoded)
    return signing_string(instruction, dict(auth.params), auth.timestamp, auth.window, auth.encoded)


def sign_request(key: Keypair, instruction: str, params: Mapping[str, object], window: int = DEFAULT_WINDOW_MS, timestamp: int | None = None) -> tuple[bytes, list[str]]:
    """Sign like a client: returns (signed string, ``signature`` array for the frame)."""
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    msg = signing_string(instruction, {k: param_text(v) for k, v in params.items()}, ts, window)
    sig = base64.b64encode(key.sign(msg)).decode()
    return msg, [key.api_key, sig, str(ts), str(window)]


def batch_texts(items: "list[Mapping[str, object]]") -> tuple[tuple[tuple[str, str], ...], ...]:
    """A batch's items as signed and journaled (``Auth.batch``): each item's params as
    texts, sorted by key, in the batch's order."""
    return tuple(tuple(sorted((k, param_text(v)) for k, v in item.items())) for item in items)


def sign_batch_request(key: Keypair, instruction: str, items: "list[Mapping[str, object]]",
                       window: int = DEFAULT_WINDOW_MS) -> tuple[bytes, list[str]]:
    """As ``sign_request``, for a batch: one segment per item, in order."""
    ts = int(time.time() * 1000)
    msg = batch_signing_string(instruction, batch_texts(items), ts, window)
    return msg, [key.api_key, base64.b64encode(key.sign(msg)).decode(), str(ts), str(window)]


def load_key(directory: Path, name: str) -> Keypair:
    """The key kept in ``directory/name``, created on first use (file mode 0600 from the start)."""
    path = directory / name
    if path.exists():
        return Keypair.from_secret(path.read_text().strip())
    key = Keypair.generate()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as f:
        f.write(key.secret + "\n")
    tmp.rename(path)
    return key


def _b64(text: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def auth_for(key: Keypair, instruction: str, params: Mapping[str, object], window: int = 60_000) -> "Auth":
    """A signed-request record for a transaction the node itself originates (genesis,
    faucet deposits, demo orders), so validators can check every transaction alike."""
    from satchel.core.messages import Auth

    texts = {k: param_text(v) for k, v in params.items()}
    ts = int(time.time() * 1000)
    # signed directly, without the base64 round trip of ``sign_request``
    return Auth(tuple(sorted(texts.items())), False, key.sign(signing_string(instruction, texts, ts, window)), ts, window)


def batch_auth_for(key: Keypair, instruction: str, items: "list[Mapping[str, object]]", window: int = 60_000) -> "Auth":
    """As ``auth_for``, for a transaction that carries every item of a batch under one
    signature (``Instruction.many``: a chain adapter's deposits of a block)."""
    from satchel.core.messages import Auth

    batch = batch_texts(items)
    ts = int(time.time() * 1000)
    return Auth((), False, key.sign(batch_signing_string(instruction, batch, ts, window)), ts, window, batch)


def decode_key(api_key: str) -> bytes | None:
    """The 32-byte public key of an API key in canonical base64, or None.

    Only the canonical spelling is a key: base64 has four spellings of 32 bytes, and
    each would otherwise be an account of its own.
    """
    return _b64(api_key, 32) if is_api_key(api_key) else None


def decode_signature(sig: str) -> bytes | None:
    """The 64-byte signature from its base64 text, or None."""
    return _b64(sig, 64)


def verify(public: bytes, candidates: tuple[bytes, ...], signature: bytes) -> bytes | None:
    """The first candidate message the signature is valid for, or None."""
    i = verify_index(public, candidates, signature)
    return candidates[i] if i >= 0 else None


def verify_index(public: bytes, candidates: "list[bytes] | tuple[bytes, ...]", signature: bytes) -> int:
    """Index of the first candidate the signature is valid for, or -1."""
    for i, msg in enumerate(candidates):
        try:
            crypto_sign_open(signature + msg, public)
            return i
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            continue
    return -1


def _verify_batch(batch: list[tuple[bytes, tuple[bytes, ...], bytes]]) -> list[bytes | None]:
    return [verify(pub, msgs, sig) for pub, msgs, sig in batch]


class Verifier:
    """Checks signatures in worker threads, batching whatever is waiting.

    ``check`` queues a signature and returns at once; its callback runs on the trio
    thread with the matching message (or None). Requests that arrive while a batch is
    in a thread go to the next batch together, so the thread hop is paid per batch,
    not per signature; two batches run at once to use both cores. With
    ``inline_when`` (a predicate: is the node idle?) a signature that finds the verifier
    and the node idle is checked at once on the calling thread, so a lone request pays
    no hop at all. At most one signature per millisecond is checked so: checks done
    inline never make the verifier look busy, and under load they would otherwise move
    all verification onto the thread that is the bottleneck.
    """

    def __init__(self, threads: int = 2, max_batch: int = 256, inline_when: Callable[[], bool] | None = None):
        self._threads = threads
        self._inline_when = inline_when
        self._inline_at = 0.0
        self._slots = trio.Semaphore(threads)
        self._max_batch = max_batch
        self._pending: list = []
        self._wakeup = trio.Event()
        self.backlog = 0  # signatures queued or being checked

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._pending:
                    await self._slots.acquire()
                    batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                    nursery.start_soon(self._check, batch)

    async def _check(self, batch: list) -> None:
        try:
            results = await trio.to_thread.run_sync(_verify_batch, [item[:3] for item in batch])
        finally:
            self._slots.release()
        self._deliver(batch, results)

    def _deliver(self, batch: list, results: list) -> None:
        self.backlog -= len(batch)
        for item, message in zip(batch, results):
            item[3](message)

    def check(self, public: bytes, candidates: tuple[bytes, ...], signature: bytes, callback) -> None:
        if self._inline_when is not None and not self._pending and self._slots.value == self._threads:
            now = trio.current_time()
            if now - self._inline_at >= 0.001 and self._inline_when():
                # nothing queued or in flight: checking here (~60 us) beats a hop to a worker
                # and back; under load requests queue and go out in batches (natural batching)
                self._inline_at = now
                callback(verify(public, candidates, signature))
                return
        self.backlog += 1
        self._pending.append((public, candidates, signature, callback))
        self._wakeup.set()

    async def verify(self, public: bytes, candidates: tuple[bytes, ...], signature: bytes) -> bytes | None:
        done = trio.Event()
        box: list = []

        def cb(message: bytes | None) -> None:
            box.append(message)
            done.set()

        self.check(public, candidates, signature, cb)
        await done.wait()
        return box[0]


class ProcessVerifier(Verifier):
    """Like ``Verifier``, but the checks run in worker processes.

    Threads share the GIL with the trio thread: each signature check re-acquires it
    when libsodium returns, and under load the trio thread and the verifier threads
    hand the GIL back and forth (measured: a 128-signature batch took 15-40 ms in a
    thread next to a busy gateway, versus 5 ms alone). Worker processes have their own
    interpreter, so the check costs the trio thread only the batch's encoding.
    """

    def __init__(self, processes: int = 1, max_batch: int = 256, inline_when: Callable[[], bool] | None = None):
        super().__init__(processes, max_batch, inline_when)
        self._processes = processes
        self._idle: list = []
        self._len = struct.Struct("<I")
        self._encode = msgspec.msgpack.encode
        self._decode = msgspec.msgpack.Decoder(list[int]).decode

    async def run(self) -> None:
        procs = []
        try:
            for _ in range(self._processes):
                procs.append(await trio.lowlevel.open_process(
                    [sys.executable, "-m", "satchel.verifyproc"], stdin=-1, stdout=-1))
            self._idle = list(procs)
            await super().run()
        finally:
            for p in procs:
                with trio.CancelScope(shield=True):
                    await p.stdin.aclose()
                    p.kill()
                    await p.wait()

    async def _check(self, batch: list) -> None:
        proc = self._idle.pop()
        try:
            payload = self._encode([(item[0], item[1], item[2]) for item in batch])
            await proc.stdin.send_all(self._len.pack(len(payload)) + payload)
            data = b""
            while len(data) < 4 or len(data) < 4 + self._len.unpack_from(data)[0]:
                chunk = await proc.stdout.receive_some(1 << 20)
                if not chunk:
                    raise RuntimeError("signature verifier process exited")
                data += chunk
            results = self._decode(data[4:])
        finally:
            self._idle.append(proc)
            self._slots.release()
        self._deliver(batch, [item[1][idx] if idx >= 0 else None for item, idx in zip(batch, results)])
