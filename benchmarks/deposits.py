"""10,000 deposits through the simulated chain with an overloaded provider, beside trading.

A node runs in this process on a temporary data directory, with the simulated chain
(blocks every 50 ms, 3 confirmations) and its adapter either in the node's process
(``--edge node``, the default: the embedded default of ``satchel serve``) or in a process
of their own reporting over the node's WebSocket API (``--edge process``: ``satchel
chains`` beside ``satchel serve --no-chains``; the chain's users are there too, outside
the exchange as they would be). The chain's first provider is
overloaded (it answers 429 beyond 40 calls/s and takes 20 ms per call), the second is
healthy: the pool fails over. Runs alternate in one process (``--rounds`` pairs):
trading alone, then trading while ``--deposits`` transfers reach accounts' deposit
addresses. Trading is a steady stream of orders (resting bids and asks crossing,
``--rate`` a second) whose durable-ack latency is measured. The report gives its p50 /
p99 alone and beside the deposits per round and their medians (a shared machine drifts:
alternating spreads the drift over both), and checks that every deposit was credited
exactly once (the balances equal what was sent, and the adapter's count of credits
equals the transfers). ``--edge none`` takes the chain and the adapter away: the same
deposits reach the node in reports signed beforehand, at the same pace, so what it
shows is the ledger's own share (``Direct``).

Usage: python -m benchmarks.deposits [--edge node|process|none] [--deposits 10000] [--accounts 500] [--rate 400]
       [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import msgspec
import orjson
import trio

from satchel import config
from satchel.chains.adapter import REPORT_DEPOSITS, deposit_report
from satchel.chains.base import ChainTransfer
from satchel.chains.embedded import Chains, EdgeHost
from satchel.chains.link import RemoteLink
from satchel.core import instructions
from satchel.core.messages import (ASK, BID, GTC, IOC, LIMIT, REJECT_TAKER, BalanceOf, ChainCredited, Deposit, PlaceOrder,
                                   SetLeverage)
from satchel.gateway import Gateway
from satchel.node import Node
from satchel.signing import Keypair, batch_auth_for
from satchel.tools import client
from satchel.tools.cli import setup_logging

USDC = 10**6


def quantiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98]


async def trade(node: Node, rate: int, seconds: float) -> list[float]:
    """Orders at ``rate`` a second for ``seconds``: each a durable-ack latency in ms."""
    latencies: list[float] = []
    n = int(rate * seconds)

    async def one(i: int) -> None:
        side = BID if i % 2 else ASK
        tif = GTC if i % 4 < 2 else IOC
        order = PlaceOrder(f"mm{i % 10}", "SOL_USDC", side, LIMIT, tif, False, 10_000, 100, 0, None, REJECT_TAKER)
        start = time.perf_counter()
        await node.submit_wait(order)
        latencies.append((time.perf_counter() - start) * 1000)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i in range(n):
            await trio.sleep_until(start + i / rate)
            nursery.start_soon(one, i)
    return latencies


def sign_test(higher: int, pairs: int) -> float:
    """Two-sided p of ``higher`` of ``pairs`` paired rounds coming out higher if either
    side were as likely: a test that asks nothing of the latencies' distribution, which
    on a shared machine has bursts no model fits."""
    if not pairs:
        return 1.0
    tail = min(higher, pairs - higher)
    return min(1.0, 2 * sum(math.comb(pairs, k) for k in range(tail + 1)) / 2**pairs)


def bench_config() -> config.Config:
    cfg = config.load()
    sim = msgspec.structs.replace(cfg.chains["sim"], block_ms=50, confirmations=3)
    return msgspec.structs.replace(cfg, chains={"sim": sim})


def user(i: int) -> str:
    """The ``i``-th depositing account: an API key (over the API an account is a key), the
    same in both processes."""
    return Keypair(hashlib.sha256(f"benchmarks.deposits/{i}".encode()).digest()).api_key


def amount(i: int) -> int:
    return (i % 7 + 1) * USDC


class Users:
    """The chain's side: the simulated chain (its first provider overloaded), the users'
    wallets on it and the chain's adapter, wherever they run."""

    def __init__(self, chains: Chains, deposits: int, accounts: int, seconds: float):
        self.chains, self.deposits, self.accounts, self.seconds = chains, deposits, accounts, seconds
        self.chain = chains.sims["sim"]
        self.adapter = chains.adapters["sim"]
        self.overloaded = chains.providers["sim"][0]
        self.overloaded.rate_limit, self.overloaded.latency = 40, 0.02
        self.users = [user(i) for i in range(accounts)]
        self.wallets = {}  # account -> its deposit address
        for account in self.users:  # users asked for their addresses before (each is fsynced once)
            self.wallets[account] = chains.node.addresses.issue("sim", account)
            self.chain.fund(f"user:{account}", "USDC", 10**9 * USDC)  # the user's own wallet on the chain

    async def send(self, first_id: int) -> None:
        """One round's transfers, handed to the chain a block at a time (one wake-up per
        block, not per transfer; a wallet knows its destination, so no address is derived
        per transfer)."""
        start = trio.current_time()
        deposits, chain = self.deposits, self.chain
        per_block = max(1, round(deposits * chain.block_ms / 1000 / self.seconds))
        for first in range(0, deposits, per_block):
            await trio.sleep_until(start + first * self.seconds / deposits)
            end = first_id + min(first + per_block, deposits)
            for i in range(first_id + first, end, 8):
                # the users are not the exchange: in the node's process (--edge node) they send
                # a few transfers a turn of its loop (``Node.turn``), not a block's worth a step
                async with self.chains.node.turn():
                    for j in range(i, min(i + 8, end)):
                        account = self.users[j % self.accounts]
                        chain.transfer("USDC", f"user:{account}", self.wallets[account], amount(j))

    async def credited(self, count: int, started: float) -> float:
        """Seconds from ``started`` until the adapter has credited ``count`` (120 at most)."""
        with trio.move_on_after(120):
            while self.adapter.credited < count:
                await trio.sleep(0.05)
        return time.perf_counter() - started

    def stats(self) -> dict:
        return {"credited": self.adapter.credited, "provider_errors": self.adapter.providers.errors,
                "overloaded_calls": self.overloaded.calls}


