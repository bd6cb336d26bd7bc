"""Process-level settings and error plumbing shared by the node, the validator and tools."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio


def tune_gc() -> None:
    """Collect young objects every 50,000 allocations instead of every 700.

    The engine allocates a few short-lived, acyclic objects per transaction (events,
    entries, tuples); with CPython's default threshold the cyclic collector runs every
    few hundred transactions and costs about a third of the engine's throughput
    (benchmarks/engine: ~85k tx/s at the default, ~138k tuned). Memory is still
    reclaimed by reference counting; only cycle detection runs less often.
    """
    gc.set_threshold(50_000, 20, 100)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns it.

    Every connection holds a descriptor: at a soft limit of 1,024 (a common default) a
    thousand idle connections leave none for the journal's next segment or a snapshot.
    The hard limit is what the operator allowed (``LimitNOFILE`` in deploy/systemd)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


@contextmanager
def fatal_errors_unwrapped() -> Iterator[None]:
    """Re-raise a JournalCorrupt, DivergedError or BusError (the cluster's: fenced by
    another sequencer, a block over the NATS servers' max_payload, ...) found inside
    trio's exception groups as itself, so callers and operators see the file, offset or
    block at fault."""
    from satchel.cluster.bus import BusError
    from satchel.ledger.chain import DivergedError
    from satchel.ledger.journal import JournalCorrupt

    try:
        yield
    except BaseExceptionGroup as eg:
        fatal = _first_leaf(eg, (JournalCorrupt, DivergedError, BusError))
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


# what a connection raises when its peer went away (closed, reset, or never finished the
# handshake): nothing to answer, nothing wrong with the node
_PEER_GONE: tuple[type[BaseException], ...] = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def contained(handler: Callable[[Any], Awaitable[None]], log: Any, event: str) -> Callable[[Any], Awaitable[None]]:
    """``handler`` for one connection of a trio-websocket server, whose failure stays its own.

    trio-websocket runs every handler in the server's nursery: an exception from one
    connection -- a client closing or resetting right after its upgrade request, so
    ``accept`` or the peer's address fails -- would end the server and the node with it.
    The peer going away ends only its connection, silently; anything else is logged
    (``event``, with the traceback) and ends only its connection too."""

    async def run(request: Any) -> None:
        try:
            await handler(request)
        except Exception as exc:
            if not _peer_gone(exc):
                log.exception(event)

    return run


def peer_name(request: Any) -> str:
    """``host:port`` of a trio-websocket request's peer, read before accepting it (a peer
    gone by then has no address to read)."""
    remote = request.remote
    return f"{remote.address}:{remote.port}" if hasattr(remote, "address") else str(remote)


def _peer_gone(exc: BaseException) -> bool:
    from trio_websocket import ConnectionClosed, HandshakeError

    if isinstance(exc, BaseExceptionGroup):
        return all(_peer_gone(e) for e in exc.exceptions)
    return isinstance(exc, (*_PEER_GONE, ConnectionClosed, HandshakeError))
