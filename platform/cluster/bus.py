"""NATS for trio: nats-py runs on its own asyncio loop in one thread, and only this
module touches it.

nats-py is asyncio-only. The client gets a dedicated asyncio loop in a daemon thread and
trio talks to it by handing over coroutines (``call``) and receiving callbacks
(``subscribe``): a future completed on the asyncio side wakes the waiting trio task
through its ``TrioToken``, no worker thread is parked per call. What crosses the
boundary is bytes and small tuples, and both sides batch (blocks per publish round,
transactions per intake message), so the hop is paid per batch, not per transaction.

Measured against trio-asyncio (``benchmarks/cluster``, section 1, this 2-core machine):
the bare hop costs more here (``Bus.call`` of a trivial coroutine 240 us, trio-asyncio's
``aio_as_trio`` 119 us), but a real NATS request round trip is faster (834 us against
1,533 us), the trio loop that runs the engine pays nothing for asyncio's scheduling, and
importing trio-asyncio replaces ``asyncio.new_event_loop`` for the whole process.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
import trio

log = structlog.get_logger("satchel.cluster.bus")

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence check


class BusError(Exception):
    """NATS or JetStream refused or could not do what was asked."""


class TooLarge(BusError):
    """A message over the NATS servers' ``max_payload``: no retry can help."""


class Fenced(BusError):
    """The stream already holds a block at the height this sequencer tried to publish:
    another sequencer extended the chain, so this one must stop (JetStream's
    expected-last-sequence check, not a protocol of ours)."""


