"""Durability: restart replays the journal, torn tails are cut, corruption stops the node."""

from __future__ import annotations

import shutil

import pytest
import trio

from conftest import run_node, workload, leaves
from satchel.ledger.journal import MAGIC, Journal, JournalCorrupt, read_records
from satchel.core.messages import Deposit, block_decoder
from satchel.ledger.chain import replay
from satchel.node import Node


def segment(data):
    (seg,) = sorted((data / "journal").glob("*.seg"))
    return seg


async def test_restart_and_replay_agree(tmp_path):
    data = tmp_path / "data"
    node, live = await run_node(data, workload)
    height, txs = node.chain.height, node.chain.txs
    assert height > 3
    blocks, replay_txs, replayed = await replay(data)
    assert (blocks, replay_txs, replayed) == (height, txs, live)
    assert (await replay(data))[2] == live  # twice, identical
    node2, restarted = await run_node(data)
    assert restarted == live
    # timestamps and sequence numbers continue, never decreasing
    node3, _ = await run_node(data, lambda n: n.submit_wait(Deposit(n.admin.api_key, "dave", "USDC", 5)))
    headers = [block_decoder.decode(r).header for r in read_records(data / "journal")]
    assert [h.height for h in headers] == list(range(1, len(headers) + 1))
    assert all(a.timestamp <= b.timestamp for a, b in zip(headers, headers[1:]))
    assert all(a.first_seq + a.tx_count == b.first_seq for a, b in zip(headers, headers[1:]))


async def test_torn_tail_is_truncated(tmp_path):
    data = tmp_path / "data"
    _, live = await run_node(data, workload)
    seg = segment(data)
    good_size = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash mid-write: a header promising more than is there
        f.write(b"\x00\x10\x00\x00\xde\xad\xbe\xefpartial")
    _, restarted = await run_node(data)
    assert restarted == live
    assert seg.stat().st_size == good_size


async def test_torn_last_record_with_bad_checksum(tmp_path):
    data = tmp_path / "data"
    await run_node(data, workload)
    seg = segment(data)
    raw = bytearray(seg.read_bytes())
    records = list(read_records(data / "journal"))
    raw[-3] ^= 0xFF  # last record damaged where it ends: a torn write
    seg.write_bytes(bytes(raw))
    # a crash mid-write happens before any snapshot could cover that block
    shutil.rmtree(data / "snapshots")
    blocks, _, _ = await replay(data)
    assert blocks == len(records) - 1
    node, _ = await run_node(data)
    assert node.chain.height == len(records) - 1


async def test_corrupt_middle_stops_with_file_and_offset(tmp_path):
    data = tmp_path / "data"
    await run_node(data, workload)
    seg = segment(data)
    raw = bytearray(seg.read_bytes())
    offset = len(MAGIC)
    raw[offset + 8 + 5] ^= 0xFF  # inside the first record's payload
    seg.write_bytes(bytes(raw))
    with pytest.raises(BaseExceptionGroup) as group:
        await run_node(data)
    (exc,) = [e for e in leaves(group.value) if isinstance(e, JournalCorrupt)]
    assert str(seg) in str(exc) and f"offset {offset}" in str(exc)
    with pytest.raises(JournalCorrupt):
        await replay(data)


def test_segments_roll_over(tmp_path):
    j = Journal(tmp_path, segment_bytes=100)
    list(j.recover())
    j.append([(h, bytes([h]) * 60) for h in range(1, 6)])
    j.close()
    assert len(list(tmp_path.glob("*.seg"))) >= 3
    assert [r[0] for r in read_records(tmp_path)] == [1, 2, 3, 4, 5]
    j2 = Journal(tmp_path, segment_bytes=100)
    assert len(list(j2.recover())) == 5
    j2.append([(6, b"six")])
    j2.close()
    assert list(read_records(tmp_path))[-1] == b"six"


async def test_rules_version_mismatch_is_refused(tmp_path, monkeypatch):
    from satchel.ledger import chain as node_mod
    from satchel.ledger.chain import DivergedError

    data = tmp_path / "data"
    await run_node(data, workload)
    ours = node_mod.RULES_VERSION
    monkeypatch.setattr(node_mod, "RULES_VERSION", ours + 1)
    with pytest.raises(DivergedError, match=f"block 1 has rules version {ours}; this code runs {ours + 1}"):
        await replay(data)


