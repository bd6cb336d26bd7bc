"""The REST stack, measured in one run against a node in this process, with the load
coming from another process over raw keep-alive sockets.

``orders`` (first; a plain run does both sections): signed order placements, ``POST /api/v1/order``
beside ``orderExecute`` over WebSocket, on the same node, with the same orders, from
the same client. ``--connections`` connections per transport, each a closed loop (one
request in flight): acked orders/s and ack latency p50/p99. Then a fixed-rate phase at
half the slower transport's closed-loop rate (``--rate`` to choose it), so the latency
figures are also shown away from saturation. Beside each run, the node's own ``total``
stage (request received -> reply queued, ``satchel.latency``): what the client sees
beyond it is the transport's cost.

``depth``: ``GET /api/v1/depth`` requests/s through Starlette on hypercorn's trio worker
(what the node serves) beside a bare ASGI callable on the same hypercorn answering the
same payload from the same ``MarketData``.

What keeps the client from being what is measured: every request is signed and encoded
before the clock starts (signing costs ~50 us of a core the node shares), with a
timestamp valid for the node's maximum window (60 s, longer than any phase); both
transports are spoken over raw trio sockets -- the client writes prepared bytes and
walks only the HTTP head or the WebSocket frame header of each reply -- so REST and
WebSocket cost the client the same few microseconds. ``http.client`` (or httpx) would
parse every header of every response in Python, and a trio-websocket client runs
wsproto's per-message machinery: either would make the client, which shares the two
cores with the node, part of the figure and the ratio. Each run prints the client's CPU
share to show it is not the bottleneck. At a fixed rate each connection sends on its own
schedule and latency is taken from the actual send: a late reply delays that
connection's next send (the printed rate shows when the target was not kept).

The orders rest and never cross: each account alternates bids from 100.00 up and asks
from 195.00 up, each price once, at most ``MAX_OPEN_ORDERS`` per account; every phase
uses fresh accounts, funded by the admin key before it starts. The node takes no
snapshot during the run (see ``_no_snapshots``).
Percentiles come from HdrHistogram (microseconds, 3 significant digits); each figure
printed under "medians" is the median over ``--runs`` runs, REST and WS alternating.

Usage: python -m benchmarks.rest [--what orders|depth|all] [--quick] [--seconds S]
       [--connections N] [--runs R] [--rate ORDERS_PER_S]
"""

from __future__ import annotations

import argparse
import base64
import math
import multiprocessing
import os
import statistics
import tempfile
import time

import msgspec
import orjson
import trio
from hdrh.histogram import HdrHistogram

from satchel import config
from satchel.actors.book import MAX_OPEN_ORDERS
from satchel.core.engine import MAX_WINDOW_MS
from satchel.core.messages import Deposit
from satchel.gateway import Gateway
from satchel.node import Node
from satchel.rest import serve
from satchel.signing import Keypair, sign_request
from satchel.tools.cli import setup_logging

from benchmarks._stats import submit_all

PATH = b"/api/v1/depth?symbol=SOL_USDC"


# ================================================================ depth: Starlette vs a bare ASGI app


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


def depth_client(port: int, seconds: float, connections: int, out: multiprocessing.Queue) -> None:
    async def main() -> None:
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(_one_connection, port, until, latencies)
        latencies.sort()
        out.put((len(latencies) / seconds, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]))

    trio.run(main)


async def measure_depth(seconds: float, connections: int, runs: int) -> dict[str, list[tuple]]:
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
                    p = ctx.Process(target=depth_client, args=(port, seconds, connections, q))
                    p.start()
                    results[name].append(await trio.to_thread.run_sync(q.get))
                    await trio.to_thread.run_sync(p.join)
            node.shutdown()
            nursery.cancel_scope.cancel()
    return results


def report_depth(results: dict[str, list[tuple]], seconds: float, connections: int) -> None:
    print(f"GET /api/v1/depth, {connections} keep-alive connections from another process, {seconds:g} s per run")
    medians = {}
    for name, runs in results.items():
        for i, (rate, p50, p99) in enumerate(runs, 1):
            print(f"  run {i} {name:10}: {rate:8,.0f} req/s  p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms")
        medians[name] = statistics.median(r[0] for r in runs)
    print("  median: " + ", ".join(f"{n} {m:,.0f} req/s" for n, m in medians.items())
          + f"; Starlette keeps {medians['starlette'] / medians['bare ASGI']:.0%} of the bare app's rate", flush=True)


# ================================================================ orders: REST beside WebSocket

SYMBOL = "SOL_USDC"
WINDOW = MAX_WINDOW_MS  # the longest validity the node accepts: pre-signed orders stay valid 60 s
FUNDS = (("USDC", 100_000 * 10**6), ("SOL", 1_000 * 10**9))  # per account: ~5,300 USDC and 50 SOL get held
TRANSPORTS = ("REST", "WS")


