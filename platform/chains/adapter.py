"""One chain's adapter: an edge that watches the chain and reports, never touching the ledger.

It signs every report with the chain's adapter key (``chain-<name>.key``), so validators
re-verify them like any other transaction, and it learns what to do from durable events:
in the node's process as a subscriber, or in a process of its own (``satchel chains``)
from its chain's work query (``chains.link``).

* **Deposits.** It scans blocks once they have ``confirmations`` (a reorg shallower than
  that never reaches it), and reports each transfer to a deposit address handed out
  (``AddressBook``), the deposits of the blocks one poll reads together in
  ``depositConfirmed`` reports of ``REPORT_DEPOSITS`` under one signature each (per
  deposit, signing cost as much as the engine's whole credit), all in flight at once: they
  ride along in blocks cut for orders (the sequencer's background lane), and each is
  signed in a turn of the node's loop (``Node.turn``); then it moves the deposits to the
  hot wallet.
  Its scan position is a file written at most once a second, so a crash re-reports at most
  a second of blocks, and the engine skips what it credited before (a report of nothing
  new is refused ``ALREADY_CREDITED``): credit stays exactly once across restarts.
* **Withdrawals.** A ``Pending`` withdrawal (``WithdrawalUpdate``) is sent from the hot
  wallet carrying the idempotency key ``<chain>:<withdrawal id>``. Before sending it asks
  the chain for that key, so an adapter killed between broadcast and report finds its
  transaction instead of sending again; then it reports ``withdrawalSent``, and after
  ``confirmations`` ``withdrawalConfirmed`` (or ``withdrawalFailed`` when the chain failed
  it). The backlog is bounded: the events feed a queue of ``BACKLOG`` withdrawals, and
  every ``RESYNC_S`` the adapter re-reads the open withdrawals from the engine, so
  nothing dropped from a full queue is lost.
* **Custody moves.** ``CustodyMoved`` events (the hot wallet past its limit, an approved
  sweep) are carried out between the hot and cold addresses, keyed by their sequence
  number and asset (``custody:<seq>:<asset>``), once the source holds the amount (a
  deposit's excess goes to cold storage once its address is swept in), and reported
  ``custodyMoveDone`` once ``confirmations`` deep. The books keep each move open until
  then, and the adapter re-reads the open ones every ``RESYNC_S``: a move booked just
  before either side restarted is still carried out. One that failed on chain (its source
  short after all: two moves checked before either was mined) is sent again under the
  next key, ``custody:<seq>:<asset>:<n>``, so the books and the chain stay in step.
* **Circuit breaker.** When every provider fails ``BREAKER_FAILURES`` polls in a row the
  adapter reports ``chainStatus`` paused (deposits and withdrawals of this chain stop, new
  withdrawal requests get ``CHAIN_PAUSED``, trading goes on), probes with a backoff that
  doubles up to ``MAX_PROBE_S``, and reports resumed once a provider answers. It resumes
  only its own pause: not a chain the admin paused, nor one the admin paused again
  after it (the engine refuses that resume; in the node's process the adapter sees who
  signed each pause and does not send it).
* **Reorgs deeper than the confirmations.** It remembers the hash of the last block it
  scanned; when the next block's parent is another, the chain reorganised below the
  confirmations. It logs an error and scans again from ``REORG_RESCAN`` blocks back:
  deposits the new branch moved to other blocks are found there, and what was credited
  before is skipped by the engine. A credited deposit the new branch dropped stays
  credited: that is for an operator (``satchel reconcile`` shows it).
* **Undeliverable transfers.** A provider that refuses a transfer for good (a malformed
  destination, a transaction the node rejects) raises ``Undeliverable``: the withdrawal is
  reported failed (its funds are released), a sweep is logged and dropped, and a custody
  move stays open in the books and is tried again after a delay that doubles up to
  ``MAX_HOLD_S``, logged each time (for an operator: the books and the chain differ until
  it is made).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import orjson
import structlog
import trio

from satchel.chains.addresses import AddressBook
from satchel.chains.base import ChainTransfer
from satchel.chains.link import Outcome
from satchel.chains.providers import AllProvidersFailing, Providers
from satchel.core.messages import (
    BlockHeader, ChainDeposit, ChainStatus, ChainStatusChanged, CustodyMoved, MoveDone, ReportedDeposit, WithdrawalConfirmed,
    WithdrawalFailed, WithdrawalSent, WithdrawalUpdate,
)
from satchel.core.instructions import MAX_REPORTED_DEPOSITS, deposit_texts
from satchel.signing import Keypair

log = structlog.get_logger()

POLL_S = 0.2
SAVE_S = 1.0
RESYNC_S = 1.0
BACKLOG = 10_000
BREAKER_FAILURES = 3
MAX_PROBE_S = 30.0
SWEEP_S = 2.0  # an address is swept this long after its first deposit not swept yet (later ones go along)
SWEEP_BATCH = 20  # addresses swept per poll at most: custody housekeeping at a steady pace, never a burst
# deposits per report: a report rides along in a block cut for orders (the sequencer's
# background lane, a budget of 8 deposits a block), where it adds ~4 us a deposit to that
# block instead of a block's fixed ~450 us in front of the next order. Measured
# (benchmarks.deposits, orders at 400/s beside 1,250 deposits/s, p99 beside/alone): reports
# of 32 in blocks of their own, paced by the node's idle moments, x1.8-2.1; riding along
# with the adapter's steps in turns, 8 a report x1.2-1.5, 4 a report x1.2-1.3 (the same
# within the noise; half as many signatures with 8). Dropped before: 8, 16 and 64 a report
# in blocks of their own (x1.2-1.9).
REPORT_DEPOSITS = 8
QUIET_S = 0.05  # each step waits this long at most for the node's pipeline to run dry (``Node.quiet``)
REORG_RESCAN = 64  # blocks scanned again after a reorg deeper than the confirmations
MAX_HOLD_S = 600.0  # an undeliverable custody move is tried again at most this far apart


class Undeliverable(Exception):
    """A provider will never deliver this transfer (not a retry on another provider: the
    withdrawal is failed, a sweep or move is dropped and logged)."""


class Adapter:
    def __init__(self, link: Any, name: str, confirmations: int, providers: Providers, book: AddressBook,
                 key: Keypair, decimals: dict[str, int], state_dir: Path):
        self.link = link  # the node, in this process or over its API (``chains.link``)
        self.name = name
        self.confirmations = max(confirmations, 1)
        self.providers = providers
        self.book = book
        self.key = key
        self.decimals = decimals
        self.state_path = Path(state_dir) / f"chain-{name}.state"
        self.hot = f"{name}-hot"
        self.cold = f"{name}-cold"
        self.cursor = 0
        self.last_block: tuple[int, str] = (-1, "")  # (number, hash) last scanned, for the reorg check
        self.saved_at = 0.0
        # (deposit address, asset) -> [credited deposits not swept in yet, when the first was
        # credited]; oldest first; the amounts are saved with the cursor
        self.sweeps: dict[tuple[str, str], list] = {}
        self._load()
        self.queue_send, self.queue = trio.open_memory_channel(BACKLOG)
        self.paused_by_me = False
        self.chain_paused: bool | None = None  # None: not read yet
        self.failures = 0
        self.inflight: set[tuple] = set()  # withdrawals and custody moves queued or being handled
        self.sweep_s = SWEEP_S
        self.run_id = os.urandom(4).hex()  # this run's sweep keys: a restart never reuses one
        self._sweep_n = 0
        self.credited = 0
        self.sent = 0
        self.reorgs = 0  # reorgs seen below the confirmations
        self.head_read: tuple[int, float] = (0, -math.inf)  # (the chain's head, when a provider said so)
        # key -> block of a sent transfer seen mined but not yet ``confirmations`` deep: not
        # looked up again before the head says it can be (one provider call a resync saved
        # for every withdrawal and custody move waiting; a reorg is caught at the look-up then)
        self.mined: dict[str, int] = {}
        # (seq, asset) of open custody moves -> the attempt to look up first (earlier ones
        # failed on chain; after a restart they are looked up again), and -> (times
        # undeliverable, not before): bounded by the open moves, dropped once one is done
        self.move_attempts: dict[tuple[int, str], int] = {}
        self.held_back: dict[tuple[int, str], tuple[int, float]] = {}

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        self.link.attach(self)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.link.run, self)
            nursery.start_soon(self._scan_loop)
            nursery.start_soon(self._withdraw_loop)
            nursery.start_soon(self._resync_loop)
            nursery.start_soon(self._sweep_loop)

    def publish(self, header: BlockHeader | None, events: list) -> None:
        """A durable block: queue this chain's pending withdrawals and custody moves; note a pause or resume."""
        for ev in events:
            cls = ev.__class__
            if cls is WithdrawalUpdate and ev.chain == self.name and ev.status == "Pending":
                self._enqueue(ev)
            elif cls is ChainStatusChanged and ev.chain == self.name:
                self.chain_paused = ev.paused
                if ev.signer and ev.signer != self.key.api_key:
                    self.paused_by_me = False  # the admin paused or resumed it since: its call, not ours
            elif cls is CustodyMoved and ev.chain == self.name:
                self._enqueue(ev)

    def _enqueue(self, ev: WithdrawalUpdate | CustodyMoved) -> None:
        """Queue a withdrawal or a custody move unless it is queued or being handled; with
        the backlog full it is found again by the next resync (both stay open in the books)."""
        key = _inflight_key(ev)
        if key in self.inflight:
            return
        try:
            self.queue_send.send_nowait(ev)
            self.inflight.add(key)
        except trio.WouldBlock:
            pass  # the next resync finds it again (withdrawals and moves are open in the books)

    def _load(self) -> None:
        if self.state_path.exists():
            state = orjson.loads(self.state_path.read_bytes())
            self.cursor = state["cursor"]
            self.sweeps = {(address, asset): [amount, 0.0] for address, asset, amount in state.get("sweeps", [])}

    def _save(self, state: bytes) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(state)
        tmp.replace(self.state_path)

    def _state(self) -> bytes:
        return orjson.dumps({"cursor": self.cursor, "sweeps": [[*k, v[0]] for k, v in self.sweeps.items()]})

    # ------------------------------------------------------------------ signed reports

    async def _submit(self, instruction: str, params: dict[str, str], tx: Any) -> Outcome:
        return await self.link.report(self.key, instruction, params, tx)

    # ------------------------------------------------------------------ deposits

    async def _paused(self) -> bool:
        """Whether the chain is paused: read from the engine once, then kept from the
        durable ``ChainStatusChanged`` events (``publish``), not read on every poll."""
        if self.chain_paused is None:
            paused = await self.link.paused(self.name)
            if self.chain_paused is None:  # else an event newer than the read came meanwhile
                self.chain_paused = paused
        return self.chain_paused

    async def _scan_loop(self) -> None:
        while True:
            try:
                if not (await self._paused() and not self.paused_by_me):  # the admin's pause is the admin's
                    head = await self._read_head()  # a probe: resume first, then report deposits
                    await self._healthy()
                    if await self._scan(head):
                        continue  # stopped at a full report: the next blocks at once, no poll interval
            except AllProvidersFailing as exc:
                await self._failing(str(exc))
                continue
            except _Paused:
                pass  # paused between the check and the report: the block is scanned again later
            await trio.sleep(POLL_S)

    async def _read_head(self) -> int:
        head = await self.providers.call("head")
        self.head_read = (head, trio.current_time())
        return head

    async def _head(self) -> int:
        """The chain's head as read within the last poll interval, else read now: every
        withdrawal and custody move waiting for its confirmations asks at each resync, and
        the same answer must not cost a rate-limited provider a call each."""
        head, at = self.head_read
        return head if trio.current_time() - at < POLL_S else await self._read_head()

    async def _deep(self, key: str, found: ChainTransfer | None) -> bool:
        """Whether the transfer sent for ``key`` (``found``: as a provider answered) is
        ``confirmations`` deep; a mined one that is not yet is remembered (``mined``)."""
        if found is None:
            self.mined.pop(key, None)  # not mined (pending, or lost by a reorg): looked up each time
            return False
        # the cached head first (free), then, to act on it, one read after the look-up: a
        # reorg may have shortened the chain since the cached one
        if await self._head() - found.block + 1 < self.confirmations \
                or await self._read_head() - found.block + 1 < self.confirmations:
            self.mined[key] = found.block
            return False
        self.mined.pop(key, None)
        return True

    async def _too_recent(self, key: str) -> bool:
        """Whether the transfer sent for ``key`` was seen mined too recently to be deep
        enough yet, so that looking it up again would tell nothing new."""
        block = self.mined.get(key)
        return block is not None and await self._head() - block + 1 < self.confirmations

    async def _scan(self, head: int) -> bool:
        """The blocks past the cursor with ``confirmations`` (``head``: the chain's, just
        read), up to ``MAX_REPORTED_DEPOSITS`` deposits a poll, reported
        (``_report_deposits``) before the cursor moves past them; True if it stopped there
        with more blocks to read (an adapter catching up)."""
        safe = head - self.confirmations + 1
        self.book.refresh()
        found: list[tuple[ChainTransfer, str]] = []
        scanned = (self.cursor, self.last_block)  # how far the blocks read so far reach
        while scanned[0] < safe:
            block = await self.providers.call("block", scanned[0] + 1)
            if block is None:
                break  # a provider behind the one that answered head: the next poll reads it
            last = scanned[1]
            if last[0] == block.number - 1 and block.parent != last[1]:
                log.error("chain.reorg_below_confirmations", chain=self.name, block=block.number,
                          parent=block.parent, scanned=last[1], rescan_from=self.cursor - REORG_RESCAN)
                self.reorgs += 1
                # what was read since the cursor may be of the replaced blocks: not reported
                found = []
                self.cursor = max(0, self.cursor - REORG_RESCAN)
                self.last_block = (-1, "")
                scanned = (self.cursor, self.last_block)
                continue
            async with self.link.turn():  # a block's transfers a step: a whole scan in one held the loop
                for t in block.transfers:
                    owner = self.book.owner(self.name, t.to) if t.ok else None
                    if owner is not None and t.asset in self.decimals:
                        found.append((t, owner))
            scanned = (block.number, (block.number, block.hash))
            if len(found) >= MAX_REPORTED_DEPOSITS:
                break
        if found:
            await self._report_deposits(found)
        self.cursor, self.last_block = scanned
        now = trio.current_time()
        if now - self.saved_at >= SAVE_S:
            # at most once a second: a crash re-reports a second of blocks at worst, and the
            # engine skips what it credited before
            self.saved_at = now
            await trio.to_thread.run_sync(self._save, self._state())
        return len(found) >= MAX_REPORTED_DEPOSITS and scanned[0] < safe

    async def _report_deposits(self, found: list[tuple[ChainTransfer, str]]) -> None:
        """A poll's deposits, reported in transactions of ``REPORT_DEPOSITS`` under one
        signature each, all in flight at once (they ride along in the node's blocks), each
        signed in a turn of its own (``Node.turn``); then each address credited (now, or
        before a restart) is marked for the sweep to the hot wallet."""
        paused: list[bool] = []

        async def report(part: list[tuple[ChainTransfer, str]]) -> None:
            paused.append(await self._report_part(part))

        async with trio.open_nursery() as nursery:
            for first in range(0, len(found), REPORT_DEPOSITS):
                nursery.start_soon(report, found[first:first + REPORT_DEPOSITS])
        if any(paused):
            raise _Paused()  # the block is scanned again once resumed; what was credited is skipped then

    async def _report_part(self, part: list[tuple[ChainTransfer, str]]) -> bool:
        """One report; True if the engine refused it because the chain was paused meanwhile."""
        items, tx = deposit_report(self.key.api_key, self.name, self.decimals, part)
        code, credited = await self.link.report(self.key, "depositConfirmed", items, tx)
        if code == "CHAIN_PAUSED":
            return True
        if code in (None, "ALREADY_CREDITED"):
            self.credited += credited
            now = trio.current_time()
            for t, _ in part:
                entry = self.sweeps.setdefault((t.to, t.asset), [0, now])
                entry[0] += t.amount
        elif len(part) > 1:  # one deposit refuses the whole report: each reported alone
            for one in part:
                if await self._report_part([one]):
                    return True
        else:
            log.error("chain.deposit_refused", chain=self.name, tx=part[0][0].tx_hash, log_index=part[0][0].log_index,
                      code=code)
        return False

    async def _sweep_loop(self) -> None:
        """Each deposit address is swept into the hot wallet ``SWEEP_S`` after its first
        deposit not swept yet, in one transfer with every deposit credited there meanwhile
        (one transaction, and on a real chain one fee, per address rather than per deposit).
        At most ``SWEEP_BATCH`` addresses a poll: a burst of hundreds of sweeps at once was
        measured to triple the durable-ack p99 of orders beside it (``benchmarks.deposits``).

        The amount is what was credited there, capped by what the chain says the address
        holds: so a sweep can be repeated without harm. The amounts are saved with the scan
        position; after a crash a deposit credited since that save is re-reported (the
        engine skips it) and counted again, and a sweep already made since is capped to
        nothing by the address's balance. What the cap keeps on the address (gas left over,
        dust below the ledger's decimals) is not the books' and stays there."""
        while True:
            await trio.sleep(POLL_S)
            now = trio.current_time()
            due = []
            for key, (credited, since) in self.sweeps.items():  # oldest first
                if len(due) == SWEEP_BATCH or now - since < self.sweep_s:
                    break
                due.append((key, credited))
            for (address, asset), credited in due:
                await self.link.quiet(QUIET_S)
                try:
                    amount = min(credited, await self.providers.call("balance", address, asset))
                    if amount > 0:
                        self._sweep_n += 1
                        await self.providers.call("send", asset, address, self.hot, amount,
                                                  f"sweep:{self.run_id}:{self._sweep_n}")
                except AllProvidersFailing:
                    break  # the next poll
                except Undeliverable as exc:
                    log.error("chain.sweep_undeliverable", chain=self.name, address=address, asset=asset, why=str(exc))
                entry = self.sweeps.pop((address, asset), None)
                if entry is not None and entry[0] > credited:  # credited meanwhile: swept in its turn
                    self.sweeps[(address, asset)] = [entry[0] - credited, now]

    # ------------------------------------------------------------------ withdrawals and custody moves

    async def _withdraw_loop(self) -> None:
        async for ev in self.queue:
            while True:
                try:
                    if ev.__class__ is CustodyMoved:
                        await self._move(ev)
                    else:
                        await self._withdraw(ev.withdrawal_id, ev.asset, ev.amount, ev.address, ev.status)
                    break
                except AllProvidersFailing as exc:
                    await self._failing(str(exc))
                except Undeliverable as exc:
                    await self._undeliverable(ev, str(exc))
                    break
            self.inflight.discard(_inflight_key(ev))

    async def _undeliverable(self, ev: WithdrawalUpdate | CustodyMoved, why: str) -> None:
        if ev.__class__ is CustodyMoved:
            # it stays open in the books: tried again, but not at every resync
            times, _ = self.held_back.get((ev.seq, ev.asset), (0, 0.0))
            delay = min(RESYNC_S * 2 ** times, MAX_HOLD_S)
            self.held_back[(ev.seq, ev.asset)] = (times + 1, trio.current_time() + delay)
            log.error("chain.move_undeliverable", chain=self.name, seq=ev.seq, asset=ev.asset, why=why,
                      retry_in_s=delay)
            return
        wid, reason = ev.withdrawal_id, why[:256]
        log.warning("chain.withdrawal_undeliverable", chain=self.name, withdrawal=wid, why=why)
        await self._submit("withdrawalFailed", {"chain": self.name, "withdrawalId": str(wid), "reason": reason},
                           WithdrawalFailed(self.key.api_key, self.name, wid, reason))

    async def _move(self, ev: CustodyMoved) -> None:
        """Carry out a custody move once its source holds the amount: the books move a
        deposit's excess to cold storage when it is credited, the chain only once the
        deposit address is swept into the hot wallet; the next resync tries a waiting one
        again. A sent move is reported done once ``confirmations`` deep, at a later
        resync; one that failed on chain is sent again under the next attempt's key."""
        move = (ev.seq, ev.asset)
        held = self.held_back.get(move)
        if held is not None and trio.current_time() < held[1]:
            return
        frm, to = (self.hot, self.cold) if ev.to_cold else (self.cold, self.hot)
        attempt = self.move_attempts.get(move, 0)
        while True:
            key = move_key(ev.seq, ev.asset, attempt)
            if await self._too_recent(key):
                return
            found = await self.providers.call("find", key)
            if found is None:  # not sent, or not mined yet (a send with the same key is the same transfer)
                self.mined.pop(key, None)
                if await self.providers.call("balance", frm, ev.asset) < ev.amount:
                    return  # the source is not funded yet (a deposit not swept in): the next resync tries again
                await self.providers.call("send", ev.asset, frm, to, ev.amount, key)
                return  # reported done once confirmed: the books ask again at each resync until then
            if not await self._deep(key, found):
                return
            if found.ok:
                break
            attempt += 1
            self.move_attempts[move] = attempt
            log.error("chain.move_failed", chain=self.name, seq=ev.seq, asset=ev.asset, tx=found.tx_hash,
                      next_key=move_key(ev.seq, ev.asset, attempt))
        # the books keep asking for the move (after a restart too) until this lands; asked
        # again, it is found by its key and only reported again (refused: not open any more)
        await self._submit("custodyMoveDone", {"chain": self.name, "seq": str(ev.seq), "symbol": ev.asset},
                           MoveDone(self.key.api_key, self.name, ev.seq, ev.asset))
        self.move_attempts.pop(move, None)
        self.held_back.pop(move, None)

    async def _withdraw(self, wid: int, asset: str, amount: int, address: str, status: str) -> None:
        key = f"{self.name}:{wid}"
        if status != "Pending" and await self._too_recent(key):
            return
        found = await self.providers.call("find", key)
        if status == "Pending":
            if found is None and await self.providers.call("balance", self.hot, asset) < amount:
                return  # the hot wallet's deposits are not swept in yet: the next resync tries again
            tx_hash = found.tx_hash if found is not None else await self.providers.call(
                "send", asset, self.hot, address, amount, key)
            await self._submit("withdrawalSent", {"chain": self.name, "withdrawalId": str(wid), "txHash": tx_hash},
                               WithdrawalSent(self.key.api_key, self.name, wid, tx_hash))
            self.sent += 1
            return
        # Sent: confirmed or failed once deep enough; nothing yet: the next resync looks again
        if not await self._deep(key, found):
            return
        if found.ok:
            await self._submit("withdrawalConfirmed", {"chain": self.name, "withdrawalId": str(wid)},
                               WithdrawalConfirmed(self.key.api_key, self.name, wid))
        else:
            reason = "failed on chain"
            await self._submit("withdrawalFailed", {"chain": self.name, "withdrawalId": str(wid), "reason": reason},
                               WithdrawalFailed(self.key.api_key, self.name, wid, reason))

    async def _resync_loop(self) -> None:
        """The open withdrawals and custody moves, re-read from the engine: after a restart,
        a full queue, or to look again at sent ones that were not yet confirmed."""
        while True:
            if not await self._paused():
                for ev in await self.link.open_withdrawals(self.name):
                    self._enqueue(ev)
                for ev in await self.link.open_moves(self.name):
                    self._enqueue(ev)
            await trio.sleep(RESYNC_S)

    # ------------------------------------------------------------------ reconciliation

    async def custody(self) -> dict[str, int]:
        """Per asset, what the chain holds for the exchange: the hot and cold wallets and
        the deposit addresses of credited deposits not swept in yet (``satchel reconcile``)."""
        out: dict[str, int] = {}
        unswept = list(self.sweeps)
        for asset in self.decimals:
            for address in (self.hot, self.cold):
                out[asset] = out.get(asset, 0) + await self.providers.call("balance", address, asset)
        for address, asset in unswept:
            out[asset] = out.get(asset, 0) + await self.providers.call("balance", address, asset)
        return out

    # ------------------------------------------------------------------ circuit breaker

    async def _failing(self, why: str) -> None:
        self.failures += 1
        if self.failures >= BREAKER_FAILURES and not self.paused_by_me and not await self._paused():
            log.warning("chain.paused", chain=self.name, why=why)
            self.paused_by_me = True  # before the await: the other loop may fail at the same time
            await self._submit("chainStatus", {"chain": self.name, "paused": "true", "reason": "every provider failing"},
                               ChainStatus(self.key.api_key, self.name, True, "every provider failing"))
        await trio.sleep(min(POLL_S * 2 ** self.failures, MAX_PROBE_S))

    async def _healthy(self) -> None:
        self.failures = 0
        if self.paused_by_me:
            log.info("chain.resumed", chain=self.name)
            self.paused_by_me = False
            await self._submit("chainStatus", {"chain": self.name, "paused": "false", "reason": "providers healthy"},
                               ChainStatus(self.key.api_key, self.name, False, "providers healthy"))


def deposit_report(adapter: str, chain: str, decimals: dict[str, int],
                   part: list[tuple[ChainTransfer, str]]) -> tuple[list[dict[str, str]], ChainDeposit]:
    """A ``depositConfirmed`` report of ``part`` ((transfer, account) pairs): the items
    its signature covers, as the API takes them, and the transaction they build."""
    tx = ChainDeposit(adapter, chain, tuple(ReportedDeposit(t.tx_hash, t.log_index, a, t.asset, t.amount) for t, a in part))
    return deposit_texts(tx, decimals), tx


def move_key(seq: int, asset: str, attempt: int = 0) -> str:
    """A custody move's idempotency key on chain: one transfer per attempt, and a new
    attempt only once the one before failed on chain."""
    return f"custody:{seq}:{asset}" if attempt == 0 else f"custody:{seq}:{asset}:{attempt}"


def _inflight_key(ev: WithdrawalUpdate | CustodyMoved) -> tuple:
    # a report may book moves of several assets at one sequence number
    return (True, ev.withdrawal_id) if ev.__class__ is WithdrawalUpdate else (False, ev.seq, ev.asset)


class _Paused(Exception):
    """The engine refused a report: the chain was paused meanwhile."""
