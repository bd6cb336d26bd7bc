"""Lending in the load test: a share of the accounts lend and borrow through
``borrowLendExecute`` while everyone's idle balances are auto-lent (the default), and the
end-of-run checks that the pools, the money and the interest add up.

**Who** (``cohort``): the ``perps`` scenario's makers, whom the crash never liquidates
(a million USDC each). Of every three makers two lend ``ASSET`` and one borrows it:

* a *lender* deposits ``LENDER_DEPOSIT``, which auto-lend lends within a second of
  sequenced time. Its ``borrowLendExecute`` requests are ``Borrow`` of a small part of its
  claim, which redeems that part (a Borrow redeems a lend first); the next sweep lends it
  again.
* a *borrower* turns auto-lend off, deposits ``BORROWER_BUFFER`` (which will pay its
  interest) and borrows against its USDC: ``Borrow`` while what it borrowed stays within
  its cap (``BORROW_SHARE`` of the lenders' deposits, split among the borrowers), ``Lend``
  of at most what it borrowed (a Lend repays a borrow first). Interest accrues on the
  pool's indices from the first borrow on.

``plan.Flow`` sends these requests (``plan.Borrowing``) in place of a share ``plan.LEND_SHARE``
of the makers' orders.

**The end of the run** (``repay``): every account of the cohort that owes lends all its
free balance of the asset, which repays the debt, interest included, and lends the rest.
With nothing borrowed the pools' utilization is 0 and interest stops, so the final reading
stands still (every block accrues interest, and the oracle sends one a second).

**The checks** (``pool_checks``, ``runner.conservation``, ``interest``), on the reading
the conservation check uses:

* every pool is solvent: ``cash + borrowed - lent = reserve >= 0`` and utilization <= 1
  (``borrowLendMarkets``; lent rounded down, borrowed up, as ``core.lending`` documents);
* money (``runner.conservation``): per asset the node's balances -- which include each
  pool's cash -- plus fees equal the deposits; and from the accounts' side, their net
  holdings (free + held + lent - borrowed, ``collateralQuery``'s ``totalQuantity``) plus
  fees plus the pool's reserve equal what the load test deposited, short by what the
  rounding of claims (down) and debts (up) keeps in the pool: at most a unit per account
  holding either;
* interest, for ``ASSET``, which only the cohort holds: the borrowers' interest (what their
  holdings lost) equals the lenders' interest (what theirs gained) plus the pool's reserve
  (all of it: the pool was listed when the embedded node started), within the same rounding.
  Each borrow, repay, lend or redeem rounds in the pool's favour (``core.lending``), so
  that remainder counts in the borrowers' interest and in the reserve alike.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

import trio

from satchel.core.amounts import to_units
from satchel.signing import Keypair
from satchel.tools.client import connect
from satchel.tools.loadtest.plan import LendPlan
from satchel.tools.loadtest.report import decimal_text

ASSET = "SOL"
LENDER_DEPOSIT = "2000"
BORROWER_BUFFER = "20"  # pays the borrower's interest: a day at a 3,000 SOL cap and 60% utilization costs ~2
BORROW_SHARE = Decimal("0.6")  # of the lenders' deposits, the most the borrowers owe together: U <= 60%
REDEEM_SHARE = Decimal("0.002")  # of a lender's deposit, one step of its redeems (it redeems 1-3 steps)
BORROW_STEPS = 10  # a borrower's cap in steps of 1-3
ZERO = Decimal(0)


def cohort(roles: list[str], decimals: int) -> list[LendPlan | None]:
    """Each trader's ``LendPlan`` (None: not in the cohort): of the makers, in order, the
    second of every three borrows and the others lend."""
    makers = [i for i, r in enumerate(roles) if r == "mm"]
    borrowers = [i for k, i in enumerate(makers) if k % 3 == 1]
    lenders = [i for i in makers if i not in borrowers]
    unit = 10**decimals
    deposit = to_units(LENDER_DEPOSIT, decimals)
    out: list[LendPlan | None] = [None] * len(roles)
    for i in lenders:
        out[i] = LendPlan("lend", ASSET, decimals, max(1, int(deposit * REDEEM_SHARE)))
    if borrowers:
        cap = int(deposit * len(lenders) * BORROW_SHARE) // len(borrowers) // unit * unit
        for i in borrowers:
            out[i] = LendPlan("borrow", ASSET, decimals, max(1, cap // (3 * BORROW_STEPS)), cap)
    return out


def deposits(keys: list[Keypair], plans: list[LendPlan | None]) -> list[tuple[str, str, str]]:
    """The cohort's deposits of the asset it lends."""
    return [(k.api_key, p.asset, LENDER_DEPOSIT if p.role == "lend" else BORROWER_BUFFER)
            for k, p in zip(keys, plans) if p is not None]


async def configure(url: str, keys: list[Keypair], plans: list[LendPlan | None]) -> None:
    """Borrowers turn auto-lend off: their buffer and what they borrow stay free."""
    for key, plan in zip(keys, plans):
        if plan is not None and plan.role == "borrow":
            async with connect(url, key) as c:
                await c.request("accountUpdate", {"autoLend": "false"})


# ---------------------------------------------------------------- readings


class Holding(NamedTuple):
    net: Decimal  # free + held + lent - borrowed (``totalQuantity``)
    lent: Decimal  # the claim, rounded down (``lendQuantity``)
    borrowed: Decimal  # the debt, rounded up
    free: Decimal  # ``availableQuantity``


def holdings(collateral: dict) -> dict[str, Holding]:
    """Per asset of a ``collateralQuery`` answer, what the account holds."""
    out = {}
    for row in collateral.get("collateral", []):
        net, lent = Decimal(row["totalQuantity"]), Decimal(row["lendQuantity"])
        free, held = Decimal(row["availableQuantity"]), Decimal(row["openOrderQuantity"])
        out[row["symbol"]] = Holding(net, lent, free + held + lent - net, free)
    return out


