"""A validator: replays every block with its own engine and stops at the first disagreement.

For each block from the node's stream (or a journal directory, offline) it

1. re-verifies every signed transaction: the signer is the account (or the admin key
   for admin transactions), the signed string's parameters rebuild exactly this
   transaction (``signedtx``) with its timestamp and window, and the Ed25519 signature
   is valid -- checked in
   two worker threads by default (``verify_processes=N`` uses processes instead; both
   reach ~29k tx/s here, see benchmarks/replay);
2. applies the block with its own engine and compares the events' hash with the
   block's commitment;
3. at every height where the node reports a snapshot, compares state hashes.

It keeps its own journal copy and snapshots in its data directory, so a restart
continues from its newest snapshot, and its key (``validator.key``), which signs its
hello to the node's block stream: the node streams only to keys it allows. On any
mismatch it writes ``divergence-<height>.json`` (the block, both event hashes, the
differing events, both state hashes; for bad signatures the offending seqs, with the
block's journal record beside it in ``divergence-<height>.block``, since it was never
applied here), keeps a snapshot of the state it reached under ``diverged/``, and exits
with status 4: the input for ``satchel incident``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from satchel.core import instructions
from satchel.core.engine import Engine, events_hash
from satchel.core.messages import Block, events_decoder, events_encoder, header_decoder
from satchel.ledger import snapshots
from satchel.ledger.chain import Chain, decode_block, header_hash, recover_chain
from satchel.ledger.journal import Journal, read_records
from satchel.ledger.replication import POLICY_VIOLATION, hello
from satchel.runtime import tune_gc
from satchel.signing import Keypair, ProcessVerifier, Verifier, decode_key, load_key, signed_message
from satchel.verify import signedtx

log = structlog.get_logger("satchel.verify.validator")

KEY_FILE = "validator.key"  # in the validator's data dir: signs its hello to the node's block stream
_SEQ = re.compile(r"^seq (\d+):")

class Divergence(Exception):
    def __init__(self, report: dict):
        super().__init__(f"diverged at block {report['height']}: {report['kind']}")
        self.report = report


class FollowError(Exception):
    """The node's block stream could not be reached or closed on us (e.g. refused our key)."""


def journal_dir(path: str | Path) -> Path | None:
    """Where the segments are: ``path`` itself or, for a node's data dir, ``path/journal``."""
    path = Path(path)
    for d in (path, path / "journal"):
        if any(d.glob("*.seg")):
            return d
    return None


def validator_key(data: str | Path) -> Keypair:
    """The validator's own key (created on first use): followers must be allowed by it."""
    return load_key(Path(data), KEY_FILE)