class Direct:
    """``--edge none``: no chain and no adapter. The same deposits, in the adapter's reports
    (``REPORT_DEPOSITS`` each, built and signed before the round), go straight to the node
    at the same pace: what is left is the ledger's own share of the work (crediting,
    journaling and publishing the deposits), the floor of any way to take them in."""

    def __init__(self, node: Node, deposits: int, accounts: int, seconds: float, per_report: int = REPORT_DEPOSITS):
        self.node, self.deposits, self.accounts, self.seconds = node, deposits, accounts, seconds
        self.per_report = per_report
        self.users = [user(i) for i in range(accounts)]
        self.credited = 0
        self.reports: list = []

    def prepare(self, r: int) -> None:
        """Sign round ``r``'s reports, before its orders start (signing is the adapter's
        work, not the ledger's), and within their validity window (60 s)."""
        self.reports = self.signed(r * self.deposits)

    def signed(self, first_id: int) -> list:
        """The reports of deposits ``first_id`` to ``first_id + deposits`` (their ids make their
        transaction hashes), signed now by the chain's adapter key."""
        key = self.node.chain_keys["sim"]
        reports = []
        end = first_id + self.deposits
        for first in range(first_id, end, self.per_report):
            part = [(ChainTransfer(f"0x{j:064x}", 0, "", "", "USDC", amount(j), 0, "", "", True),
                     self.users[j % self.accounts]) for j in range(first, min(first + self.per_report, end))]
            items, tx = deposit_report(key.api_key, "sim", {"USDC": 6}, part)
            # journaled as the adapter's in the node's process are (``LocalLink``)
            reports.append(instructions.compact(msgspec.structs.replace(tx, auth=batch_auth_for(key, "depositConfirmed", items)),
                                                {"USDC": 6}))
        return reports

    async def send_round(self, r: int) -> float:
        """Round ``r``'s deposits; seconds until all are credited."""
        first_id = r * self.deposits
        reports = self.reports
        started = time.perf_counter()
        start = trio.current_time()

        def counted(events: list) -> None:
            self.credited += sum(e.__class__ is ChainCredited for e in events)

        for i, tx in enumerate(reports):
            await trio.sleep_until(start + i * self.seconds / len(reports))
            self.node.submit(tx, counted)
        with trio.move_on_after(120):
            while self.credited < first_id + self.deposits:
                await trio.sleep(0.05)
        return time.perf_counter() - started

    def stats(self) -> dict:
        return {"credited": self.credited, "provider_errors": 0, "overloaded_calls": 0}


