"""The deposit benchmarks, run small: each way of taking deposits in (the chain and adapter in
the node's process, or the adapter's reports straight to the node) credits every deposit
exactly once beside the orders, and a report rides along in the order's block. The
figures themselves are the benchmarks' business (``benchmarks/``), not asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks/

from benchmarks import deposits, ridealong  # noqa: E402


@pytest.mark.parametrize("edge", ["node", "none"])
async def test_every_deposit_credited_once_beside_orders(edge):
    r = await deposits.run(edge, deposits=240, accounts=20, rate=100, seconds=0.5, rounds=2, auto_lend=True)
    assert r["credited"] == 480
    assert r["wrong_balances"] == 0
    assert len(r["alone"]) == len(r["beside"]) == 2


async def test_a_report_rides_in_the_orders_block():
    r = await ridealong.measure([1, 8], blocks=40)  # raises if a report went out in a block of its own
    for n in (1, 8):
        assert set(r[n]) == {"alone", "with"}
        assert all(v > 0 for v in r[n]["alone"] + r[n]["with"])


def test_the_sign_test_of_paired_rounds():
    assert deposits.sign_test(6, 6) == deposits.sign_test(0, 6) == 2 / 64  # all pairs one way
    assert deposits.sign_test(3, 6) == 1.0
    assert deposits.sign_test(5, 6) == 2 * 7 / 64
    assert deposits.sign_test(0, 0) == 1.0  # every pair tied: nothing to tell
