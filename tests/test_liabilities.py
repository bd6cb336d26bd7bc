"""Proof of liabilities: every balance is provably in the root; a tampered proof fails."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from satchel import liabilities, snapshots
from test_snapshots import run
from test_journal import workload


def fake_state(balances: dict) -> list:
    risk = [[[acct, [[a, free, held] for a, (free, held) in sorted(assets.items())]] for acct, assets in sorted(balances.items())]]
    return [1, "admin", [["USDC", 6], ["SOL", 9]], [], risk, [], [], 0, 0]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4),
                       st.dictionaries(st.sampled_from(["USDC", "SOL"]), st.tuples(st.integers(0, 10**12), st.integers(0, 10**9)), min_size=1),
                       min_size=1, max_size=12))
def test_every_leaf_proves_and_tampering_fails(balances):
    state = fake_state(balances)
    root = liabilities.root(state).hex()
    for acct in balances:
        for proof in liabilities.prove(state, acct, 7, {"USDC": 6, "SOL": 9}):
            assert proof["root"] == root and liabilities.verify(proof, root)
            forged = copy.deepcopy(proof)
            forged["total"] += 1
            assert not liabilities.verify(forged)
            if forged["path"]:
                forged = copy.deepcopy(proof)
                forged["path"][0][0] = "left" if forged["path"][0][0] == "right" else "right"
                assert not liabilities.verify(forged)
            assert not liabilities.verify(proof, "00" * 32)


async def test_prove_and_verify_commands(tmp_path):
    data = tmp_path / "data"
    await run(data, workload)
    snap = snapshots.newest(data / "snapshots")
    assert snap.liabilities_root == liabilities.root(snapshots.decode_state(snap))
    out = subprocess.run([sys.executable, "-m", "satchel.cli", "prove", "--data", str(data), "--account", "alice"],
                         capture_output=True, text=True, check=True)
    proofs = json.loads(out.stdout)
    assert {p["asset"] for p in proofs} == {"USDC", "SOL"}
    assert all(p["root"] == snap.liabilities_root.hex() for p in proofs)
    good = tmp_path / "proof.json"
    good.write_text(out.stdout)
    ok = subprocess.run([sys.executable, "-m", "satchel.cli", "verify-proof", str(good), "--root", snap.liabilities_root.hex()],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "included in root" in ok.stdout
    proofs[0]["balance"] = "999999"
    proofs[0]["total"] = proofs[0]["total"] * 2 + 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(proofs))
    no = subprocess.run([sys.executable, "-m", "satchel.cli", "verify-proof", str(bad)], capture_output=True, text=True)
    assert no.returncode == 1 and "INVALID" in no.stdout
