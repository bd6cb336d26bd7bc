"""The command line: keygen output, faucet against a live node, replay's last line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from conftest import log_state, start_node, wait_ready
from satchel.tools.client import ReplyError, connect, free_port
from satchel.signing import Keypair


def satchel(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satchel.tools.cli", *args], capture_output=True, text=True, **kw)


def test_keygen_prints_a_usable_pair():
    out = satchel("keygen", check=True).stdout.splitlines()
    fields = dict(line.split("=", 1) for line in out)
    key = Keypair.from_secret(fields["secret"])
    assert key.api_key == fields["api_key"]


async def test_faucet_and_replay(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    proc = start_node(data, port, tmp_path / "node.log")
    key = Keypair.generate()
    try:
        await wait_ready(f"ws://127.0.0.1:{port}", proc)
        r = await trio.to_thread.run_sync(lambda: satchel(
            "faucet", "--account", key.api_key, "--asset", "SOL", "--amount", "12.5",
            "--url", f"ws://127.0.0.1:{port}", "--data", str(data)))
        assert r.returncode == 0 and "deposited 12.5 SOL" in r.stdout
        bad = await trio.to_thread.run_sync(lambda: satchel(
            "faucet", "--account", key.api_key, "--asset", "DOGE", "--url", f"ws://127.0.0.1:{port}", "--data", str(data)))
        assert bad.returncode == 1 and "INVALID_ASSET" in bad.stderr
        async with connect(f"ws://127.0.0.1:{port}", key) as c:
            assert (await c.request("balanceQuery"))["SOL"]["available"] == "12.5"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    last = satchel("replay", "--data", str(data), check=True).stdout.strip().splitlines()[-1]
    blocks, txs, state = (part.split("=")[1] for part in last.split())
    assert int(blocks) >= 2 and int(txs) >= 9
    assert state == log_state(tmp_path / "node.log", "node.stopped")


def test_faucet_without_admin_key(tmp_path):
    r = satchel("faucet", "--account", "x", "--data", str(tmp_path))
    assert r.returncode == 2 and "no admin key" in r.stderr


async def test_admin_commands(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    proc = start_node(data, port, tmp_path / "node.log")
    key = Keypair.generate()
    url = f"ws://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        run = lambda *a: trio.to_thread.run_sync(lambda: satchel("admin", *a, "--url", url, "--data", str(data)))
        assert (await run("trading", "off", "--account", key.api_key)).returncode == 0
        assert (await run("fees", "--symbol", "SOL_USDC", "--maker", "0", "--taker", "7")).returncode == 0
        bad = await run("fees", "--symbol", "SOL_USDC", "--maker", "-9", "--taker", "7")
        assert bad.returncode == 1 and "INVALID_FEES" in bad.stderr
        await trio.to_thread.run_sync(lambda: satchel("faucet", "--account", key.api_key, "--url", url, "--data", str(data)))
        async with connect(url, key) as c:
            r = await c.request("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "100", "quantity": "1"})
            assert (r["status"], r["reason"]) == ("Rejected", "AccountTradingDisabled")
            with pytest.raises(ReplyError) as e:
                await c.request("adminSetFees", {"symbol": "SOL_USDC", "makerFeeBps": 0, "takerFeeBps": 0})
            assert e.value.code == "UNAUTHORIZED"
    finally:
        proc.kill()


def test_packaged_defaults_and_typed_defaults_agree():
    """One source of truth: every setting in defaults.toml equals the typed default in config.py."""
    from satchel import config

    packaged = config.load()
    assert packaged.node == config.NodeSettings()
    assert packaged.gateway == config.GatewaySettings()
