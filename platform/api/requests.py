"""What every request shares: the signature checks, sequencing a transaction and
answering it once durable, typed reads of the engine between blocks and reads of the
history database. ``request`` makes a method answer refusals through the caller, and
``acked`` declares a transaction answered with its params once applied."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import trio

from satchel.api.caller import Caller, Replies, Signature, Signed, Verifier
from satchel.api.chains import Addresses, ChainStatus, Reconciliation
from satchel.api.format import Formatter
from satchel.api.listing import Listing
from satchel.api.marketdata import MarketData
from satchel.api.stats import PlatformStats
from satchel.clock import now_ms
from satchel.core import instructions
from satchel.core.engine import MAX_WINDOW_MS
from satchel.core.errors import (
    EXPIRED, INVALID_REQUEST, INVALID_SIGNATURE, MAINTENANCE, RESOURCE_NOT_FOUND, UNAUTHORIZED, RequestError,
)
from satchel.core.messages import Query, TxRejected
from satchel.history import queries as history_queries
from satchel.history.store import Store
from satchel.signing import batch_signing_string, decode_key, decode_signature, needs_quoting, signing_string


class NoParams(msgspec.Struct):
    pass


class AccountParams(msgspec.Struct):
    account: str | None = None


def request(method: Callable) -> Callable:
    """An API method answers refusals through the caller and never raises."""

    def call(self: "Requests", caller: Caller, req_id: Any, texts: Mapping[str, str], signature: Signature) -> None:
        try:
            method(self, caller, req_id, texts, signature)
        except RequestError as exc:
            caller.replies.error(req_id, exc.code, exc.message)
        except Exception as exc:
            caller.replies.failed(req_id, exc)

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def acked(instruction: str, doc: str | None = None) -> Callable:
    """The API method for a signed transaction answered with its params once applied."""

    def method(self: "Requests", caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        self._transaction(caller, req_id, texts, sig, instruction, lambda tx, texts: self._ack_reply(texts))

    method.__name__ = instruction
    method.__doc__ = doc
    return request(method)


class Requests:
    """The requests' common state and machinery, against a node (``submit``,
    ``sequencer.read``, ``admin``, ``latency``), the listing the edges know, the payload
    formatter, a signature verifier and the market data (for ``depth``). ``stats()`` adds
    the transport's figures to ``nodeStats``."""

    def __init__(self, node: Any, listing: Listing, fmt: Formatter, verifier: Verifier, marketdata: MarketData, *,
                 max_page: int = 1000, stats: Callable[[], dict] = dict, history: Store | None = None,
                 platform_stats: PlatformStats | None = None, chains: ChainStatus | None = None,
                 reconciliation: Reconciliation | None = None):
        self.node = node
        self.listing = listing
        self.fmt = fmt
        self.verifier = verifier
        self.marketdata = marketdata
        self.max_page = max_page
        self.stats = stats
        self.history = history  # the order and fill history (``satchel.history``); None: not kept
        self.platform_stats = platform_stats  # the headline figures (``satchel.api.stats``); None: not kept
        self.chains = chains  # the chains' status (``satchel.api.chains``); None: not kept
        self.addresses = Addresses(node)  # deposit addresses
        self.reconciliation = reconciliation  # chains against books (``satchel.api.chains``); None: not offered

    def caller(self, replies: Replies) -> Caller:
        """A new client (one per connection), answered through ``replies``."""
        return Caller(replies, self.verifier)

    def check_signature(self, instruction: str, texts: Mapping[str, str], sig: Signature) -> Signed:
        """The signature parts checked for shape and window (not yet verified), or RequestError."""
        s = self._signed(sig)
        s.texts, s.batch = texts, ()
        # the signed string uses the integers as parsed, so the journal can rebuild it
        raw = signing_string(instruction, texts, s.timestamp, s.window)
        if needs_quoting(texts):  # ccxt signs percent-encoded values: accept that form too
            s.candidates = (raw, signing_string(instruction, texts, s.timestamp, s.window, encoded=True))
        else:
            s.candidates = (raw,)
        return s

    def check_batch_signature(self, instruction: str, items: list[Mapping[str, str]], sig: Signature) -> Signed:
        """As ``check_signature``, for a batch whose one signature covers every item."""
        s = self._signed(sig)
        s.texts, s.batch = {}, tuple(tuple(sorted(t.items())) for t in items)
        raw = batch_signing_string(instruction, s.batch, s.timestamp, s.window)
        if any(needs_quoting(t) for t in items):
            s.candidates = (raw, batch_signing_string(instruction, s.batch, s.timestamp, s.window, encoded=True))
        else:
            s.candidates = (raw,)
        return s

    def _signed(self, sig: Signature) -> Signed:
        if not sig:
            raise RequestError(UNAUTHORIZED, "Missing signature")
        if len(sig) != 4:
            raise RequestError(INVALID_REQUEST, "signature must be [apiKey, signature, timestamp, window]")
        public = decode_key(sig[0])
        signature = decode_signature(sig[1])
        if public is None or signature is None:
            raise RequestError(INVALID_SIGNATURE, "Malformed API key or signature")
        ts = instructions.uint(sig[2], "timestamp")
        window = sig[3]
        if not (0 < len(window) <= 20 and window.isascii() and window.isdigit()) or not 0 < int(window) <= MAX_WINDOW_MS:
            raise RequestError(INVALID_REQUEST, f"window must be 1..{MAX_WINDOW_MS}")
        window = int(window)
        now = now_ms()
        if ts + window < now or ts - window > now:
            raise RequestError(EXPIRED, "Request timestamp is outside its window")
        s = Signed()
        s.account, s.public, s.signature, s.timestamp, s.window = sig[0], public, signature, ts, window
        return s

    def _submit(self, caller: Caller, req_id: Any, tx: Any, reply: Callable[[Replies, Any, list], None],
                received: float) -> None:
        node = self.node
        verified = trio.current_time()
        replies = caller.replies

        def done(events: list) -> None:
            reply(replies, req_id, events)
            if node.latency.sampled():
                cut, _, durable = node.block_times
                node.latency.record_request(received, verified, cut, durable, trio.current_time())

        try:
            node.submit(tx, done)
        except trio.ClosedResourceError as exc:
            raise RequestError(MAINTENANCE, "Node is shutting down") from exc

    def _read(self, queries: list[Query], reply: Callable[[list], None]) -> None:
        """Ask the engine typed queries between blocks; ``reply(answers)`` once all are in."""
        answers: list = []

        def collect(answer: Any) -> None:
            answers.append(answer)  # reads are answered in the order they were queued
            if len(answers) == len(queries):
                reply(answers)

        try:
            for q in queries:
                self.node.sequencer.read(q, collect)
        except trio.ClosedResourceError as exc:
            raise RequestError(MAINTENANCE, "Node is shutting down") from exc

    def _transaction(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature, instruction: str,
                     reply_for: Callable[[Any, Mapping[str, str]], Callable[[Replies, Any, list], None]]) -> None:
        """Check, build (``instructions.build``), verify and sequence a signed transaction;
        ``reply_for(tx, texts)`` gives the function that answers with its events."""
        signed = self.check_signature(instruction, texts, sig)
        decl = instructions.BY_NAME[instruction]
        if decl.admin and signed.account != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, f"{instruction} must be signed by the admin key")
        tx = instructions.build(instruction, texts, signed.account, self.listing)
        reply = reply_for(tx, texts)
        received = caller.received

        def go(message: bytes) -> None:
            self._submit(caller, req_id, msgspec.structs.replace(tx, auth=signed.auth(message)), reply, received)

        caller.verified(req_id, signed, go)

    def _ack_reply(self, result: Mapping[str, str]) -> Callable[[Replies, Any, list], None]:
        """Answers ``result`` once the transaction applied, or the engine's refusal."""

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
            replies.result(req_id, result)

        return reply

    def _subject(self, signer: str, named: str | None, what: str) -> str:
        """The account a signed read is about: the signer's, or one the admin key names."""
        if named is None or named == signer:
            return signer
        if signer != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, f"only the admin key may read another account's {what}")
        return named

    def _history_read(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature, instruction: str,
                      query: Callable[[str], Any], view: Callable[[Formatter, list], list]) -> None:
        """A signed read of the history database (``satchel.history``): ``query(account)``
        checks the params and gives the query, which is run after every block published so
        far, and ``view(fmt, rows)`` answers."""
        signed = self.check_signature(instruction, texts, sig)
        history = self.history
        if history is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node keeps no order history")
        q = query(signed.account)
        replies = caller.replies

        def reply(rows: Any) -> None:
            if isinstance(rows, RequestError):
                replies.error(req_id, rows.code, rows.message)
            elif isinstance(rows, Exception):
                replies.failed(req_id, rows)
            else:
                replies.result(req_id, view(self.fmt, rows))

        caller.verified(req_id, signed, lambda m: history.read(q, reply))

    @staticmethod
    def _window(params: Any) -> dict:
        """A history read's ``from``/``to`` (ms, inclusive) as µs bounds and its page:
        ``limit`` defaults to 100 (at most 1000)."""
        uint = instructions.uint
        # below 2**53 ms, so their µs stay within SQLite's 64-bit integers
        since, until = uint(params.since, "from", 2**53), uint(params.to, "to", 2**53)
        return {
            "since_us": None if since is None else since * 1000,
            "until_us": None if until is None else (until + 1) * 1000,
            "limit": instructions.page_limit(params.limit, history_queries.MAX_LIMIT, history_queries.DEFAULT_LIMIT),
            "offset": uint(params.offset, "offset") or 0,
        }
