"""The block stream (audit finding 6): signed hellos from allowed keys only, a bounded
number of followers, history streamed with bounded memory, loopback by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from types import SimpleNamespace

import msgspec
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from conftest import wait_ready
from satchel.tools.client import free_port
from satchel.ledger.journal import Journal
from satchel.core.messages import Block, BlockHeader, Deposit, block_encoder
from satchel.ledger.replication import Replicator, hello
from satchel.signing import Keypair


def write_journal(data, blocks: int, pad: int = 0, segment_bytes: int = 64 << 20) -> None:
    """Blocks 1..n that only need to frame and decode as far as their header."""
    journal = Journal(data / "journal", segment_bytes)
    list(journal.recover())
    journal.append([(h, block_encoder.encode(Block(BlockHeader(h, h, h, b"", 1, 1, b"", b""),
                                                   [Deposit("admin", "x" * pad or "acct", "USDC", h)])))
                    for h in range(1, blocks + 1)])
    journal.close()


async def start(nursery, data, height: int, **settings) -> Replicator:
    node = SimpleNamespace(data=data, chain=SimpleNamespace(height=height), block_listeners=[])
    return await nursery.start(Replicator(node, "127.0.0.1", 0, **settings).run)


def url(r: Replicator) -> str:
    return f"ws://127.0.0.1:{r.port}"


async def heights(r: Replicator, text: bytes, count: int) -> list[int]:
    """Send a hello, take ``count`` blocks; the heights received."""
    got = []
    async with open_websocket_url(url(r), max_message_size=1 << 26) as ws:
        await ws.send_message(text)
        with trio.fail_after(10):
            while len(got) < count:
                payload, _, _ = msgspec.msgpack.decode(await ws.get_message())
                got.append(msgspec.msgpack.decode(payload)[0][0])
    return got


async def refusal(r: Replicator, text: bytes | str) -> tuple[int, str]:
    """The close code and reason the node answers a hello with."""
    async with open_websocket_url(url(r)) as ws:
        await ws.send_message(text)
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    return closed.value.reason.code, closed.value.reason.reason


async def test_allowed_follower_streams_from_any_height(nursery, tmp_path):
    key = Keypair.generate()
    write_journal(tmp_path, 40, pad=200, segment_bytes=2000)  # many segments: whole ones are skipped
    assert len(list((tmp_path / "journal").glob("*.seg"))) >= 4
    (tmp_path / "followers").write_text(f"# validators\n\n{key.api_key}  # eu-1\n")
    r = await start(nursery, tmp_path, 40)
    assert await heights(r, hello(key, 1), 40) == list(range(1, 41))
    assert await heights(r, hello(key, 17), 24) == list(range(17, 41))


async def test_allow_list_file_is_reread_without_restart(nursery, tmp_path):
    key = Keypair.generate()
    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3)
    assert await refusal(r, hello(key, 1)) == (1008, "follower key not allowed by this node")
    (tmp_path / "followers").write_text(key.api_key + "\n")
    assert await heights(r, hello(key, 1), 3) == [1, 2, 3]


def _forged(key: Keypair, other: Keypair) -> bytes:
    msg = orjson.loads(hello(other, 1))
    msg["key"] = key.api_key  # signed by another key
    return orjson.dumps(msg)


@pytest.mark.parametrize("case, reason", [
    ("unsigned", "hello lacks key, timestamp, window, signature"),
    ("not json", "hello must be JSON"),
    ("unknown key", "follower key not allowed by this node"),
    ("forged", "bad signature"),
    ("expired", "hello timestamp is outside its window (check the follower's clock)"),
    ("wide window", "window must be 1..60000 ms"),
    ("other height", "bad signature"),
])
async def test_refused_hellos(nursery, tmp_path, case, reason):
    key, other = Keypair.generate(), Keypair.generate()
    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3, allow=[key.public])
    text = {
        "unsigned": json.dumps({"from": 1}),  # what validators sent before
        "not json": "hello",
        "unknown key": hello(other, 1),
        "forged": _forged(key, other),
        "expired": hello(key, 1, window=5000, timestamp=1_700_000_000_000),
        "wide window": hello(key, 1, window=3_600_000),
        "other height": orjson.dumps({**orjson.loads(hello(key, 2)), "from": 1}),
    }[case]
    assert await refusal(r, text) == (1008, reason)
    assert r.active == 0


async def test_nobody_is_allowed_by_default(nursery, tmp_path):
    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3)
    assert await refusal(r, hello(Keypair.generate(), 1)) == (1008, "follower key not allowed by this node")


async def test_a_hello_cannot_be_replayed(nursery, tmp_path):
    key = Keypair.generate()
    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3, allow=[key.public])
    text = hello(key, 1)
    assert await heights(r, text, 3) == [1, 2, 3]
    assert await refusal(r, text) == (1008, "hello replayed")


async def test_followers_are_limited(nursery, tmp_path):
    keys = [Keypair.generate() for _ in range(3)]  # one key each: the same hello twice would be a replay
    key = keys[2]
    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3, allow=[k.public for k in keys], max_followers=2)
    async with open_websocket_url(url(r)) as a, open_websocket_url(url(r)) as b:
        for ws, k in ((a, keys[0]), (b, keys[1])):
            await ws.send_message(hello(k, 1))
            await ws.get_message()
        assert r.active == 2
        assert await refusal(r, hello(key, 1)) == (1013, "too many followers (max 2)")
    with trio.fail_after(5):
        while r.active:
            await trio.sleep(0.01)
    assert await heights(r, hello(key, 1), 3) == [1, 2, 3]  # a slot is free again


async def test_followers_that_never_read_hold_bounded_memory(nursery, tmp_path):
    """30 idle connections once held a whole copy of the journal each (44 -> 154 MB RSS)."""
    keys = [Keypair.generate() for _ in range(8)]
    write_journal(tmp_path, 240, pad=100_000)  # 24 MB in one segment
    r = await start(nursery, tmp_path, 240, allow=[k.public for k in keys], max_followers=8)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        async with trio.open_nursery() as idle:
            for key in keys:
                idle.start_soon(_never_read, r, key)
            with trio.fail_after(10):
                while r.active < 8:
                    await trio.sleep(0.05)
            await trio.sleep(1.5)  # the node sends until every socket buffer is full
            idle.cancel_scope.cancel()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # per follower: one read batch (256 KiB) and one block in flight at each end
    assert peak - base < 12 << 20, f"peak grew by {(peak - base) >> 20} MiB"


async def _never_read(r: Replicator, key: Keypair) -> None:
    async with open_websocket_url(url(r), max_message_size=1 << 26) as ws:
        await ws.send_message(hello(key, 1))
        await trio.sleep_forever()


async def test_a_stalled_follower_is_dropped_and_frees_its_slot(nursery, tmp_path):
    key, stalled = Keypair.generate(), Keypair.generate()
    write_journal(tmp_path, 240, pad=100_000)  # more than the socket buffers hold
    r = await start(nursery, tmp_path, 240, allow=[key.public, stalled.public], max_followers=1, send_timeout=0.5)
    async with trio.open_nursery() as idle:
        idle.start_soon(_never_read, r, stalled)
        with trio.fail_after(10):
            while r.active < 1:
                await trio.sleep(0.05)
            while r.active:
                await trio.sleep(0.05)
        assert await heights(r, hello(key, 239), 2) == [239, 240]
        idle.cancel_scope.cancel()


def satchel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satchel.tools.cli", *args], capture_output=True, text=True, timeout=60)


def test_validator_prints_its_key(tmp_path):
    first = satchel("validator", "--print-key", "--data", str(tmp_path / "v"))
    assert first.returncode == 0
    key = first.stdout.strip()
    assert Keypair.from_secret((tmp_path / "v" / "validator.key").read_text().strip()).api_key == key
    assert os.stat(tmp_path / "v" / "validator.key").st_mode & 0o777 == 0o600
    assert satchel("validator", "--print-key", "--data", str(tmp_path / "v")).stdout.strip() == key


async def test_refused_validator_exits_with_one_clear_line(nursery, tmp_path):
    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3)
    out = await trio.run_process(
        [sys.executable, "-m", "satchel.tools.cli", "validator", "--follow", url(r), "--data", str(tmp_path / "v")],
        capture_stdout=True, capture_stderr=True, check=False)
    stderr = out.stderr.decode()
    key = Keypair.from_secret((tmp_path / "v" / "validator.key").read_text().strip()).api_key
    assert out.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"satchel validator: {url(r)} closed the block stream: follower key not allowed by this node (code 1008); "
        f"this validator's key is {key}: allow it in the node's DATA/followers or with 'satchel serve --allow-follower'")


def test_serve_refuses_a_malformed_follower_key(tmp_path):
    out = satchel("serve", "--data", str(tmp_path / "d"), "--allow-follower", "not-a-key", "--no-demo")
    assert out.returncode == 2
    assert out.stderr.strip() == "satchel serve: --allow-follower 'not-a-key' is not a base64 Ed25519 public key"
    assert not (tmp_path / "d").exists()


async def test_serve_binds_the_block_stream_to_loopback_and_says_when_it_refuses_all(tmp_path):
    port, rport = free_port(), free_port()
    log = tmp_path / "node.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "satchel.tools.cli", "serve", "--data", str(tmp_path / "d"), "--host", "localhost",
         "--port", str(port), "--replication-port", str(rport), "--no-demo", "--rest-port", "0"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        await wait_ready(f"ws://localhost:{port}", proc)
        with trio.fail_after(10):
            while f"ws://127.0.0.1:{rport}" not in log.read_text():
                await trio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()
    lines = log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), lines  # stderr: JSON log lines only
    events = [json.loads(line) for line in lines]
    refusing = [e for e in events if e["event"] == "replication.listening_refusing_all"]
    assert len(refusing) == 1 and refusing[0]["url"] == f"ws://127.0.0.1:{rport}"
    assert "followers" in refusing[0]["why"]


async def test_refusals_are_logged_once_per_peer(nursery, tmp_path):
    from structlog.testing import capture_logs

    write_journal(tmp_path, 3)
    r = await start(nursery, tmp_path, 3)
    with capture_logs() as logs:
        for _ in range(5):
            await refusal(r, hello(Keypair.generate(), 1))
    refused = [e for e in logs if e["event"] == "replication.follower_refused"]
    assert len(refused) == 1 and refused[0]["reason"] == "follower key not allowed by this node"
    assert refused[0]["peer"].startswith("127.0.0.1:")


def test_followers_file_format():
    from satchel.ledger.replication import parse_followers

    a, b = Keypair.generate(), Keypair.generate()
    text = f"# node eu-1 validators\n{a.api_key}\n  {b.api_key}  # backup\nnot-a-key\n\n"
    assert parse_followers(text) == {a.public, b.public}  # the bad line is skipped with a warning