async def child(url: str, data: str, deposits: int, accounts: int, seconds: float) -> None:
    """``--edge process``: the chain, its users and the adapter (``satchel chains``), told
    by the parent on stdin when to send a round ("go R") and when to stop ("quit")."""
    async with trio.open_nursery() as nursery:
        chains = await nursery.start(Chains(EdgeHost(data, bench_config()),
                                            link=lambda decimals: RemoteLink(url, decimals, client)).run)
        users = Users(chains, deposits, accounts, seconds)
        print("ready", flush=True)
        while True:
            line = (await trio.to_thread.run_sync(sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            r = int(line[1])
            started = time.perf_counter()
            await users.send(r * deposits)
            print("credited", await users.credited((r + 1) * deposits, started), flush=True)
        print(orjson.dumps(users.stats()).decode(), flush=True)
        nursery.cancel_scope.cancel()


class _Lines:
    def __init__(self, stream: Any):
        self.stream, self.buf = stream, b""

    async def next(self) -> str:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError("the chain's process ended")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


async def run(edge: str, deposits: int, accounts: int, rate: int, seconds: float, rounds: int, auto_lend: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config()
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(tmp, cfg).run)
            admin = node.admin.api_key
            for i in range(10):
                await node.submit_wait(Deposit(admin, f"mm{i}", "USDC", 10**7 * USDC))
                await node.submit_wait(Deposit(admin, f"mm{i}", "SOL", 10**15))
            if not auto_lend:
                for i in range(accounts):
                    await node.submit_wait(SetLeverage(user(i), 0, auto_lend=0))
            if edge == "none":
                users = Direct(node, deposits, accounts, seconds)
                send_round = users.send_round
            elif edge == "node":
                users = Users(await nursery.start(Chains(node).run), deposits, accounts, seconds)

                async def send_round(r: int) -> float:
                    started = time.perf_counter()
                    await users.send(r * deposits)
                    return await users.credited((r + 1) * deposits, started)
            else:
                # the API the chain's process reports through; no history database, as in --edge node
                gateway = await nursery.start(Gateway(node, "127.0.0.1", 0, history=False).run)
                proc = await nursery.start(functools.partial(
                    trio.run_process, [sys.executable, "-m", "benchmarks.deposits", "--child", gateway.url, tmp,
                                       "--deposits", str(deposits), "--accounts", str(accounts),
                                       "--seconds", str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE))
                lines = _Lines(proc.stdout)
                assert await lines.next() == "ready"

                async def send_round(r: int) -> float:
                    await proc.stdin.send_all(f"go {r}\n".encode())
                    return float((await lines.next()).split()[1])

            alone, beside, stages, stages_alone, to_credit = [], [], [], [], []
            pooled: dict[str, list[float]] = {"alone": [], "beside": []}  # every order of every round
            for r in range(rounds):
                if edge == "none":
                    users.prepare(r)
                node.latency.reset()
                latencies = await trade(node, rate, seconds)
                alone.append(quantiles(latencies))
                pooled["alone"] += latencies
                stages_alone.append(node.latency.summary())
                node.latency.reset()
                async with trio.open_nursery() as inner:
                    credit_time: list[float] = []
                    inner.start_soon(lambda: _into(credit_time, send_round(r)))
                    latencies = await trade(node, rate, seconds)
                    beside.append(quantiles(latencies))
                    pooled["beside"] += latencies
                    stages.append(node.latency.summary())
                to_credit.append(credit_time[0])
            await trio.sleep(1.0)  # re-reports, if any, would be refused and change nothing
            if edge != "process":
                edge_stats = users.stats()
            else:
                await proc.stdin.send_all(b"quit\n")
                edge_stats = orjson.loads(await lines.next())
            sent: dict[str, int] = {}
            accounts_ = [user(i) for i in range(accounts)]
            for i in range(deposits * rounds):
                sent[accounts_[i % accounts]] = sent.get(accounts_[i % accounts], 0) + amount(i)
            wrong = 0
            for account, expected in sent.items():
                free, held = await node.ask("risk", BalanceOf(account, "USDC"))
                wrong += free + held != expected
            result = {"alone": alone, "beside": beside, "pooled": {k: quantiles(v) for k, v in pooled.items()},
                      "stages": stages, "stages_alone": stages_alone, "wrong_balances": wrong,
                      "seconds_to_credit": to_credit, **edge_stats}
            node.shutdown()
            nursery.cancel_scope.cancel()
    return result


async def _into(out: list, awaitable: Any) -> None:
    out.append(await awaitable)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deposits", type=int, default=10_000, help="deposits per round")
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--rate", type=int, default=400, help="orders a second")
    ap.add_argument("--seconds", type=float, default=8.0, help="each run's length (the deposits spread over it)")
    ap.add_argument("--rounds", type=int, default=3, help="runs alone and beside, alternated")
    ap.add_argument("--no-auto-lend", action="store_true", help="the depositing accounts do not auto-lend")
    ap.add_argument("--edge", choices=["node", "process", "none"], default="node",
                    help="the chain and its adapter in the node's process, in a process of their own (satchel "
                         "chains), or none: their reports, signed beforehand, straight to the node")
    ap.add_argument("--child", nargs=2, metavar=("URL", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    setup_logging(logging.WARNING)
    if args.child:
        trio.run(child, *args.child, args.deposits, args.accounts, args.seconds)
        return
    r = trio.run(run, args.edge, args.deposits, args.accounts, args.rate, args.seconds, args.rounds, not args.no_auto_lend)
    med = statistics.median
    where = {"process": "chain and adapter in their own process", "node": "chain and adapter in the node's process",
             "none": "no chain: the adapter's reports, signed beforehand, straight to the node"}[args.edge]
    print(f"{where}; orders at {args.rate}/s, durable-ack latency ms (p50 / p99), "
          f"{args.rounds} rounds alternated; "
          f"{args.deposits:,} deposits over {args.seconds:g} s ({args.deposits / args.seconds:,.0f}/s) beside:")
    for i, (a, b) in enumerate(zip(r["alone"], r["beside"])):
        print(f"  round {i + 1}: alone {a[0]:6.2f} / {a[1]:6.2f}   beside the deposits {b[0]:6.2f} / {b[1]:6.2f}   "
              f"credited in {r['seconds_to_credit'][i]:.1f} s")
    alone_p99, beside_p99 = med(a[1] for a in r["alone"]), med(b[1] for b in r["beside"])
    print(f"  median: alone {med(a[0] for a in r['alone']):6.2f} / {alone_p99:6.2f}   beside "
          f"{med(b[0] for b in r['beside']):6.2f} / {beside_p99:6.2f}   p99 ratio beside/alone {beside_p99 / alone_p99:.2f}")
    pa, pb = r["pooled"]["alone"], r["pooled"]["beside"]
    print(f"  every order of the rounds pooled: alone {pa[0]:6.2f} / {pa[1]:6.2f}   beside {pb[0]:6.2f} / {pb[1]:6.2f}   "
          f"p99 ratio beside/alone {pb[1] / pa[1]:.2f}")
    for i, what in ((0, "p50"), (1, "p99")):
        pairs = [(round(a[i], 2), round(b[i], 2)) for a, b in zip(r["alone"], r["beside"])]  # as printed, to 10 us
        higher = sum(b > a for a, b in pairs)
        differ = sum(b != a for a, b in pairs)  # a tie says neither
        print(f"  {what} beside above alone's in the same pair of rounds: {higher} of {args.rounds} "
              f"({args.rounds - differ} equal; sign test over the {differ} that differ, two-sided "
              f"p = {sign_test(higher, differ):.3f})")
    alone_p99s = sorted(a[1] for a in r["alone"])
    print(f"  the machine's own noise: alone, with nothing else changed, p99 {alone_p99s[0]:.2f} to {alone_p99s[-1]:.2f} "
          f"from round to round (x{alone_p99s[-1] / alone_p99s[0]:.2f})")
    print("the node's stages, us, median of the rounds (p50 / p99; per block, weighted by its txs):")
    for stage in ("apply", "durable"):
        alone_s, beside_s = r["stages_alone"], r["stages"]
        print(f"  {stage:<8}: alone {med(s[stage]['p50'] for s in alone_s):>7,.0f} / "
              f"{med(s[stage]['p99'] for s in alone_s):>7,.0f}   beside {med(s[stage]['p50'] for s in beside_s):>7,.0f} / "
              f"{med(s[stage]['p99'] for s in beside_s):>7,.0f}")
    total = args.deposits * args.rounds
    print(f"deposits credited: {r['credited']:,} of {total:,}; accounts whose balance differs from what was sent: "
          f"{r['wrong_balances']}")
    print(f"overloaded provider: {r['overloaded_calls']:,} calls; failovers after a provider error: {r['provider_errors']:,}")
    if r["credited"] != total or r["wrong_balances"]:
        raise SystemExit("FAILED: not every deposit was credited exactly once")


if __name__ == "__main__":
    main()