def order_params(i: int) -> dict:
    """An account's ``i``-th order: bids at 100.00, 100.01, ... and asks at 195.00,
    195.01, ..., alternating, each price once per account: they all rest, none crosses."""
    cents = (10_000 if i % 2 == 0 else 19_500) + i // 2
    return {"symbol": SYMBOL, "side": "Bid" if i % 2 == 0 else "Ask", "orderType": "Limit",
            "price": f"{cents // 100}.{cents % 100:02d}", "quantity": "0.1", "clientId": i}


def http_request(params: dict, signature: list[str]) -> bytes:
    """``POST /api/v1/order`` with the body signed and the signature in the X- headers."""
    api_key, sig, ts, window = signature
    body = orjson.dumps(params)
    return (f"POST /api/v1/order HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-API-Key: {api_key}\r\nX-Signature: {sig}\r\n"
            f"X-Timestamp: {ts}\r\nX-Window: {window}\r\n\r\n").encode() + body


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client WebSocket frame (FIN set, masked as RFC 6455 requires of clients)."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


class _Conn:
    """One keep-alive connection of the client: write a prepared request, read its reply."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = bytearray()

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data


class HttpConn(_Conn):
    @classmethod
    async def open(cls, port: int) -> "HttpConn":
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def exchange(self, request: bytes) -> bool:
        """Send one request; True if the reply is a 200 with the order placed (not rejected)."""
        await self.stream.send_all(request)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._more()
        head = bytes(buf[:end]).lower()
        at = head.index(b"content-length:") + 15
        stop = head.find(b"\r\n", at)
        total = end + 4 + int(head[at:stop if stop >= 0 else None])
        while len(buf) < total:
            await self._more()
        ok = buf[9:12] == b"200" and buf.find(b'"Rejected"', end, total) < 0
        del buf[:total]
        return ok


class WsConn(_Conn):
    @classmethod
    async def open(cls, port: int) -> "WsConn":
        conn = cls(await trio.open_tcp_stream("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await conn.stream.send_all(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            await conn._more()
        if b" 101 " not in conn.buf[:end]:
            raise ConnectionError(f"WebSocket handshake refused: {bytes(conn.buf[:end])!r}")
        del conn.buf[:end + 4]
        return conn

    async def exchange(self, frame: bytes) -> bool:
        """Send one request frame; True if its reply is an order, not an error or a
        rejection. Server frames are unmasked and unfragmented; pings get their pong."""
        await self.stream.send_all(frame)
        buf = self.buf
        while True:
            while len(buf) < 2:
                await self._more()
            n, head = buf[1] & 0x7F, 2
            if n == 126:
                while len(buf) < 4:
                    await self._more()
                n, head = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                while len(buf) < 10:
                    await self._more()
                n, head = int.from_bytes(buf[2:10], "big"), 10
            while len(buf) < head + n:
                await self._more()
            opcode, payload = buf[0] & 0x0F, bytes(buf[head:head + n])
            del buf[:head + n]
            if opcode == 0x9:
                await self.stream.send_all(ws_frame(payload, 0xA))
            elif opcode == 0x8:
                raise ConnectionError("the server closed the WebSocket")
            else:
                return b'"error"' not in payload and b'"Rejected"' not in payload


class Phase(msgspec.Struct, frozen=True):
    """What the client process runs: per connection, the seeds of its funded accounts."""

    transport: str
    port: int
    seeds: list[list[bytes]]
    per_conn: int
    seconds: float
    rate: float | None  # orders/s over all connections, or None: closed loop


class Outcome(msgspec.Struct):
    ok: int
    errors: int
    seconds: float
    hist: bytes  # HdrHistogram of ack latencies in microseconds, encoded
    ran_out: int  # connections that used up their pre-signed orders before the end
    client_cpu: float  # the client process's CPU time over the timed seconds (1.0: one core)

    @property
    def rate(self) -> float:
        return (self.ok + self.errors) / self.seconds

    def percentile(self, p: float) -> float:
        """Milliseconds."""
        return HdrHistogram.decode(self.hist).get_value_at_percentile(p) / 1000


def presign(phase: Phase) -> list[list[bytes]]:
    """Every request of the phase, signed and encoded, per connection. Account ``k`` of
    a connection places its orders ``k * MAX_OPEN_ORDERS ..``, so none exceeds the limit."""
    out = []
    for seeds in phase.seeds:
        keys = [Keypair(s) for s in seeds]
        requests = []
        for j in range(phase.per_conn):
            params = order_params(j % MAX_OPEN_ORDERS)
            _, signature = sign_request(keys[j // MAX_OPEN_ORDERS], "orderExecute", params, WINDOW)
            if phase.transport == "REST":
                requests.append(http_request(params, signature))
            else:
                frame = {"id": j, "method": "orderExecute", "params": params, "signature": signature}
                requests.append(ws_frame(orjson.dumps(frame)))
        out.append(requests)
    return out


async def run_phase(phase: Phase) -> Outcome:
    requests = presign(phase)
    opener = HttpConn.open if phase.transport == "REST" else WsConn.open
    conns = [await opener(phase.port) for _ in requests]
    hist = HdrHistogram(1, 60_000_000, 3)
    tally = [0, 0, 0]  # ok, errors, ran out
    clock = trio.current_time
    start = clock() + 0.1
    stop = start + phase.seconds
    interval = None if phase.rate is None else len(conns) / phase.rate

    async def drive(c: int) -> None:
        conn, record = conns[c], hist.record_value
        offset = 0.0 if interval is None else interval * c / len(conns)  # spread the connections' sends
        await trio.sleep_until(start + offset)
        for i, request in enumerate(requests[c]):
            if interval is not None:
                await trio.sleep_until(start + offset + i * interval)
            t = clock()
            if t >= stop:
                return
            ok = await conn.exchange(request)
            record(max(1, int((clock() - t) * 1e6)))
            tally[0 if ok else 1] += 1
        tally[2] += 1

    await trio.sleep_until(start)
    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        for c in range(len(conns)):
            nursery.start_soon(drive, c)
    cpu = (time.process_time() - cpu) / (clock() - start)
    for conn in conns:
        await conn.stream.aclose()
    return Outcome(tally[0], tally[1], phase.seconds, hist.encode(), tally[2], cpu)


def order_client(pipe) -> None:
    """The client process: runs each ``Phase`` it is sent (msgpack), answers its ``Outcome``."""
    while (data := pipe.recv_bytes()) != b"":
        outcome = trio.run(run_phase, msgspec.msgpack.decode(data, type=Phase))
        pipe.send_bytes(msgspec.msgpack.encode(outcome))


class OrderBench:
    """The node with its WebSocket gateway and REST server, and the client process."""

    def __init__(self, node: Node, ports: dict[str, int], pipe, connections: int, seconds: float):
        self.node = node
        self.ports = ports
        self.pipe = pipe
        self.connections = connections
        self.seconds = seconds
        self.presign_rate = {t: 5_000.0 for t in TRANSPORTS}  # orders/s to sign for, closed loop

    async def phase(self, transport: str, rate: float | None) -> tuple[Outcome, dict]:
        """One phase on fresh funded accounts; its outcome and the node's ``total``
        stage (received -> reply queued) over it."""
        planned = self.presign_rate[transport] if rate is None else rate
        per_conn = math.ceil(planned * self.seconds / self.connections) + 2
        accounts = [[Keypair.generate() for _ in range(math.ceil(per_conn / MAX_OPEN_ORDERS))]
                    for _ in range(self.connections)]
        admin = self.node.admin.api_key
        await submit_all(self.node, [Deposit(admin, k.api_key, asset, units)
                                     for keys in accounts for k in keys for asset, units in FUNDS])
        phase = Phase(transport, self.ports[transport], [[k.seed for k in keys] for keys in accounts], per_conn,
                      self.seconds, rate)
        self.node.latency.reset()
        self.pipe.send_bytes(msgspec.msgpack.encode(phase))
        outcome = msgspec.msgpack.decode(await trio.to_thread.run_sync(self.pipe.recv_bytes), type=Outcome)
        if rate is None:  # sign for twice the rate seen, so that no connection runs dry
            self.presign_rate[transport] = max(self.presign_rate[transport] / 2, 2 * outcome.rate)
        return outcome, self.node.latency.summary()["total"]


def _no_snapshots() -> config.Config:
    """The default configuration, with no snapshot during the run: one pauses the node's
    pipeline (~150 ms here once ~10k orders rest), which would land in whichever
    transport's run crosses block 10,000 -- a node matter, not a transport one."""
    cfg = config.load()
    return msgspec.structs.replace(cfg, node=msgspec.structs.replace(cfg.node, snapshot_blocks=10**9))


