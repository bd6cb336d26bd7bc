"""Signed orders over WebSocket from another process: acked orders/s and ack latency,
beside a raw trio-websocket echo server measured in the same run with the same client.

Processes: the node (``satchel serve --no-demo``) or the echo server runs in its own
process; this process is the client. Each of ``--conns`` connections belongs to its own
funded account and keeps ``--inflight`` requests outstanding (closed loop). Orders are
signed before the clock starts (signing is the client's cost, not the exchange's); the
node verifies every signature, sequences, journals with fsync, matches and replies.
The order mix rests and crosses around a fixed mid, so fills happen continuously.
The node's own per-stage latencies (``nodeStats``: verify, sequence, apply, durable,
reply, total) are printed beside the client-side figures.
Usage: python -m benchmarks.e2e [--seconds S] [--scenarios 1x1,8x1,20x32] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import trio
from trio_websocket import open_websocket_url, serve_websocket

from satchel.tools.client import connect, free_port
from satchel.signing import load_key
from satchel.signing import Keypair, sign_request


# ---------------------------------------------------------------- the echo server process


def echo_main(port: int) -> None:
    async def handler(request):
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except Exception:
            pass

    async def main():
        await serve_websocket(handler, "127.0.0.1", port, None)

    trio.run(main)


# ---------------------------------------------------------------- the client


def make_frames(keys: list[Keypair], per_conn: int) -> list[list[str]]:
    frames = []
    for c, key in enumerate(keys):
        out = []
        for i in range(per_conn):
            side = "Bid" if (i + c) % 2 else "Ask"
            offset = (i * 7 + c) % 21 - 10  # ticks around 150.00: about half cross
            price = f"{150 + offset / 100 if side == 'Bid' else 150 - offset / 100:.2f}"
            params = {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": "0.1",
                      "clientId": i}
            _, sig = sign_request(key, "orderExecute", params, window=60_000)
            out.append(orjson.dumps({"id": i, "method": "orderExecute", "params": params, "signature": sig}).decode())
        frames.append(out)
    return frames


async def drive(url: str, frames: list[list[str]], inflight: int, seconds: float, check_orders: bool) -> tuple[int, list[float], int]:
    """Closed loop: per connection, keep ``inflight`` frames outstanding for ``seconds``."""
    latencies: list[float] = []
    acked = [0]
    errors = [0]
    stop_at = [0.0]

    async def conn(frames_c: list[str]) -> None:
        async with open_websocket_url(url, max_message_size=1 << 24) as ws:
            slots = trio.Semaphore(inflight)
            sent: dict[int, float] = {}

            async def reader():
                while True:
                    reply = orjson.loads(await ws.get_message())
                    t = time.perf_counter()
                    rid = reply.get("id")
                    if rid in sent:
                        latencies.append(t - sent.pop(rid))
                        if check_orders and "error" in reply:
                            errors[0] += 1
                        acked[0] += 1
                        slots.release()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for i, frame in enumerate(frames_c):
                    await slots.acquire()
                    if time.perf_counter() >= stop_at[0]:
                        break
                    sent[i] = time.perf_counter()
                    await ws.send_message(frame)
                with trio.move_on_after(5):
                    while sent:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for f in frames:
            nursery.start_soon(conn, f)
    elapsed = time.perf_counter() - t0
    return int(acked[0] / min(elapsed, seconds + 0.05)), latencies, errors[0]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def wait_port(port: int) -> None:
    with trio.fail_after(30):
        while True:
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


async def stats(url: str, admin: Keypair | None = None) -> dict:
    """The node's stage latencies; given the admin key, also reset them."""
    async with connect(url, admin) as c:
        return await c.request("nodeStats", {"reset": True} if admin else None, sign=admin is not None)


def stage_line(stages: dict) -> str:
    return "  ".join(f"{name} {s['p50'] / 1000:.2f}/{s['p99'] / 1000:.2f}" for name, s in stages.items())


