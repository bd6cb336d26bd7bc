"""Incidents after a signature divergence (audit finding 10): the node journaled an order
whose signature does not hold; ``satchel incident`` says who gained and who lost by it."""

from __future__ import annotations

import hashlib

import json
import subprocess
import sys
from types import SimpleNamespace

import msgspec
import pytest
import trio

from satchel.core.amounts import format_units
from satchel.tools.client import connect
from satchel.verify.incident import investigate
from satchel.ledger.journal import Journal, read_records
from satchel.core.messages import Block, PlaceOrder, block_decoder, block_encoder
from satchel.ledger.chain import header_hash
from satchel.ledger.replication import Replicator
from satchel.signing import Keypair
from satchel.verify.validator import Divergence, Validator, validator_key


def limit(side: str, qty: str) -> dict:
    return {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": "150", "quantity": qty}


async def forge(server, tmp_path) -> SimpleNamespace:
    """A journal in which alice's (filled) bid carries a broken signature.

    Returns the forged node dir, the height and seq of that order and, per (account,
    asset), the balance change it caused: what the diverged side has over the canonical.
    """
    alice, bob, carol = Keypair.generate(), Keypair.generate(), Keypair.generate()
    async with connect(server.url, server.node.admin) as admin:
        for key, asset, qty in ((alice, "USDC", "10000"), (bob, "SOL", "100"), (carol, "USDC", "10000")):
            await admin.request("deposit", {"account": key.api_key, "asset": asset, "quantity": qty})
    async with connect(server.url, bob) as b:
        await b.request("orderExecute", limit("Ask", "2"))
    before = {k.api_key: await server.balances(k) for k in (alice, bob)}
    async with connect(server.url, alice) as a, connect(server.url, carol) as c:
        async with trio.open_nursery() as both:  # carol's honest bid may share alice's block
            both.start_soon(c.request, "orderExecute", {**limit("Bid", "1"), "price": "140"})
            both.start_soon(a.request, "orderExecute", limit("Bid", "2"))
    after = {k.api_key: await server.balances(k) for k in (alice, bob)}
    decimals = {a: spec.decimals for a, spec in server.node.engine.assets.items()}
    server.node.shutdown()
    await server.node.wait_stopped()

    gained = {}
    for acct in after:
        for asset in set(before[acct]) | set(after[acct]):
            diff = sum(after[acct].get(asset, (0, 0))) - sum(before[acct].get(asset, (0, 0)))
            if diff:
                gained[(acct, asset)] = format_units(diff, decimals[asset])
    assert len(gained) == 4  # alice: +SOL -USDC, bob: -SOL +USDC

    records = list(read_records(tmp_path / "data" / "journal"))
    out, bad, prev = [], None, None
    for payload in records:
        block = block_decoder.decode(payload)
        txs = list(block.txs)
        for i, tx in enumerate(block.txs):
            if isinstance(tx, PlaceOrder) and tx.account == alice.api_key:
                sig = tx.auth.signature
                txs[i] = msgspec.structs.replace(tx, auth=msgspec.structs.replace(tx.auth, signature=bytes([sig[0] ^ 1]) + sig[1:]))
                bad = SimpleNamespace(height=block.header.height, seq=block.header.first_seq + i)
        if bad is not None:
            # a node that lies rewrites its chain from there on: the header commits to the
            # transactions, and each later header to the one before it
            header = msgspec.structs.replace(block.header, txs_hash=hashlib.sha256(block_encoder.encode(txs)).digest(),
                                             prev_hash=header_hash(prev) if prev is not None else block.header.prev_hash)
            payload = block_encoder.encode(Block(header, txs))
        prev = block_decoder.decode(payload).header
        out.append((prev.height, payload))
    assert bad is not None
    journal = Journal(tmp_path / "forged" / "journal")
    list(journal.recover())
    journal.append(out)
    journal.close()
    return SimpleNamespace(node=tmp_path / "forged", height=bad.height, seq=bad.seq, gained=gained,
                           carol=carol.api_key, last=out[-1][0])


def check(inc: dict, forged: SimpleNamespace) -> None:
    assert inc["kind"] == "signatures" and inc["divergent_height"] == forged.height
    assert inc["left_out_seqs"] == [forged.seq]
    rows = {(r["account"], r["asset"]): r["difference"] for r in inc["gainers"] + inc["losers"]}
    assert rows == forged.gained  # carol's honest order is kept on both sides: not listed
    assert inc["diverged_state"] != inc["canonical_state"]


async def test_incident_after_a_bad_signature_offline(server, tmp_path):
    forged = await forge(server, tmp_path)
    v = tmp_path / "v"
    # the node's data directory, as 'satchel replay --data' takes it
    out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", "validator", "--journal", str(forged.node),
                                  "--data", str(v)], capture_stdout=True, capture_stderr=True, check=False)
    assert out.returncode == 4, out.stderr.decode()[-2000:]
    report = json.loads((v / f"divergence-{forged.height}.json").read_text())
    assert report["kind"] == "signatures" and report["bad_seqs"] == [forged.seq]
    assert report["problems"] == [f"seq {forged.seq}: bad signature"]
    assert (v / f"divergence-{forged.height}.block").read_bytes() == dict(
        (block_decoder.decode(p).header.height, p) for p in read_records(forged.node / "journal"))[forged.height]

    out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", "incident", "--data", str(v)],
                                 capture_stdout=True, capture_stderr=True, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert f"seqs [{forged.seq}]" in out.stdout.decode()
    check(json.loads((v / f"incident-{forged.height}.json").read_text()), forged)


async def test_incident_after_a_bad_signature_on_the_stream(server, tmp_path, nursery):
    """A validator following the node: its own journal copy stops before the bad block."""
    forged = await forge(server, tmp_path)
    v = tmp_path / "v"
    node = SimpleNamespace(data=forged.node, chain=SimpleNamespace(height=forged.last), block_listeners=[])
    r = await nursery.start(Replicator(node, "127.0.0.1", 0, allow=[validator_key(v).public]).run)
    with pytest.raises(BaseExceptionGroup) as group:
        with trio.fail_after(30):
            await Validator(v).follow(f"ws://127.0.0.1:{r.port}")
    assert group.group_contains(Divergence)
    assert max(block_decoder.decode(p).header.height for p in read_records(v / "journal")) == forged.height - 1
    check(await investigate(v), forged)


async def test_incident_without_the_block_says_so(tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    (v / "divergence-7.json").write_text(json.dumps({"height": 7, "kind": "signatures", "problems": ["seq 9: bad signature"]}))
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "incident", "--data", str(v)], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"satchel incident: no offending block {v / 'divergence-7.block'}")
