"""Validators: agreement with the node, resume from snapshot, and the incident drill."""

from __future__ import annotations

import json
import time
import subprocess
import sys

import pytest
import trio

from conftest import run_node, signed_order, wait_ready, workload as node_workload, leaves
from satchel.tools.client import connect, free_port
from satchel.config import DEFAULTS
from satchel.ledger.journal import read_records
from satchel.core.messages import PlaceOrder, block_decoder
from satchel.signing import load_key
from satchel.signing import Keypair
from satchel.verify.validator import Divergence, Validator, validator_key


def start_node(tmp_path, port: int, rport: int) -> subprocess.Popen:
    """A node whose block stream allows the validator keeping its data in tmp_path/v."""
    cfg = tmp_path / "node.toml"
    cfg.write_text(DEFAULTS.read_text().replace("snapshot_blocks = 10000", "snapshot_blocks = 5"))
    return subprocess.Popen(
        [sys.executable, "-m", "satchel.tools.cli", "serve", "--data", str(tmp_path / "node"), "--port", str(port),
         "--replication-port", str(rport), "--no-demo", "--no-oracle", "--rest-port", "-1", "--config", str(cfg),
         "--allow-follower", validator_key(tmp_path / "v").api_key],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.log", "wb"))


def limit(symbol: str, side: str, price: str, qty: str) -> dict:
    return {"symbol": symbol, "side": side, "orderType": "Limit", "price": price, "quantity": qty}


async def workload(url: str, data) -> tuple[Keypair, ...]:
    alice, bob, carol = Keypair.generate(), Keypair.generate(), Keypair.generate()
    async with connect(url, load_key(data, "admin.key")) as admin:
        for key, asset, qty in ((alice, "USDC", "100000"), (carol, "USDC", "100000"), (bob, "SOL", "1000"), (bob, "ETH", "100")):
            await admin.request("deposit", {"account": key.api_key, "asset": asset, "quantity": qty})
        # carol may not trade SOL_USDC; ETH_USDC stays open to her
        await admin.request("adminSetTrading", {"account": carol.api_key, "symbol": "SOL_USDC", "enabled": False})
    async with connect(url, alice) as a, connect(url, bob) as b, connect(url, carol) as c:
        # lending in the journal: a manual lend, a borrow against USDC, auto-lend sweeps, interest
        await a.request("borrowLendExecute", {"symbol": "USDC", "side": "Lend", "quantity": "5000"})
        await c.request("borrowLendExecute", {"symbol": "USDC", "side": "Borrow", "quantity": "4000"})
        for i in range(12):
            await b.request("orderExecute", limit("SOL_USDC", "Ask", f"{150 + i % 3}", "1"))
            await b.request("orderExecute", limit("ETH_USDC", "Ask", f"{3000 + i % 3}", "0.1"))
            await a.request("orderExecute", limit("SOL_USDC", "Bid", "152", "0.5"))
            if i >= 6:  # the first six blocks' worth of traffic never touches carol's permission
                r = await c.request("orderExecute", limit("ETH_USDC", "Bid", "3002", "0.1"))
                assert r["status"] == "Filled"
                r = await c.request("orderExecute", limit("SOL_USDC", "Bid", "152", "0.1"))
                assert r["reason"] == "AccountTradingDisabled"
        await trio.sleep(1.1)  # a sweep of the balances the orders moved
        await c.request("borrowLendExecute", {"symbol": "USDC", "side": "Lend", "quantity": "4000.01"})
    return alice, bob, carol


def node_height(data) -> int:
    return block_decoder.decode(list(read_records(data / "journal"))[-1]).header.height


async def follow_until(v: Validator, url: str, height: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(v.follow, url)
        with trio.fail_after(30):
            while v.chain is None or v.chain.height < height:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


@pytest.fixture
def node(tmp_path):
    port, rport = free_port(), free_port()
    proc = start_node(tmp_path, port, rport)
    yield proc, f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{rport}", tmp_path / "node"
    proc.kill()
    proc.wait()


async def test_validator_agrees_and_resumes(node, tmp_path):
    proc, url, rurl, data = node
    await wait_ready(url, proc)
    await workload(url, data)
    height = node_height(data)
    v = Validator(tmp_path / "v", snapshot_blocks=5)
    await follow_until(v, rurl, height)
    assert v.verified_signatures > 60  # every deposit, admin change and order, re-verified
    assert not list((tmp_path / "v").glob("divergence-*.json"))
    # the node knows how far its validator verified, and that it agrees (nodeStats, /ops)
    async with connect(url) as c:
        (seen,) = (await c.request("nodeStats", {}, sign=False))["validators"]
    assert seen["key"] == validator_key(tmp_path / "v").api_key and seen["agrees"] and seen["diverged"] is None
    assert seen["height"] >= 1 and not seen["connected"]  # it hung up when follow_until returned
    assert json.loads((tmp_path / "v" / "status.json").read_text())["height"] >= 1
    # a restart resumes from the validator's own snapshot and journal
    v2 = Validator(tmp_path / "v", snapshot_blocks=5)
    async with connect(url) as c:
        await c.request("depth", {"symbol": "SOL_USDC"}, sign=False)
    await follow_until(v2, rurl, height)
    assert v2.verified_signatures < v.verified_signatures  # only what it had not seen, if anything
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "validator", "--journal", str(data / "journal"),
                          "--data", str(tmp_path / "offline")], capture_output=True, text=True)
    assert out.returncode == 0 and f"blocks=1..{height}" in out.stdout
    # the node's data directory, as 'satchel replay --data' takes it, is the same journal
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "validator", "--journal", str(data),
                          "--data", str(tmp_path / "offline2")], capture_output=True, text=True)
    assert out.returncode == 0 and f"blocks=1..{height}" in out.stdout


