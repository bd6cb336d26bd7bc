"""Catch-up: write into the history the blocks it is missing, replayed from the journal.

The history is derived from the engine's events, which the journal does not hold: the
journal holds transactions. So a missing block is replayed -- a private engine applies
the journal from the newest snapshot below the first missing height (or from
genesis), each block checked against its header's event commitment (``chain.replay``)
-- and the events of the missing blocks are handed to the store.

It runs in its own thread with its own trio loop and engine, so the node keeps serving
at full speed while a long rebuild runs: the store writes live blocks meanwhile (each
block is written once, whichever comes first; see ``schema``), and history reads answer
from what is written so far. A short one (``FOREGROUND_BLOCKS``) is finished before
the gateway serves. Missing means: not in the database's ``written`` ranges,
up to the chain height the node recovered (``upto``); every later block reaches the
store live. A database that was deleted, is behind (the node ran without a gateway, or
stopped before the store wrote its last blocks), or was interrupted mid-rebuild is
completed the same way.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from satchel.core.engine import Engine
from satchel.core.errors import RequestError
from satchel.core.messages import header_decoder
from satchel.history.store import Store
from satchel.ledger import snapshots
from satchel.ledger.chain import Chain, decode_block
from satchel.ledger.journal import read_records

log = structlog.get_logger("satchel.history")

FOREGROUND_BLOCKS = 64  # a catch-up of at most this many blocks completes before the gateway serves


async def catch_up(store: Store, data: Path, upto: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Write the blocks 1..``upto`` the store does not hold, from ``data``'s snapshots and
    journal; logs start and end (blocks, seconds). A failure is logged, never raised: the
    node serves on, with a history missing those blocks until the next start.

    ``task_status.started()`` once the missing blocks are queued if replaying them takes
    at most ``FOREGROUND_BLOCKS`` blocks (from the snapshot the replay starts at), at once
    otherwise (the rebuild then runs while the node serves). A fresh node's genesis
    blocks, published before any gateway subscribed, or the last blocks an unclean stop
    left out cost milliseconds, and history answers are then complete from the first
    request."""
    try:
        gaps = await store.gaps(upto)
    except RequestError as exc:  # the store failed as it started (logged there)
        log.error("history.rebuild_skipped", error=exc.message)
        task_status.started()
        return
    # the replay runs from the newest snapshot below the first missing block to the last one
    work = gaps[-1][1] - _snapshot_heights(data / "snapshots", gaps[0][0])[0] if gaps else 0
    foreground = work <= FOREGROUND_BLOCKS
    if not foreground:
        task_status.started()
    if gaps:
        await _rebuild(store, data, gaps, upto)
    if foreground:
        task_status.started()


async def _rebuild(store: Store, data: Path, gaps: list[tuple[int, int]], upto: int) -> None:
    missing = sum(hi - lo + 1 for lo, hi in gaps)
    started = trio.current_time()
    log.info("history.rebuild_started", missing=missing, first=gaps[0][0], last=gaps[-1][1], ranges=len(gaps))
    stop = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_cancelled, stop)
            # not cancellable: it returns soon after _stop_when_cancelled sets ``stop``
            replayed, written, base = await trio.to_thread.run_sync(_replay, store, Path(data), gaps, upto, stop,
                                                                    limiter=trio.CapacityLimiter(1))
            # logged here, before a pending cancellation can interrupt: ``stopped`` says whether it did
            log.info("history.rebuild_finished", blocks=written, missing=missing, replayed=replayed,
                     from_snapshot=base, stopped=stop.is_set(), seconds=round(trio.current_time() - started, 3))
            nursery.cancel_scope.cancel()
    except Exception:
        log.exception("history.rebuild_failed", missing=missing, seconds=round(trio.current_time() - started, 3))


async def _stop_when_cancelled(stop: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()


def _replay(store: Store, data: Path, gaps: list[tuple[int, int]], upto: int,
            stop: threading.Event) -> tuple[int, int, int]:
    """In the catch-up's thread: (blocks replayed, blocks handed to the store, snapshot height)."""
    return trio.run(_replay_async, store, data, gaps, upto, stop)


async def _replay_async(store: Store, data: Path, gaps: list[tuple[int, int]], upto: int,
                        stop: threading.Event) -> tuple[int, int, int]:
    replayed = written = 0
    last = min(gaps[-1][1], upto)
    async with trio.open_nursery() as actors:
        chain = Chain(Engine(actors))
        snap = _snapshot_below(data / "snapshots", gaps[0][0])
        if snap is not None:
            await chain.load(snap)
        g = 0
        for payload in read_records(data / "journal"):
            if stop.is_set():
                break
            height = header_decoder.decode(payload).header.height
            if height <= chain.height:
                continue  # covered by the snapshot
            if height > last:
                break
            block = decode_block(payload)
            events = await chain.replay(block)
            replayed += 1
            while gaps[g][1] < height:
                g += 1
            if gaps[g][0] <= height:
                if not store.write_caught_up(block.header, events, stop):
                    break
                written += 1
        actors.cancel_scope.cancel()
    return replayed, written, snap.height if snap is not None else 0


def _snapshot_heights(directory: Path, first: int) -> list[int]:
    """The heights of the snapshot files below ``first``, newest first, then 0 (genesis):
    where a replay to block ``first`` can start."""
    heights = []
    for path in directory.glob("*.snap"):
        try:
            height = int(path.stem)
        except ValueError:
            continue
        if height < first:
            heights.append(height)
    return sorted(heights, reverse=True) + [0]


def _snapshot_below(directory: Path, first: int) -> snapshots.Snapshot | None:
    """The newest intact snapshot at a height below ``first`` (so replay starts before
    the first missing block), or None: replay from genesis."""
    for height in _snapshot_heights(directory, first)[:-1]:
        path = directory / f"{height:020d}.snap"
        try:
            return snapshots.read(path)
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            log.warning("history.snapshot_skipped", file=str(path), error=str(exc))
    return None
