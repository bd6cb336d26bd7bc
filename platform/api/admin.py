"""The operator's requests: trading and fee settings, compliance (profiles, tier limits,
permissions), compensating transfers, and the ledger's, node's and platform's figures."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from satchel.api.caller import Caller, Signature
from satchel.api.requests import AccountParams, Requests, acked, request
from satchel.core import instructions
from satchel.core.errors import RESOURCE_NOT_FOUND, UNAUTHORIZED, RequestError
from satchel.core.messages import LedgerOf, PermissionsOf, Query


class AdminRequests(Requests):
    """The operator's requests."""

    # transactions answered with their params once applied, or the engine's refusal
    adminSetTrading = acked("adminSetTrading")
    adminSetFees = acked("adminSetFees")
    # compliance (``actors.compliance``), each in force from its sequence number
    adminSetProfile = acked("adminSetProfile", """An account's KYC tier, jurisdiction and tags
        (``{"account", "kycTier", "jurisdiction", "tags"}``, tags comma-separated; admin).""")
    adminSetTierLimits = acked("adminSetTierLimits", """A KYC tier's limits (``{"tier",
        "withdrawalsPerDay", "maxOrderNotional"}``: withdrawals a UTC day, absent for none;
        ``ASSET:decimal`` pairs, the largest order notional per quote asset; admin).""")
    adminTransfer = acked("adminTransfer", """Move ``quantity`` of ``asset`` from ``source``'s free
        balance to ``target``'s (admin; ``satchel compensate`` pays losers from a treasury).""")
    adminSetPermission = acked("adminSetPermission", """Allow, deny or ``inherit`` (remove the
        rule) a ``product`` or a market (``symbol``) for an ``account`` or a ``jurisdiction``
        (``*``: every jurisdiction); admin.""")

    @request
    def ledgerTotals(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Per asset: deposits, withdrawals, fees collected and the sum of all balances,
        so anyone can check that deposits - withdrawals = balances + fees."""
        replies = caller.replies

        def reply(answers: list) -> None:
            ledger = answers[0]
            fmt = self.fmt
            replies.result(req_id, {
                a: {"deposits": fmt.asset(a, dep), "withdrawals": fmt.asset(a, wd), "fees": fmt.asset(a, fees),
                    "balances": fmt.asset(a, bal)}
                for a, (dep, wd, fees, bal) in sorted(ledger.items())
            })

        self._read([Query("risk", LedgerOf())], reply)

    @request
    def nodeStats(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """Per-stage latency percentiles (us) since the node started or was last reset
        (``{"reset": true}``, signed by the admin key); see ``satchel.latency``."""
        latency = self.node.latency
        result = {"stages": latency.summary(), **self.stats()}
        if texts.get("reset") != "true":
            caller.replies.result(req_id, result)
            return
        signed = self.check_signature("nodeStats", texts, sig)
        if signed.account != self.node.admin.api_key:
            raise RequestError(UNAUTHORIZED, "reset must be signed by the admin key")

        def go(message: bytes) -> None:
            latency.reset()
            caller.replies.result(req_id, result)

        caller.verified(req_id, signed, go)

    @request
    def platformStats(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The platform's headline figures (``GET /api/v1/stats``) as of the last published
        block: the ``platformStats`` stream's, or fresher (``satchel.api.stats``)."""
        stats = self.platform_stats
        if stats is None:
            raise RequestError(RESOURCE_NOT_FOUND, "This node keeps no platform statistics")
        replies = caller.replies
        stats.when_ready(lambda figures: replies.result(req_id, figures))

    @request
    def accountPermissionsQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's effective permissions and where each comes from: its profile, each
        product and market allowed or not with the rule's source (``account``,
        ``jurisdiction:<code>``, ``jurisdiction:*`` or ``default``) and sequence number, its
        tier's limits and today's withdrawals. The admin key may name another ``account``."""
        params = instructions.params_of(AccountParams, texts)
        signed = self.check_signature("accountPermissionsQuery", texts, sig)
        account = self._subject(signed.account, params.account, "permissions")
        fmt = self.fmt
        query = Query("risk", PermissionsOf(account))
        replies = caller.replies

        def reply(answers: list) -> None:
            view = answers[0]
            if view["withdrawals"] is not None:  # days since the epoch, as the UTC date
                view["withdrawals"]["day"] = (date(1970, 1, 1) + timedelta(days=view["withdrawals"]["day"])).isoformat()
            if view["limits"] is not None:
                view["limits"]["maxOrderNotional"] = {a: fmt.asset(a, v) for a, v in view["limits"]["maxOrderNotional"].items()
                                                      if a in fmt.assets}
            replies.result(req_id, view)

        caller.verified(req_id, signed, lambda m: self._read([query], reply))
