"""The whole incident drill: a faulty permission rule on one validator, the divergence,
rollback and replay (`satchel incident`), compensation (`satchel compensate`) submitted to
the node and replayed by a healthy validator; every loser made whole, gainers untouched,
the points of the affected block doubled."""

from __future__ import annotations

import json
import sys
from decimal import Decimal

import pytest
import trio

from conftest import leaves, older_permissions_rule
from satchel.actors import compliance
from satchel.core.messages import BalancesOf, PlaceOrder, block_decoder
from satchel.ledger.journal import read_records
from satchel.signing import Keypair
from satchel.tools.client import connect
from satchel.verify.validator import Divergence, Validator

USDC = 10**6
SOL = 10**9
DECIMALS = {"USDC": 6, "SOL": 9}


async def cli(*args: str) -> tuple[int, str]:
    out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", *args], capture_stdout=True,
                                 capture_stderr=True, check=False)
    return out.returncode, out.stdout.decode() + out.stderr.decode()


async def test_the_incident_drill_from_divergence_to_compensation(server, tmp_path, monkeypatch):
    node = server.node
    admin = node.admin
    dana, erin, seller, maker, taker = (Keypair.generate() for _ in range(5))
    for key in (dana, erin, taker):
        await server.fund(key, USDC=100_000 * USDC)
    for key in (seller, maker):
        await server.fund(key, SOL=1_000 * SOL)
    await server.fund(admin, USDC=1_000_000 * USDC, SOL=10_000 * SOL)  # the treasury: the admin key's own account
    bid = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150", "quantity": "1"}
    async with connect(server.url, admin) as a, connect(server.url, dana) as d, connect(server.url, erin) as e, \
            connect(server.url, seller) as s, connect(server.url, maker) as m, connect(server.url, taker) as t:
        await a.request("adminSetSeason", {"id": "2", "name": "Season 2", "start": "0", "end": "9000000000000"})
        for key in (dana, erin):
            await a.request("adminSetProfile", {"account": key.api_key, "kycTier": "1", "jurisdiction": "XX"})
        # the change the incident began with: jurisdiction XX loses SOL_USDC; dana keeps it by exemption
        await a.request("adminSetPermission", {"jurisdiction": "XX", "symbol": "SOL_USDC", "allowed": "false"})
        await a.request("adminSetPermission", {"account": dana.api_key, "symbol": "SOL_USDC", "allowed": "true"})
        for _ in range(3):  # blocks every rule applies alike
            await m.request("orderExecute", {**bid, "side": "Ask", "price": "151"})
            assert (await t.request("orderExecute", {**bid, "price": "151"}))["status"] == "Filled"
            assert (await e.request("orderExecute", bid))["reason"] == "RegionRestricted"
        await s.request("orderExecute", {**bid, "side": "Ask", "quantity": "3"})
        # the affected block: dana's buy, and others trading in it
        async with trio.open_nursery() as n:
            n.start_soon(d.request, "orderExecute", {**bid, "quantity": "3"})
            n.start_soon(m.request, "orderExecute", {**bid, "side": "Ask", "price": "152"})
        await t.request("orderExecute", {**bid, "price": "152"})
    journal = node.data / "journal"
    affected = next(
        b.header.height for b in map(block_decoder.decode, read_records(journal))
        if any(isinstance(tx, PlaceOrder) and tx.account == dana.api_key for tx in b.txs))

    # 1. one validator runs the older rule: it stops at the affected block
    monkeypatch.setattr(compliance, "decide", older_permissions_rule)
    faulty = tmp_path / "faulty"
    with pytest.raises(BaseExceptionGroup) as group:
        await Validator(faulty, verify_processes=-1).check_journal(journal)
    (stop,) = [x for x in leaves(group.value) if isinstance(x, Divergence)]
    assert stop.report["height"] == affected
    monkeypatch.undo()

    # 2. rollback and replay under the canonical rules: who gained, who lost
    code, out = await cli("incident", "--data", str(faulty))
    assert code == 0, out
    report_path = faulty / f"incident-{affected}.json"
    report = json.loads(report_path.read_text())
    losers = {(r["account"], r["asset"]): -Decimal(r["difference"]) for r in report["losers"]}
    gainers = {(r["account"], r["asset"]) for r in report["gainers"]}
    # under the older rule dana's buy never happened: the seller kept SOL and missed the USDC
    assert (seller.api_key, "USDC") in losers and (dana.api_key, "SOL") in losers
    assert (seller.api_key, "SOL") in gainers and (dana.api_key, "USDC") in gainers

    async def balances(key: str) -> dict[str, int]:
        return {asset: free + held for asset, (free, held) in (await node.ask("risk", BalancesOf(key))).items()}

    everyone = {k.api_key for k in (dana, erin, seller, maker, taker, admin)}
    before = {key: await balances(key) for key in everyone}
    async with connect(server.url, admin) as a:
        points_before = {key: await a.request("rewardsQuery", {"account": key}) for key in everyone - {admin.api_key}}

    # 3. compensation, through the node
    code, out = await cli("compensate", "--report", str(report_path), "--url", server.url, "--data", str(node.data))
    assert code == 0, out
    after = {key: await balances(key) for key in everyone}
    for (account, asset), loss in losers.items():  # every loser whole: paid exactly the loss
        assert after[account][asset] - before[account][asset] == int(loss * 10 ** DECIMALS[asset]), (account, asset)
    for account in everyone - {admin.api_key}:  # gainers keep their gains; nothing else moved
        for asset in ("USDC", "SOL"):
            if (account, asset) not in losers:
                assert after[account].get(asset, 0) == before[account].get(asset, 0)
    paid = {asset: sum(int(v * 10 ** DECIMALS[asset]) for (_, a), v in losers.items() if a == asset) for asset in DECIMALS}
    for asset in DECIMALS:
        assert before[admin.api_key][asset] - after[admin.api_key][asset] == paid[asset]
    # x2 on the points earned in the affected block, for exactly those who traded in it
    doubled = set()
    async with connect(server.url, admin) as a:
        for key, old in points_before.items():
            new = await a.request("rewardsQuery", {"account": key})
            in_block = sum(Decimal(h["points"]) for h in old["history"] if h["height"] == affected)
            assert Decimal(new["points"]) - Decimal(old["points"]) == in_block, key
            if in_block > 0:
                doubled.add(key)
    assert {dana.api_key, seller.api_key} <= doubled  # both sides of the affected trade

    # 4. a healthy validator replays everything, compensation included
    height = await Validator(tmp_path / "healthy", verify_processes=-1).check_journal(journal)
    assert height > affected + 1
    # and the same report is never paid twice
    code, out = await cli("compensate", "--report", str(report_path), "--url", server.url, "--data", str(node.data))
    assert code == 2 and "compensated already" in out
