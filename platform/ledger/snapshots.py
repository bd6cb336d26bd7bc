"""Snapshots: the whole ledger state at a block height, so a restart replays only the tail.

A snapshot file ``<dir>/<height, 20 digits>.snap`` is ``magic | u32 crc32 | payload``
where the payload is a msgpack ``Snapshot``: chain position (height, next sequence,
timestamp, the hash of block ``height``), the engine's canonical state as the exact
bytes the state hash is taken over, and that hash. It is written to a temporary file,
fsynced and renamed, so a crash leaves either the old set or the new one.

Loading tries the newest first; a file that fails its checksum, does not decode, or
whose state does not hash to its recorded hash is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import msgspec
import structlog

from satchel.core.state import EngineState, state_decoder

MAGIC = b"SATSNAP1"
_CRC = struct.Struct("<I")
KEEP = 3  # snapshots kept on disk

log = structlog.get_logger("satchel.ledger.snapshots")


class Snapshot(msgspec.Struct, array_like=True, frozen=True):
    height: int
    next_seq: int
    last_timestamp: int
    block_hash: bytes  # hash of block ``height``'s header (the next block's prev_hash)
    txs: int
    state_hash: str
    state: msgspec.Raw  # msgpack of Engine.canonical(), an EngineState
    liabilities_root: bytes = b""  # Merkle root over (height, account, asset, total, decimals): see liabilities.py


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)
state_encoder = msgspec.msgpack.Encoder()


def encode_state(canonical: EngineState) -> tuple[bytes, str]:
    raw = state_encoder.encode(canonical)
    return raw, hashlib.sha256(raw).hexdigest()


def write(directory: str | Path, snap: Snapshot) -> Path:
    """Durably write a snapshot and prune old ones. Blocking: call from a worker thread."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = _encoder.encode(snap)
    path = directory / f"{snap.height:020d}.snap"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + _CRC.pack(zlib.crc32(payload)) + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    for old in sorted(directory.glob("*.snap"))[:-KEEP]:
        old.unlink()
    log.info("snapshot.written", height=snap.height, state=snap.state_hash, liabilities_root=snap.liabilities_root.hex(),
             bytes=len(payload), file=str(path))
    return path


def read(path: Path) -> Snapshot:
    data = path.read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError("bad magic")
    (crc,) = _CRC.unpack_from(data, len(MAGIC))
    payload = data[len(MAGIC) + _CRC.size :]
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    snap = _decoder.decode(payload)
    if hashlib.sha256(snap.state).hexdigest() != snap.state_hash:
        raise ValueError("state does not match its hash")
    return snap


def newest(directory: str | Path) -> Snapshot | None:
    """The newest intact snapshot; damaged ones are skipped with a warning."""
    for path in sorted(Path(directory).glob("*.snap"), reverse=True):
        try:
            return read(path)
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            log.warning("snapshot.skipped_damaged", file=str(path), error=str(exc))
    return None


def decode_state(snap: Snapshot) -> EngineState:
    return state_decoder.decode(snap.state)
