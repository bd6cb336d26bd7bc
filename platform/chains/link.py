"""How a chain adapter reaches the node: in its process, or from a process of its own.

An adapter needs five things of the node, and nothing else: to report (a signed
transaction, answered with its refusal code or the deposits credited), whether its chain
is paused, the chain's open withdrawals, the custody moves to carry out, and -- when it
shares the node's event loop -- quiet moments and turns to work in (``Node.quiet``,
``Node.turn``). Two links give them:

* ``LocalLink``: the adapter runs in the node's process (``satchel serve``, the embedded
  default). Reports are submitted to the sequencer; withdrawals, moves and pauses arrive
  as durable events (the adapter is a node subscriber).
* ``RemoteLink``: the adapter runs in ``satchel chains``, a process of its own, and
  speaks the node's WebSocket API with its chain key like any client: reports are
  ``depositConfirmedBatch`` and the withdrawal reports, and ``chainWorkQuery`` (polled
  every ``WORK_S``) answers the chain's pause, open withdrawals and custody moves. The
  node's loop is spared the adapter's scans and sweeps and the simulated chain, but
  decodes and checks each report frame (the gateway handles them in ``Node.turn``s, yet
  trio-websocket reads them off the socket in a task of its own): orders' p99 beside
  deposits is higher this way on one machine (``benchmarks/deposits --edge process``:
  x1.5-1.6 against x1.2-1.5 in the node's process). It buys isolation -- the hot
  wallet's keys and the chains' RPC traffic off the matching node -- not latency.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NamedTuple

import msgspec
import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from satchel.core import instructions
from satchel.core.amounts import to_units
from satchel.core.messages import (
    ChainCredited, ChainsOf, ChainStatusChanged, CustodyMoved, MovesOf, TxRejected, WithdrawalsOf, WithdrawalUpdate,
)
from satchel.signing import Keypair, auth_for, batch_auth_for

log = structlog.get_logger()

WORK_S = 1.0  # how often a remote adapter asks for its chain's withdrawals and custody moves
RECONNECT_S = 1.0


class Outcome(NamedTuple):
    """What became of a report: the refusal's code (None: taken) and the deposits credited."""

    code: str | None
    credited: int


class LocalLink:
    """The adapter in the node's process."""

    def __init__(self, node: Any):
        self.node = node
        self.decimals: dict[str, int] = {}

    def attach(self, adapter: Any) -> None:
        self.decimals = adapter.decimals  # a report's items are journaled once, in its transaction
        self.node.subscribers.append(adapter)  # durable events: withdrawals, moves, pauses
        self.node.chain_adapters[adapter.name] = adapter  # ``satchel reconcile`` reads the chain through it

    async def run(self, adapter: Any) -> None:
        """Nothing to poll: the events come to the adapter."""

    async def report(self, key: Keypair, instruction: str, params: dict | list, tx: Any) -> Outcome:
        async with self.node.turn():  # signed in a turn of its own; the wait for its block is not
            auth = batch_auth_for(key, instruction, params) if isinstance(params, list) else auth_for(key, instruction, params)
            tx = instructions.compact(msgspec.structs.replace(tx, auth=auth), self.decimals)
        events = await self.node.submit_wait(tx)
        code = next((e.code for e in events if e.__class__ is TxRejected), None)
        return Outcome(code, sum(e.__class__ is ChainCredited for e in events))

    async def paused(self, chain: str) -> bool:
        return any(v.paused for v in await self.node.ask("risk", ChainsOf()) if v.spec.name == chain)

    async def open_withdrawals(self, chain: str) -> list[WithdrawalUpdate]:
        return [WithdrawalUpdate(0, wid, w.account, w.chain, w.asset, w.amount, w.address, w.status, w.tx_hash, "", 0)
                for wid, w in await self.node.ask("risk", WithdrawalsOf(None))
                if w.chain == chain and w.status in ("Pending", "Sent")]

    async def open_moves(self, chain: str) -> list[CustodyMoved]:
        return [CustodyMoved(m.seq, m.chain, m.asset, m.amount, m.to_cold, 0)
                for m in await self.node.ask("risk", MovesOf(chain))]

    async def quiet(self, patience: float) -> bool:
        return await self.node.quiet(patience)

    def turn(self) -> Any:
        return self.node.turn()