class Bus:
    """One NATS connection (a server list: it fails over between a cluster's nodes) on
    a private asyncio loop; use ``async with Bus(servers) as bus``."""

    def __init__(self, servers: str | Sequence[str], name: str = "satchel"):
        self.servers = [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers)
        self.name = name
        self.nc: Any = None
        self.js: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._acks: dict[str, asyncio.Future] = {}
        self._ack_inbox = ""
        self._ack_ids = itertools.count()
        self.connected = trio.Event()

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> "Bus":
        self._token = trio.lowlevel.current_trio_token()
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"nats-{self.name}", daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(ready.wait)
        try:
            await self.call(self._connect)
        except BaseException:
            await self._stop_loop()
            raise
        self.connected.set()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(2):
                    await self.call(self._close)
            finally:
                await self._stop_loop()

    async def _stop_loop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await trio.to_thread.run_sync(self._thread.join, 2.0)

    async def _connect(self) -> None:
        import nats

        async def disconnected() -> None:
            log.warning("nats.disconnected", name=self.name)

        async def reconnected() -> None:
            log.info("nats.reconnected", name=self.name, server=str(self.nc.connected_url.netloc))

        async def error(exc: Exception) -> None:
            log.warning("nats.error", name=self.name, error=str(exc) or type(exc).__name__)

        # reconnect fast and forever: a cluster node going away must cost milliseconds, not
        # the client's default 2 s between attempts (the standby's takeover waits ~3 s)
        self.nc = await nats.connect(self.servers, name=self.name, reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                                     connect_timeout=2, allow_reconnect=True, disconnected_cb=disconnected,
                                     reconnected_cb=reconnected, error_cb=error, pending_size=8 << 20)
        self.js = self.nc.jetstream(timeout=5)
        self._ack_inbox = self.nc.new_inbox()
        await self.nc.subscribe(self._ack_inbox + ".*", cb=self._on_ack)

    async def _close(self) -> None:
        import nats.errors

        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (nats.errors.Error, asyncio.TimeoutError):  # not connected: nothing to drain
                await self.nc.close()

    @property
    def max_payload(self) -> int:
        """The largest message the servers take (their ``max_payload``, 1 MB by default)."""
        return self.nc.max_payload

    # ------------------------------------------------------------------ crossing over

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` on the asyncio loop; its result here. Whatever NATS raises
        comes back as ``BusError`` (``TooLarge`` for a message over ``max_payload``), so
        callers retry or report it by one type: a reconnecting client, a full outbound
        buffer, a JetStream API error or a timeout must never end a node."""
        fut = asyncio.run_coroutine_threadsafe(_translated(fn, *args), self._loop)
        done = trio.Event()
        token = self._token

        def wake(_: Any) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            fut.cancel()
            raise
        return fut.result()

    def deliver(self, handler: Callable[..., None]) -> Callable[..., Awaitable[None]]:
        """An asyncio message callback that runs ``handler(msg)`` in trio (in arrival order).
        An exception from the handler is logged: raised inside ``run_sync_soon`` it would
        end the whole trio run, and a message from the network must never do that."""
        token = self._token

        def guarded(msg: Any) -> None:
            try:
                handler(msg)
            except Exception:
                log.exception("nats.handler_failed", subject=getattr(msg, "subject", "?"))

        async def cb(msg: Any) -> None:
            try:
                token.run_sync_soon(guarded, msg)
            except trio.RunFinishedError:
                pass

        return cb

    # ------------------------------------------------------------------ core NATS

    async def subscribe(self, subject: str, handler: Callable[[Any], None], queue: str = "") -> Any:
        """Messages on ``subject`` delivered to ``handler(msg)`` in trio; returns the subscription."""
        cb = self.deliver(handler)
        return await self.call(lambda: self.nc.subscribe(subject, queue=queue, cb=cb))

    async def unsubscribe(self, sub: Any) -> None:
        """Stop a subscription (``BusError`` if NATS cannot be told now)."""
        await self.call(sub.unsubscribe)

    def publish_nowait(self, subject: str, payload: bytes, reply: str = "", headers: dict | None = None) -> None:
        """Fire and forget (replies, heartbeats): ordered with other publishes of this bus."""
        asyncio.run_coroutine_threadsafe(self.nc.publish(subject, payload, reply=reply, headers=headers), self._loop)

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """Core NATS request/reply; ``BusError`` when nobody answers in time."""
        import nats.errors

        if len(payload) > self.nc.max_payload:
            raise TooLarge(f"a {len(payload)}-byte message is over the NATS max_payload of {self.nc.max_payload}")

        async def ask() -> bytes:
            try:
                return (await self.nc.request(subject, payload, timeout=timeout)).data
            except nats.errors.NoRespondersError:
                raise BusError(f"no responder on {subject}") from None
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                raise BusError(f"no answer on {subject} within {timeout} s") from None

        return await self.call(ask)

    # ------------------------------------------------------------------ JetStream publishing

    async def _on_ack(self, msg: Any) -> None:
        fut = self._acks.pop(msg.subject.rsplit(".", 1)[1], None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    async def publish_ordered(self, subject: str, items: Sequence[tuple[bytes, dict]], timeout: float = 5.0) -> list[dict]:
        """Publish messages to a stream in this order, pipelined, and wait for every ack.

        Each is published with its own reply inbox on one connection, so JetStream sees them
        in order (``js.publish`` awaits each ack before the next: one round trip a message).
        Returns the acks; raises ``Fenced`` on an expected-last-sequence failure and
        ``BusError`` on any other refusal or a missing ack."""
        return await self.call(self._publish_ordered, subject, items, timeout)

    async def _publish_ordered(self, subject: str, items: Sequence[tuple[bytes, dict]], timeout: float) -> list[dict]:
        loop = asyncio.get_running_loop()
        futs = []
        limit = self.nc.max_payload
        for payload, _ in items:
            if len(payload) > limit:
                raise TooLarge(f"a {len(payload)}-byte block is over the NATS servers' max_payload of {limit} bytes: "
                               "raise max_payload in their configuration (64MB at most), or block_max_txs")
        try:
            for payload, headers in items:
                token = str(next(self._ack_ids))
                fut = loop.create_future()
                self._acks[token] = fut
                futs.append((token, fut))
                await self.nc.publish(subject, payload, reply=f"{self._ack_inbox}.{token}", headers=headers)
            async with asyncio.timeout(timeout):
                raw = await asyncio.gather(*(f for _, f in futs))
        except TimeoutError:
            raise BusError(f"JetStream did not acknowledge {subject} within {timeout} s") from None
        finally:
            for token, _ in futs:
                self._acks.pop(token, None)
        acks = []
        for data in raw:
            ack = orjson.loads(data) if data else {"error": {"description": "no responders (is JetStream on?)"}}
            err = ack.get("error")
            if err:
                if err.get("err_code") == WRONG_LAST_SEQUENCE:
                    raise Fenced(err.get("description", "wrong last sequence"))
                raise BusError(f"JetStream refused a publish to {subject}: {err.get('description')}")
            acks.append(ack)
        return acks


async def _translated(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    import nats.errors
    import nats.js.errors

    try:
        return await fn(*args)
    except BusError:
        raise
    except nats.errors.MaxPayloadError as exc:
        raise TooLarge(str(exc) or "message over the NATS max_payload") from exc
    except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, TimeoutError, ConnectionError) as exc:
        raise BusError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
