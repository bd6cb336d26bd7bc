"""Snapshots: restart from the newest intact one, skip damaged ones, same state as a full replay."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import trio
from hypothesis import given, settings, HealthCheck, strategies as st

from conftest import ADMIN, Exchange, concretize, run_node, small_snapshots, workload, workload_st
from satchel import config
from satchel.ledger import snapshots
from satchel.core.engine import Engine, events_hash
from satchel.ledger.chain import replay


async def test_restart_from_snapshot_equals_full_replay(tmp_path):
    data = tmp_path / "data"
    node, live = await run_node(data, workload, small_snapshots())
    snaps = sorted((data / "snapshots").glob("*.snap"))
    assert 1 < len(snaps) <= snapshots.KEEP
    assert int(snaps[-1].stem) == node.chain.height  # the shutdown snapshot
    (data / "snapshots" / snaps[-1].name).unlink()  # force a journal tail replay
    node2, restarted = await run_node(data, cfg=small_snapshots())
    assert restarted == live
    assert (await replay(data))[2] == live  # the journal alone agrees


async def test_damaged_snapshot_is_skipped(tmp_path):
    data = tmp_path / "data"
    _, live = await run_node(data, workload, small_snapshots())
    newest = sorted((data / "snapshots").glob("*.snap"))[-1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    assert snapshots.newest(data / "snapshots").height < int(newest.stem)
    _, restarted = await run_node(data, cfg=small_snapshots())
    assert restarted == live


def test_snapshot_command(tmp_path):
    data = tmp_path / "data"
    _, live = trio.run(run_node, data, workload, small_snapshots())
    for f in (data / "snapshots").glob("*.snap"):
        f.unlink()
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "snapshot", "--data", str(data)], capture_output=True, text=True, check=True)
    assert f"state={live} liabilities_root=" in out.stdout
    assert len(list((data / "snapshots").glob("*.snap"))) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload_st, st.integers(0, 12))
def test_restored_engine_continues_identically(blocks, cut):
    """Snapshot after any block, restore into a fresh engine, apply the rest: same events, same state."""
    cut = min(cut, len(blocks))

    async def go():
        async with trio.open_nursery() as nursery:
            a = Exchange(Engine(nursery))
            await a.block(config.genesis(config.load(), ADMIN))
            txs = concretize(blocks, a.seq)
            for block in txs[:cut]:
                await a.block(block)
            state, _ = snapshots.encode_state(await a.engine.canonical())
            b = Exchange(Engine(nursery))
            await b.engine.restore(msgspec.msgpack.decode(state))
            b.seq, b.ts = a.seq, a.ts
            assert await b.engine.state_hash() == await a.engine.state_hash()
            for block in txs[cut:]:
                assert events_hash(await a.block(block)) == events_hash(await b.block(block))
            assert await a.engine.state_hash() == await b.engine.state_hash()
            nursery.cancel_scope.cancel()

    trio.run(go)