class Validator:
    def __init__(self, data: str | Path, verify_processes: int = 0, snapshot_blocks: int = 10_000):
        self.data = Path(data)
        self.verify_processes = verify_processes
        self.snapshot_blocks = snapshot_blocks
        self.verified_signatures = 0
        self.last_log = 0.0
        self.chain: Chain | None = None
        self.verifier: Verifier | None = None
        self.source: Path | None = None  # the journal checked offline, for ``satchel incident``
        self._applied = trio.Event()  # a block was applied since the last progress report

    # ------------------------------------------------------------------ one block

    async def check_signatures(self, block: Block) -> list[str]:
        """Problems with the block's signed transactions (empty if all verify)."""
        problems: list[str] = []
        pending = []
        seq = block.header.first_seq
        engine = self.chain.engine
        for tx in block.txs:
            auth = tx.auth
            decl = instructions.BY_TX[tx.__class__]
            if auth is None:
                if not decl.admin:
                    problems.append(f"seq {seq}: unsigned user transaction")
            else:
                public = decode_key(decl.signer(tx))
                if public is None or not signedtx.matches(tx, engine):
                    problems.append(f"seq {seq}: signed parameters do not match the transaction")
                else:
                    pending.append((seq, public, signed_message(decl.name, instructions.full_auth(tx, engine)),
                                    auth.signature))
            seq += 1
        if pending:
            results = await _verify_all(self.verifier, pending)
            for (s, *_), ok in zip(pending, results):
                if ok is None:
                    problems.append(f"seq {s}: bad signature")
            self.verified_signatures += len(pending)
        return problems

    async def apply(self, block: Block, node_events: bytes | None, node_state: str | None, payload: bytes,
                    journal: Journal | None) -> None:
        h = block.header
        chain = self.chain
        chain.check(h)
        if self.verifier is not None:
            problems = await self.check_signatures(block)
            if problems:
                # the seqs ``satchel incident`` leaves out to rebuild the canonical block
                bad = sorted({int(m.group(1)) for m in map(_SEQ.match, problems) if m})
                raise Divergence({"height": h.height, "kind": "signatures", "bad_seqs": bad, "problems": problems[:50]})
        if journal is not None:
            await trio.to_thread.run_sync(journal.append, [(h.height, payload)])
        events = await chain.apply(block)
        if events_hash(events) != h.events_hash:
            raise Divergence(self._event_report(h, events, node_events))
        if node_state is not None or h.height % self.snapshot_blocks == 0:
            snap = await chain.snapshot()
            if node_state is not None and snap.state_hash != node_state:
                raise Divergence({"height": h.height, "kind": "state", "node_state": node_state, "validator_state": snap.state_hash})
            if h.height % self.snapshot_blocks == 0 and journal is not None:
                await trio.to_thread.run_sync(snapshots.write, self.data / "snapshots", snap)
        now = time.monotonic()
        if now - self.last_log >= 1.0:
            self.last_log = now
            status = {"height": h.height, "lag_ms": round(time.time() * 1000 - h.timestamp / 1000, 1),
                      "last_hash": header_hash(h).hex(), "signatures": self.verified_signatures}
            log.info("validator.healthy", **status)
            if journal is not None:
                self._expose(status)

    def _expose(self, status: dict) -> None:
        """``status.json`` in the data dir: height, lag and last verified hash, for monitoring."""
        tmp = self.data / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.data / "status.json")

    def _event_report(self, h: Any, events: list, node_events: bytes | None) -> dict:
        mine = [msgspec.to_builtins(e) for e in events]
        report: dict[str, Any] = {
            "height": h.height, "kind": "events", "timestamp": h.timestamp,
            "node_events_hash": h.events_hash.hex(),
            "validator_events_hash": hashlib.sha256(events_encoder.encode(events)).hexdigest(),
        }
        if node_events is not None:
            theirs = [msgspec.to_builtins(e) for e in events_decoder.decode(node_events)]
            report["node_only"] = [e for e in theirs if e not in mine]
            report["validator_only"] = [e for e in mine if e not in theirs]
        else:
            report["validator_events"] = mine
        return report

    # ------------------------------------------------------------------ running

    async def _start(self, nursery: trio.Nursery, own_journal: bool) -> Journal | None:
        tune_gc()
        if self.verify_processes > 0:
            self.verifier = ProcessVerifier(self.verify_processes)
        elif self.verify_processes == 0:
            self.verifier = Verifier()
        if self.verifier is not None:
            nursery.start_soon(self.verifier.run)
        self.chain = Chain(Engine(nursery))
        if not own_journal:
            return None
        journal = Journal(self.data / "journal")
        await recover_chain(self.chain, self.data, journal.recover(), journal=journal)
        log.info("validator.resumed", height=self.chain.height)
        return journal

    async def follow(self, url: str) -> None:
        key = validator_key(self.data)
        log.info("validator.key", api_key=key.api_key, file=str(self.data / KEY_FILE))
        async with trio.open_nursery() as nursery:
            journal = await self._start(nursery, True)
            try:
                async with open_websocket_url(url, max_message_size=1 << 30) as ws:
                    await ws.send_message(hello(key, self.chain.height + 1))
                    progress = trio.CancelScope()  # the reporter's own: cancelling it leaves this task alone
                    nursery.start_soon(self._report_progress, ws.send_message, progress)
                    while True:
                        payload, node_events, node_state = msgspec.msgpack.decode(await ws.get_message())
                        try:
                            await self._one(payload, node_events, node_state, journal)
                        except Divergence as d:  # the node's operators see it stop (``nodeStats``, /ops)
                            progress.cancel()
                            with trio.move_on_after(1):
                                await ws.send_message(_report(d.report["height"] - 1, d.report["height"]))
                            raise
            except ConnectionClosed as exc:
                code, why = (exc.reason.code, exc.reason.reason or exc.reason.name) if exc.reason else (None, "closed")
                hint = (f"; this validator's key is {key.api_key}: allow it in the node's DATA/followers or with "
                        f"'satchel serve --allow-follower'") if code == POLICY_VIOLATION else ""
                raise FollowError(f"{url} closed the block stream: {why} (code {code}){hint}") from None
            except HandshakeError as exc:
                raise FollowError(f"cannot open the block stream at {url}: {str(exc.__cause__ or exc) or type(exc).__name__}") from None
            finally:
                journal.close()
                nursery.cancel_scope.cancel()

    async def follow_nats(self, servers: str) -> None:
        """Follow the block stream on JetStream (``satchel.cluster.stream``) from this
        validator's height; stops at the first disagreement, as ``follow`` does."""
        from satchel.cluster import reports, stream
        from satchel.cluster.bus import Bus

        key = validator_key(self.data)
        log.info("validator.key", api_key=key.api_key, file=str(self.data / KEY_FILE))
        async with trio.open_nursery() as nursery:
            journal = await self._start(nursery, True)
            try:
                async with Bus(servers, name="validator") as bus:
                    progress = trio.CancelScope()
                    nursery.start_soon(self._report_progress, lambda text: bus.publish_nowait(
                        reports.SUBJECT, reports.seal(key, orjson.loads(text)["verified"])), progress)
                    try:
                        async for batch in stream.follow(bus, self.chain.height + 1):
                            for b in batch:
                                admin = self.chain.engine.admin  # block 1 names it: then it is read from the block
                                header = header_decoder.decode(b.payload).header
                                stream.check_signed(b, header, admin, decode_block(b.payload) if admin is None else None)
                                await self._one(b.payload, None, b.state_hash, journal)
                    except Divergence as d:
                        progress.cancel()
                        bus.publish_nowait(reports.SUBJECT, reports.seal(key, d.report["height"] - 1, d.report["height"]))
                        await trio.sleep(0.2)  # the bus's loop sends it before the bus closes
                        raise
            finally:
                journal.close()
                nursery.cancel_scope.cancel()

    async def _report_progress(self, send: Any, scope: trio.CancelScope) -> None:
        """Tell the node how far this validator verified (``send(report)``, awaited if it
        is a coroutine function): at the first block, then at most every
        ``REPORT_EVERY_S`` while blocks come (the last one too, once caught up)."""
        with scope:
            try:
                while True:
                    await self._applied.wait()
                    self._applied = trio.Event()
                    sent = send(_report(self.chain.height))
                    if sent is not None:
                        await sent
                    await trio.sleep(REPORT_EVERY_S)
            except ConnectionClosed:
                pass  # the stream ended: following says why

    async def check_journal(self, directory: str | Path) -> int:
        """Check a journal offline (its directory or the node's data dir); returns the last height."""
        source = journal_dir(directory)
        if source is None:
            raise FileNotFoundError(f"no journal segments (*.seg) in {directory} or {Path(directory) / 'journal'}")
        self.source = source.resolve()
        async with trio.open_nursery() as nursery:
            await self._start(nursery, False)
            for payload in read_records(source):
                await self._one(payload, None, None, None)
            height = self.chain.height
            nursery.cancel_scope.cancel()
        return height

    async def _one(self, payload: bytes, node_events: Any, node_state: str | None, journal: Journal | None) -> None:
        block = decode_block(payload)
        try:
            await self.apply(block, node_events, node_state, payload, journal)
        except Divergence as d:
            await self._record(d.report, payload)
            raise
        self._applied.set()

    async def _record(self, report: dict, payload: bytes) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        path = self.data / f"divergence-{report['height']}.json"
        if report["kind"] == "signatures":
            # never applied nor journaled here, yet ``satchel incident`` must replay it
            block_file = path.with_suffix(".block")
            block_file.write_bytes(payload)
            report["block_file"] = block_file.name
        if self.source is not None:
            report["journal"] = str(self.source)
        report["validator_state"] = report.get("validator_state") or (await self.chain.snapshot()).state_hash
        path.write_text(json.dumps(report, indent=2, default=str))
        snap = await self.chain.snapshot()
        await trio.to_thread.run_sync(snapshots.write, self.data / "diverged", snap)
        log.error("validator.diverged", height=report["height"], kind=report["kind"], report=str(path))


REPORT_EVERY_S = 0.5  # a follower tells the node how far it verified, at most this often


def _report(verified: int, diverged: int | None = None) -> str:
    return orjson.dumps({"verified": verified, "diverged": diverged}).decode()


async def _verify_all(verifier: Verifier, pending: list) -> list:
    results: list = [None] * len(pending)
    done = trio.Event()
    left = [len(pending)]

    def make(i: int):
        def cb(message: bytes | None) -> None:
            results[i] = message
            left[0] -= 1
            if not left[0]:
                done.set()

        return cb

    for i, (_, public, message, signature) in enumerate(pending):
        verifier.check(public, (message,), signature, make(i))
    await done.wait()
    return results
