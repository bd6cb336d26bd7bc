"""Snapshots: restart from the newest intact one, skip damaged ones, same state as a full replay."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import trio
from hypothesis import given, settings, HealthCheck, strategies as st

from conftest import ADMIN, Exchange, concretize, order, run_node, small_snapshots, workload, workload_st
from satchel.core.messages import BID
from satchel import config
from satchel.ledger import snapshots
from satchel.core.engine import Engine, events_hash
from satchel.core.state import EngineState
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


async def test_a_snapshot_that_cannot_be_written_stops_nothing(tmp_path, monkeypatch):
    """Out of file descriptors (an outside test held 21,000 connections), a snapshot's
    write failed and the error ended the node. It is now logged and skipped: the journal
    holds the truth, and the node replays from an older snapshot after a restart."""
    data = tmp_path / "data"
    write, calls = snapshots.write, []

    def failing(directory, snap):
        calls.append(snap.height)
        if len(calls) % 2:
            raise OSError(24, "Too many open files")
        write(directory, snap)

    monkeypatch.setattr(snapshots, "write", failing)
    _, live = await run_node(data, workload, small_snapshots())
    assert len(calls) > 2
    monkeypatch.setattr(snapshots, "write", write)
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
            await b.engine.restore(msgspec.msgpack.decode(state, type=EngineState))
            b.seq, b.ts = a.seq, a.ts
            assert await b.engine.state_hash() == await a.engine.state_hash()
            for block in txs[cut:]:
                assert events_hash(await a.block(block)) == events_hash(await b.block(block))
            assert await a.engine.state_hash() == await b.engine.state_hash()
            nursery.cancel_scope.cancel()

    trio.run(go)


def test_canonical_state_is_named_and_round_trips_through_its_encoding():
    """``Engine.canonical()`` is an ``EngineState``; its encoding decodes back to an equal struct."""

    async def go():
        async with trio.open_nursery() as nursery:
            ex = Exchange(Engine(nursery))
            await ex.block(config.genesis(config.load(), ADMIN))
            await ex.deposit("alice", "USDC", 10**12)
            await ex.block([order("alice", BID, 15_000, 100)])
            state = await ex.engine.canonical()
            assert isinstance(state, EngineState)
            assert [b.account for b in state.risk.balances] == ["alice"]
            assert [(h.account, h.asset) for h in state.risk.holds] == [("alice", "USDC")]
            assert [len(b.sides.bids) for b in state.books if b.symbol == "SOL_USDC"] == [1]
            raw, digest = snapshots.encode_state(state)
            assert msgspec.msgpack.decode(raw, type=EngineState) == state
            assert digest == await ex.engine.state_hash()
            nursery.cancel_scope.cancel()

    trio.run(go)
