"""Incidents with perpetual futures: a validator whose liquidation rule differs stops at
the crash block, and ``satchel incident`` names whose positions, PnL and liquidation
steps changed, and by how much the insurance fund did."""

from __future__ import annotations

import json
import sys
from decimal import Decimal

import msgspec
import pytest
import trio

from conftest import order, run_node, leaves
from satchel import config
from satchel.actors.liquidation import ADL, BACKSTOP, INSURANCE, Liquidator
from satchel.actors.margin import HISTORY
from satchel.core.instructions import INSURANCE_ACCOUNT
from satchel.core.messages import ASK, BID, Deposit, Event, Liquidation, PlaceOrder, SetIndex, block_decoder
from satchel.core.state import EngineState
from satchel.ledger import snapshots
from satchel.ledger.journal import read_records
from satchel.verify.incident import compare, investigate
from satchel.verify.validator import Divergence, Validator

P = "SOL_USDC_PERP"
USDC = 10**6
CRASH = 14300  # the index the crash block sets (price units)


def with_backstop() -> config.Config:
    """The defaults with a backstop account ("bs"), so a close-out can reach every tier."""
    cfg = config.load()
    return msgspec.structs.replace(cfg, margin=msgspec.structs.replace(cfg.margin, backstop="bs"))


def perp(account: str, side: int, price: float, qty: float) -> PlaceOrder:
    return order(account, side, round(price * 100), round(qty * 100), symbol=P)


async def crash(node) -> None:
    """A 37x long, its short and a thin book, then the index falls from 150 to 143: the
    long is closed out in the crash block -- the insurance fund covers its deficit (tier
    4), the backstop takes what its margin allows (3), the short the rest (5)."""
    admin = node.admin.api_key
    for account, amount in (("long", 40), ("short", 10_000), ("mm", 10_000), ("bs", 15), (INSURANCE_ACCOUNT, 1000)):
        await node.submit_wait(Deposit(admin, account, "USDC", amount * USDC))
    await node.submit_wait(SetIndex(admin, P, 15000))
    await node.submit_wait(perp("long", BID, 150, 10))
    await node.submit_wait(perp("short", ASK, 150, 10))
    await node.submit_wait(perp("mm", BID, 144, 1))
    events = await node.submit_wait(SetIndex(admin, P, CRASH))
    tiers = {e.tier for e in events if isinstance(e, Liquidation) and e.account == "long"}
    assert {INSURANCE, BACKSTOP, ADL} <= tiers, tiers
    # a block after the crash: the validator must stop before it
    await node.submit_wait(Deposit(admin, "late", "USDC", USDC))


def heights(journal) -> tuple[int, int]:
    """(the crash block's height, the last height) in a node's journal."""
    blocks = [block_decoder.decode(p) for p in read_records(journal)]
    crashed = next(b.header.height for b in blocks
                   if any(isinstance(tx, SetIndex) and tx.price == CRASH for tx in b.txs))
    return crashed, blocks[-1].header.height


def the_fund_never_pays(monkeypatch) -> None:
    """The faulty rule: a validator whose insurance fund never covers a deficit (tier 4)."""
    monkeypatch.setattr(Liquidator, "_cover", lambda self, account, f, seq, out, auto=0: 0)


@pytest.fixture
async def diverged(tmp_path, monkeypatch):
    """The crash journal, checked offline by a validator under the faulty rule: (the
    validator's data dir, the crash height, its divergence report)."""
    journal = tmp_path / "node" / "journal"
    await run_node(tmp_path / "node", crash, with_backstop())
    height, last = heights(journal)
    assert height < last
    the_fund_never_pays(monkeypatch)
    with pytest.raises(BaseExceptionGroup) as group:
        # no signature checks: the workload's orders are submitted to the node unsigned
        await Validator(tmp_path / "v", verify_processes=-1).check_journal(journal)
    monkeypatch.undo()  # ``satchel incident`` replays under the canonical rules
    (d,) = [e for e in leaves(group.value) if isinstance(e, Divergence)]
    return tmp_path / "v", height, d.report


async def test_a_different_liquidation_rule_stops_the_validator_at_the_crash_block(diverged):
    v, height, report = diverged
    assert report["kind"] == "events" and report["height"] == height  # every block before it agreed
    assert json.loads((v / f"divergence-{height}.json").read_text())["height"] == height
    assert snapshots.newest(v / "diverged").height == height  # the state it reached, for ``satchel incident``
    # offline there are no node events to diff against: the validator lists its own
    mine = msgspec.convert(report["validator_events"], list[Event])
    tiers = {e.tier for e in mine if isinstance(e, Liquidation)}
    assert ADL in tiers and not tiers & {INSURANCE, BACKSTOP}  # equity stays negative: straight to auto-deleveraging


