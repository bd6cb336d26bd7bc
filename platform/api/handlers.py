"""The exchange's request handlers, apart from any transport.

``Api`` has one method per request (``orderExecute``, ``orderCancel``, ...; by domain in
``api.trading``, ``api.lending``, ``api.custody``, ``api.admin`` and ``api.rewards``, on
the machinery of ``api.requests``), each taking the caller, the request id, the params as the literal texts the client signed (see
``gateway.protocol.split_params``) and the signature parts ``[apiKey, signature,
timestamp, window]`` (or None). A method never raises: it answers through the caller's
``Replies`` -- ``result(id, payload)``, ``error(id, code, message)``, or ``failed(id,
exc)`` for a failure that is not a known refusal -- now, or once the request's block is
durable. The WebSocket session turns those into frames; a REST front end or a remote
gateway would turn them into its own responses.

A request is checked (params, tick and step, signature presence and window) before
anything else happens; its signature is then verified (possibly in a worker), and only
then is it sequenced or read. Verification runs concurrently, but a ``Caller``'s
requests are acted on in the order they arrived (its queue is drained from the head
only), so "place then cancel" from one client is never reordered. The transport makes
one ``Caller`` per client (per connection), and sets ``Caller.received`` to the time
each request arrived (for the per-stage latencies).
"""

from __future__ import annotations

from satchel.api.admin import AdminRequests
from satchel.api.custody import CustodyRequests
from satchel.api.lending import LendingRequests
from satchel.api.rewards import RewardsRequests
from satchel.api.trading import TradingRequests

# the requests, by the name a client calls them (each is a method of ``Api``)
METHODS = (
    "orderExecute", "orderCancel", "orderCancelAll", "orderQuery", "orderQueryAll", "balanceQuery", "depth",
    "ledgerTotals", "nodeStats", "deposit", "adminSetTrading", "adminSetFees",
    "positionQuery", "collateralQuery", "fundingHistoryQueryAll", "liquidationHistoryQueryAll", "markPrices",
    "openInterest", "accountUpdate", "accountQuery", "orderExecuteBatch", "orderHistoryQueryAll", "fillHistoryQueryAll",
    "borrowLendMarkets", "platformStats", "borrowLendExecute", "borrowLendPositionQuery", "borrowHistoryQueryAll",
    "interestHistoryQueryAll", "withdraw", "withdrawalQueryAll", "depositQueryAll", "depositAddressQuery",
    "chainStatusQuery", "chainWorkQuery", "reconcileQuery", "chainStatus", "approveSweep", "depositConfirmed", "depositConfirmedBatch",
    "withdrawalSent", "withdrawalConfirmed", "withdrawalFailed", "custodyMoveDone", "adminSetProfile", "adminSetTierLimits",
    "adminSetPermission", "accountPermissionsQuery", "adminSetSeason", "adminSetMultiplier", "referralCodeCreate",
    "referralCodeUse", "rewardsQuery", "leaderboard", "adminTransfer",
)
# requests whose params are a list of objects, each signed as its own segment
BATCHED = frozenset({"orderExecuteBatch", "depositConfirmedBatch"})
# a chain adapter's requests (``satchel chains``): a connection that sends one is handled
# between orders from then on (``gateway.session``)
CUSTODY_REPORTS = frozenset({"depositConfirmed", "depositConfirmedBatch", "withdrawalSent", "withdrawalConfirmed",
                             "withdrawalFailed", "custodyMoveDone", "chainWorkQuery"})
# requests that read no params: whatever params arrive, even malformed ones, are ignored
PARAMLESS = frozenset({"ledgerTotals", "platformStats", "chainStatusQuery"})


class Api(TradingRequests, LendingRequests, CustodyRequests, AdminRequests, RewardsRequests):
    """Every request, each a method named as the client calls it (``METHODS``)."""
