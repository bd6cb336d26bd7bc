"""Compliance: who may use which product and market, and each KYC tier's limits (part of the margin actor).

Admin transactions, each in force from its sequence number (the engine applies them as
configuration, splitting the block around them):

* ``SetProfile`` -- an account's KYC tier, jurisdiction and tags. An account without a
  profile is tier 0 with no jurisdiction.
* ``SetTierLimits`` -- per tier: withdrawals a UTC day of sequenced time, and the largest
  order notional per quote asset (a market order by quantity is valued at the mark on a
  perpetual; on a spot market it must then be given by ``quoteQuantity``).
* ``SetRule`` -- allow or deny a product (``PRODUCTS``) or one market (``market:<symbol>``)
  for an account, a jurisdiction, or every jurisdiction (``*``); ``allowed`` None removes
  the rule.

Which rule decides is ``decide``: the account's own, else its jurisdiction's, else the
platform-wide one, else allowed. Validators must apply exactly this rule; the incident
drill swaps it for an older one to show that a node running other rules is caught.

Pre-trade asks ``order``, ``borrow_lend``, ``auto_lend`` and ``withdraw`` before the
transaction's own checks; each answers "" or the refusal (an order's reason, or a
``Code`` with a message). A restricted account may still cancel, and reduce a perp
position (reduce-only orders pass the product rule): restrictions never trap a position.
Liquidations are never refused. With no profile, limit or rule set (``active`` False)
none of this runs: the trading path pays nothing for it.
"""

from __future__ import annotations

import msgspec

from satchel.core.errors import Code
from satchel.core.messages import (
    AUTO_BORROW, AUTO_BORROW_REPAY, AUTO_LEND, LEND, MARKET, ComplianceChanged, MarketSpec, PlaceOrder,
    SetProfile, SetRule, SetTierLimits, TxRejected,
)
from satchel.core.state import ComplianceState, ProfileState, RuleState, TierState

PRODUCTS = ("spot", "perps", "margin", "lending", "withdrawals")
MARKET_PREFIX = "market:"
EVERYWHERE = "*"  # a jurisdiction rule for every jurisdiction
DAY_US = 86_400_000_000
NO_LIMIT = -1

# order refusal reasons (an order is answered Rejected with its reason) and the codes of
# other transactions: stable, clients dispatch on them
PRODUCT_RESTRICTED = "ProductRestricted"
REGION_RESTRICTED = "RegionRestricted"
ORDER_NOTIONAL_LIMIT = "OrderNotionalLimit"


class Source(msgspec.Struct, frozen=True):
    """Where a decision comes from: ``default``, ``account``, ``jurisdiction:<code>``,
    ``jurisdiction:*`` or ``tier:<n>``, with the sequence number that set it (0: default)."""

    allowed: bool
    source: str
    seq: int


def decide(account_rule: tuple[bool, int] | None, jurisdiction_rule: tuple[bool, int] | None,
           everywhere_rule: tuple[bool, int] | None, jurisdiction: str) -> Source:
    """The rule in force: the account's own, else its jurisdiction's, else the
    platform-wide one, else allowed. Part of the rules (``RULES_VERSION``)."""
    if account_rule is not None:
        return Source(account_rule[0], "account", account_rule[1])
    if jurisdiction_rule is not None:
        return Source(jurisdiction_rule[0], f"jurisdiction:{jurisdiction}", jurisdiction_rule[1])
    if everywhere_rule is not None:
        return Source(everywhere_rule[0], f"jurisdiction:{EVERYWHERE}", everywhere_rule[1])
    return Source(True, "default", 0)