async def test_incident_names_positions_liquidations_and_the_insurance_fund(diverged):
    v, height, _ = diverged
    inc = await investigate(v)
    assert inc["divergent_height"] == height and inc["rolled_back_to"] == 0
    # the close-out leaves the long with nothing either way and no one else realized
    # anything: balances agree, the whole difference is in positions and the fund
    assert inc["gainers"] == inc["losers"] == [] and inc["totals"] == {}
    # positions: the backstop holds part of the long only canonically; the short took all of it on the diverged side
    pos = {(r["account"], r["symbol"]): r for r in inc["positions"]}
    assert set(pos) == {("bs", P), ("short", P)}
    assert Decimal(pos["bs", P]["diverged"]["size"]) == 0 < Decimal(pos["bs", P]["canonical"]["size"])
    assert Decimal(pos["short", P]["difference"]["size"]) == -Decimal(pos["bs", P]["difference"]["size"])
    # both sides valued at the canonical mark; with balances and fees equal, conservation
    # says the positions' unrealized PnL lost on the diverged side is what its fund kept
    assert P in inc["marks"]
    unrealized = sum(Decimal(r["difference"]["unrealized"]) for r in inc["positions"])
    assert unrealized == -Decimal(inc["insurance"]["difference"]) < 0
    # liquidation steps: tiers 4 and 3 only canonically, the auto-deleveraging differs
    only = {side: {(r["account"], r["tier"], r["counterparty"]) for r in rows}
            for side, rows in inc["liquidations"].items()}
    assert ("long", INSURANCE, None) in only["canonical_only"] and ("long", BACKSTOP, "bs") in only["canonical_only"]
    assert ("long", ADL, "short") in only["diverged_only"] and ("long", ADL, "short") in only["canonical_only"]
    assert not any(tier == INSURANCE for _, tier, _ in only["diverged_only"])
    # the fund kept on the diverged side what it paid canonically
    cover = next(r for r in inc["liquidations"]["canonical_only"] if r["tier"] == INSURANCE)
    assert Decimal(inc["insurance"]["difference"]) == Decimal(cover["amount"]) > 0


async def test_the_incident_command_shows_and_writes_the_perp_sections(diverged):
    v, height, _ = diverged
    out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", "incident", "--data", str(v)],
                                 capture_stdout=True, capture_stderr=True, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    text = out.stdout.decode()
    assert "balances: diverged node vs canonical replay" in text and "totals (diverged - canonical)" in text
    assert "perp positions" in text and "liquidation steps" in text and "insurance fund (USDC)" in text
    inc = json.loads((v / f"incident-{height}.json").read_text())
    assert inc["positions"] and inc["liquidations"]["canonical_only"] and inc["insurance"]["difference"] != "0"


async def test_steps_a_full_history_dropped_are_not_reported_as_undone(diverged):
    """Each state keeps an account's newest ``HISTORY`` steps: one more step on one side
    pushes its oldest out there, which is no difference between the runs."""
    v, _, _ = diverged
    state = snapshots.decode_state(snapshots.newest(v / "diverged"))
    step = next(e for _, events in state.risk.margin.history for e in events if isinstance(e, Liquidation))
    steps = [msgspec.structs.replace(step, timestamp=step.timestamp + i) for i in range(HISTORY + 1)]

    def keeping(kept: list) -> EngineState:
        margin = msgspec.structs.replace(state.risk.margin, history=[(step.account, kept)])
        return msgspec.structs.replace(state, risk=msgspec.structs.replace(state.risk, margin=margin))

    body = compare(keeping(steps[1:]), keeping(steps[:HISTORY]))  # the diverged side took the newest step
    assert [r["timestamp"] for r in body["liquidations"]["diverged_only"]] == [steps[-1].timestamp]
    assert body["liquidations"]["canonical_only"] == []


async def test_a_validator_with_the_same_rules_agrees_through_the_crash(tmp_path):
    """The crash journal -- marks, the periodic phase, every liquidation tier -- replays
    block by block to the node's event commitments."""
    await run_node(tmp_path / "node", crash, with_backstop())
    # a differing block would raise Divergence (see the fixture above)
    height = await Validator(tmp_path / "v", verify_processes=-1).check_journal(tmp_path / "node" / "journal")
    assert height == heights(tmp_path / "node" / "journal")[1]