def _line(outcome: Outcome, node_total: dict) -> str:
    warn = f"  ({outcome.ran_out} connections ran out of pre-signed orders)" if outcome.ran_out else ""
    return (f"{outcome.rate:8,.0f} orders/s  p50 {outcome.percentile(50):6.2f} ms  p99 {outcome.percentile(99):6.2f} ms"
            f"  | node p50 {node_total['p50'] / 1000:.2f} ms p99 {node_total['p99'] / 1000:.2f} ms"
            f"  | client CPU {outcome.client_cpu:.0%}  errors {outcome.errors}{warn}")


async def measure_orders(args: argparse.Namespace) -> tuple[dict[str, dict[str, list]], float]:
    """Closed-loop runs (REST and WS alternating, which goes first alternating too), then
    fixed-rate runs at ``args.rate`` or half the slower transport's closed-loop median;
    the results by kind and transport, and that rate."""
    results: dict[str, dict[str, list]] = {"closed": {t: [] for t in TRANSPORTS}, "fixed": {t: [] for t in TRANSPORTS}}
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    client = ctx.Process(target=order_client, args=(theirs,), daemon=True)
    client.start()
    print(f"Signed order placements: POST /api/v1/order beside orderExecute over WebSocket, "
          f"{args.connections} keep-alive connections per transport from another process, one request in flight "
          f"each, {args.seconds:g} s per run; node p50/p99 = its own received -> reply queued", flush=True)
    try:
        with tempfile.TemporaryDirectory() as d:
            async with trio.open_nursery() as nursery:
                node = await nursery.start(Node(d, _no_snapshots()).run)
                gateway = await nursery.start(Gateway(node, "127.0.0.1", 0).run)
                rest_url = await nursery.start(serve, gateway, "127.0.0.1", 0)
                ports = {"REST": int(rest_url.rsplit(":", 1)[1]), "WS": int(gateway.url.rsplit(":", 1)[1])}
                bench = OrderBench(node, ports, ours, args.connections, args.seconds)
                print("  closed loop:", flush=True)
                for r in range(args.runs):
                    for t in TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]:
                        outcome, total = await bench.phase(t, None)
                        results["closed"][t].append((outcome, total))
                        print(f"    run {r + 1} {t:4}: {_line(outcome, total)}", flush=True)
                rate = args.rate or round(min(statistics.median(o.rate for o, _ in results["closed"][t])
                                              for t in TRANSPORTS) / 2, -1) or 10
                print(f"  fixed rate, {rate:,.0f} orders/s over the {args.connections} connections:", flush=True)
                for r in range(args.runs):
                    for t in TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]:
                        outcome, total = await bench.phase(t, rate)
                        results["fixed"][t].append((outcome, total))
                        print(f"    run {r + 1} {t:4}: {_line(outcome, total)}", flush=True)
                node.shutdown()
                nursery.cancel_scope.cancel()
    finally:
        ours.send_bytes(b"")
        await trio.to_thread.run_sync(client.join, 10)
    return results, rate


