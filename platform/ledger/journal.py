"""The durable journal: append-only segment files of checksummed, length-prefixed records.

Layout: ``<dir>/<first height, 20 digits>.seg``. Each segment starts with an 8-byte
magic; each record is ``u32 length | u32 crc32(payload) | payload`` (little endian),
one record per block. A segment rolls over once it passes ``segment_bytes``.

Durability: ``append`` writes a group of records and fsyncs before it returns. It is
blocking on purpose -- the node calls it on its event loop (a worker thread waits for the
GIL while the loop is busy, which cost more than the fsync: see ``satchel.node``) and
releases a block's effects only after it returned (group commit: every block that piled
up meanwhile goes in the next write and fsync).

Recovery tells a crash from corruption:
* a record cut short or failing its checksum at the very end of the last segment is a
  torn write from a crash: once the node has decided to go on, it is truncated away
  (its bytes kept in ``<segment>.torn``) and logged;
* a bad record anywhere else cannot come from a crash: ``JournalCorrupt`` names the
  file and offset, and the node refuses to start, changing nothing.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import structlog

from satchel.core.messages import header_decoder

MAGIC = b"SATJRNL1"
BATCH_BYTES = 256 << 10  # journal bytes read per worker-thread hop (``take_batch``): bounds memory, amortises the hop
_HEADER = struct.Struct("<II")
_MAX_RECORD = 1 << 30

log = structlog.get_logger("satchel.ledger.journal")


class JournalCorrupt(RuntimeError):
    def __init__(self, path: Path, offset: int, why: str):
        super().__init__(f"journal corrupt: {path} at offset {offset}: {why}")
        self.path = path
        self.offset = offset


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def _scan(path: Path, data: bytes, last: bool) -> Iterator[tuple[int, bytes | None]]:
    """Yield (offset, payload); a final (offset, None) marks a torn tail to cut at offset."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        if last and MAGIC.startswith(data[: len(MAGIC)]):
            yield 0, None
            return
        raise JournalCorrupt(path, 0, "bad segment magic")
    pos = len(MAGIC)
    end = len(data)
    while pos < end:
        if pos + _HEADER.size > end:
            if last:
                yield pos, None
                return
            raise JournalCorrupt(path, pos, "truncated record header")
        length, crc = _HEADER.unpack_from(data, pos)
        stop = pos + _HEADER.size + length
        if length == 0 or length > _MAX_RECORD or stop > end:
            if last and (stop > end or not any(data[pos:])):
                yield pos, None
                return
            raise JournalCorrupt(path, pos, f"bad record length {length}")
        payload = data[pos + _HEADER.size : stop]
        if zlib.crc32(payload) != crc:
            if last and stop == end:
                yield pos, None
                return
            raise JournalCorrupt(path, pos, "checksum mismatch")
        yield pos, payload
        pos = stop


def read_records(directory: str | Path) -> Iterator[bytes]:
    """Every intact record in order, without changing any file (a torn tail is skipped)."""
    directory = Path(directory)
    segs = _segments(directory)
    for i, path in enumerate(segs):
        data = path.read_bytes()
        for offset, payload in _scan(path, data, last=i == len(segs) - 1):
            if payload is None:
                log.warning("journal.torn_tail", file=str(path), offset=offset, bytes=len(data) - offset)
                return
            yield payload


def read_heights(directory: Path, start: int, upto: int) -> Iterator[tuple[int, bytes]]:
    """(height, payload) for heights start..upto, read from the segments a record at a time.

    Blocking: advance it from a worker thread. Segments are named by their first height,
    so whole segments below ``start`` are skipped unread.
    """
    segs = sorted(directory.glob("*.seg"))
    firsts = [int(p.stem) if p.stem.isdigit() else 0 for p in segs]
    last = start - 1
    for i, path in enumerate(segs):
        if i + 1 < len(segs) and firsts[i + 1] <= start:
            continue
        if last >= upto:
            break
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise JournalCorrupt(path, 0, "bad segment magic")
            while last < upto:
                pos = f.tell()
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    break
                length, crc = _HEADER.unpack(head)
                # never ask read() for more than the file holds: a bad length would allocate it
                if length == 0 or pos + _HEADER.size + length > os.fstat(f.fileno()).st_size:
                    break
                payload = f.read(length)
                if zlib.crc32(payload) != crc:
                    raise JournalCorrupt(path, pos, "checksum mismatch")
                height = header_decoder.decode(payload).header.height
                if height >= start:
                    last = height
                    yield height, payload
    if last < upto:
        # a gap here would surface at the follower as a chain that does not extend
        raise JournalCorrupt(directory, 0, f"history ends at height {last}, before the durable height {upto}")


