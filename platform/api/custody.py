"""Deposits and withdrawals: a trader's withdrawals, deposit addresses and histories;
the admin's chain control; the reports and work queries of a chain's adapter running in
its own process; reconciliation and the chains' status."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

import msgspec

from satchel.api.caller import Caller, Replies, Signature
from satchel.api.requests import Requests, acked, request
from satchel.core import instructions
from satchel.core.amounts import asset_decimals
from satchel.core.errors import INVALID_REQUEST, MAINTENANCE, RESOURCE_NOT_FOUND, UNAUTHORIZED, Code, RequestError
from satchel.core.messages import ChainCredited, MovesOf, Query, TxRejected, Withdraw, WithdrawalsOf, WithdrawalUpdate
from satchel.history import queries as history_queries
from satchel.history import views as history_views

WORK_LIMIT = 1_000  # withdrawals and custody moves a chainWorkQuery answer lists at most, oldest first


class ChainWorkParams(msgspec.Struct):
    chain: str
    after: str | None = None


class _CapitalPaging(msgspec.Struct):
    """What the deposit and withdrawal histories share: a page and a time range (ms, inclusive)."""

    limit: str | None = None
    offset: str | None = None
    since: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


class DepositHistoryParams(_CapitalPaging):
    """``GET /wapi/v1/capital/deposits``: ``excludePlatform`` leaves out the admin faucet's
    credits. ccxt's ``endTime`` (and anything else unknown) is ignored."""

    excludePlatform: instructions.Bool = "false"


class WithdrawalHistoryParams(_CapitalPaging):
    """``GET /wapi/v1/capital/withdrawals``: ``id`` one withdrawal, ``clientId`` the ones
    requested with that client id."""

    id: str | None = None
    clientId: str | None = None


class DepositAddressParams(msgspec.Struct):
    blockchain: str