def report_orders(results: dict[str, dict[str, list]], rate: float) -> None:
    def med(kind: str, t: str, figure) -> float:
        return statistics.median(figure(o, n) for o, n in results[kind][t])

    rows = [
        ("closed loop: orders/s", "closed", lambda o, n: o.rate, "{:,.0f}"),
        ("closed loop: p50 ms", "closed", lambda o, n: o.percentile(50), "{:.2f}"),
        ("closed loop: p99 ms", "closed", lambda o, n: o.percentile(99), "{:.2f}"),
        ("closed loop: node p50 ms", "closed", lambda o, n: n["p50"] / 1000, "{:.2f}"),
        (f"{rate:,.0f}/s: orders/s", "fixed", lambda o, n: o.rate, "{:,.0f}"),
        (f"{rate:,.0f}/s: p50 ms", "fixed", lambda o, n: o.percentile(50), "{:.2f}"),
        (f"{rate:,.0f}/s: p99 ms", "fixed", lambda o, n: o.percentile(99), "{:.2f}"),
        (f"{rate:,.0f}/s: node p50 ms", "fixed", lambda o, n: n["p50"] / 1000, "{:.2f}"),
    ]
    print(f"  medians:{'REST':>25}{'WS':>10}{'REST/WS':>10}")
    for label, kind, figure, fmt in rows:
        rest, ws = med(kind, "REST", figure), med(kind, "WS", figure)
        print(f"    {label:26}{fmt.format(rest):>9}{fmt.format(ws):>10}{rest / ws if ws else float('nan'):>10.2f}")
    print(flush=True)


# ================================================================ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", choices=["orders", "depth", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="1 run of 1.5 s per measurement")
    ap.add_argument("--seconds", type=float, default=None, help="per run (default 3; 4 for depth)")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--runs", type=int, default=None, help="default 3")
    ap.add_argument("--rate", type=float, default=None,
                    help="orders/s of the fixed-rate phase (default: half the slower closed-loop median)")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    seconds = args.seconds
    setup_logging(level=30)
    started = time.perf_counter()
    if args.what in ("orders", "all"):
        args.runs, args.seconds = runs, seconds or (1.5 if args.quick else 3.0)
        report_orders(*trio.run(measure_orders, args))
    if args.what in ("depth", "all"):
        seconds = seconds or (1.5 if args.quick else 4.0)
        report_depth(trio.run(measure_depth, seconds, args.connections, runs), seconds, args.connections)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
