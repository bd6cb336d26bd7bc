"""The load test's lending cohort and its end-of-run checks, without a node: who lends and
borrows what, the requests a borrower sends, pool solvency and interest conservation."""

from __future__ import annotations

import random
from decimal import Decimal as D

from test_loadtest_conservation import pool, report_with

from satchel import config
from satchel.signing import Keypair
from satchel.tools.loadtest import lending
from satchel.tools.loadtest.lending import Holding
from satchel.tools.loadtest.plan import Borrowing, Flow, LendPlan, market_plans, roles
from satchel.tools.loadtest.report import verdict


def test_a_pool_is_solvent_when_cash_plus_borrowed_less_lent_is_its_reserve():
    good = pool("SOL", "700.0000008", "300.000001", "400", "0.0000002", "0.428571")
    rows, ok = lending.pool_checks(lending.pools_from([good]))
    assert ok and rows["SOL"] == {"surplus_diff": "0", "solvent": True}
    for bad in (pool("SOL", "700.0000009", "300.000001", "400", "0.0000002"),  # claims beyond what it has
                pool("SOL", "700", "300", "400", "0", "1.000001"),  # over 100% utilization
                pool("SOL", "700.000001", "300", "400", "-0.000001")):  # a negative reserve
        rows, ok = lending.pool_checks(lending.pools_from([bad]))
        assert not ok, bad
    (why,) = verdict(report_with({"pools": rows, "pools_ok": ok}), None, None)
    assert why == "lending pools not solvent: SOL (cash + borrowed - lent - reserve = 0)"


def test_borrowers_interest_is_the_lenders_plus_the_reserve():
    lender, borrower, other = Keypair.generate(), Keypair.generate(), Keypair.generate()
    keys = [lender, borrower, other]
    plans = [LendPlan("lend", "SOL", 9, 1), LendPlan("borrow", "SOL", 9, 1, 10), None]
    deposit, buffer = D(lending.LENDER_DEPOSIT), D(lending.BORROWER_BUFFER)

    def accounts(earned: str, paid: str) -> dict:
        lent = deposit + D(earned)
        return {lender.api_key: {"holdings": {"SOL": Holding(lent, lent, D(0), D(0))}},
                borrower.api_key: {"holdings": {"SOL": Holding(buffer - D(paid), D(0), D(0), buffer - D(paid))}},
                other.api_key: {"holdings": {"USDC": Holding(D(5), D(5), D(0), D(0))}}}

    pools = lending.pools_from([pool("SOL", "2000.000003", "0", "2000.000004", "0.000001")])
    allowed = {"SOL": D("0.000000001")}
    out, ok = lending.interest(accounts("0.000003", "0.000004001"), keys, plans, pools, allowed)
    assert ok, out
    assert out["SOL"] == {"borrowers_interest": "0.000004001", "lenders_interest": "0.000003", "reserve": "0.000001",
                          "rounding": "0.000000001", "rounding_allowed": "0.000000001", "ok": True}
    # lenders paid more than borrowers were charged; a reserve nobody paid for
    for earned, paid in (("0.000004", "0.000004001"), ("0.000003", "0.000003")):
        out, ok = lending.interest(accounts(earned, paid), keys, plans, pools, allowed)
        assert not ok
    (why,) = verdict(report_with({"interest": out, "interest_ok": ok}), None, None)
    assert why.startswith("interest does not add up: SOL: borrowers paid 0.000003, lenders earned 0.000003")
    # borrowers that borrowed nothing: no interest, which fails a run meant to accrue some
    no_pool = lending.pools_from([pool("SOL", "2000", "0", "2000", "0")])
    assert not lending.interest(accounts("0", "0"), keys, plans, no_pool, allowed)[1]
    assert lending.interest(accounts("0", "0"), keys, [plans[0], None, None], no_pool, allowed)[1]


def test_an_open_borrow_after_the_final_repay_fails_the_run():
    report = report_with({})
    report["lending"] = {"still_owed": {"A" * 44: "0", "B" * 44: "0.000000012"}}
    assert verdict(report, None, None) == ["borrows still open after the final repay: BBBBBBBB 0.000000012"]


def test_makers_lend_and_borrow_within_their_plan():
    cfg = config.load()
    rs = roles("perps", 9)
    plans = lending.cohort(rs, 9)
    assert [(i, p.role) for i, p in enumerate(plans) if p] == [(0, "lend"), (3, "borrow"), (6, "lend")]
    borrower = plans[3]
    assert borrower.cap == 2 * 2000 * 6 // 10 * 10**9  # 60% of the lenders' SOL
    assert lending.deposits([Keypair.generate() for _ in range(9)], plans)[1][1:] == ("SOL", "20")
    # a borrower never owes more than its cap and never repays more than it borrowed
    b = Borrowing(borrower)
    rng = random.Random(3)
    owed = 0
    sides = set()
    for _ in range(500):
        method, params = b.next(rng)
        qty = int(D(params["quantity"]) * 10**9)
        sides.add(params["side"])
        owed += qty if params["side"] == "Borrow" else -qty
        assert method == "borrowLendExecute" and params["symbol"] == "SOL" and 0 <= owed <= borrower.cap
        if rng.random() < 0.1:  # refused: undone
            b.refused(params)
            owed -= qty if params["side"] == "Borrow" else -qty
        assert b.owed == owed
    assert sides == {"Borrow", "Lend"}
    # a lender only redeems, a small part of its deposit at a time
    lender = Borrowing(plans[0])
    assert {lender.next(rng)[1]["side"] for _ in range(50)} == {"Borrow"}
    assert max(D(lender.next(rng)[1]["quantity"]) for _ in range(50)) <= D(lending.LENDER_DEPOSIT) * 3 * lending.REDEEM_SHARE
    # the makers' flow sends them in place of a few orders
    flow = Flow("mm", market_plans(cfg, None, perps=True), seed=1, lending=borrower)
    methods = [flow.next()[0] for _ in range(2000)]
    assert 0.02 < methods.count("borrowLendExecute") / len(methods) < 0.1