POOL_FIGURES = ("lentQuantity", "borrowedQuantity", "availableQuantity", "reserveQuantity", "utilization",
                "lendInterestRate", "borrowInterestRate")


async def read_pools(url: str) -> dict[str, dict[str, Decimal]]:
    """Every pool's figures (``borrowLendMarkets``); empty from a node without pools."""
    async with connect(url) as c:
        reply = await c.request("borrowLendMarkets", sign=False, raw=True)
    return pools_from(reply.get("result") or [])


def pools_from(markets: list[dict]) -> dict[str, dict[str, Decimal]]:
    """``borrowLendMarkets`` items as figures by asset."""
    return {m["symbol"]: {k: Decimal(m[k]) for k in POOL_FIGURES} for m in markets}


def pool_rows(pools: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, str]]:
    """The report's view of the pools: lent, borrowed, cash, reserve, utilization, rates (APR)."""
    names = {"lentQuantity": "lent", "borrowedQuantity": "borrowed", "availableQuantity": "cash",
             "reserveQuantity": "reserve", "utilization": "utilization", "lendInterestRate": "lend_apr",
             "borrowInterestRate": "borrow_apr"}
    return {a: {names[k]: decimal_text(v) for k, v in p.items()} for a, p in sorted(pools.items())}


def reserves(pools: dict[str, dict[str, Decimal]]) -> dict[str, Decimal]:
    return {a: p["reserveQuantity"] for a, p in pools.items()}


def rounding_allowed(accounts: dict[str, dict], decimals: dict[str, int]) -> dict[str, Decimal]:
    """Per asset, what rounding may keep in its pool beyond the reserve: a unit per account
    holding a claim (rounded down) or a debt (rounded up)."""
    out: dict[str, Decimal] = {}
    for a in accounts.values():
        for asset, h in a["holdings"].items():
            n = (h.lent > 0) + (h.borrowed > 0)
            if n:
                out[asset] = out.get(asset, ZERO) + n * Decimal(1).scaleb(-decimals.get(asset, 0))
    return out


async def repay(url: str, keys: list[Keypair], plans: list[LendPlan | None], tries: int = 3) -> dict[str, str]:
    """Every account of the cohort that owes lends all its free balance of the asset (the
    debt is repaid first, interest included); per account what it still owes ("0": nothing)."""
    left: dict[str, str] = {}
    for key, plan in zip(keys, plans):
        if plan is None:
            continue
        async with connect(url, key) as c:
            for _ in range(tries):
                held = holdings(await c.request("collateralQuery")).get(plan.asset)
                owed, free = (held.borrowed, held.free) if held else (ZERO, ZERO)
                if owed <= 0 or free <= 0:
                    break
                reply = await c.request("borrowLendExecute", {"symbol": plan.asset, "side": "Lend",
                                                              "quantity": decimal_text(free)}, raw=True)
                if "error" in reply:
                    await trio.sleep(0.2)
            left[key.api_key] = decimal_text(owed)
    return left


# ---------------------------------------------------------------- checks


def pool_checks(pools: dict[str, dict[str, Decimal]]) -> tuple[dict[str, dict[str, str]], bool]:
    """Per pool: ``cash + borrowed - lent - reserve`` (``surplus_diff``, must be 0), the
    reserve >= 0 and utilization <= 1."""
    rows, ok = {}, True
    for asset, p in sorted(pools.items()):
        diff = p["availableQuantity"] + p["borrowedQuantity"] - p["lentQuantity"] - p["reserveQuantity"]
        solvent = diff == 0 and p["reserveQuantity"] >= 0 and 0 <= p["utilization"] <= 1
        ok = ok and solvent
        rows[asset] = {"surplus_diff": decimal_text(diff), "solvent": solvent}
    return rows, ok


def interest(accounts: dict[str, dict], keys: list[Keypair], plans: list[LendPlan | None],
             pools: dict[str, dict[str, Decimal]], allowed: dict[str, Decimal]) -> tuple[dict, bool]:
    """Per asset the cohort lends: borrowers' interest = lenders' interest + the reserve,
    off by the rounding kept in the pool (``rounding``: at least 0, at most ``allowed``).
    Only the cohort holds the asset, so its holdings against its deposits tell the interest."""
    out, ok = {}, True
    for asset in sorted({p.asset for p in plans if p is not None}):
        paid = earned = ZERO
        n_borrowers = 0
        for key, plan in zip(keys, plans):
            if plan is None or plan.asset != asset:
                continue
            held = accounts.get(key.api_key, {}).get("holdings", {}).get(asset)
            net = held.net if held else ZERO
            if plan.role == "borrow":
                paid += Decimal(BORROWER_BUFFER) - net
                n_borrowers += 1
            else:
                earned += net - Decimal(LENDER_DEPOSIT)
        reserve = pools.get(asset, {}).get("reserveQuantity", ZERO)
        rounding = paid - earned - reserve
        good = ZERO <= rounding <= allowed.get(asset, ZERO) and (paid > 0 or not n_borrowers)
        ok = ok and good
        out[asset] = {"borrowers_interest": decimal_text(paid), "lenders_interest": decimal_text(earned),
                      "reserve": decimal_text(reserve), "rounding": decimal_text(rounding),
                      "rounding_allowed": decimal_text(allowed.get(asset, ZERO)), "ok": good}
    return out, ok


def counts(plans: list[LendPlan | None]) -> dict[str, int]:
    return {"lenders": sum(1 for p in plans if p is not None and p.role == "lend"),
            "borrowers": sum(1 for p in plans if p is not None and p.role == "borrow")}
