"""Chains at the API: deposit addresses, and the chains' status and custody books.

* ``Addresses`` hands out an account's deposit address on a chain: derived from the
  account key and the node's custody seed by the chain kind's derivation
  (``DERIVATIONS``, the one place that knows which kinds hand out addresses), and
  recorded (fsynced, once per account and chain) in the node's address book before it is
  answered, so the chain's adapter knows whose a transfer to it is, also after a restart.
* ``ChainStatus`` is a node subscriber, like ``api.stats.PlatformStats``: it keeps every
  chain's pause status from the durable blocks (``ChainStatusChanged``; a chain listed
  later by its ``ConfigChanged``) and sends a frame per change on the public
  ``chainStatus`` stream; a new subscriber first gets one frame per chain, its status now.
  The status is read once from the engine when the gateway starts (``ChainsOf``), so a
  chain paused before a restart shows paused. ``chainStatusQuery`` (``GET /api/v1/chains``)
  answers the margin engine's ``ChainsOf`` view -- pause, custody books, queued
  withdrawals, deposits credited -- as of the last published block: requests coalesce
  into at most one read per published block, so an unsigned endpoint cannot make the
  core scan its books more often than blocks are cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio

from satchel.api.coalesced import ReadPerBlock
from satchel.api.format import Formatter
from satchel.api.marketdata import MarketData
from satchel.chains.addresses import DERIVATIONS
from satchel.clock import now_us
from satchel.core.errors import Code, RequestError
from satchel.core.messages import BlockHeader, ChainsOf, ChainStatusChanged, ConfigChanged, Query

STREAM = "chainStatus"

Read = Callable[[Query, Callable[[Any], None]], None]

_encode = msgspec.json.encode


class Addresses:
    """Deposit addresses on the node's chains (``node.cfg.chains``, ``node.custody_seed``,
    ``node.addresses``)."""

    def __init__(self, node: Any):
        self.node = node

    def kind(self, chain: str) -> str | None:
        """The chain's kind as configured (``[chains.<name>] kind``), None if not configured here."""
        c = self.node.cfg.chains.get(chain)
        return None if c is None else c.kind

    def derive(self, chain: str, account: str) -> str | None:
        """The account's address on ``chain``, or None where this node cannot derive one."""
        derive = DERIVATIONS.get(self.kind(chain) or "")
        return None if derive is None else derive(self.node.custody_seed, chain, account)

    def require(self, chain: str, listed: Any) -> None:
        """INVALID_CHAIN unless ``chain`` is listed (in ``listed``) and its kind hands out
        deposit addresses."""
        if chain not in listed:
            raise RequestError(Code.INVALID_CHAIN, f"Unknown chain {chain}")
        if self.kind(chain) not in DERIVATIONS:
            raise self._unsupported(chain)

    def _unsupported(self, chain: str) -> RequestError:
        kind = self.kind(chain) or "not configured on this node"
        return RequestError(Code.INVALID_CHAIN, f"Deposit addresses on {chain} ({kind}) are not supported yet")

    def issue(self, chain: str, account: str) -> str:
        """The account's address on ``chain``, recorded for the chain's adapter first (a
        file append and fsync, the first time only: on the event loop, a fraction of a
        millisecond once per account and chain); INVALID_CHAIN where ``require`` fails."""
        address = self.derive(chain, account)
        if address is None:
            raise self._unsupported(chain)
        self.node.addresses.record(chain, address, account)
        return address