class Compliance:
    def __init__(self) -> None:
        self.profiles: dict[str, ProfileState] = {}
        self.tiers: dict[int, TierState] = {}
        # (scope, who, what) -> (allowed, seq); scope "account" | "jurisdiction"
        self.rules: dict[tuple[str, str, str], tuple[bool, int]] = {}
        self.withdrawals: dict[str, tuple[int, int]] = {}  # account -> (UTC day, withdrawals that day)
        self.active = False

    # ------------------------------------------------------------------ configuration

    def command(self, seq: int, tx: SetProfile | SetTierLimits | SetRule, markets: dict[str, MarketSpec]) -> list:
        """Apply an admin transaction at ``seq``; answers its events."""
        cls = tx.__class__
        if cls is SetProfile:
            self.profiles[tx.account] = ProfileState(tx.account, tx.tier, tx.jurisdiction, sorted(dict.fromkeys(tx.tags)), seq)
            change = ComplianceChanged(seq, "profile", tx.account,
                                       f"tier={tx.tier} jurisdiction={tx.jurisdiction or '-'} tags={','.join(sorted(dict.fromkeys(tx.tags)))}")
        elif cls is SetTierLimits:
            self.tiers[tx.tier] = TierState(tx.tier, tx.withdrawals_per_day, sorted(tx.max_order_notional), seq)
            notional = ",".join(f"{a}:{v}" for a, v in sorted(tx.max_order_notional)) or "-"
            change = ComplianceChanged(seq, "tierLimits", str(tx.tier),
                                       f"withdrawalsPerDay={tx.withdrawals_per_day} maxOrderNotional={notional}")
        else:
            what = tx.what
            if what.startswith(MARKET_PREFIX) and what[len(MARKET_PREFIX):] not in markets:
                return [TxRejected(seq, tx.admin, Code.INVALID_SYMBOL, f"Unknown market {what[len(MARKET_PREFIX):]}")]
            key = (tx.scope, tx.who, what)
            if tx.allowed is None:
                self.rules.pop(key, None)
            else:
                self.rules[key] = (tx.allowed, seq)
            state = "inherit" if tx.allowed is None else ("allow" if tx.allowed else "deny")
            change = ComplianceChanged(seq, "rule", f"{tx.scope}:{tx.who}", f"{what}={state}")
        self.active = bool(self.profiles or self.tiers or self.rules)
        return [change]

    # ------------------------------------------------------------------ decisions

    def rule(self, account: str, what: str) -> Source:
        profile = self.profiles.get(account)
        jurisdiction = profile.jurisdiction if profile is not None else ""
        rules = self.rules
        return decide(rules.get(("account", account, what)),
                      rules.get(("jurisdiction", jurisdiction, what)) if jurisdiction else None,
                      rules.get(("jurisdiction", EVERYWHERE, what)), jurisdiction)

    def tier(self, account: str) -> TierState | None:
        profile = self.profiles.get(account)
        return self.tiers.get(profile.tier if profile is not None else 0)

    def order(self, tx: PlaceOrder, spec: MarketSpec, mark: int) -> str:
        """Why the order may not be placed ("" if it may). ``mark``: the perp's mark (0 for spot)."""
        account = tx.account
        if not (spec.perp is not None and tx.reduce_only):  # closing a position is never refused
            product = "perps" if spec.perp is not None else "spot"
            if not self.rule(account, product).allowed:
                return PRODUCT_RESTRICTED
            if tx.auto & (AUTO_BORROW | AUTO_BORROW_REPAY) and not self.rule(account, "margin").allowed:
                return PRODUCT_RESTRICTED
            if tx.auto & AUTO_LEND and not self.rule(account, "lending").allowed:
                return PRODUCT_RESTRICTED
            if not self.rule(account, MARKET_PREFIX + spec.symbol).allowed:
                return REGION_RESTRICTED
        tier = self.tier(account)
        if tier is not None and tier.max_order_notional:
            limit = dict(tier.max_order_notional).get(spec.quote)
            if limit is not None:
                if tx.order_type == MARKET and tx.quote_quantity:
                    notional = tx.quote_quantity
                else:
                    price = tx.price if tx.order_type != MARKET else mark
                    if not price:  # a spot market order by quantity has no price before it matches
                        return ORDER_NOTIONAL_LIMIT
                    notional = tx.quantity * price * spec.notional_mult
                if notional > limit:
                    return ORDER_NOTIONAL_LIMIT
        return ""

    def borrow_lend(self, account: str, side: int) -> tuple[str, str]:
        product = "lending" if side == LEND else "margin"
        if not self.rule(account, product).allowed:
            return Code.PRODUCT_RESTRICTED, f"{product} is not permitted for this account"
        return "", ""

    def auto_lend(self, account: str) -> tuple[str, str]:
        if not self.rule(account, "lending").allowed:
            return Code.PRODUCT_RESTRICTED, "lending is not permitted for this account"
        return "", ""

    def withdraw(self, account: str, now_us: int) -> tuple[str, str]:
        if not self.rule(account, "withdrawals").allowed:
            return Code.PRODUCT_RESTRICTED, "withdrawals are not permitted for this account"
        tier = self.tier(account)
        if tier is not None and tier.withdrawals_per_day != NO_LIMIT:
            day, count = self.withdrawals.get(account, (-1, 0))
            if day == now_us // DAY_US and count >= tier.withdrawals_per_day:
                return Code.TIER_LIMIT, f"at most {tier.withdrawals_per_day} withdrawals a day for KYC tier {tier.tier}"
        return "", ""

    def withdrew(self, account: str, now_us: int) -> None:
        """A withdrawal was accepted: counted against its UTC day."""
        today = now_us // DAY_US
        day, count = self.withdrawals.get(account, (-1, 0))
        self.withdrawals[account] = (today, count + 1 if day == today else 1)

    # ------------------------------------------------------------------ reads

    def effective(self, account: str, markets: list[str]) -> dict:
        """An account's effective permissions and where each comes from (``PermissionsOf``)."""
        profile = self.profiles.get(account)
        tier = self.tier(account)

        def row(what: str) -> dict:
            s = self.rule(account, what)
            return {"allowed": s.allowed, "source": s.source, "seq": s.seq}

        last = self.withdrawals.get(account)
        return {
            "account": account,
            "profile": None if profile is None else {"kycTier": profile.tier, "jurisdiction": profile.jurisdiction,
                                                     "tags": list(profile.tags), "seq": profile.seq},
            "products": {p: row(p) for p in PRODUCTS},
            "markets": {m: row(MARKET_PREFIX + m) for m in markets},
            "limits": None if tier is None else {
                "tier": tier.tier, "seq": tier.seq,
                "withdrawalsPerDay": None if tier.withdrawals_per_day == NO_LIMIT else tier.withdrawals_per_day,
                "maxOrderNotional": dict(tier.max_order_notional),
            },
            # the UTC day (days since the epoch) of the account's last withdrawal and how many it made that day
            "withdrawals": None if last is None else {"day": last[0], "count": last[1]},
        }

    # ------------------------------------------------------------------ state

    def canonical(self) -> ComplianceState | None:
        if not self.active and not self.withdrawals:
            return None
        return ComplianceState(
            profiles=[self.profiles[a] for a in sorted(self.profiles)],
            tiers=[self.tiers[t] for t in sorted(self.tiers)],
            rules=[RuleState(scope, who, what, allowed, seq) for (scope, who, what), (allowed, seq) in sorted(self.rules.items())],
            withdrawals=[(a, d, c) for a, (d, c) in sorted(self.withdrawals.items())],
        )

    def restore(self, state: ComplianceState | None) -> None:
        if state is None:
            return
        self.profiles = {p.account: p for p in state.profiles}
        self.tiers = {t.tier: t for t in state.tiers}
        self.rules = {(r.scope, r.who, r.what): (r.allowed, r.seq) for r in state.rules}
        self.withdrawals = {a: (d, c) for a, d, c in state.withdrawals}
        self.active = bool(self.profiles or self.tiers or self.rules)

