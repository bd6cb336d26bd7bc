"""The REST stack, measured: requests/s of ``GET /api/v1/depth`` through Starlette on
hypercorn's trio worker (what the node serves) beside a bare ASGI app on the same hypercorn
answering the same payload from the same ``MarketData``, in one run.

The node (with its gateway and both HTTP servers) runs in this process; the load comes
from another process: ``--connections`` keep-alive HTTP/1.1 connections, each a closed
loop (send a request, read the whole response), over raw trio sockets so the client is
not the bottleneck. Usage: python -m benchmarks.rest [--seconds S] [--connections N] [--runs R]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time

import msgspec
import trio

from satchel.gateway import Gateway
from satchel.node import Node
from satchel.rest import serve
from satchel.tools.cli import setup_logging

PATH = b"/api/v1/depth?symbol=SOL_USDC"


def bare_app(gateway: Gateway):
    """The same answer with no framework: one ASGI callable, one route."""
    encode = msgspec.json.encode

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        body = encode(gateway.marketdata.snapshot("SOL_USDC"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


async def _one_connection(port: int, until: float, latencies: list[float]) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = b"GET " + PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    buf = b""
    n = 0
    async with stream:
        while time.perf_counter() < until:
            t = time.perf_counter()
            await stream.send_all(request)
            while b"\r\n\r\n" not in buf:
                buf += await stream.receive_some(65536)
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            buf = buf[length:]
            latencies.append(time.perf_counter() - t)
            n += 1
    return n


def client(port: int, seconds: float, connections: int, out: multiprocessing.Queue) -> None:
    async def main() -> None:
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(_one_connection, port, until, latencies)
        latencies.sort()
        out.put((len(latencies) / seconds, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]))

    trio.run(main)


async def measure(seconds: float, connections: int, runs: int) -> dict[str, list[tuple]]:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    results: dict[str, list[tuple]] = {"starlette": [], "bare ASGI": []}
    with tempfile.TemporaryDirectory() as d:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(d).run)
            gateway = await nursery.start(Gateway(node, "127.0.0.1", 0).run)
            url = await nursery.start(serve, gateway, "127.0.0.1", 0)
            ports = {"starlette": int(url.rsplit(":", 1)[1])}
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = config.errorlog = None
            binds = await nursery.start(lambda task_status: hypercorn_serve(bare_app(gateway), config, task_status=task_status))
            ports["bare ASGI"] = int(binds[0].rsplit(":", 1)[1])
            ctx = multiprocessing.get_context("spawn")
            for _ in range(runs):
                for name, port in ports.items():
                    q = ctx.Queue()
                    p = ctx.Process(target=client, args=(port, seconds, connections, q))
                    p.start()
                    results[name].append(await trio.to_thread.run_sync(q.get))
                    await trio.to_thread.run_sync(p.join)
            node.shutdown()
            nursery.cancel_scope.cancel()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    setup_logging(level=30)
    results = trio.run(measure, args.seconds, args.connections, args.runs)
    print(f"GET /api/v1/depth, {args.connections} keep-alive connections from another process, {args.seconds:.0f} s per run")
    medians = {}
    for name, runs in results.items():
        for i, (rate, p50, p99) in enumerate(runs, 1):
            print(f"  run {i} {name:10}: {rate:8,.0f} req/s  p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms")
        medians[name] = statistics.median(r[0] for r in runs)
    print("  median: " + ", ".join(f"{n} {m:,.0f} req/s" for n, m in medians.items())
          + f"; Starlette keeps {medians['starlette'] / medians['bare ASGI']:.0%} of the bare app's rate")


if __name__ == "__main__":
    main()
