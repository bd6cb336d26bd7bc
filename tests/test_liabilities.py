"""Proof of liabilities: every balance is provably in the root; editing any figure a proof
shows (or its path) fails; ``verify-proof`` says "included" only against a given root."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import msgspec
from hypothesis import given, settings, strategies as st

from conftest import run_node, small_snapshots, workload
from satchel.ledger import liabilities
from satchel.ledger import snapshots
from satchel.core.amounts import format_units
from satchel.core.messages import AssetSpec
from satchel.core.state import AccountBalances, AssetBalance, EngineState, RiskState

DECIMALS = {"USDC": 6, "SOL": 9}


def fake_state(balances: dict) -> EngineState:
    rows = [AccountBalances(acct, [AssetBalance(a, free, held) for a, (free, held) in sorted(assets.items())])
            for acct, assets in sorted(balances.items())]
    return EngineState(
        rules_version=1, admin="admin", margin=None, assets=[AssetSpec("SOL", 9), AssetSpec("USDC", 6)], markets=[],
        risk=RiskState(balances=rows, holds=[], fees=[], deposits=[], accounts_off=[], markets_off=[]),
        books=[], guard=[], last_seq=0, last_timestamp=0, internal_seq=0, periodic=[],
    )


def tamperings(proof: dict) -> list[tuple[str, dict]]:
    """Every way of editing one displayed field (or the path) of a proof."""
    out = []

    def edit(label, fn):
        forged = copy.deepcopy(proof)
        fn(forged)
        out.append((label, forged))

    t, d = proof["total"], proof["decimals"]
    edit("balance only", lambda p: p.update(balance=format_units(t + 1, d)))
    edit("balance reformatted", lambda p: p.update(balance=p["balance"] + ("0" if "." in p["balance"] else ".0")))
    edit("balance x1000", lambda p: p.update(balance=format_units(t * 1000 + 1, d)))
    edit("total only", lambda p: p.update(total=t + 1))
    edit("total and balance", lambda p: p.update(total=t + 1, balance=format_units(t + 1, d)))
    edit("total as float", lambda p: p.update(total=float(t)))
    edit("total as string", lambda p: p.update(total=str(t)))
    edit("decimals only", lambda p: p.update(decimals=d + 1))
    edit("decimals and balance", lambda p: p.update(decimals=d - 1, balance=format_units(t, d - 1)))
    edit("account", lambda p: p.update(account=p["account"] + "x"))
    edit("asset", lambda p: p.update(asset="SOL" if p["asset"] == "USDC" else "USDC"))
    edit("height", lambda p: p.update(height=p["height"] + 1))
    edit("height as bool", lambda p: p.update(height=True) if p["height"] == 1 else p.update(height=None))
    edit("root", lambda p: p.update(root=("0" if p["root"][0] != "0" else "1") + p["root"][1:]))
    edit("missing field", lambda p: p.pop("decimals"))
    for i in range(len(proof["path"])):
        edit(f"path[{i}] side", lambda p, i=i: p["path"][i].__setitem__(0, "left" if p["path"][i][0] == "right" else "right"))
        edit(f"path[{i}] bogus side", lambda p, i=i: p["path"][i].__setitem__(0, "up"))
        edit(f"path[{i}] sibling", lambda p, i=i: p["path"][i].__setitem__(1, ("0" if p["path"][i][1][0] != "0" else "1") + p["path"][i][1][1:]))
        edit(f"path[{i}] dropped", lambda p, i=i: p["path"].pop(i))
    edit("path element added", lambda p: p["path"].append(["right", "ab" * 32]))
    return out


balances_st = st.dictionaries(st.text("abcdef", min_size=1, max_size=4),
                              st.dictionaries(st.sampled_from(["USDC", "SOL"]),
                                              st.tuples(st.integers(0, 10**12), st.integers(0, 10**9)), min_size=1),
                              min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(balances_st, st.integers(1, 10**6))
def test_every_leaf_proves_and_editing_any_field_fails(balances, height):
    state = fake_state(balances)
    root = liabilities.root(state, height).hex()
    for acct in balances:
        proofs = liabilities.prove(state, acct, height)
        assert {p["asset"] for p in proofs} == set(balances[acct])
        for proof in proofs:
            free, held = balances[acct][proof["asset"]]
            assert proof["total"] == free + held and proof["decimals"] == DECIMALS[proof["asset"]]
            assert proof["balance"] == format_units(free + held, proof["decimals"]) and proof["height"] == height
            assert proof["root"] == root and liabilities.verify(proof, root) and liabilities.verify(proof)
            assert liabilities.verify(proof, "0x" + root.upper())  # how a person might paste it
            assert liabilities.check(proof, "00" * 32) == "not included in the given root"
            for label, forged in tamperings(proof):
                assert not liabilities.verify(forged), label
                assert not liabilities.verify(forged, root), label


def test_the_root_commits_to_the_height():
    state = fake_state({"a": {"USDC": (5, 0)}, "b": {"SOL": (7, 1)}})
    assert liabilities.root(state, 7) != liabilities.root(state, 8)
    proof = liabilities.prove(state, "a", 7)[0]
    assert liabilities.verify(proof, liabilities.root(state, 7).hex())
    assert not liabilities.verify(proof, liabilities.root(state, 8).hex())
    assert liabilities.root(fake_state({}), 3) != liabilities.root(fake_state({}), 4)


def verify_proof(path, *extra):
    return subprocess.run([sys.executable, "-m", "satchel.tools.cli", "verify-proof", str(path), *extra], capture_output=True, text=True)


def test_verify_proof_command_says_included_only_against_a_given_root(tmp_path):
    state = fake_state({"alice": {"USDC": (12_500_000, 500_000), "SOL": (3, 0)}, "bob": {"USDC": (1, 2)}, "carol": {"SOL": (9, 9)}})
    root = liabilities.root(state, 42).hex()
    proofs = liabilities.prove(state, "alice", 42)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(proofs))

    ok = verify_proof(good, "--root", root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"alice USDC 13 at height 42: included in root {root}" in ok.stdout
    assert f"alice SOL 0.000000003 at height 42: included in root {root}" in ok.stdout

    alone = verify_proof(good)  # no independent root: self-consistent only, and the exit status says so
    assert alone.returncode == 3
    assert "included in root" not in alone.stdout
    assert "self-consistent" in alone.stdout and "NOT VERIFIED AS INCLUDED" in alone.stdout

    other = verify_proof(good, "--root", "ab" * 32)
    assert other.returncode == 1 and "not included in the given root" in other.stdout and "included in root" not in other.stdout
    assert verify_proof(good, "--root", "xyz").returncode == 2

    # the audit's case: only the displayed balance edited, file root left as it was
    edited = copy.deepcopy(proofs)
    edited[0]["balance"] = "999999"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edited))
    for extra in ([], ["--root", root]):
        no = verify_proof(bad, *extra)
        assert no.returncode == 1 and "INVALID" in no.stdout and "999999 at height" not in no.stdout, no.stdout

    # a self-consistent forgery (its own root recomputed) passes alone but not against the published root
    forged_state = fake_state({"alice": {"USDC": (10**12, 0), "SOL": (3, 0)}, "bob": {"USDC": (1, 2)}, "carol": {"SOL": (9, 9)}})
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(liabilities.prove(forged_state, "alice", 42)))
    assert verify_proof(forged).returncode == 3
    no = verify_proof(forged, "--root", root)
    assert no.returncode == 1 and "included in root" not in no.stdout

    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert verify_proof(empty, "--root", root).returncode == 1
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert verify_proof(junk, "--root", root).returncode == 1


def write_snapshot(directory, state, height, liabilities_root):
    raw, digest = snapshots.encode_state(state)
    snapshots.write(directory, snapshots.Snapshot(height, 1, 0, b"\0" * 32, 0, digest, msgspec.Raw(raw), liabilities_root))


def test_prove_refuses_a_snapshot_whose_recorded_root_differs(tmp_path):
    state = fake_state({"alice": {"USDC": (5, 0)}, "bob": {"SOL": (7, 0)}})
    write_snapshot(tmp_path / "old" / "snapshots", state, 9, b"\x11" * 32)  # e.g. written by an older version
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "prove", "--data", str(tmp_path / "old"), "--account", "alice"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "take a new snapshot" in out.stderr and out.stdout == ""
    write_snapshot(tmp_path / "new" / "snapshots", state, 9, liabilities.root(state, 9))
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "prove", "--data", str(tmp_path / "new"), "--account", "alice"],
                         capture_output=True, text=True, check=True)
    (proof,) = json.loads(out.stdout)
    assert proof["height"] == 9 and liabilities.verify(proof, liabilities.root(state, 9).hex())


async def test_prove_and_verify_commands(tmp_path):
    data = tmp_path / "data"
    await run_node(data, workload, small_snapshots())
    snap = snapshots.newest(data / "snapshots")
    assert snap.liabilities_root == liabilities.root(snapshots.decode_state(snap), snap.height)
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "prove", "--data", str(data), "--account", "alice"],
                         capture_output=True, text=True, check=True)
    proofs = json.loads(out.stdout)
    assert {p["asset"] for p in proofs} == {"USDC", "SOL"}
    assert all(p["root"] == snap.liabilities_root.hex() and p["height"] == snap.height for p in proofs)
    good = tmp_path / "proof.json"
    good.write_text(out.stdout)
    ok = verify_proof(good, "--root", snap.liabilities_root.hex())
    assert ok.returncode == 0 and ok.stdout.count(f"included in root {snap.liabilities_root.hex()}") == 2
    proofs[0]["balance"] = "999999"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(proofs))
    no = verify_proof(bad, "--root", snap.liabilities_root.hex())
    assert no.returncode == 1 and "INVALID" in no.stdout
