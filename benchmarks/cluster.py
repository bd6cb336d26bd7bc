"""The cluster mode (``satchel.cluster``) measured on this machine, in one process run.

1. bridge -- the trio <-> asyncio hop: ``Bus.call`` of a trivial coroutine (trio -> the
   bus's asyncio thread -> trio) beside ``trio.to_thread.run_sync`` of a trivial function
   and, when trio-asyncio happens to be installed (it is not a dependency), its
   ``aio_as_trio`` on one thread, in a process of its own; then a core NATS request
   round trip through each.
2. stream -- blocks/s and tx/s ``stream.publish_blocks`` stores in JetStream on one
   server (R1) and on a three-server cluster on loopback (R3), by block size and by
   publish round (blocks per call), and the blocks/s ``stream.follow`` reads back. A
   block is a real record: signed transactions encoded as ``Chain.extend`` encodes them.
3. intake -- gateway processes (spawned) each sign their own transactions before the
   clock starts, then push them through a ``Forwarder`` to a sequencing ``Node`` in this
   process (``Cluster``, stream durability, R1 and R3). Measured: transactions/s the
   ``IntakeServer`` took, and transactions/s in blocks stored in the stream (and
   journaled); then, once, a gateway-role node replaying that stream.
4. transport -- the same intake batches by core NATS request/reply to a subscriber that
   answers at once, against published to a JetStream stream (R1, R3) and read by an
   ordered push consumer: batches/s, tx/s and latency, the case for request/reply.
5. paper -- one gateway process's signed orders/s (``satchel loadtest`` against
   ``satchel gateway`` beside ``satchel serve --nats``) times N gateway machines, capped
   by the sequencer's measured rate, with the assumptions printed.

The workload of 2-4 is limit orders resting far from any trade (the books are empty:
nothing crosses), each cancelled by its clientId eight orders later by the same account:
half places, half cancels, no fills, over the three spot markets. Matching is cheap on
purpose: what is measured is the path into the sequencer and out to the stream.

Processes: nats-server (Debian's package, 127.0.0.1 only) as one server and as a cluster
of three; two gateway worker processes; for 5 also ``satchel serve``, ``satchel gateway``
and ``satchel loadtest``. Every one is stopped on the way out, errors included.
Usage: python -m benchmarks.cluster [--seconds S] [--runs R] [--only SECTIONS] [--replicas 1,3]
       [--intake-txs N] [--intake-uncapped] [--loadtest-seconds S]    (SECTIONS: comma-separated of
       bridge,stream,intake,transport,paper; a full default run takes about 4-5 minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import trio

from satchel import config
from satchel.cluster import intake, stream
from satchel.cluster.bus import Bus
from satchel.cluster.intake import Forwarder
from satchel.cluster.natsserver import NatsCluster
from satchel.cluster.role import Cluster
from satchel.core import instructions
from satchel.core.engine import RULES_VERSION
from satchel.core.messages import Block, BlockHeader, Deposit, PlaceOrder, TxRejected, block_encoder, header_decoder
from satchel.ledger.chain import header_hash
from satchel.node import Node
from satchel.signing import Keypair, auth_for, load_key
from satchel.tools.cli import setup_logging
from satchel.tools.client import free_port

SECTIONS = ("bridge", "stream", "intake", "transport", "paper")
BLOCK_SIZES = (1, 64, 512)  # transactions per block
ROUNDS = (1, 32)  # blocks per publish_blocks call
GATEWAYS = (1, 2)  # gateway processes in the intake runs
TRANSPORT_BATCHES = (64, intake.MAX_BATCH)  # transactions per intake message
NODES = {1: "1 server", 3: "3-server cluster"}
SINGLE_NODE_ORDERS_S = 10_000  # signed orders/s of one node over WebSocket, measured before (README, benchmarks.e2e)

# ---------------------------------------------------------------- the workload

# per market: (bid, ask, quantity) as a client writes them -- a third below and above any
# plausible price, so nothing crosses; the base asset and how much of it an account holds
ORDERS = {"SOL_USDC": ("100.00", "200.00", "0.1"), "ETH_USDC": ("2000.00", "4000.00", "0.01"),
          "BTC_USDC": ("50000.0", "90000.0", "0.001")}
BASE_FUNDING = {"SOL_USDC": ("SOL", 10**13), "ETH_USDC": ("ETH", 10**11), "BTC_USDC": ("BTC", 10**10)}
USDC_FUNDING = 10**13
OPEN_PER_ACCOUNT = 8  # an account cancels its order of this many places ago
ACCOUNTS_PER_GATEWAY = 30
WORKLOAD = ("limit orders resting 1/3 away from any price (empty books, nothing crosses), each cancelled by clientId "
            f"{OPEN_PER_ACCOUNT} orders later: 50% places, 50% cancels, no fills, 3 spot markets")


class Signer:
    """Signed ``orderExecute`` and ``orderCancel`` transactions as a gateway builds them.

    Each transaction is a template built once per market and side by
    ``instructions.build`` (what a gateway runs on a request's params) with the client id
    and the client's ``auth`` record put in, so signing is the only per-transaction cost
    of making them. Signatures are unique: every transaction has its own client id or
    timestamp."""

    def __init__(self) -> None:
        cfg = config.load()
        listing = _Listing(cfg)
        self.places: dict[tuple[str, str], Any] = {}
        self.cancels: dict[str, Any] = {}
        build = instructions.build
        for symbol in ORDERS:
            for side in ("Bid", "Ask"):
                self.places[symbol, side] = build("orderExecute", _place_params(symbol, side, 0), "x", listing)
            self.cancels[symbol] = build("orderCancel", {"symbol": symbol, "clientId": "0"}, "x", listing)

    def account_txs(self, key: Keypair, symbol: str, n: int) -> list:
        """``n`` transactions of one account: places, and from the ``OPEN_PER_ACCOUNT``-th
        on each followed by the cancel of the order that many places before."""
        replace = msgspec.structs.replace
        out: list = []
        k = 0
        while len(out) < n:
            side = "Bid" if k % 2 else "Ask"
            params = _place_params(symbol, side, k)
            out.append(replace(self.places[symbol, side], account=key.api_key, client_id=k,
                               auth=auth_for(key, "orderExecute", params)))
            if k >= OPEN_PER_ACCOUNT and len(out) < n:
                cid = k - OPEN_PER_ACCOUNT
                out.append(replace(self.cancels[symbol], account=key.api_key, client_id=cid,
                                   auth=auth_for(key, "orderCancel", {"symbol": symbol, "clientId": str(cid)})))
            k += 1
        return out

    def interleaved(self, keys: list[Keypair], n: int) -> list:
        """``n`` transactions of ``keys`` taken in turn (account i trades market i % 3)."""
        symbols = list(ORDERS)
        per = -(-n // len(keys))
        streams = [self.account_txs(k, symbols[i % 3], per) for i, k in enumerate(keys)]
        return [s[j] for j in range(per) for s in streams][:n]


class _Listing:
    def __init__(self, cfg: config.Config):
        self.markets = {m.symbol: m for m in cfg.market_specs()}
        self.assets = {a.symbol: a for a in cfg.asset_specs()}
        self.chains: dict = {}


def _place_params(symbol: str, side: str, client_id: int) -> dict[str, str]:
    bid, ask, qty = ORDERS[symbol]
    return {"symbol": symbol, "side": side, "orderType": "Limit", "price": bid if side == "Bid" else ask,
            "quantity": qty, "postOnly": "true", "clientId": str(client_id)}


def funding(admin: str, keys: list[Keypair]) -> list:
    """Deposits for accounts that trade as ``Signer.interleaved`` has them."""
    symbols = list(ORDERS)
    out = []
    for i, key in enumerate(keys):
        asset, amount = BASE_FUNDING[symbols[i % 3]]
        out += [Deposit(admin, key.api_key, "USDC", USDC_FUNDING), Deposit(admin, key.api_key, asset, amount)]
    return out


def block_record(height: int, txs: list, prev_hash: bytes = b"\x00" * 32) -> bytes:
    """A journal record of ``txs``, encoded as ``Chain.extend`` encodes one."""
    txs_bytes = block_encoder.encode(txs)
    header = BlockHeader(height, 1, time.time_ns() // 1000, prev_hash, RULES_VERSION, len(txs),
                         hashlib.sha256(b"").digest(), hashlib.sha256(txs_bytes).digest())
    return block_encoder.encode(Block(header, msgspec.Raw(txs_bytes)))


class Chained:
    """Records of one block's transactions at consecutive heights, each naming the one
    before by hash, as the stream insists (``Nats-Expected-Last-Msg-Id``)."""

    def __init__(self) -> None:
        self.prev = b""
        self.key = Keypair.generate()  # signs each block, as the admin key does a sequencer's

    def record(self, height: int, record: bytes) -> bytes:
        block = header_decoder.decode(record)  # the transactions stay raw bytes
        header = msgspec.structs.replace(block.header, height=height, prev_hash=self.prev)
        self.prev = header_hash(header)
        return block_encoder.encode(Block(header, block.txs))


# ---------------------------------------------------------------- measuring helpers

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or one of its threads), from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_seconds() -> dict[str, float]:
    """Busy, idle (with I/O wait) and stolen CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return {"machine busy": (v[0] + v[1] + v[2] + v[5] + v[6]) / _TICK, "machine idle": (v[3] + v[4]) / _TICK,
            "machine steal": v[7] / _TICK}


class CpuMeter:
    """Cores used by named processes or threads between ``start`` and ``stop``, and the
    machine's idle and stolen cores (a noisy VM: steal is time the host took away)."""

    def __init__(self, targets: dict[str, tuple[int, int | None]]):
        self.targets = targets
        self._t = 0.0
        self._c: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {**{name: cpu_seconds(*t) for name, t in self.targets.items()}, **machine_seconds()}

    def start(self) -> None:
        self._t = time.perf_counter()
        self._c = self._read()

    def stop(self) -> dict[str, float]:
        """Cores per target, the machine's, and ``other processes``: the machine's busy
        cores less the processes measured here (another job on this VM)."""
        dt = time.perf_counter() - self._t
        cores = {name: (v - self._c[name]) / dt for name, v in self._read().items()}
        ours = sum(cores[name] for name, (_, tid) in self.targets.items() if tid is None)
        cores["other processes"] = max(0.0, cores["machine busy"] - ours)
        return cores


def nats_targets(cluster: NatsCluster) -> dict[str, tuple[int, int | None]]:
    return {f"nats-server {n.name}": (n.proc.pid, None) for n in cluster.nodes}


def load_note(cores: dict[str, float]) -> str:
    """What else ran: the processes measured, the rest of the machine, its idle cores."""
    ours = sum(v for k, v in cores.items() if not k.startswith(("machine", "other")))
    return (f"cores: measured {ours:.2f}, other processes {cores['other processes']:.2f}, "
            f"idle {cores['machine idle']:.2f}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def drop_stream(bus: Bus, name: str) -> None:
    from nats.js.errors import NotFoundError

    async def drop() -> None:
        try:
            await bus.js.delete_stream(name)
        except NotFoundError:
            pass

    await bus.call(drop)


async def fresh_block_stream(bus: Bus, replicas: int) -> None:
    await drop_stream(bus, stream.STREAM)
    await stream.ensure_stream(bus, replicas)


# ---------------------------------------------------------------- gateway worker processes


class Workers:
    """Gateway worker processes (spawned once, reused by every run). A job (``worker_main``)
    answers once prepared (its transactions signed, NATS connected), starts on ``go`` and
    answers again with its figures; a failure comes back as its traceback (``recv``)."""

    def __init__(self, n: int):
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for i in range(n):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(theirs,), name=f"bench-gateway-{i}", daemon=True)
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


async def recv(conn: Any, timeout: float = 180.0) -> Any:
    """The next answer of a worker; a worker's failure is raised here with its traceback."""
    if not await trio.to_thread.run_sync(conn.poll, timeout, abandon_on_cancel=True):
        raise TimeoutError(f"a gateway worker gave no answer within {timeout} s")
    kind, body = conn.recv()
    if kind == "error":
        raise RuntimeError(f"a gateway worker failed:\n{body}")
    return body


def worker_main(conn: Any) -> None:
    setup_logging(level=logging.ERROR)
    jobs = {"intake": _intake_job, "transport": _transport_job, "trio_asyncio": _trio_asyncio_job}
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        kind, spec = job
        try:
            trio.run(jobs[kind], conn, spec)
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class _Pusher(Forwarder):
    """The gateway's ``Forwarder`` as a pure sender. This process does not follow the
    block stream, so nothing it forwards is ever claimed and the resend watch would send
    everything again after ``RESEND_AFTER_S``: the watch is off, and acknowledged
    transactions are counted."""

    def __init__(self, bus: Bus, key: Keypair, total: int):
        super().__init__(bus, key)
        self.total = total
        self.sent = 0
        self.all_sent = trio.Event()

    async def _watch(self) -> None:
        await trio.sleep_forever()

    async def _send(self, txs: list, slots: trio.Semaphore) -> None:
        await super()._send(txs, slots)
        self.sent += len(txs)
        if self.sent >= self.total:
            self.all_sent.set()


async def _intake_job(conn: Any, spec: dict) -> None:
    t = time.perf_counter()
    keys = [Keypair(s) for s in spec["accounts"]]
    txs = Signer().interleaved(keys, spec["txs"])
    signing = time.perf_counter() - t
    async with Bus(spec["urls"], name="bench-gateway") as bus:
        pusher = _Pusher(bus, Keypair(spec["gateway"]), len(txs))
        conn.send(("ok", {"txs": len(txs), "signing_s": signing}))
        await trio.to_thread.run_sync(conn.recv)  # go
        t, c = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            forward = pusher.forward
            for i in range(0, len(txs), intake.MAX_BATCH):
                for tx in txs[i:i + intake.MAX_BATCH]:
                    forward(tx, None)
                await trio.sleep(0)  # as transactions arrive at a gateway: batches leave meanwhile
            await pusher.all_sent.wait()
            nursery.cancel_scope.cancel()
        dt, dc = time.perf_counter() - t, time.process_time() - c
    conn.send(("ok", {"seconds": dt, "cores": dc / dt, "batches": pusher.batches}))


TRANSPORT_SUBJECT = "bench.intake"
TRANSPORT_STREAM = "BENCH_INTAKE"


async def _transport_job(conn: Any, spec: dict) -> None:
    """Send intake envelopes for ``seconds``, ``intake.IN_FLIGHT`` at a time as the
    Forwarder does: by request/reply, or published to a stream (awaiting each ack).
    Each message starts with its send time (monotonic ns, system-wide on Linux)."""
    keys = [Keypair.generate() for _ in range(6)]
    txs = Signer().interleaved(keys, spec["batch_txs"])
    async with Bus(spec["urls"], name="bench-gateway") as bus:
        envelope = Forwarder(bus, Keypair.generate()).seal(txs)
        latencies: list[float] = []
        conn.send(("ok", {"bytes": len(envelope) + 8}))
        await trio.to_thread.run_sync(conn.recv)  # go
        if spec["mode"] == "request":
            async def send_one(data: bytes) -> None:
                answer = await bus.request(TRANSPORT_SUBJECT, data, intake.REQUEST_TIMEOUT_S)
                assert answer == b"ok", answer
        else:
            async def publish(data: bytes) -> None:
                await bus.js.publish(TRANSPORT_SUBJECT, data, timeout=5)

            async def send_one(data: bytes) -> None:
                await bus.call(publish, data)

        async def sender(until: float) -> None:
            while time.perf_counter() < until:
                t = time.monotonic_ns()
                await send_one(t.to_bytes(8, "big") + envelope)
                latencies.append((time.monotonic_ns() - t) / 1e6)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(intake.IN_FLIGHT):
                nursery.start_soon(sender, t0 + spec["seconds"])
        dt = time.perf_counter() - t0
    conn.send(("ok", {"batches": len(latencies), "seconds": dt, "latencies": latencies}))


# ---------------------------------------------------------------- 1. the bridge


async def per_call_us(fn: Any, seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(50):
            await fn()
        n += 50
        t = time.perf_counter()
        if t >= end:
            return (t - t0) / n * 1e6


async def noop() -> None:
    return None


def nothing() -> None:
    return None


async def bridge_once(bus: Bus, seconds: float) -> dict[str, float]:
    return {"Bus.call(trivial coroutine)": await per_call_us(lambda: bus.call(noop), seconds),
            "trio.to_thread.run_sync(trivial function)":
                await per_call_us(lambda: trio.to_thread.run_sync(nothing), seconds),
            "NATS request via Bus.request": await per_call_us(lambda: bus.request("bench.echo.bus", b"x", 2.0), seconds)}


async def _trio_asyncio_job(conn: Any, spec: dict) -> None:
    """trio-asyncio's ``aio_as_trio`` on the trio thread itself, and nats-py on its loop.
    Run in a process of its own: importing trio_asyncio replaces ``asyncio.new_event_loop``
    process-wide, so every ``Bus`` created after it would run nats-py on a trio-asyncio
    loop (measured: the block stream's rates halve)."""
    import nats
    import trio_asyncio

    out = {}
    aio_as_trio = trio_asyncio.aio_as_trio
    async with trio_asyncio.open_loop():
        out["trio-asyncio aio_as_trio(trivial coroutine)"] = await per_call_us(lambda: aio_as_trio(noop)(), spec["seconds"])
        nc = await trio_asyncio.aio_as_trio(nats.connect)(spec["urls"].split(","))
        try:
            async def echo(msg: Any) -> None:
                await nc.publish(msg.reply, b"")

            await trio_asyncio.aio_as_trio(nc.subscribe)("bench.echo.aio", cb=echo)
            request = trio_asyncio.aio_as_trio(nc.request)
            out["NATS request via trio-asyncio"] = await per_call_us(
                lambda: request("bench.echo.aio", b"x", timeout=2.0), spec["seconds"])
        finally:
            await trio_asyncio.aio_as_trio(nc.close)()
    conn.send(("ok", out))


async def run_bridge(args: argparse.Namespace, r1: NatsCluster) -> None:
    import importlib.util

    print("\n== 1. trio <-> asyncio bridge (per call, sequential; each echo answers on its requester's own loop)",
          flush=True)
    results: dict[str, list[float]] = {}
    probe = Workers(1) if importlib.util.find_spec("trio_asyncio") else None  # its own process: see _trio_asyncio_job
    try:
        async with Bus(r1.urls, name="bench-bridge") as bus:
            async def echo_sub() -> None:
                async def echo(msg: Any) -> None:
                    await bus.nc.publish(msg.reply, b"")

                await bus.nc.subscribe("bench.echo.bus", cb=echo)

            await bus.call(echo_sub)
            for r in range(args.runs):
                probe_pid = {} if probe is None else {"trio-asyncio process": (probe.procs[0].pid, None)}
                meter = CpuMeter({"this process": (os.getpid(), None), **probe_pid, **nats_targets(r1)})
                meter.start()
                once = await bridge_once(bus, args.seconds / 2)
                if probe is not None:
                    probe.conns[0].send(("trio_asyncio", {"urls": r1.urls, "seconds": args.seconds / 2}))
                    once.update(await recv(probe.conns[0]))
                for name, us in once.items():
                    results.setdefault(name, []).append(us)
                print(f"  run {r + 1}: " + ", ".join(f"{name} {us:,.1f} us" for name, us in once.items())
                      + f" ({load_note(meter.stop())})", flush=True)
    finally:
        if probe is not None:
            probe.close()
    base = median(results["Bus.call(trivial coroutine)"])
    for name, values in results.items():
        print(f"{name:<45} median {median(values):8,.1f} us/call  ({median(values) / base:.2f}x Bus.call)")
    if probe is None:
        print("trio-asyncio: not installed, skipped (pip install trio-asyncio into the venv to compare; not a dependency)")
    else:
        print("(trio-asyncio measured in a process of its own: importing it replaces asyncio.new_event_loop "
              "process-wide, and a Bus started after that runs on a trio-asyncio loop)")


# ---------------------------------------------------------------- 2. the block stream


async def publish_rate(bus: Bus, chain: Chained, height: int, payload: bytes, round_size: int,
                       seconds: float) -> tuple[int, float]:
    """Publish rounds of ``round_size`` blocks for ``seconds``; (last height, blocks/s)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        records = [(height + i + 1, chain.record(height + i + 1, payload), None) for i in range(round_size)]
        await stream.publish_blocks(bus, records, chain.key)
        height += round_size
        n += round_size
        t = time.perf_counter()
        if t - t0 >= seconds:
            return height, n / (t - t0)


async def fill(bus: Bus, chain: Chained, height: int, payload: bytes, count: int) -> int:
    while count > 0:
        k = min(64, count)
        await stream.publish_blocks(bus, [(height + i + 1, chain.record(height + i + 1, payload), None)
                                          for i in range(k)], chain.key)
        height += k
        count -= k
    return height


async def follow_rate(bus: Bus, start: int, last: int) -> float:
    t0 = time.perf_counter()
    async with aclosing(stream.follow(bus, start)) as batches:
        async for batch in batches:
            if batch[-1].height >= last:
                break
    return (last - start + 1) / (time.perf_counter() - t0)


async def run_stream(args: argparse.Namespace, clusters: dict[int, NatsCluster], payloads: dict[int, bytes]) -> None:
    print(f"\n== 2. block stream on JetStream (file storage; publish_blocks waits for every ack; "
          f"{args.seconds:g} s per publish figure)", flush=True)
    for b, p in payloads.items():
        print(f"  block of {b} txs: {len(p):,} bytes")
    pub: dict[tuple[int, int, int], list[float]] = {}
    fol: dict[tuple[int, int], list[float]] = {}
    for replicas, cluster in clusters.items():
        async with Bus(cluster.urls, name="bench-publisher") as bus, Bus(cluster.urls, name="bench-follower") as reader:
            await fresh_block_stream(bus, replicas)
            height = 0
            chain = Chained()
            for r in range(args.runs):
                parts = []
                meter = CpuMeter({"this process": (os.getpid(), None), **nats_targets(cluster)})
                meter.start()
                for b in BLOCK_SIZES:
                    for rs in ROUNDS:
                        height, rate = await publish_rate(bus, chain, height, payloads[b], rs, args.seconds)
                        pub.setdefault((replicas, b, rs), []).append(rate)
                        parts.append(f"{b}tx/r{rs} {rate:,.0f}")
                    count = max(300, min(10_000, int(args.seconds * 4e6 / len(payloads[b]))))
                    start = height + 1
                    height = await fill(bus, chain, height, payloads[b], count)
                    rate = await follow_rate(reader, start, height)
                    fol.setdefault((replicas, b), []).append(rate)
                    parts.append(f"follow {b}tx {rate:,.0f}")
                print(f"  R{replicas} run {r + 1} blocks/s: " + ", ".join(parts) + f" ({load_note(meter.stop())})",
                      flush=True)
            await drop_stream(bus, stream.STREAM)
    print("medians (publish: blocks per publish_blocks call = round):")
    print(f"{'stream':>6} {'txs/block':>9} {'round':>5} {'blocks/s':>10} {'tx/s':>11} {'MB/s':>7}")
    for (replicas, b, rs), values in pub.items():
        m = median(values)
        print(f"{'R' + str(replicas):>6} {b:>9} {rs:>5} {m:>10,.0f} {m * b:>11,.0f} {m * len(payloads[b]) / 1e6:>7.1f}")
    print(f"{'stream':>6} {'txs/block':>9} {'':>5} {'follow/s':>10} {'tx/s':>11} {'MB/s':>7}")
    for (replicas, b), values in fol.items():
        m = median(values)
        print(f"{'R' + str(replicas):>6} {b:>9} {'':>5} {m:>10,.0f} {m * b:>11,.0f} {m * len(payloads[b]) / 1e6:>7.1f}")
    for replicas in clusters:
        if (replicas, 1, 1) in pub and (replicas, 1, 32) in pub:
            print(f"R{replicas}: 1-tx blocks, round of 32 against 1: "
                  f"{median(pub[replicas, 1, 32]) / median(pub[replicas, 1, 1]):.1f}x blocks/s")
    if 3 in clusters and 1 in clusters:
        ratios = [median(pub[3, b, rs]) / median(pub[1, b, rs]) for b in BLOCK_SIZES for rs in ROUNDS]
        print(f"R3 / R1 publish blocks/s: {min(ratios):.0%} to {max(ratios):.0%} over the block and round sizes")


# ---------------------------------------------------------------- 3. intake into a sequencer


class StoredCounter:
    """A node block listener: transactions of the blocks the node released -- with stream
    durability, stored in the stream (every replica) and then journaled."""

    def __init__(self, target: int):
        self.target = target
        self.txs = 0
        self.blocks = 0
        self.largest = (0, 0)  # (txs, bytes)
        self.series: list[tuple[float, int]] = []
        self.done = trio.Event()

    def block(self, header: BlockHeader, payload: bytes, events_bytes: bytes, state_hash: str | None) -> None:
        self.txs += header.tx_count
        self.blocks += 1
        self.largest = max(self.largest, (header.tx_count, len(payload)))
        self.series.append((time.perf_counter(), self.txs))
        if self.txs >= self.target:
            self.done.set()

    def rate_after(self, t: float) -> float:
        """tx/s of the blocks stored after ``t`` (from the first of them to the last)."""
        later = [p for p in self.series if p[0] > t]
        if len(later) < 3:
            return float("nan")
        return (later[-1][1] - later[0][1]) / (later[-1][0] - later[0][0])


class Rejections:
    """A node subscriber: refused transactions by code (there should be none)."""

    def __init__(self) -> None:
        self.codes: Counter = Counter()

    def publish(self, header: BlockHeader, events: list) -> None:
        for ev in events:
            if ev.__class__ is TxRejected:
                self.codes[ev.code] += 1


async def intake_run(cluster: NatsCluster, replicas: int, workers: Workers, n_gateways: int, total: int,
                     replay: bool) -> dict:
    """One run: fresh stream, fresh sequencer; the gateways sign meanwhile."""
    conns = workers.conns[:n_gateways]
    gateways = [Keypair.generate() for _ in conns]
    accounts = [[Keypair.generate() for _ in range(ACCOUNTS_PER_GATEWAY)] for _ in conns]
    per = total // n_gateways
    for conn, gw, keys in zip(conns, gateways, accounts):
        conn.send(("intake", {"urls": cluster.urls, "gateway": gw.seed, "accounts": [k.seed for k in keys], "txs": per}))
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        async with Bus(cluster.urls, name="sequencer") as bus:
            await drop_stream(bus, stream.STREAM)
            role = Cluster(bus, load_key(Path(d) / "sequencer", "admin.key"), sequencer=True, durability="stream",
                           replicas=replicas,
                           takeover_after=0.5, allow_gateways=tuple(g.public for g in gateways))
            node = Node(Path(d) / "sequencer", config.load(), role)
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                with trio.fail_after(30):
                    await role.promoted.wait()
                *first, last = funding(node.admin.api_key, [k for keys in accounts for k in keys])
                for tx in first:
                    node.submit(tx)
                await node.submit_wait(last)
                ready = [await recv(conn) for conn in conns]
                out = await timed_intake(node, role, bus, cluster, conns, workers.procs[:n_gateways], per * n_gateways)
                out["signing_s"] = max(r["signing_s"] for r in ready)
                out["gateway_rate"] = [per / s["seconds"] for s in out["sent"]]
                node.shutdown()
            if replay:
                out["replay"] = await replay_rate(cluster, Path(d) / "follower", out["height"])
            await drop_stream(bus, stream.STREAM)
    return out


async def timed_intake(node: Node, role: Cluster, bus: Bus, cluster: NatsCluster, conns: list, gateway_procs: list,
                       target: int) -> dict:
    """From ``go`` to the gateways until the last of their transactions is stored."""
    counter = StoredCounter(target)
    rejections = Rejections()
    node.block_listeners.append(counter)
    node.subscribers.append(rejections)
    meter = CpuMeter({"sequencer process": (os.getpid(), None),
                      "sequencer trio thread": (os.getpid(), threading.get_native_id()),
                      "sequencer nats thread": (os.getpid(), bus._thread.native_id),
                      **{f"gateway {i + 1}": (p.pid, None) for i, p in enumerate(gateway_procs)},
                      **nats_targets(cluster)})
    intake_done: list[float] = []
    backlog = [0]

    async def watch_intake() -> None:
        while role.intake.txs < target:
            backlog[0] = max(backlog[0], node.sequencer.backlog)
            await trio.sleep(0.002)
        intake_done.append(time.perf_counter())

    meter.start()
    t0 = time.perf_counter()
    for conn in conns:
        conn.send("go")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_intake)
        with trio.move_on_after(120) as timed_out:
            await counter.done.wait()
        nursery.cancel_scope.cancel()
    t_stored = time.perf_counter()
    cores = meter.stop()
    sent = [await recv(conn) for conn in conns]
    height = await stream.last_height(bus)
    t_intake = intake_done[0] if intake_done else float("nan")
    return {"txs": counter.txs, "target": target, "timed_out": timed_out.cancelled_caught,
            "intake_rate": target / (t_intake - t0), "stored_rate": counter.txs / (t_stored - t0),
            "after_intake_rate": counter.rate_after(t_intake), "queued_s": t_stored - t_intake, "backlog": backlog[0],
            "blocks": counter.blocks, "largest": counter.largest, "rejected": dict(rejections.codes),
            "stream_matches": height == node.chain.height, "height": height, "refused": role.intake.refused,
            "busy": role.intake.busy, "cores": cores, "sent": sent,
            "source_fetched": role.source.fetched,
            "max_payload": bus.nc.max_payload}


async def replay_rate(cluster: NatsCluster, data: Path, height: int) -> float:
    """A gateway-role node (no sequencing) following the stream from its start: tx/s it
    applies -- what every gateway spends to keep up with the whole exchange."""
    async with Bus(cluster.urls, name="bench-follower") as bus:
        node = Node(data, config.load(), Cluster(bus, Keypair.generate(), sequencer=False))
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            await nursery.start(node.run)
            while node.chain.height < height:
                await trio.sleep(0.01)
            rate = node.chain.txs / (time.perf_counter() - t0)
            node.shutdown()
    return rate


def intake_line(r: dict) -> str:
    cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items() if not k.startswith(("machine", "sequencer process")))
    rejected = ", ".join(f"{k} {v}" for k, v in r["rejected"].items()) or "none"
    return (f"stored {r['stored_rate']:,.0f} tx/s, after the intake was done {r['after_intake_rate']:,.0f} tx/s; "
            f"intake queued {r['intake_rate']:,.0f} tx/s (backlog up to {r['backlog']:,}, the last stored "
            f"{r['queued_s']:.1f} s after the intake ended)\n"
            f"      {r['blocks']} blocks, mean {r['txs'] / max(1, r['blocks']):,.0f} txs, "
            f"largest {r['largest'][0]:,} txs = "
            f"{r['largest'][1] / 1024:,.0f} KiB (max_payload {r['max_payload'] // 1024:,} KiB); rejected {rejected}; "
            f"refused {r['refused']}, busy {r['busy']}; stream height = node height {r['stream_matches']}; "
            f"signing {r['signing_s']:.1f} s before the clock\n"
            f"      cores: {cores}; machine idle {r['cores']['machine idle']:.2f}, "
            f"steal {r['cores']['machine steal']:.2f}; "
            f"the primary's own stream follower fetched {r['source_fetched']:,} of {r['height']:,} blocks"
            + (" -- TIMED OUT" if r["timed_out"] else ""))


async def run_intake(args: argparse.Namespace, clusters: dict[int, NatsCluster], workers: Workers) -> dict:
    if args.intake_uncapped:
        # the intake's own capacity: its decoding, checks and queueing, with the sequencer's
        # backlog allowed to grow (the default answers busy past intake.MAX_BACKLOG)
        intake.MAX_BACKLOG = 10**9
        print("\n(intake busy cap lifted: the intake rate is its capacity, the backlog grows)")
    print(f"\n== 3. pre-verified intake: gateway processes -> Forwarder -> IntakeServer -> Node (durability=stream)\n"
          f"workload: {WORKLOAD}; {args.intake_txs:,} transactions per run, signed by the gateway processes before "
          f"the clock starts; {ACCOUNTS_PER_GATEWAY} accounts per gateway; intake batches of up to "
          f"{intake.MAX_BATCH}, {intake.IN_FLIGHT} in flight per gateway", flush=True)
    results: dict[tuple[int, int], list[dict]] = {}
    replayed = None
    for r in range(args.runs):
        for replicas, cluster in clusters.items():
            for g in GATEWAYS:
                first_replay = replayed is None and replicas == min(clusters) and g == max(GATEWAYS)
                res = await intake_run(cluster, replicas, workers, g, args.intake_txs, first_replay)
                if first_replay:
                    replayed = res.get("replay")
                results.setdefault((replicas, g), []).append(res)
                print(f"  R{replicas} {g} gateway(s) run {r + 1}: {intake_line(res)}", flush=True)
    print("medians (stored: first go to the last transaction stored in the stream; after intake: the blocks stored "
          "once the IntakeServer had taken everything, i.e. engine + stream without intake work):")
    print(f"{'stream':>6} {'gateways':>8} {'stored tx/s':>12} {'of 50k':>7} {'after intake':>13} {'intake tx/s':>12} "
          f"{'per gateway':>12} {'seq. trio':>10}")
    best = 0.0
    for (replicas, g), rs in results.items():
        s, a, i = (median([x[k] for x in rs]) for k in ("stored_rate", "after_intake_rate", "intake_rate"))
        per_gw = median([median(x["gateway_rate"]) for x in rs])
        trio_cores = median([x["cores"]["sequencer trio thread"] for x in rs])
        best = max(best, s)
        print(f"{'R' + str(replicas):>6} {g:>8} {s:>12,.0f} {s / 50_000:>7.0%} {a:>13,.0f} {i:>12,.0f} {per_gw:>12,.0f} "
              f"{trio_cores:>10.2f}")
    procs = [x for rs in results.values() for x in rs]
    trio_c = median([x["cores"]["sequencer trio thread"] for x in procs])
    nats_c = median([x["cores"]["sequencer nats thread"] for x in procs])
    print(f"the sequencer process: trio thread {trio_c:.2f} + NATS thread {nats_c:.2f} = {trio_c + nats_c:.2f} cores "
          f"(medians over all runs; one GIL: at most 1.00); machine idle "
          f"{median([x['cores']['machine idle'] for x in procs]):.2f} cores")
    if replayed:
        print(f"a gateway-role node replaying that stream (R{min(clusters)}, {max(GATEWAYS)} gateways, run 1), "
              f"start-up included: {replayed:,.0f} tx/s")
    return {"best_stored": best, "replay": replayed}


# ---------------------------------------------------------------- 4. request/reply against an intake stream


async def transport_run(cluster: NatsCluster, conn: Any, mode: str, replicas: int, batch_txs: int,
                        seconds: float) -> dict:
    """One sender (a gateway worker) against a receiver here: core NATS request/reply
    answered at once, or a stream the sender publishes to (awaiting each PubAck) that an
    ordered push consumer here reads (flow control, no acks: JetStream's cheapest way to
    tail a stream, so the stream is not put at a disadvantage)."""
    from nats.js.api import DeliverPolicy, StorageType, StreamConfig

    one_way: list[float] = []

    def arrived(msg: Any) -> None:
        one_way.append((time.monotonic_ns() - int.from_bytes(msg.data[:8], "big")) / 1e6)
        if msg.reply and mode == "request":
            bus.publish_nowait(msg.reply, b"ok")

    async with Bus(cluster.urls, name="bench-sequencer") as bus:
        conn.send(("transport", {"urls": cluster.urls, "mode": mode, "batch_txs": batch_txs, "seconds": seconds}))
        size = (await recv(conn))["bytes"]
        if mode == "request":
            sub = await bus.subscribe(TRANSPORT_SUBJECT, arrived)
        else:
            await drop_stream(bus, TRANSPORT_STREAM)
            cb = bus.deliver(arrived)

            async def create() -> Any:
                await bus.js.add_stream(StreamConfig(name=TRANSPORT_STREAM, subjects=[TRANSPORT_SUBJECT],
                                                     storage=StorageType.FILE, num_replicas=replicas))
                return await bus.js.subscribe(TRANSPORT_SUBJECT, stream=TRANSPORT_STREAM, cb=cb, ordered_consumer=True,
                                              deliver_policy=DeliverPolicy.ALL)

            sub = await bus.call(create)
        conn.send("go")
        sent = await recv(conn)
        with trio.move_on_after(10):
            while len(one_way) < sent["batches"]:
                await trio.sleep(0.01)
        await bus.unsubscribe(sub)
        if mode == "stream":
            await drop_stream(bus, TRANSPORT_STREAM)
    rate = sent["batches"] / sent["seconds"]
    return {"batches_s": rate, "tx_s": rate * batch_txs, "mb_s": rate * size / 1e6,
            "sender_p50": pct(sent["latencies"], 0.5),
            "one_way_p50": pct(one_way, 0.5), "one_way_p99": pct(one_way, 0.99), "received": len(one_way),
            "sent": sent["batches"]}


async def run_transport(args: argparse.Namespace, clusters: dict[int, NatsCluster], workers: Workers) -> None:
    print(f"\n== 4. intake transport: the same signed intake batches by request/reply against through a JetStream "
          f"stream\nsender: a gateway process, {intake.IN_FLIGHT} batches in flight (each waits for its reply, or for "
          f"its PubAck); receiver: this process, a subscriber answering at once or an ordered push consumer, does "
          f"nothing with a batch; {args.seconds:g} s each; one-way latency "
          f"= send -> receiver has it (monotonic clock shared by the processes)", flush=True)
    modes = [("request", r, f"request/reply, {NODES[r]}") for r in clusters]
    modes += [("stream", r, f"intake stream R{r}") for r in clusters]
    conn = workers.conns[0]
    results: dict[tuple[str, int, int], list[dict]] = {}
    for r in range(args.runs):
        for b in TRANSPORT_BATCHES:
            parts = []
            meter = CpuMeter({"this process": (os.getpid(), None), "gateway": (workers.procs[0].pid, None),
                              **{f"{name} R{k}": t for k, c in clusters.items() for name, t in nats_targets(c).items()}})
            meter.start()
            for mode, replicas, label in modes:
                res = await transport_run(clusters[replicas], conn, mode, replicas, b, args.seconds)
                results.setdefault((label, replicas, b), []).append(res)
                parts.append(f"{label} {res['batches_s']:,.0f}/s p50 {res['one_way_p50']:.2f} ms")
            print(f"  run {r + 1}, {b} txs/batch: " + "; ".join(parts) + f" ({load_note(meter.stop())})", flush=True)
    print("medians:")
    print(f"{'transport':<34} {'txs/batch':>9} {'batches/s':>10} {'tx/s':>11} {'MB/s':>6} {'reply/ack p50':>14} "
          f"{'one-way p50':>12} {'one-way p99':>12}")
    for (label, _, b), rs in results.items():
        m = {k: median([x[k] for x in rs]) for k in rs[0]}
        print(f"{label:<34} {b:>9} {m['batches_s']:>10,.0f} {m['tx_s']:>11,.0f} {m['mb_s']:>6.1f} "
              f"{m['sender_p50']:>11.2f} ms {m['one_way_p50']:>9.2f} ms {m['one_way_p99']:>9.2f} ms")
    for b in TRANSPORT_BATCHES:
        for r in clusters:
            rr = median([x["batches_s"] for x in results[(f"request/reply, {NODES[r]}", r, b)]])
            st = median([x["batches_s"] for x in results[(f"intake stream R{r}", r, b)]])
            print(f"{b} txs/batch on {NODES[r]}: the intake stream R{r} carries {st / rr:.0%} of request/reply's batches/s")


# ---------------------------------------------------------------- 5. on paper


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen | None, group: bool = False) -> None:
    """Stop a process we started (``group``: its whole session, by SIGINT, so a load test
    stops its own node and removes its directory), killing it after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


def loadtest_args(args: argparse.Namespace, report: Path) -> list[str]:
    """``satchel loadtest``'s defaults (mixed scenario, 20 traders x 8 in flight, closed
    loop) in one worker process, no market-data subscribers."""
    return ["loadtest", "--duration", str(args.loadtest_seconds), "--warmup", "2", "--workers", "1", "--subscribers", "0",
            "--out", str(report)]


def run_loadtest(cmd: list[str], work: Path, name: str, timeout: float, watch: dict[str, int]) -> tuple[dict, dict]:
    """Run a load test to its end; its report, and the busiest 2 s of CPU (cores) of the
    processes in ``watch`` -- the measured phase: funding and start-up use less."""
    report = Path(cmd[cmd.index("--out") + 1])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb"), start_new_session=True)
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not finish in {timeout:.0f} s")
            samples.append((time.perf_counter(), {k: cpu_seconds(pid) for k, pid in watch.items()}))
            time.sleep(0.5)
    finally:
        stop(proc, group=True)
    if not report.exists():
        tail = (work / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} wrote no report (exit {proc.returncode}):\n{tail}")
    peak = dict.fromkeys(watch, 0.0)
    for i, (t, c) in enumerate(samples):
        later = next((s for s in samples[i:] if s[0] - t >= 2.0), None)
        if later is not None:
            for k in watch:
                peak[k] = max(peak[k], (later[1][k] - c[k]) / (later[0] - t))
    return json.loads(report.read_text()), peak


def loadtest_figures(data: dict) -> dict:
    lat = data["ack_latency_us"]
    return {"rate": data["orders"]["acked_per_s"], "errors": data["orders"]["errors"], "sent": data["orders"]["sent"],
            "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000,
            "stages": {k: v["p50"] / 1000 for k, v in data.get("node_stages_us", {}).items()}}


def gateway_loadtest(args: argparse.Namespace, cluster: NatsCluster, work: Path) -> dict:
    """``satchel loadtest`` against a ``satchel gateway`` process in front of a
    ``satchel serve --nats`` sequencer (stream R1, durability stream)."""
    from benchmarks.e2e import stats

    trio.run(_drop_block_stream, cluster.urls)
    seq, gw = work / "sequencer", work / "gateway"
    gw_key = load_key(gw, "gateway.key")
    seq_port, gw_port = free_port(), free_port()
    py = [sys.executable, "-m", "satchel.tools.cli"]
    procs: list[subprocess.Popen] = []
    try:
        serve = ["serve", "--data", str(seq), "--port", str(seq_port), "--no-demo", "--rest-port", "-1", "--no-oracle",
                 "--replication-port", "-1", "--nats", cluster.urls, "--takeover-after", "0.5",
                 "--allow-gateway", gw_key.api_key]
        procs.append(subprocess.Popen(py + serve, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb")))
        wait_port(seq_port, procs[0])
        procs.append(subprocess.Popen(py + ["gateway", "--nats", cluster.urls, "--data", str(gw), "--port", str(gw_port)],
                                      stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb")))
        wait_port(gw_port, procs[1])
        cmd = py + loadtest_args(args, work / "gateway-loadtest.json")
        cmd[cmd.index("--duration"):cmd.index("--duration")] = ["--url", f"ws://127.0.0.1:{gw_port}", "--data", str(seq)]
        data, peak = run_loadtest(cmd, work, "gateway-loadtest", args.loadtest_seconds + 180,
                                  {"gateway": procs[1].pid, "sequencer": procs[0].pid})
        txs = trio.run(stats, f"ws://127.0.0.1:{seq_port}")["stages"]["apply"]["count"]  # weighted by transactions
        blocks = trio.run(_stream_height, cluster.urls)
    finally:
        for p in reversed(procs):
            stop(p)
    return {**loadtest_figures(data), "cores": peak, "blocks": blocks, "txs": txs}


def single_node_loadtest(args: argparse.Namespace, work: Path) -> dict:
    """The same load test against one ``satchel serve`` (``--embedded``), no cluster."""
    cmd = [sys.executable, "-m", "satchel.tools.cli"] + loadtest_args(args, work / "single-loadtest.json") + ["--embedded"]
    data, _ = run_loadtest(cmd, work, "single-loadtest", args.loadtest_seconds + 180, {})
    return loadtest_figures(data)


async def _drop_block_stream(urls: str) -> None:
    async with Bus(urls, name="bench-admin") as bus:
        await drop_stream(bus, stream.STREAM)


async def _stream_height(urls: str) -> int:
    async with Bus(urls, name="bench-admin") as bus:
        return await stream.last_height(bus)


def run_paper(args: argparse.Namespace, clusters: dict[int, NatsCluster], intake_figures: dict | None,
              work: Path) -> None:
    print("\n== 5. on paper: N gateway machines around one sequencer", flush=True)
    gw = single = None
    try:
        gw = gateway_loadtest(args, clusters[min(clusters)], work)
        single = single_node_loadtest(args, work)
    except Exception as exc:
        print(f"  a load test failed ({type(exc).__name__}: {exc})")
    shape = (f"satchel loadtest, mixed scenario, 20 traders x 8 in flight, 1 worker process, "
             f"{args.loadtest_seconds:g} s, 1 run")
    if gw is not None:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in gw["stages"].items())
        print(f"  one gateway ({shape}) -> satchel gateway -> NATS ({NODES[min(clusters)]}, stream R1) -> satchel serve "
              f"--nats: {gw['rate']:,.0f} acked "
              f"orders/s, p50 {gw['p50_ms']:.1f} ms, p99 {gw['p99_ms']:.1f} ms, errors {gw['errors']}/{gw['sent']}\n"
              f"    gateway stages p50 ms: {stages}; busiest 2 s: gateway {gw['cores']['gateway']:.2f} cores, "
              f"sequencer {gw['cores']['sequencer']:.2f}; the stream holds {gw['blocks']:,} blocks for the sequencer's "
              f"{gw['txs']:,} transactions (genesis and funding included): {gw['txs'] / max(1, gw['blocks']):.1f} a block")
    if single is not None:
        print(f"  the same load test against one satchel serve (no cluster): {single['rate']:,.0f} acked orders/s, "
              f"p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms"
              + (f"; the gateway path does {gw['rate'] / single['rate']:.0%} of it" if gw else ""))
    per_gw = gw["rate"] if gw else SINGLE_NODE_ORDERS_S
    cap = intake_figures["best_stored"] if intake_figures else None
    replay = intake_figures.get("replay") if intake_figures else None
    print("assumptions:")
    print(f"  - a gateway machine takes what one gateway process took here: G = {per_gw:,.0f} signed orders/s "
          + ("(measured above, on 2 cores shared with the load generator, the sequencer and NATS)" if gw else
             f"(not measured: the single-node figure of {SINGLE_NODE_ORDERS_S:,} orders/s measured before)"))
    if cap:
        print(f"  - the sequencer stores at most S = {cap:,.0f} tx/s in the stream: the best median of section 3 "
              "(its workload; the sequencer's trio thread is the limit)")
    else:
        print("  - S, the sequencer's rate: not measured in this run (add intake to --only); no cap applied")
    if replay:
        print(f"  - every gateway replays every block of the exchange to answer from its own state: at most E = "
              f"{replay:,.0f} tx/s (section 3's gateway-role replay, large blocks), whatever its own clients send")
    print("  - NATS is not the limit (sections 2 and 4 carry more); a gateway's orders reach the sequencer in its own "
          "intake batches; machines are like this one")
    print(f"{'N':>3} {'N x G':>10} {'min(N x G, S)':>14}" + (f" {'and E':>8}" if replay else ""))
    for n in (1, 2, 4, 8):
        naive = n * per_gw
        capped = min(naive, cap) if cap else naive
        print(f"{n:>3} {naive:>10,.0f} {capped:>14,.0f}" + (f" {min(capped, replay):>8,.0f}" if replay else ""))


# ---------------------------------------------------------------- wiring


def block_payloads() -> dict[int, bytes]:
    keys = [Keypair.generate() for _ in range(6)]
    txs = Signer().interleaved(keys, max(BLOCK_SIZES))
    return {b: block_record(1, txs[:b]) for b in BLOCK_SIZES}


def max_payload_note() -> str:
    """How large a block of ``block_max_txs`` place orders is, beside NATS's max payloads."""
    cfg = config.load()
    n = cfg.node.block_max_txs
    signer = Signer()
    keys = [Keypair.generate() for _ in range(64)]
    txs = [tx for i, k in enumerate(keys) for tx in signer.account_txs(k, list(ORDERS)[i % 3], 2 * n // len(keys))]
    size = len(block_record(1, [tx for tx in txs if tx.__class__ is PlaceOrder][:n]))
    return (f"a block of block_max_txs = {n:,} place orders is {size:,} bytes: "
            f"{'over' if size > 1 << 20 else 'under'} nats-server's default max_payload of 1,048,576, "
            "under the 64 MB our nats configurations set (natsserver.py, deploy/)")


async def run_async_sections(args: argparse.Namespace, clusters: dict[int, NatsCluster],
                             workers: Workers | None) -> dict | None:
    only = args.only
    if "bridge" in only:
        await run_bridge(args, clusters[min(clusters)])
    if "stream" in only:
        await run_stream(args, clusters, block_payloads())
        print(max_payload_note())
    figures = None
    if "intake" in only:
        figures = await run_intake(args, clusters, workers)
    if "transport" in only:
        await run_transport(args, clusters, workers)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per bridge, publish and transport figure (default 1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated of {','.join(SECTIONS)}")
    ap.add_argument("--replicas", default="1,3", help="stream replicas to measure: 1 (one server), 3 (a cluster of three)")
    ap.add_argument("--intake-txs", type=int, default=100_000, help="transactions per intake run, over the gateways")
    ap.add_argument("--intake-uncapped", action="store_true",
                    help="lift the intake's busy cap (intake.MAX_BACKLOG): what the intake can take, not what is sustained")
    ap.add_argument("--loadtest-seconds", type=float, default=8.0, help="duration of the gateway load test (section 5)")
    args = ap.parse_args()
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    replicas = sorted({int(r) for r in args.replicas.split(",")})
    if not replicas or not set(replicas) <= set(NODES):
        ap.error("--replicas takes 1 and/or 3")
    setup_logging(level=logging.ERROR)
    print(f"cluster: sections {','.join(s for s in SECTIONS if s in args.only)}, {args.runs} runs, "
          f"stream replicas {replicas}, nats-server on 127.0.0.1, {os.cpu_count()} cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    clusters: dict[int, NatsCluster] = {}
    workers = None
    try:
        for r in replicas:
            clusters[r] = NatsCluster(work / f"nats-r{r}", size=1 if r == 1 else 3)
            clusters[r].start()
        if args.only & {"intake", "transport"}:
            workers = Workers(max(GATEWAYS))
        figures = trio.run(run_async_sections, args, clusters, workers)
        if "paper" in args.only:
            run_paper(args, clusters, figures, work)
    finally:
        if workers is not None:
            workers.close()
        for c in clusters.values():
            c.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