class ChainStatus(ReadPerBlock):
    """The ``chainStatus`` stream and the ``chainStatusQuery`` answers, through ``read``
    (``node.sequencer.read``) and ``marketdata``'s subscriptions. ``chains``: the chain
    specs the edges know (``api.listing.Listing.chains``), ``kinds`` a chain's kind."""

    def __init__(self, fmt: Formatter, marketdata: MarketData, read: Read, chains: dict, kinds: Callable[[str], Any],
                 *, height: int = 0, timestamp: int = 0):
        self.fmt = fmt
        self.md = marketdata
        self._read = read
        self.chains = chains
        self.kinds = kinds
        # chain -> (paused, reason, signer or None when not known, sequenced time of the change)
        self.status: dict[str, tuple[bool, str, str | None, int]] = {
            name: (False, "", None, timestamp) for name in sorted(chains)}
        ReadPerBlock.__init__(self, height)  # ``latest``: the last ChainsOf answer
        self._ts = timestamp
        marketdata.add_feed(STREAM, self._frames)

    # ------------------------------------------------------------------ the node's side

    def start(self) -> None:
        """Read the chains' status from the engine (the state the node recovered)."""
        if not self._pending:
            self._take()

    def publish(self, header: BlockHeader, events: list) -> None:
        """A durable block (a node subscriber): a frame per pause or resume, and per chain listed."""
        self._height = header.height
        self._ts = ts = header.timestamp
        for ev in events:
            cls = ev.__class__
            if cls is ChainStatusChanged:
                self.status[ev.chain] = (ev.paused, ev.reason, ev.signer, ts)
                self._send(ev.chain)
            elif cls is ConfigChanged and ev.chain is not None and ev.chain.name not in self.status:
                self.status[ev.chain.name] = (False, "", None, ts)
                self._send(ev.chain.name)

    def paused(self, chain: str) -> bool:
        """Whether the chain's deposits and withdrawals are paused, as of the last published block."""
        status = self.status.get(chain)
        return status is not None and status[0]

    # ------------------------------------------------------------------ the stream

    def frame(self, chain: str) -> dict:
        """A ``chainStatus`` frame's data: whether the chain's deposits and withdrawals are
        paused, why, who paused or resumed it (``signer``: the adapter's or the admin's API
        key; null in a subscriber's first frames, where the status comes from the engine's
        state), and the sequenced time of the change (``T``)."""
        paused, reason, signer, ts = self.status[chain]
        spec = self.chains.get(chain)
        by = None if signer is None else ("adapter" if spec is not None and signer == spec.adapter else "admin")
        return {"e": STREAM, "E": now_us(), "chain": chain, "paused": paused, "reason": reason, "signer": signer,
                "by": by, "T": ts}

    def _encoded(self, chain: str) -> str:
        return _encode({"stream": STREAM, "data": self.frame(chain)}).decode()

    def _frames(self) -> list[str]:
        return [self._encoded(chain) for chain in sorted(self.status)]

    def _send(self, chain: str) -> None:
        self.md.broadcast(STREAM, self._encoded(chain))

    # ------------------------------------------------------------------ the query

    def _take(self) -> bool:
        self._pending = True
        try:
            self._read(Query("risk", ChainsOf()), self._taken)
        except trio.ClosedResourceError:  # shutting down
            self._pending = False
            return False
        return True

    def _taken(self, views: list) -> None:
        # the read's state includes every block published before this call
        for v in views:
            name = v.spec.name
            old = self.status.get(name)
            if old is None or (old[0], old[1]) != (v.paused, v.reason):
                self.status[name] = (v.paused, v.reason, None, self._ts)
        self._answered(views)

    def payload(self, views: list) -> list[dict]:
        """``chainStatusQuery`` items: per chain its kind, assets, confirmations, pause, and
        per asset the custody books (hot, cold, reserved for withdrawals out, the hot
        wallet's limit), withdrawals queued for a cold sweep and deposits credited."""
        fmt = self.fmt
        out = []
        for v in views:
            spec = v.spec
            hot, cold, reserved, limits = dict(v.hot), dict(v.cold), dict(v.reserved), dict(spec.hot_limit)
            books = []
            for asset in spec.assets:
                if asset not in fmt.assets:
                    continue
                limit = limits.get(asset)
                books.append({"symbol": asset, "hot": fmt.asset(asset, hot.get(asset, 0)),
                              "cold": fmt.asset(asset, cold.get(asset, 0)),
                              "reserved": fmt.asset(asset, reserved.get(asset, 0)),
                              "hotLimit": None if limit is None else fmt.asset(asset, limit)})
            out.append({
                "chain": spec.name, "kind": self.kinds(spec.name), "assets": list(spec.assets),
                "confirmations": spec.confirmations, "paused": v.paused, "reason": v.reason,
                "custody": books, "queuedWithdrawals": v.queued, "depositsCredited": v.credited,
            })
        return out


class Reconciliation:
    """``reconcileQuery`` (admin-signed; ``satchel reconcile``): per asset and chain what the
    chain holds against the custody books, and per asset the ledger's liabilities against
    every chain's books (``satchel.chains.reconcile``). Reading a chain costs its providers
    a call per wallet, so at most one reconciliation runs at a time and the requests that
    arrive meanwhile share the next one's answer."""

    def __init__(self, node: Any, fmt: Formatter):
        self.node = node
        self.fmt = fmt
        self._waiting: list[Callable[[dict | Exception], None]] = []
        self._kick_send, self._kick = trio.open_memory_channel[None](1)

    def request(self, answer: Callable[[dict | Exception], None]) -> None:
        """``answer`` gets the payload, or the exception that stopped the reconciliation."""
        self._waiting.append(answer)
        try:
            self._kick_send.send_nowait(None)
        except trio.WouldBlock:
            pass  # one is due already: it takes every request waiting by then

    async def run(self) -> None:
        from satchel.chains.reconcile import gather

        async for _ in self._kick:
            waiting, self._waiting = self._waiting, []
            try:
                result: dict | Exception = self.payload(*await gather(self.node))
            except Exception as exc:  # a chain's providers all failing: every waiting request hears why
                result = exc
            for answer in waiting:
                answer(result)

    def payload(self, lines: list, assets: list) -> dict:
        fmt = self.fmt
        known = [line for line in lines if line.asset in fmt.assets]
        return {
            "chains": [{"chain": line.chain, "symbol": line.asset, "onChain": fmt.asset(line.asset, line.on_chain),
                        "books": fmt.asset(line.asset, line.books), "difference": fmt.asset(line.asset, line.difference)}
                       for line in known],
            "assets": [{"symbol": a.asset, "liabilities": fmt.asset(a.asset, a.liabilities),
                        "chainBooks": fmt.asset(a.asset, a.books), "unbacked": fmt.asset(a.asset, a.unbacked)}
                       for a in assets if a.asset in fmt.assets],
        }