@pytest.mark.parametrize("where", ["empty", "missing", "validator-dir"])
def test_validator_refuses_a_directory_without_journal(tmp_path, where):
    """Checking nothing is not a success: no segments means a clear error and exit 2."""
    target = tmp_path / "target"
    if where == "empty":
        target.mkdir()
    elif where == "validator-dir":  # e.g. a validator's dir: status.json and keys, no segments
        (target / "journal").mkdir(parents=True)
        (target / "status.json").write_text("{}")
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "validator", "--journal", str(target),
                          "--data", str(tmp_path / "v")], capture_output=True, text=True)
    assert out.returncode == 2, out
    assert "validated" not in out.stdout
    assert out.stderr.strip() == f"satchel validator: no journal segments (*.seg) in {target} or {target / 'journal'}"


async def test_incident_drill(node, tmp_path, monkeypatch):
    """A validator with a changed permission rule stops at the first affected block;
    'satchel incident' then says exactly who gained and who lost."""
    proc, url, rurl, data = node
    await wait_ready(url, proc)
    from satchel.actors import risk
    monkeypatch.setattr(risk, "spot_forbidden", lambda rules, symbol: bool(rules))  # the faulty rule
    v = Validator(tmp_path / "v", snapshot_blocks=5)
    stopped: list[BaseException] = []

    async def run_validator() -> None:
        try:
            await v.follow(rurl)
        except BaseExceptionGroup as eg:
            stopped.extend(leaves(eg))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_validator)  # the validator runs alongside the node, live
        alice, bob, carol = await workload(url, data)
        with trio.fail_after(30):
            while not stopped:
                await trio.sleep(0.05)
    assert any(isinstance(e, Divergence) for e in stopped), stopped
    first_affected = next(
        b.header.height for b in map(block_decoder.decode, read_records(data / "journal"))
        if any(isinstance(tx, PlaceOrder) and tx.account == carol.api_key and tx.symbol == "ETH_USDC" for tx in b.txs))
    report = json.loads((tmp_path / "v" / f"divergence-{first_affected}.json").read_text())
    assert report["kind"] == "events" and report["height"] == first_affected
    async with connect(url) as c:  # the node's operators see where it stopped
        (seen,) = (await c.request("nodeStats", {}, sign=False))["validators"]
    assert seen["diverged"] == first_affected and not seen["agrees"] and seen["height"] == first_affected - 1
    assert report["node_only"] and report["validator_only"]  # the differing events are named
    monkeypatch.undo()

    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "incident", "--data", str(tmp_path / "v")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    inc = json.loads((tmp_path / "v" / f"incident-{first_affected}.json").read_text())
    assert inc["divergent_height"] == first_affected and inc["rolled_back_to"] < first_affected
    gained = {(r["account"], r["asset"]) for r in inc["gainers"]}
    lost = {(r["account"], r["asset"]) for r in inc["losers"]}
    # under the faulty rule carol's ETH buy never happened: she kept USDC, bob kept ETH
    assert (carol.api_key, "USDC") in gained and (carol.api_key, "ETH") in lost
    assert (bob.api_key, "ETH") in gained and (bob.api_key, "USDC") in lost
    assert "carol" not in out.stdout and "gainer" in out.stdout