class CustodyRequests(Requests):
    """Deposits, withdrawals and the chains' adapters."""

    # chains: the admin's control (chainStatus is also the adapter's), and the reports of an
    # adapter running in its own process, signed with its key
    chainStatus = acked("chainStatus", """Pause or resume a chain's deposits and withdrawals
        (``{"chain", "paused", "reason"}``), signed by the admin key or the chain's adapter key
        (the engine checks which).""")
    approveSweep = acked("approveSweep", """Move ``quantity`` of ``symbol`` from cold storage to
        the hot wallet of ``chain`` (admin); queued withdrawals it covers become pending.""")
    depositConfirmed = acked("depositConfirmed")

    @request
    def depositConfirmedBatch(self, caller: Caller, req_id: Any, items: list[Mapping[str, str]], sig: Signature) -> None:
        """An adapter's deposits of a block under one signature (signed as a batch of
        ``depositConfirmed`` segments), applied as one transaction: answered with one
        ``{"txHash", "logIndex", "credited"}`` per item (false: credited before)."""
        if not isinstance(items, list):
            raise RequestError(INVALID_REQUEST, "params must be an array of deposits")
        signed = self.check_batch_signature("depositConfirmed", items, sig)
        tx = instructions.build("depositConfirmed", items, signed.account, self.listing)
        received = caller.received

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            credited = set()
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is ChainCredited:
                    credited.add((ev.tx_hash, ev.log_index))
            replies.result(req_id, [{"txHash": d.tx_hash, "logIndex": d.log_index,
                                     "credited": (d.tx_hash, d.log_index) in credited} for d in tx.deposits])

        def go(message: bytes) -> None:
            # the items are journaled once, in the transaction, when their texts are canonical
            signed_tx = msgspec.structs.replace(tx, auth=signed.auth(message, None))
            decimals = asset_decimals(self.listing.assets.values())
            self._submit(caller, req_id, instructions.compact(signed_tx, decimals), reply, received)

        caller.verified(req_id, signed, go)

    withdrawalSent = acked("withdrawalSent")
    withdrawalConfirmed = acked("withdrawalConfirmed")
    withdrawalFailed = acked("withdrawalFailed")
    custodyMoveDone = acked("custodyMoveDone", """A custody move (``chainWorkQuery``'s ``moves``: ``seq``,
        ``symbol``) carried out on chain, from the chain's adapter: the books stop asking for it.""")

    @request
    def withdraw(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Backpack's ``POST /wapi/v1/capital/withdrawals`` (``blockchain`` the chain's name,
        ``symbol``, ``quantity``, ``address``, ``clientId``): the amount is held at once.
        Answered once durable with the withdrawal, status ``pending`` (Satchel's ``state``:
        queued while the hot wallet's books do not cover it, else pending); refused
        (nothing changed) with CHAIN_PAUSED, INVALID_CHAIN, INVALID_ASSET, INVALID_ADDRESS,
        INSUFFICIENT_FUNDS or INSUFFICIENT_MARGIN. Backpack's ``twoFactorToken``,
        ``autoBorrow`` and ``autoLendRedeem`` are accepted and ignored: there is no second
        factor, a withdrawal never borrows, and an auto-lent claim is always redeemed for it."""
        self._transaction(caller, req_id, texts, sig, "withdraw", self._withdraw_reply)

    def _withdraw_reply(self, tx: Withdraw, texts: Mapping[str, str]) -> Callable[[Replies, Any, list], None]:
        fmt = self.fmt

        def reply(replies: Replies, req_id: Any, events: list) -> None:
            for ev in events:
                if ev.__class__ is TxRejected:
                    return replies.error(req_id, ev.code, ev.message)
                if ev.__class__ is WithdrawalUpdate and ev.withdrawal_id == ev.seq:
                    return replies.result(req_id, fmt.withdrawal(
                        ev.withdrawal_id, ev.chain, ev.asset, ev.amount, ev.address, ev.status, ev.tx_hash, ev.reason,
                        ev.timestamp, ev.client_id))
            replies.failed(req_id, RuntimeError("the withdrawal applied without a WithdrawalUpdate"))

        return reply

    @request
    def depositAddressQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Backpack's ``GET /wapi/v1/capital/deposit/address?blockchain=``: the signer's
        deposit address on the chain, ``{"address": ...}``, the same every time (derived
        from the account key and the custody seed, see ``api.chains``)."""
        signed = self.check_signature("depositAddressQuery", texts, sig)
        chain = instructions.chain_name(self.listing, instructions.params_of(DepositAddressParams, texts).blockchain)
        addresses = self.addresses
        addresses.require(chain, self.listing.chains)
        replies = caller.replies
        caller.verified(req_id, signed, lambda m: replies.result(req_id, {"address": addresses.issue(chain, signed.account)}))

    @request
    def depositQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's credited deposits, newest first (``GET /wapi/v1/capital/deposits``):
        chain deposits (``source`` the chain) and the admin faucet's (``administrator``;
        left out with ``excludePlatform=true``); ``from``/``to`` (ms), ``limit``/``offset``."""
        params = instructions.params_of(DepositHistoryParams, texts)
        derive = self.addresses.derive
        self._history_read(
            caller, req_id, texts, sig, "depositQueryAll",
            lambda account: history_queries.DepositHistory(account, chains_only=params.excludePlatform == "true",
                                                           **self._window(params)),
            lambda fmt, rows: history_views.deposits(fmt, rows, derive))

    @request
    def withdrawalQueryAll(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's withdrawals, newest first, each with its latest status
        (``GET /wapi/v1/capital/withdrawals``): ``id``, ``clientId``, ``from``/``to`` (ms,
        on the request's time), ``limit``/``offset``."""
        params = instructions.params_of(WithdrawalHistoryParams, texts)
        wid = instructions.uint(params.id, "id", 2**63)
        client_id = instructions.uint(params.clientId, "clientId", 2**32)
        self._history_read(
            caller, req_id, texts, sig, "withdrawalQueryAll",
            lambda account: history_queries.WithdrawalHistory(account, withdrawal_id=wid, client_id=client_id,
                                                              **self._window(params)),
            history_views.withdrawals)

    @request
    def reconcileQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Per asset and chain what the chain holds against the custody books, and per asset
        the ledger's liabilities against every chain's books (``satchel reconcile``).
        Signed by the admin key: reading the chains costs their providers' calls."""
        signed = self.check_signature("reconcileQuery", texts, sig)
        if signed.account != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, "reconcileQuery must be signed by the admin key")
        reconciliation = self.reconciliation
        if reconciliation is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node runs no reconciliation")
        replies = caller.replies

        def answer(result: dict | Exception) -> None:
            if isinstance(result, Exception):
                replies.error(req_id, MAINTENANCE, f"Cannot read the chains now: {result}")
            else:
                replies.result(req_id, result)

        caller.verified(req_id, signed, lambda m: reconciliation.request(answer))

    @request
    def chainWorkQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """What a chain's adapter running in its own process (``satchel chains``) is to do:
        the chain's pause, its open withdrawals (``Pending``: to send; ``Sent``: to confirm)
        and its open custody moves (booked, not yet reported done with ``custodyMoveDone``)
        after sequence number ``after``, the oldest ``WORK_LIMIT`` of each (the next poll
        gets the next ones once those are done). Signed by the chain's adapter key or the admin
        key; answered once earlier blocks are durable."""
        params = instructions.params_of(ChainWorkParams, texts)
        after = instructions.uint(params.after, "after", 2**63) or 0
        signed = self.check_signature("chainWorkQuery", texts, sig)
        chains = self.chains
        spec = None if chains is None else chains.chains.get(params.chain)
        if spec is None:
            raise RequestError(Code.INVALID_CHAIN, f"Unknown chain {params.chain}")
        if signed.account not in (spec.adapter, self.node.admin.api_key):
            raise RequestError(UNAUTHORIZED, f"chainWorkQuery must be signed by {spec.name}'s adapter key or the admin key")
        fmt, chain, replies = self.fmt, spec.name, caller.replies

        def reply(answers: list) -> None:
            status = chains.status.get(chain, (False, ""))
            # the oldest WORK_LIMIT of each, formatted only those
            withdrawals = islice(((wid, w) for wid, w in answers[0] if w.chain == chain and w.status in ("Pending", "Sent")),
                                 WORK_LIMIT)
            replies.result(req_id, {
                "chain": chain, "paused": status[0], "reason": status[1] or None,
                "withdrawals": [{"id": wid, "account": w.account, "symbol": w.asset, "quantity": fmt.asset(w.asset, w.amount),
                                 "address": w.address, "status": w.status, "txHash": w.tx_hash or None}
                                for wid, w in withdrawals],
                "moves": [{"seq": m.seq, "symbol": m.asset, "quantity": fmt.asset(m.asset, m.amount), "toCold": m.to_cold}
                          for m in islice((m for m in answers[1] if m.seq > after), WORK_LIMIT)]})

        caller.verified(req_id, signed, lambda m: self._read([Query("risk", WithdrawalsOf(None)),
                                                               Query("risk", MovesOf(chain))], reply))

    @request
    def chainStatusQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Every chain's status and custody books (``GET /api/v1/chains``), as of the last
        published block: kind, assets, confirmations, paused and why, per asset the hot
        wallet, cold storage, what of the hot wallet is reserved for withdrawals out and
        its limit, withdrawals queued for a cold sweep, deposits credited. Unsigned."""
        chains = self.chains
        if chains is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node keeps no chain status")
        replies = caller.replies
        chains.when_ready(lambda views: replies.result(req_id, chains.payload(views)))