def take_batch(records: Iterator[tuple[int, bytes]], limit: int = BATCH_BYTES) -> list[tuple[int, bytes]]:
    """The next records of ``records`` up to ``limit`` bytes (at least one, if any is left)."""
    out, size = [], 0
    for item in records:
        out.append(item)
        size += len(item[1])
        if size >= limit:
            break
    return out


class Journal:
    """Single-writer append handle: ``recover`` (read only), then ``open``, then ``append``.

    Recovery is decided before anything on disk changes: ``recover`` only reads and
    notes a torn tail in ``torn``; once the caller has replayed the records and agrees
    with what it found, ``open`` cuts the torn tail away (keeping its bytes beside the
    segment as ``<segment>.torn``) and opens the journal for appending. A caller that
    refuses the journal leaves every file as it was.
    """

    def __init__(self, directory: str | Path, segment_bytes: int = 64 << 20):
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._file = None
        self._size = 0
        self.torn: tuple[Path, int] | None = None  # (segment, offset) of a torn tail found by recover
        self._opened = False

    def recover(self) -> Iterator[bytes]:
        """Yield every intact record; note a torn tail; raise JournalCorrupt on damage."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.torn = None
        segs = _segments(self.directory)
        for i, path in enumerate(segs):
            data = path.read_bytes()
            for offset, payload in _scan(path, data, i == len(segs) - 1):
                if payload is None:
                    log.warning("journal.torn_tail", file=str(path), offset=offset, bytes=len(data) - offset)
                    self.torn = (path, offset)
                    break
                yield payload

    def open(self, new_segment_at: int | None = None) -> None:
        """Cut a torn tail away and open for appending; ``new_segment_at`` starts a new
        segment at that height (when the next block does not follow the last record)."""
        if self.torn is not None:
            path, offset = self.torn
            with open(path, "r+b") as f:
                f.seek(offset)
                tail = f.read()
                side = path.with_name(f"{path.name}.torn")
                side.write_bytes(tail)
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
            if offset == 0:
                path.unlink()
            log.warning("journal.torn_tail_truncated", file=str(path), offset=offset, bytes=len(tail), kept=str(side))
            self.torn = None
        self._opened = True
        self.directory.mkdir(parents=True, exist_ok=True)
        segs = _segments(self.directory)
        if new_segment_at is not None:
            self._roll(new_segment_at)
        elif segs:
            self._file = open(segs[-1], "ab")
            self._size = self._file.tell()

    def append(self, records: list[tuple[int, bytes]], sync: bool = True) -> None:
        """Write (height, payload) records and fsync (``sync``; without it the records are
        handed to the OS only: for a copy whose source of truth is elsewhere, a cluster's
        block stream). Blocking."""
        if not self._opened:
            self.open()
        f = self._file
        parts = []
        for height, payload in records:
            if f is None or self._size >= self.segment_bytes:
                if parts:
                    f.write(b"".join(parts))
                    parts = []
                f = self._roll(height)
            parts.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
            parts.append(payload)
            self._size += _HEADER.size + len(payload)
        if parts:
            f.write(b"".join(parts))
        f.flush()
        if sync:
            os.fsync(f.fileno())

    def _roll(self, height: int):
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        path = self.directory / f"{height:020d}.seg"
        self._file = open(path, "ab")
        self._file.write(MAGIC)
        self._size = len(MAGIC)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