async def test_validator_refuses_other_rules_version(tmp_path, monkeypatch):
    from satchel.ledger import chain
    from satchel.ledger.chain import DivergedError

    data = tmp_path / "data"
    await run_node(data, node_workload)
    ours = chain.RULES_VERSION
    monkeypatch.setattr(chain, "RULES_VERSION", ours + 1)
    with pytest.raises(BaseExceptionGroup) as group:
        await Validator(tmp_path / "v", verify_processes=-1).check_journal(data / "journal")
    (exc,) = [e for e in leaves(group.value) if isinstance(e, DivergedError)]
    assert f"rules version {ours}; this code runs {ours + 1}" in str(exc)


async def test_validator_catches_a_signature_reused_for_another_order(tmp_path):
    """A node that journals an order differing from what its account signed is caught."""
    import msgspec

    from satchel.core.messages import Deposit
    from satchel.node import Node
    from satchel.signing import auth_for

    data = tmp_path / "data"
    key = Keypair.generate()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(data).run)
        params = {"account": key.api_key, "asset": "USDC", "quantity": "10000"}
        await node.submit_wait(Deposit(node.admin.api_key, key.api_key, "USDC", 10**10, auth_for(node.admin, "deposit", params)))
        honest = signed_order(key)
        await node.submit_wait(honest)
        forged = msgspec.structs.replace(signed_order(key, clientId=1), price=honest.price + 100)  # not what was signed
        await node.submit_wait(forged)
        node.shutdown()
    with pytest.raises(BaseExceptionGroup) as group:
        await Validator(tmp_path / "v").check_journal(data / "journal")
    (d,) = [e for e in leaves(group.value) if isinstance(e, Divergence)]
    assert d.report["kind"] == "signatures"
    assert "do not match the transaction" in d.report["problems"][0]


async def test_validator_checks_each_item_of_a_signed_batch(tmp_path):
    """A batch's one signature covers all its items: the validator re-verifies each
    journaled item alone, and catches an item that is not among what was signed."""
    import msgspec

    from conftest import LISTING
    from satchel.core import instructions
    from satchel.core.messages import Auth, Deposit
    from satchel.node import Node
    from satchel.signing import auth_for, batch_signing_string

    def batch(key: Keypair, items: list[dict], forged: dict | None = None) -> list[PlaceOrder]:
        ts = int(time.time() * 1000)
        sorted_items = tuple(tuple(sorted(i.items())) for i in items)
        sig = key.sign(batch_signing_string("orderExecute", sorted_items, ts, 5000))
        txs = []
        for n, item in enumerate(items):
            tx = instructions.build("orderExecute", forged if forged and n == 1 else item, key.api_key, LISTING)
            txs.append(msgspec.structs.replace(tx, auth=Auth(
                tuple(sorted((forged if forged and n == 1 else item).items())), False, sig, ts, 5000, sorted_items, n)))
        return txs

    items = [{"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": p, "quantity": "1"} for p in ("140", "139")]
    for forged in (None, {**items[1], "price": "100"}):
        data = tmp_path / ("forged" if forged else "honest") / "data"
        key = Keypair.generate()
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(data).run)
            params = {"account": key.api_key, "asset": "USDC", "quantity": "10000"}
            await node.submit_wait(Deposit(node.admin.api_key, key.api_key, "USDC", 10**10,
                                           auth_for(node.admin, "deposit", params)))
            for tx in batch(key, items, forged):
                node.submit(tx)
            await node.submit_wait(signed_order(key))
            node.shutdown()
        if forged is None:
            await Validator(data.parent / "v").check_journal(data / "journal")
            continue
        with pytest.raises(BaseExceptionGroup) as group:
            await Validator(data.parent / "v").check_journal(data / "journal")
        (d,) = [e for e in leaves(group.value) if isinstance(e, Divergence)]
        assert d.report["kind"] == "signatures" and len(d.report["bad_seqs"]) == 1
        assert "bad signature" in d.report["problems"][0], d.report