async def scenario(args: argparse.Namespace, conns: int, inflight: int) -> dict:
    per_conn = int(args.seconds * 40_000 / conns) + 1000
    keys = [Keypair.generate() for _ in range(conns)]
    frames_by_run = [make_frames(keys, per_conn) for _ in range(args.runs)]
    echo_rates, node_rates, p50s, p99s, echo_p50s = [], [], [], [], []
    stage_runs = []
    for r in range(args.runs):
        port = free_port()
        echo = subprocess.Popen([sys.executable, "-c", f"from benchmarks.e2e import echo_main; echo_main({port})"])
        try:
            await wait_port(port)
            rate, lat, _ = await drive(f"ws://127.0.0.1:{port}", frames_by_run[r], inflight, args.seconds, False)
        finally:
            echo.kill()
            echo.wait()
        echo_rates.append(rate)
        echo_p50s.append(pct(lat, 0.5))
        with tempfile.TemporaryDirectory() as d:
            port = free_port()
            url = f"ws://127.0.0.1:{port}"
            node = subprocess.Popen([sys.executable, "-m", "satchel.tools.cli", "serve", "--data", d, "--port", str(port),
                                     "--no-demo", "--replication-port", "-1", *args.node_args], stderr=subprocess.DEVNULL)
            try:
                await wait_port(port)
                async with connect(url, load_key(Path(d), "admin.key")) as admin:
                    for k in keys:
                        await admin.request("deposit", {"account": k.api_key, "asset": "USDC", "quantity": "100000000"})
                        await admin.request("deposit", {"account": k.api_key, "asset": "SOL", "quantity": "1000000"})
                await stats(url, load_key(Path(d), "admin.key"))
                rate, lat, errors = await drive(url, frames_by_run[r], inflight, args.seconds, True)
                stage_runs.append((await stats(url))["stages"])
            finally:
                node.terminate()
                node.wait()
        node_rates.append(rate)
        p50s.append(pct(lat, 0.5))
        p99s.append(pct(lat, 0.99))
        print(f"  {conns}x{inflight} run {r + 1}: echo {echo_rates[-1]:,} round trips/s (p50 {echo_p50s[-1]:.2f} ms) | "
              f"satchel {rate:,} acked orders/s, p50 {p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms, errors {errors}", flush=True)
        print(f"    node stages p50/p99 ms: {stage_line(stage_runs[-1])}", flush=True)
    e, n = statistics.median(echo_rates), statistics.median(node_rates)
    return {"conns": conns, "inflight": inflight, "echo": e, "echo_p50": statistics.median(echo_p50s), "node": n,
            "p50": statistics.median(p50s), "p99": statistics.median(p99s), "stages": stage_runs[len(stage_runs) // 2]}


async def run(args: argparse.Namespace) -> None:
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.scenarios.split(",")]
    print(f"e2e: scenarios {args.scenarios} (connections x in flight), {args.seconds}s per measurement, {args.runs} runs",
          flush=True)
    results = [await scenario(args, c, w) for c, w in shapes]
    print("\nmedians:")
    print(f"{'shape':>8} {'echo rt/s':>10} {'echo p50':>9} {'satchel/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for r in results:
        print(f"{r['conns']:>4}x{r['inflight']:<3} {r['echo']:>10,.0f} {r['echo_p50']:>9.2f} {r['node']:>10,.0f} "
              f"{r['node'] / r['echo']:>6.0%} {r['p50']:>7.2f} {r['p99']:>7.2f}")
    for r in results:
        print(f"stages {r['conns']}x{r['inflight']} p50/p99 ms: {stage_line(r['stages'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--scenarios", default="1x1,8x1,20x32",
                    help="comma-separated CONNSxINFLIGHT shapes (closed loop), e.g. 1x1,8x1,20x32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--node-args", nargs="*", default=[], help="extra arguments for 'satchel serve'")
    trio.run(run, ap.parse_args())


if __name__ == "__main__":
    main()