async def test_a_torn_block_already_covered_by_the_snapshot_is_recovered_without_loss(tmp_path):
    """Audit finding 9: the node truncated the file, then refused to start."""
    data = tmp_path / "data"
    node, live = await run_node(data, workload)  # clean shutdown: a snapshot at the last height
    height = node.chain.height
    seg = segment(data)
    raw = seg.read_bytes()
    seg.write_bytes(raw[:-3])  # the last record (block `height`) torn although the snapshot covers it
    node2, restarted = await run_node(data, lambda n: n.submit_wait(Deposit(n.admin.api_key, "erin", "USDC", 7)))
    assert node2.chain.height == height + 1
    assert (seg.parent / f"{seg.name}.torn").exists()  # the torn bytes are kept, not destroyed
    # the journal continues in a new segment after the gap, and restarts still agree
    assert len(list((data / "journal").glob("*.seg"))) == 2
    node3, again = await run_node(data)
    assert node3.chain.height == height + 1 and again == await _state_after(data)


async def _state_after(data):
    from satchel.ledger.chain import take_snapshot

    return (await take_snapshot(data)).state_hash


async def test_a_journal_ending_before_the_snapshot_is_refused_and_left_as_it_was(tmp_path):
    data = tmp_path / "data"
    await run_node(data, workload)
    seg = segment(data)
    records = list(read_records(data / "journal"))
    # drop the last two whole records: no torn write explains that
    cut = seg.stat().st_size - sum(8 + len(r) for r in records[-2:])
    raw = seg.read_bytes()[:cut] + b"\x00\x10\x00\x00torn"
    seg.write_bytes(raw)
    from satchel.ledger.chain import DivergedError
    from satchel.runtime import fatal_errors_unwrapped

    with pytest.raises(DivergedError, match="before the snapshot's height"), fatal_errors_unwrapped():
        async with trio.open_nursery() as nursery:
            await nursery.start(Node(data).run)
    assert seg.read_bytes() == raw  # nothing on disk changed


def test_serve_on_a_corrupt_journal_exits_3_with_one_line(tmp_path):
    """Audit finding 8: serve printed a 70-line traceback and exited 1, so systemd restarted it forever."""
    import subprocess
    import sys

    data = tmp_path / "data"
    trio.run(run_node, data, workload)
    seg = segment(data)
    raw = bytearray(seg.read_bytes())
    raw[len(MAGIC) + 8 + 5] ^= 0xFF
    seg.write_bytes(bytes(raw))
    for cmd in (["serve", "--no-demo", "--port", "0", "--replication-port", "-1", "--rest-port", "-1"], ["replay"]):
        out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", *cmd, "--data", str(data)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 3, (cmd, out.stderr)
        errors = [line for line in out.stderr.splitlines() if "refused_journal" in line]
        assert len(errors) == 1 and f"{seg}" in errors[0] and "offset 8" in errors[0], out.stderr
        assert "Traceback" not in out.stderr


async def test_a_journaled_transaction_changed_after_the_fact_is_refused(tmp_path):
    """The header commits to the block's transaction bytes, so the hash chain binds them."""
    import msgspec

    from satchel.core.messages import Block, block_encoder
    from satchel.ledger.chain import DivergedError

    data = tmp_path / "data"
    await run_node(data, workload)
    seg = segment(data)
    records = list(read_records(data / "journal"))
    block = block_decoder.decode(records[1])  # a deposit block after genesis
    i, tx = next((i, tx) for i, tx in enumerate(block.txs) if isinstance(tx, Deposit))
    txs = list(block.txs)
    txs[i] = msgspec.structs.replace(tx, amount=tx.amount * 2)
    forged = block_encoder.encode(Block(block.header, txs))  # same header, other transactions
    raw = seg.read_bytes()
    at = raw.index(records[1]) - 8
    import struct
    import zlib

    seg.write_bytes(raw[:at] + struct.pack("<II", len(forged), zlib.crc32(forged)) + forged + raw[at + 8 + len(records[1]):])
    with pytest.raises(DivergedError, match="transactions do not match the header's commitment"):
        await replay(data)
