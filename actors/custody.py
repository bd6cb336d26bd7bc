"""Chains, deposits credited from them and withdrawals to them: part of the margin actor.

The chain adapters (``satchel.chains``) are edges: they watch chains and send
withdrawals, and report what they saw as signed transactions. This part of the core
applies those reports to the ledger, exactly once, and decides what the adapters are to
do next (events). The ledger is kept apart from wallets: balances are what the exchange
owes its accounts; the custody books (``hot``, ``cold`` per chain and asset) are what it
should hold on each chain, and ``satchel reconcile`` compares them with the chain.

* ``ChainDeposit`` (adapter): a block's deposits, each credited once per (chain, tx hash,
  log index) -- a re-delivered or re-observed deposit changes nothing (a report whose every
  deposit was credited before is refused ``ALREADY_CREDITED``), across adapter restarts and
  journal replay, because the keys are ledger state. A deposit of an asset the chain does
  not take refuses the whole report, and so do deposits that would take an asset's total
  past ``MAX_UNITS`` (``INVALID_DEPOSIT``; the journal's integers, as for the faucet). The hot wallet's books grow; past the chain's
  ``hot_limit`` the excess is booked to cold storage (``CustodyMoved``: the adapter moves it).
* ``Withdraw`` (account): refused while the chain is paused (``CHAIN_PAUSED``), for an
  unknown chain or asset, a bad address, ``MAX_OPEN_WITHDRAWALS`` of the account's on
  their way already (``WITHDRAWAL_LIMIT``), short funds (an auto-lent claim is redeemed as
  for an order), or when equity would fall below the initial margin; else the amount is
  held (the hold's id is the withdrawal's id: its sequence number). If the hot wallet's
  books cover it beside the withdrawals already out, it is ``Pending`` (the adapter sends
  it) and that much of the hot wallet is reserved; else ``Queued`` until an admin approves
  a sweep from cold storage (``ApproveSweep``), which releases the queue in order.
* ``WithdrawalSent`` / ``WithdrawalConfirmed`` / ``WithdrawalFailed`` (adapter): Sent
  records the chain transaction; Confirmed debits the hold and the hot wallet; Failed
  releases both. Each is accepted only in the state it follows, so a repeated report
  changes nothing (``INVALID_WITHDRAWAL``).
* ``ChainStatus`` (adapter's circuit breaker or admin): pause / resume one chain's
  deposits and withdrawals; trading and other chains go on. A pause the admin signed is
  the admin's to lift: the adapter's resume is refused (``UNAUTHORIZED``), also when
  the admin paused on top of the adapter's own pause.
* ``MoveDone`` (adapter): a custody move (``CustodyMoved``, kept open in the books until
  then) is carried out on chain. An open move is what the adapter is asked for, after a
  restart of either too; reporting one that is not open is refused (``RESOURCE_NOT_FOUND``).

Conservation: deposits - withdrawals = balances + fees + pools' cash (+ insurance) per
asset; per chain and asset, hot + cold = credited - confirmed withdrawals.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from satchel.actors.risk import Ledger
from satchel.core.amounts import MAX_UNITS
from satchel.core.errors import Code
from satchel.core.tally import tally
from satchel.core.messages import (
    ApproveSweep, ChainCredited, ChainDeposit, ChainSpec, ChainStatus, ChainStatusChanged, CustodyMoved, Deposited,
    MoveDone,
    SetChain, TxRejected, Withdraw, WithdrawalConfirmed, WithdrawalFailed, WithdrawalSent, WithdrawalUpdate,
)
from satchel.core.state import ChainState, CustodyState, MoveState, WithdrawalState

copy = msgspec.structs.replace  # a record's shallow copy (its fields are immutable)

QUEUED, PENDING, SENT, CONFIRMED, FAILED = "Queued", "Pending", "Sent", "Confirmed", "Failed"
MAX_ADDRESS = 128  # characters; the adapter checks the chain's own format before sending
# withdrawals of one account not yet confirmed or failed: the chain's adapter sends them in
# turn, and without a bound one account's 10,000 withdrawals of a millionth of a USDC held
# every other account's for half an hour
MAX_OPEN_WITHDRAWALS = 16


class ChainView(msgspec.Struct, frozen=True):
    """``ChainsOf``'s answer per chain."""

    spec: ChainSpec
    paused: bool
    reason: str
    hot: list[tuple[str, int]]  # (asset, units) booked to the hot wallet
    cold: list[tuple[str, int]]
    reserved: list[tuple[str, int]]  # hot units promised to withdrawals Pending or Sent
    queued: int  # withdrawals waiting for a cold sweep
    credited: int  # deposits credited so far


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Custody:
    def __init__(self, ledger: Ledger, fund: Callable[[int, str, str, int, list], str],
                 text: Callable[[str, int], str]) -> None:
        self.ledger = ledger
        # (seq, account, asset, amount, out) -> "" when the account can give the amount (the margin
        # engine redeems an auto-lent claim and checks margin), else a refusal code
        self.fund = fund
        self.text = text  # (asset, units) -> "100 USDC": amounts in refusals as clients wrote them
        self.chains: dict[str, ChainSpec] = {}
        self.paused: dict[str, str] = {}  # chain -> reason
        self.paused_by: dict[str, str] = {}  # chain -> the key that signed the pause in force
        self.credited: dict[str, None] = {}  # "chain/tx_hash/log_index" of every credited deposit
        self.credited_count: dict[str, int] = {}  # per chain, for reads (derived from ``credited``)
        self.hot: dict[tuple[str, str], int] = {}
        self.cold: dict[tuple[str, str], int] = {}
        self.reserved: dict[tuple[str, str], int] = {}
        # by id (the request's sequence number), in id order; each record is the snapshot's
        # own type, so the state is these records (copied: a snapshot or a read never
        # aliases a record the actor goes on changing)
        self.open: dict[int, WithdrawalState] = {}
        self.open_of: dict[str, int] = {}  # account -> its withdrawals in ``open`` (derived)
        # account -> asset -> the amount its open withdrawals hold (derived): on its way out,
        # so no longer the account's collateral (``Margin.collateral``)
        self.leaving: dict[str, dict[str, int]] = {}
        self.withdrawn: dict[str, int] = {}  # confirmed withdrawals per asset
        # custody moves booked and not yet reported carried out, by (booking seq, asset):
        # what the chain's adapter is asked for until it reports each (``MoveDone``), also
        # after either side restarts
        self.moves: dict[tuple[int, str], MoveState] = {}
        self.now = 0

    # ------------------------------------------------------------------ configuration (at a sequence number)

    def command(self, seq: int, tx: object, timestamp: int) -> list:
        self.now = timestamp
        out: list = []
        cls = tx.__class__
        if cls is SetChain:
            self.chains[tx.spec.name] = tx.spec
        elif cls is ChainStatus:
            self._status(seq, tx, out)
        elif cls is ApproveSweep:
            self._approve(seq, tx, out)
        return out

    def _status(self, seq: int, tx: ChainStatus, out: list) -> None:
        adapter = self.chains[tx.chain].adapter  # the engine took it from the admin or this key only
        if tx.signer == adapter and self.paused_by.get(tx.chain, adapter) != adapter:
            # neither lifted nor taken over (a pause of its own on top would be its to lift)
            out.append(TxRejected(seq, tx.signer, Code.UNAUTHORIZED,
                                  f"{tx.chain} was paused by the admin: only the admin resumes it"))
            return
        if tx.paused:
            self.paused[tx.chain] = tx.reason
            self.paused_by[tx.chain] = tx.signer
        else:
            self.paused.pop(tx.chain, None)
            self.paused_by.pop(tx.chain, None)
        out.append(ChainStatusChanged(seq, tx.chain, tx.paused, tx.reason, tx.signer, self.now))
        if not tx.paused:
            self._release_queue(seq, tx.chain, out)

    def _approve(self, seq: int, tx: ApproveSweep, out: list) -> None:
        key = (tx.chain, tx.asset)
        if not 0 < tx.amount <= self.cold.get(key, 0):
            out.append(TxRejected(seq, tx.admin, Code.INVALID_QUANTITY,
                                  f"cold storage holds {self.text(tx.asset, self.cold.get(key, 0))} on {tx.chain}"))
            return
        self.cold[key] -= tx.amount
        self.hot[key] = self.hot.get(key, 0) + tx.amount
        self._book_move(seq, tx.chain, tx.asset, tx.amount, False, out)
        self._release_queue(seq, tx.chain, out)

    def _release_queue(self, seq: int, chain: str, out: list) -> None:
        """Queued withdrawals of the chain go out in id order while the hot wallet covers them."""
        if chain in self.paused:
            return
        for wid, w in self.open.items():
            if w.chain == chain and w.status == QUEUED and self._reserve(w):
                w.status = PENDING
                out.append(self._update(seq, wid, w, ""))

    # ------------------------------------------------------------------ reports and requests (pre-trade)

    def apply(self, seq: int, tx: object, out: list) -> None:
        try:
            _APPLY[tx.__class__](self, seq, tx, out)
        except Refused as exc:
            out.append(TxRejected(seq, _signer(tx), exc.code, exc.message))

    def _spec(self, chain: str, adapter: str | None = None) -> ChainSpec:
        spec = self.chains.get(chain)
        if spec is None:
            raise Refused(Code.INVALID_CHAIN, f"Unknown chain {chain}")
        if adapter is not None and adapter != spec.adapter:
            raise Refused(Code.UNAUTHORIZED, f"Not signed by {chain}'s adapter")
        return spec

    def _open(self, spec: ChainSpec) -> None:
        if spec.name in self.paused:
            raise Refused(Code.CHAIN_PAUSED, f"{spec.name} deposits and withdrawals are paused: {self.paused[spec.name]}")

    def _deposit(self, seq: int, tx: ChainDeposit, out: list) -> None:
        spec = self._spec(tx.chain, tx.adapter)
        self._open(spec)
        for d in tx.deposits:  # checked whole before anything changes: a refusal changes nothing
            if d.asset not in spec.assets or d.amount <= 0:
                raise Refused(Code.INVALID_DEPOSIT, f"{d.asset} is not taken on {tx.chain}, or the amount is not positive")
        credited = self.credited
        fresh = []
        seen: dict[str, None] = {}  # in report order: the books stay the same on every node
        for d in tx.deposits:
            key = f"{tx.chain}/{d.tx_hash}/{d.log_index}"
            if key not in credited and key not in seen:
                seen[key] = None
                fresh.append(d)
        if not fresh:
            what = "every deposit it reports was" if len(tx.deposits) > 1 else f"{key} was"
            raise Refused(Code.ALREADY_CREDITED, f"{what} credited before")
        total: dict[str, int] = {}  # per asset, in report order: the limit check and the hot books
        for d in fresh:
            total[d.asset] = total.get(d.asset, 0) + d.amount
        for asset, amount in total.items():
            # every balance, book and total stays below MAX_UNITS (the journal's integers),
            # as the faucet's deposits do: a report past it is refused whole
            if amount > MAX_UNITS - self.ledger.deposits.get(asset, 0):
                raise Refused(Code.INVALID_DEPOSIT, f"{asset} deposits would exceed the ledger's limit")
        credited.update(seen)
        self.credited_count[tx.chain] = self.credited_count.get(tx.chain, 0) + len(fresh)
        for d in fresh:  # the rest were credited before: re-reported, they change nothing
            self.ledger.deposit(d.account, d.asset, d.amount)
            out.append(Deposited(seq, d.account, d.asset, d.amount))
            out.append(ChainCredited(seq, tx.chain, d.tx_hash, d.log_index, d.account, d.asset, d.amount, self.now))
        limits = dict(spec.hot_limit)
        for asset, amount in total.items():
            hot = (tx.chain, asset)
            self.hot[hot] = self.hot.get(hot, 0) + amount
            limit = limits.get(asset)
            excess = self.hot[hot] - self.reserved.get(hot, 0) - limit if limit is not None else 0
            if excess > 0:
                self.hot[hot] -= excess
                self.cold[hot] = self.cold.get(hot, 0) + excess
                self._book_move(seq, tx.chain, asset, excess, True, out)

    def _book_move(self, seq: int, chain: str, asset: str, amount: int, to_cold: bool, out: list) -> None:
        self.moves[(seq, asset)] = MoveState(seq, chain, asset, amount, to_cold)
        out.append(CustodyMoved(seq, chain, asset, amount, to_cold, self.now))

    def _move_done(self, seq: int, tx: MoveDone, out: list) -> None:
        self._spec(tx.chain, tx.adapter)
        move = self.moves.get((tx.seq, tx.asset))
        if move is None or move.chain != tx.chain:
            raise Refused(Code.RESOURCE_NOT_FOUND, f"no open custody move {tx.seq} of {tx.asset} on {tx.chain}")
        del self.moves[(tx.seq, tx.asset)]

    def _withdraw(self, seq: int, tx: Withdraw, out: list) -> None:
        spec = self._spec(tx.chain)
        self._open(spec)
        if tx.asset not in spec.assets:
            raise Refused(Code.INVALID_ASSET, f"{tx.asset} cannot be withdrawn on {tx.chain}")
        if not 0 < len(tx.address) <= MAX_ADDRESS or not tx.address.isascii() or not tx.address.isprintable():
            raise Refused(Code.INVALID_ADDRESS, "address must be 1 to 128 printable ASCII characters")
        if tx.amount <= 0:
            raise Refused(Code.INVALID_QUANTITY, "quantity must be positive")
        if self.open_of.get(tx.account, 0) >= MAX_OPEN_WITHDRAWALS:
            raise Refused(Code.WITHDRAWAL_LIMIT, f"{MAX_OPEN_WITHDRAWALS} withdrawals on their way already: "
                                                 "another once one is confirmed or failed")
        problem = self.fund(seq, tx.account, tx.asset, tx.amount, out)
        if problem:
            raise Refused(problem, f"cannot withdraw {self.text(tx.asset, tx.amount)}")
        bal = self.ledger.bal(tx.account, tx.asset)
        self.ledger.hold(seq, tx.account, tx.asset, bal, tx.amount)
        w = WithdrawalState(seq, tx.account, tx.chain, tx.asset, tx.amount, tx.address, QUEUED, "", tx.client_id)
        if self._reserve(w):
            w.status = PENDING
        self.open[seq] = w
        self._count(w, 1)
        out.append(self._update(seq, seq, w, ""))

    def _close(self, wid: int) -> None:
        self._count(self.open.pop(wid), -1)

    def _count(self, w: WithdrawalState, sign: int) -> None:
        """An open withdrawal in (1) or out (-1) of the derived per-account figures."""
        account = w.account
        tally(self.open_of, account, sign)
        assets = self.leaving.setdefault(account, {})
        tally(assets, w.asset, sign * w.amount)
        if not assets:
            del self.leaving[account]

    def _reserve(self, w: WithdrawalState) -> bool:
        key = (w.chain, w.asset)
        reserved = self.reserved.get(key, 0)
        if self.hot.get(key, 0) - reserved < w.amount:
            return False
        self.reserved[key] = reserved + w.amount
        return True

    def _report(self, tx: WithdrawalSent | WithdrawalConfirmed | WithdrawalFailed, states: tuple[str, ...]) -> WithdrawalState:
        self._spec(tx.chain, tx.adapter)
        w = self.open.get(tx.withdrawal_id)
        if w is None or w.chain != tx.chain or w.status not in states:
            raise Refused(Code.INVALID_WITHDRAWAL, f"withdrawal {tx.withdrawal_id} is not {' or '.join(states)} on {tx.chain}")
        return w

    def _sent(self, seq: int, tx: WithdrawalSent, out: list) -> None:
        w = self._report(tx, (PENDING,))
        w.status = SENT
        w.tx_hash = tx.tx_hash
        out.append(self._update(seq, tx.withdrawal_id, w, ""))

    def _confirmed(self, seq: int, tx: WithdrawalConfirmed, out: list) -> None:
        w = self._report(tx, (SENT,))
        self.ledger.consume(tx.withdrawal_id, w.account, w.asset, w.amount)
        self.ledger.holds.pop(tx.withdrawal_id, None)
        self.ledger.touched[(w.account, w.asset)] = None
        self.withdrawn[w.asset] = self.withdrawn.get(w.asset, 0) + w.amount
        key = (w.chain, w.asset)
        self.hot[key] -= w.amount
        self.reserved[key] -= w.amount
        self._close(tx.withdrawal_id)
        w.status = CONFIRMED
        out.append(self._update(seq, tx.withdrawal_id, w, ""))

    def _failed(self, seq: int, tx: WithdrawalFailed, out: list) -> None:
        w = self._report(tx, (PENDING, SENT))
        self.ledger.release(tx.withdrawal_id)
        self.reserved[(w.chain, w.asset)] -= w.amount
        self._close(tx.withdrawal_id)
        w.status = FAILED
        out.append(self._update(seq, tx.withdrawal_id, w, tx.reason))
        self._release_queue(seq, w.chain, out)

    def _update(self, seq: int, wid: int, w: WithdrawalState, reason: str) -> WithdrawalUpdate:
        return WithdrawalUpdate(seq, wid, w.account, w.chain, w.asset, w.amount, w.address, w.status, w.tx_hash, reason,
                                self.now, w.client_id)

    # ------------------------------------------------------------------ reads

    def views(self) -> list[ChainView]:
        out = []
        for name, spec in sorted(self.chains.items()):
            def books(d: dict) -> list[tuple[str, int]]:
                return sorted((a, v) for (c, a), v in d.items() if c == name)
            out.append(ChainView(spec, name in self.paused, self.paused.get(name, ""), books(self.hot), books(self.cold),
                                 books(self.reserved), sum(1 for w in self.open.values() if w.chain == name and w.status == QUEUED),
                                 self.credited_count.get(name, 0)))
        return out

    def withdrawals(self, account: str | None) -> list[tuple[int, WithdrawalState]]:
        return [(wid, copy(w)) for wid, w in self.open.items() if account is None or w.account == account]

    def open_moves(self, chain: str) -> list[MoveState]:
        return [copy(m) for _, m in sorted(self.moves.items()) if m.chain == chain]

    # ------------------------------------------------------------------ state

    def canonical(self) -> CustodyState:
        def rows(d: dict) -> list[tuple[str, str, int]]:
            return [(c, a, v) for (c, a), v in sorted(d.items())]
        return CustodyState(
            chains=[ChainState(spec, self.paused.get(name), self.paused_by.get(name, ""))
                    for name, spec in sorted(self.chains.items())],
            credited=sorted(self.credited),
            hot=rows(self.hot), cold=rows(self.cold), reserved=rows(self.reserved),
            withdrawals=[copy(w) for _, w in sorted(self.open.items())],
            withdrawn=sorted(self.withdrawn.items()),
            moves=[copy(m) for _, m in sorted(self.moves.items())],
        )

    def restore(self, state: CustodyState | None) -> None:
        if state is None:
            return
        self.chains = {c.spec.name: c.spec for c in state.chains}
        self.paused = {c.spec.name: c.paused for c in state.chains if c.paused is not None}
        self.paused_by = {c.spec.name: c.paused_by for c in state.chains if c.paused is not None}
        self.credited = dict.fromkeys(state.credited)
        self.credited_count = {}
        for key in state.credited:
            chain = key.split("/", 1)[0]
            self.credited_count[chain] = self.credited_count.get(chain, 0) + 1
        self.hot = {(c, a): v for c, a, v in state.hot}
        self.cold = {(c, a): v for c, a, v in state.cold}
        self.reserved = {(c, a): v for c, a, v in state.reserved}
        self.open = {w.withdrawal_id: copy(w) for w in state.withdrawals}
        self.open_of = {}
        self.leaving = {}
        for w in self.open.values():
            self._count(w, 1)
        self.withdrawn = dict(state.withdrawn)
        self.moves = {(m.seq, m.asset): copy(m) for m in state.moves}


def _signer(tx: object) -> str:
    return getattr(tx, "account", None) or getattr(tx, "adapter", "")


_APPLY = {
    ChainDeposit: Custody._deposit, Withdraw: Custody._withdraw, WithdrawalSent: Custody._sent,
    WithdrawalConfirmed: Custody._confirmed, WithdrawalFailed: Custody._failed, MoveDone: Custody._move_done,
}
CUSTODY_TXS = tuple(_APPLY)
