"""Crash safety: SIGKILL a node in a subprocess mid-workload, restart it, lose nothing acked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from conftest import log_state, start_node, wait_ready
from satchel.tools.client import connect, free_port
from satchel.signing import load_key
from satchel.signing import Keypair


async def test_sigkill_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    proc = start_node(data, port, tmp_path / "run1.log")
    trader = Keypair.generate()
    acked: set[str] = set()
    try:
        await wait_ready(url, proc)
        async with connect(url, load_key(data, "admin.key")) as admin:
            await admin.request("deposit", {"account": trader.api_key, "asset": "USDC", "quantity": "1000000"})

        async def worker(n: int) -> None:
            try:
                async with connect(url, trader) as c:
                    for i in range(100_000):
                        price = f"{100 + (n * 997 + i) % 4000 / 100:.2f}"
                        r = await c.request("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": price, "quantity": "0.1"})
                        assert r["status"] == "New"
                        acked.add(r["id"])
            except* (ConnectionClosed, OSError, HandshakeError):
                pass  # the node was killed under us

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(worker, n)
            with trio.fail_after(60):
                while len(acked) < 400:
                    await trio.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)  # mid-workload: requests are in flight
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 400

    proc = start_node(data, port, tmp_path / "run2.log")
    try:
        await wait_ready(url, proc)
        async with connect(url, trader) as c:
            open_ids = {o["id"] for o in await c.request("orderQueryAll", {"symbol": "SOL_USDC"})}
        assert acked <= open_ids, f"{len(acked - open_ids)} acknowledged orders lost"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = log_state(tmp_path / "run2.log", "node.stopped")
    assert log_state(tmp_path / "run2.log", "journal.recovered") == stopped  # nothing happened after restart
    out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "replay", "--data", str(data)], capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("blocks=") and last.endswith(f"state={stopped}")