class RemoteLink:
    """The adapter in a process of its own, over the node's WebSocket API (``url``).

    Each request waits while the connection is down and is sent again once it is back
    (a report signed anew: the engine credits a deposit once and takes a withdrawal's
    report once, however often it is repeated). The open custody moves come with every
    ``chainWorkQuery`` until the adapter reports each done, so a move handed over before a
    crash is handed over again (its transfer carries an idempotency key: it is made once)."""

    def __init__(self, url: str, decimals: dict[str, int], client: Any):
        self.url = url
        self.decimals = decimals
        # ``satchel.tools.client`` (its ``connect`` and ``ReplyError``): the API's client,
        # handed in by whoever starts the adapter (a tool, above the edges' layer)
        self.client = client
        self._client: Any = None
        self._connected = trio.Event()
        self._polled = trio.Event()
        self._paused = False
        self._withdrawals: list[WithdrawalUpdate] = []
        self._moves: list[CustodyMoved] = []

    def attach(self, adapter: Any) -> None:
        """Nothing to subscribe to: the work comes with each ``chainWorkQuery``."""

    async def run(self, adapter: Any) -> None:
        """Stay connected; every ``WORK_S`` hand the adapter its chain's work."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._connection, adapter.key)
            while True:
                try:
                    adapter.publish(None, await self._work(adapter.name))
                except self.client.ReplyError as exc:  # a node without this chain, or another key: said, and asked again
                    log.error("chain.work_refused", chain=adapter.name, code=exc.code, why=exc.message)
                await trio.sleep(WORK_S)

    async def _connection(self, key: Keypair) -> None:
        while True:
            try:
                async with self.client.connect(self.url, key) as client:
                    log.info("chain.link_connected", url=self.url)
                    self._client = client
                    self._connected.set()
                    while not client.closed:
                        await trio.sleep(0.2)
            except (OSError, HandshakeError, ConnectionClosed) as exc:
                log.log(logging.WARNING if self._client is not None else logging.INFO, "chain.link_down",
                        url=self.url, why=str(exc) or exc.__class__.__name__)
            self._client = None
            self._connected = trio.Event()
            await trio.sleep(RECONNECT_S)

    async def _call(self, send: Any) -> Any:
        """``send(client)`` once connected; again after a reconnection if the link drops."""
        while True:
            await self._connected.wait()
            client = self._client
            try:
                return await send(client)
            except (ConnectionError, ConnectionClosed, OSError):
                if self._client is client:  # the connection task notices and reconnects
                    await trio.sleep(RECONNECT_S)

    async def report(self, key: Keypair, instruction: str, params: dict | list, tx: Any) -> Outcome:
        try:
            if isinstance(params, list):
                answer = await self._call(lambda c: c.request_batch("depositConfirmedBatch", instruction, params))
                return Outcome(None, sum(1 for d in answer if d.get("credited")))
            await self._call(lambda c: c.request(instruction, params))
            return Outcome(None, 0)
        except self.client.ReplyError as exc:
            log.info("chain.report_refused", instruction=instruction, code=exc.code, why=exc.message)
            return Outcome(str(exc.code), 0)

    async def paused(self, chain: str) -> bool:
        await self._polled.wait()
        return self._paused

    async def open_withdrawals(self, chain: str) -> list[WithdrawalUpdate]:
        await self._polled.wait()
        return self._withdrawals

    async def open_moves(self, chain: str) -> list[CustodyMoved]:
        await self._polled.wait()
        return self._moves

    async def quiet(self, patience: float) -> bool:
        return True  # the node's loop is not this process's

    def turn(self) -> Any:
        return contextlib.nullcontext()

    async def _work(self, chain: str) -> list:
        """``chainWorkQuery``: the pause, as the event an adapter in the node would have
        received, and the open withdrawals and custody moves (``open_withdrawals``,
        ``open_moves``)."""
        work = await self._call(lambda c: c.request("chainWorkQuery", {"chain": chain}))
        events: list = []
        if work["paused"] != self._paused or not self._polled.is_set():
            self._paused = work["paused"]
            events.append(ChainStatusChanged(0, chain, work["paused"], work["reason"] or "", "", 0))
        units = self.decimals
        self._moves = [CustodyMoved(m["seq"], chain, m["symbol"], to_units(m["quantity"], units[m["symbol"]]), m["toCold"], 0)
                       for m in work["moves"]]
        self._withdrawals = [
            WithdrawalUpdate(0, w["id"], w["account"], chain, w["symbol"], to_units(w["quantity"], units[w["symbol"]]),
                             w["address"], w["status"], w["txHash"] or "", "", 0) for w in work["withdrawals"]]
        self._polled.set()
        return events
