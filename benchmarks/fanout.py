"""Market-data fan-out to many subscribers: delivered frames/s and lag.

Three servers, each measured with the same clients in this run:

1. ``raw-send``: a trio-websocket server broadcasting one frame at a time with
   ``send_message`` to every connection;
2. ``raw-coalesced``: the same frames, each encoded once, ten per socket write
   (``satchel.gateway.wire.send_frames``);
3. ``satchel``: a node whose own driver keeps SOL_USDC busy (makers quoting and
   cancelling, takers crossing) while the clients subscribe to ``depth.SOL_USDC`` and
   ``trade.SOL_USDC``, plus one subscriber that never reads.

Clients run in ``--client-procs`` processes over raw sockets: they walk WebSocket frame
headers to count frames (a trio-websocket client could not consume 100k frames/s on
this machine) and decode one frame in 20 to measure lag (receive time minus ``E``).
Usage: python -m benchmarks.fanout [--subscribers 1000] [--seconds 5] [--client-procs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import socket
import statistics
import subprocess
import sys
import time

import orjson
import trio

from satchel.tools.client import free_port

_E = re.compile(rb'"E":(\d+)')


# ---------------------------------------------------------------- clients


def _count_frames(buf: bytearray, sample: list, now_us: int, every: int, counter: list) -> int:
    """Consume whole frames from ``buf``; returns how many. Server frames are unmasked."""
    pos = 0
    n = 0
    end = len(buf)
    while end - pos >= 2:
        length = buf[pos + 1] & 0x7F
        head = 2
        if length == 126:
            if end - pos < 4:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            head = 4
        elif length == 127:
            if end - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
        if end - pos < head + length:
            break
        counter[0] += 1
        if counter[0] % every == 0:
            m = _E.search(buf, pos + head, pos + head + length)
            if m:
                sample.append(now_us - int(m.group(1)))
        pos += head + length
        n += 1
    del buf[:pos]
    return n


async def _client_conn(port: int, streams: list[str] | None, start_at: float, stop_at: float, out: dict) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
    leftover = b""
    while True:
        data = await stream.receive_some(65536)
        ws.receive_data(data)
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            # wsproto keeps bytes after the handshake inside; frames we count ourselves
            break
    if streams:
        await stream.send_all(ws.send(TextMessage(orjson.dumps({"method": "SUBSCRIBE", "params": streams}).decode())))
    buf = bytearray(leftover)
    counter = [0]
    counted = 0
    while True:
        data = await stream.receive_some(1 << 18)
        if not data:
            break
        now = time.time()
        buf += data
        n = _count_frames(buf, out["lag"], int(now * 1e6), 20, counter)
        if start_at <= now < stop_at:
            counted += n
        elif now >= stop_at:
            break
    out["frames"].append(counted)
    await stream.aclose()


def client_main(port: int, n: int, streams: list[str] | None, start_at: float, stop_at: float, q) -> None:
    out = {"frames": [], "lag": []}

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(_client_conn, port, streams, start_at, stop_at, out)
                await trio.sleep(0.001)

    try:
        trio.run(main)
    finally:
        q.put(out)


# ---------------------------------------------------------------- raw servers


def _frame(i: int) -> str:
    levels = [[f"{150 + k / 100:.2f}", f"{random.randint(1, 500) / 100:.2f}"] for k in range(3)]
    return orjson.dumps({"stream": "depth.SOL_USDC", "data": {"e": "depth", "E": time.time_ns() // 1000, "s": "SOL_USDC",
                         "a": levels, "b": levels, "U": i, "u": i, "T": time.time_ns() // 1000}}).decode()


def raw_server_main(port: int, mode: str, expected: int, stop_at: float) -> None:
    from trio_websocket import ConnectionClosed, serve_websocket

    from satchel.gateway.wire import send_frames

    conns: list = []

    async def handler(request):
        ws = await request.accept()
        conns.append(ws)
        try:
            await trio.sleep_forever()
        finally:
            conns.remove(ws)

    async def broadcaster():
        while len(conns) < expected:
            await trio.sleep(0.05)
        i = 0
        while time.time() < stop_at + 0.5:
            if mode == "raw-send":
                i += 1
                frame = _frame(i)
                for ws in list(conns):
                    try:
                        await ws.send_message(frame)
                    except ConnectionClosed:
                        pass
            else:
                frames = [_frame(i + k) for k in range(10)]
                i += 10
                for ws in list(conns):
                    try:
                        await send_frames(ws, frames)
                    except ConnectionClosed:
                        pass

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_websocket, handler, "127.0.0.1", port, None)
            await broadcaster()
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---------------------------------------------------------------- the satchel server


def satchel_server_main(port: int, stop_at: float, data: str) -> None:
    from satchel.tools.cli import setup_logging
    from satchel.gateway import Gateway
    from satchel.tools.loadtest.feed import stalled_subscription
    from satchel.core.messages import ASK, BID, GTC, IOC, LIMIT, REJECT_TAKER, CancelAll, Deposit, PlaceOrder
    from satchel.node import Node

    setup_logging(level=30)

    async def driver(node):
        admin = node.admin.api_key
        for acct in ("maker", "taker"):
            for asset in ("USDC", "SOL"):
                await node.submit_wait(Deposit(admin, acct, asset, 10**17))
        rng = random.Random(5)
        mid = 15_000
        while time.time() < stop_at + 0.5:
            mid = min(15_200, max(14_800, mid + rng.choice((-1, 0, 1))))
            node.submit(CancelAll("maker", "SOL_USDC"))
            for k in range(1, 6):
                node.submit(PlaceOrder("maker", "SOL_USDC", BID, LIMIT, GTC, False, mid - k, rng.randint(1, 50) * 10, 0, None, REJECT_TAKER))
                node.submit(PlaceOrder("maker", "SOL_USDC", ASK, LIMIT, GTC, False, mid + k, rng.randint(1, 50) * 10, 0, None, REJECT_TAKER))
            side = rng.choice((BID, ASK))
            node.submit(PlaceOrder("taker", "SOL_USDC", side, LIMIT, IOC, False, mid + 2 if side == BID else mid - 2, 300, 0, None, REJECT_TAKER))
            await trio.sleep(0.0005)

    async def main():
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(data).run)
            gw = await nursery.start(Gateway(node, "127.0.0.1", port).run)
            stalled = await stalled_subscription(port, ["depth.SOL_USDC", "trade.SOL_USDC"])
            await driver(node)
            print(f"slow_consumers_dropped={gw.slow_consumers}", flush=True)
            await stalled.aclose()
            node.shutdown()
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---------------------------------------------------------------- the run


def measure(mode: str, args) -> tuple[float, float, float, int]:
    import tempfile

    port = free_port()
    start_at = time.time() + 3 + args.subscribers / 500  # connect everyone first
    stop_at = start_at + args.seconds
    if mode == "satchel":
        tmp = tempfile.mkdtemp()
        server = subprocess.Popen([sys.executable, "-c", f"from benchmarks.fanout import satchel_server_main; satchel_server_main({port}, {stop_at}, {tmp!r})"],
                                  stdout=subprocess.PIPE, text=True)
        streams = ["depth.SOL_USDC", "trade.SOL_USDC"]
    else:
        server = subprocess.Popen([sys.executable, "-c", f"from benchmarks.fanout import raw_server_main; raw_server_main({port}, {mode!r}, {args.subscribers}, {stop_at})"])
        streams = None
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    if mode == "satchel":
        time.sleep(0.5)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    per = [args.subscribers // args.client_procs + (1 if i < args.subscribers % args.client_procs else 0) for i in range(args.client_procs)]
    procs = [ctx.Process(target=client_main, args=(port, n, streams, start_at, stop_at, q)) for n in per]
    for p in procs:
        p.start()
    outs = [q.get(timeout=args.seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    dropped = -1
    if mode == "satchel":
        out, _ = server.communicate(timeout=60)
        m = re.search(r"slow_consumers_dropped=(\d+)", out or "")
        dropped = int(m.group(1)) if m else -1
    else:
        server.wait(timeout=60)
    frames = [f for o in outs for f in o["frames"]]
    lags = sorted(lag for o in outs for lag in o["lag"])
    rate = sum(frames) / args.seconds
    p50 = lags[len(lags) // 2] / 1000 if lags else float("nan")
    p99 = lags[int(len(lags) * 0.99)] / 1000 if lags else float("nan")
    return rate, p50, p99, dropped, (min(frames) if frames else 0), (statistics.median(frames) if frames else 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["raw-send", "raw-coalesced", "satchel"])
    args = ap.parse_args()
    print(f"fanout: {args.subscribers} subscribers, {args.seconds}s per measurement, {args.client_procs} client processes", flush=True)
    results: dict[str, list] = {m: [] for m in args.modes}
    for r in range(args.runs):
        for mode in args.modes:
            rate, p50, p99, dropped, fmin, fmed = measure(mode, args)
            results[mode].append((rate, p50, p99))
            extra = f", sessions dropped as slow: {dropped}" if mode == "satchel" else ""
            print(f"  run {r + 1} {mode}: {rate:,.0f} frames/s delivered, lag p50 {p50:.1f} ms p99 {p99:.1f} ms, "
                  f"frames per subscriber min {fmin:,} median {fmed:,.0f}{extra}", flush=True)
    for mode, rs in results.items():
        print(f"{mode}: median {statistics.median(r[0] for r in rs):,.0f} frames/s, lag p99 {statistics.median(r[2] for r in rs):.1f} ms")


if __name__ == "__main__":
    main()
