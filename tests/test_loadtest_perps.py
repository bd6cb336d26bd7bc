"""The perps load test: its index file, node configuration and checks without a node, and
end to end: an embedded node replays the runner's crash, leveraged takers are liquidated
through every tier while idle balances are auto-lent and makers lend and borrow SOL, and
money (pools included), open interest and interest still add up."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D

from satchel import config, oracle
from satchel.core.amounts import to_units
from satchel.tools.loadtest import perps
from satchel.tools.loadtest.plan import market_plans
from satchel.tools.loadtest.report import verdict

CFG = config.load()


def test_the_index_file_walks_then_crashes_on_ticks(tmp_path):
    plans = market_plans(CFG, None, perps=True)
    assert [p.symbol for p in plans] == ["BTC_USDC_PERP", "ETH_USDC_PERP", "SOL_USDC_PERP"]
    tl = perps.timeline(warmup=1, duration=8)
    path = tmp_path / "index.csv"
    path.write_text(perps.oracle_csv(plans, tl, seed=1))
    rows = oracle.load_prices(path, CFG.market_specs())  # what `satchel serve --oracle-file` accepts
    assert rows[-1].timestamp_ms == tl.end_s * 1000
    for p in plans:
        prices = [(r.timestamp_ms / 1000, to_units(r.price, p.price_decimals)) for r in rows if r.symbol == p.symbol]
        before = [x for t, x in prices if t < tl.crash_s]
        after = [x for t, x in prices if t >= tl.crash_s + perps.CRASH_STEPS * perps.CRASH_STEP_S]
        assert all(abs(x - p.mid) * 10_000 <= p.mid * (perps.WALK_BPS + 1) for x in before)  # calm
        assert all(abs(x - p.mid * 3 // 4) * 10_000 <= p.mid * (perps.WALK_BPS + 1) for x in after)  # 25% down
        steps = [b / a for (_, a), (_, b) in zip(prices, prices[1:]) if b < a * 0.97]
        assert len(steps) == perps.CRASH_STEPS  # each steeper than a 20x long's margin
        assert all(s < 0.95 for s in steps)


def test_the_node_configuration_names_the_backstop(tmp_path):
    key = "Jvika4J6aKo2u7I61tPlruC525dbepES+gxeScO/TnM="
    for text in (config.DEFAULTS.read_text(), "[[assets]]\nsymbol = \"USDC\"\ndecimals = 6\n"):
        path = tmp_path / "node.toml"
        path.write_text(perps.with_backstop(text, key))
        assert config.load(path).margin.backstop == key


def account(positions: dict, equity: str, tiers: list[int]) -> dict:
    return {"positions": {s: (D(q), D(c)) for s, (q, c) in positions.items()}, "equity": D(equity), "tiers": tiers,
            "tier_names": {t: f"tier{t}" for t in tiers}}


def report_with(correctness: dict) -> dict:
    return {"orders": {"error_rate": 0.0}, "ack_latency_us": {"p99": 0}, "perps": {},
            "correctness": {"lost_acks": 0, "depth_gaps": 0, "book_mismatches": 0, **correctness}}


def test_the_checks_catch_unbalanced_open_interest_and_unrescued_deficits():
    sol = "SOL_USDC_PERP"
    accounts = {
        "long": account({}, "0", [5, 5, 4, 2, 1]),  # closed out: nothing left
        "rescued": account({}, "-0.000001", [5, 2, 1]),  # ADL leaves a rounding unit: allowed
        "short": account({sol: ("-2", "-300")}, "150", []),
        "backstop": account({sol: ("2", "290")}, "40", []),
    }
    c = perps.checks(accounts, {sol: D(2)}, [sol])
    assert c["open_interest_ok"] and c["negative_equity"] == [] and c["liquidation_tiers"] == [1, 2, 4, 5]
    assert c["liquidation_paths"]["long"] == {"tiers": "12455", "equity": "0"}
    assert perps.net_costs(accounts) == -10
    assert verdict(report_with(c), None, None) == []
    # a position nobody holds the other side of, and the node counting otherwise
    accounts["backstop"] = account({sol: ("1.5", "290")}, "40", [])
    c = perps.checks(accounts, {sol: D(2)}, [sol])
    (why,) = verdict(report_with(c), None, None)
    assert why == "open interest does not balance: SOL_USDC_PERP long 1.5 short 2 node 2"
    # below zero with only book unwinds: nobody paid for the deficit
    accounts["backstop"] = account({sol: ("2", "290")}, "40", [])
    accounts["unwound"] = account({}, "-3", [2, 2, 1])
    (why,) = verdict(report_with(perps.checks(accounts, {sol: D(2)}, [sol])), None, None)
    assert why == "below zero equity without an insurance-fund or ADL step: unwound"
    # a crash without liquidations
    (why,) = verdict(report_with(perps.checks({"flat": account({}, "100", [])}, {}, [sol])), None, None)
    assert why == "the crash liquidated nobody"


def test_perps_loadtest_liquidates_through_every_tier_and_conserves_with_interest(tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-m", "satchel.tools.cli", "loadtest", "--embedded", "--scenario", "perps", "--traders", "9",
         "--workers", "2", "--duration", "8", "--warmup", "1", "--subscribers", "1", "--rate", "400",
         "--out", str(out), "--max-error-rate", "0.01"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["passed"] is True, rep["failures"]
    o = rep["orders"]
    assert o["sent"] > 1000 and o["acked"] + o["errors"] + o["cancel_races"] == o["sent"]
    c = rep["correctness"]
    assert c["lost_acks"] == 0 and c["depth_gaps"] == 0 and c["book_mismatches"] == 0
    # deposits - withdrawals = balances (with unsettled PnL) + fees (with the insurance fund)
    assert c["conservation_ok"] is True
    usdc = c["conservation"]["USDC"]
    assert D(usdc["deposited"]) == 3 * 1_000_000 + 6 * 100 + 300 + 250  # makers, takers, backstop, fund seed
    assert all(D(v) == 0 for k, v in usdc.items() if k.endswith("_diff"))
    # every position is the traders' or the backstop's: long = short = the node's open interest
    assert c["open_interest_ok"] is True
    assert all(row["long"] == row["short"] == row["node"] for row in c["open_interest"].values())
    assert any(D(row["long"]) > 0 for row in c["open_interest"].values())
    assert c["negative_equity"] == []
    # the crash reached every tier: cancel, book unwind, backstop, insurance fund, ADL
    assert c["liquidation_tiers"] == [1, 2, 3, 4, 5], c["liquidations"]
    assert c["liquidated_accounts"] >= 3
    assert rep["perps"]["crash_drop"] == 0.25
    assert 0 < rep["perps"]["crash_after_warmup_s"] < 8
    # with auto-lend on (the default) idle USDC was lent, and makers lent and borrowed SOL
    lend = rep["lending"]
    assert (lend["plan"]["lenders"], lend["plan"]["borrowers"]) == (2, 1)
    assert o["borrow_lend_acked"].get("Borrow", 0) > 0, o  # lenders' redeems and borrows
    end = lend["end_of_run"]
    assert D(end["USDC"]["lent"]) > 1_000_000 and D(end["SOL"]["lent"]) > 3900 and 0 <= D(end["SOL"]["utilization"]) <= 1
    assert all(v == "0" for v in lend["still_owed"].values())  # the borrowers repaid at the end
    sol = c["conservation"]["SOL"]
    assert D(sol["deposited"]) == 2 * 2000 + 20 and D(sol["pool_reserve"]) > 0
    assert 0 <= D(sol["traders_diff"]) <= D(sol["traders_rounding_allowed"])
    # every pool solvent; interest: borrowers' = lenders' + reserve, within the rounding
    assert c["pools_ok"] is True and all(p["solvent"] for p in c["pools"].values())
    interest = c["interest"]["SOL"]
    assert c["interest_ok"] is True and D(interest["borrowers_interest"]) > D(interest["lenders_interest"]) > 0
    assert D(interest["borrowers_interest"]) - D(interest["lenders_interest"]) - D(interest["reserve"]) == D(interest["rounding"])
