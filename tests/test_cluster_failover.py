"""The failover drill, with real processes: a 3-node NATS cluster (R3 block stream), a
primary sequencer and its standby, two gateways and two validators, under a client
workload. Kill one NATS node, then a gateway, then the primary: no acknowledged order
is lost, the killed gateway's clients reconnect to the other one and resume their
private streams, the standby takes over, and the validators agree on every state hash
(the sequencers snapshot every 25 blocks; each snapshot's hash rides in the stream)."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from satchel import config
from satchel.signing import Keypair
from satchel.tools.client import ReplyError, connect, free_port

from conftest import nats_cluster

pytestmark = nats_cluster.skip_without

SECRETS = ("admin.key", "custody.seed")


class Procs:
    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "satchel.tools.cli", *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = p
        return p

    def log(self, name: str) -> list[dict]:
        out = []
        for line in (self.root / f"{name}.log").read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def saw(self, name: str, event: str) -> dict | None:
        return next((e for e in self.log(name) if e.get("event") == event), None)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


async def until(check, timeout: float, what: str):
    with trio.fail_after(timeout):
        while not (value := check()):
            await trio.sleep(0.1)
    return value


def limit(side: str, price: str, qty: str, client_id: int) -> dict:
    return {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": qty, "clientId": client_id}


class Trader:
    """Places orders in a loop through a gateway, moving to the next one when its gateway
    goes away; keeps what was acknowledged and the private frames it received."""

    def __init__(self, key: Keypair, urls: list[str]):
        self.key = key
        self.urls = urls
        self.acked: dict[int, int] = {}  # clientId -> order id
        self.frames_after_move = 0
        self.moved = False
        self.ids = itertools.count(1)

    async def run(self, stop: trio.Event) -> None:
        at = 0
        while not stop.is_set():
            url = self.urls[at % len(self.urls)]
            try:
                async with connect(url, self.key) as c:
                    await c.subscribe(["account.orderUpdate"], private=True)
                    async with trio.open_nursery() as n:
                        n.start_soon(self._frames, c, at > 0)
                        while not stop.is_set():
                            cid = next(self.ids)
                            side, price = ("Bid", "149") if cid % 2 else ("Ask", "151")
                            try:
                                with trio.fail_after(15):
                                    r = await c.request("orderExecute", limit(side, price, "0.1", cid))
                                self.acked[cid] = r["id"]
                            except ReplyError:
                                pass  # refused (not acknowledged): nothing to check
                            await trio.sleep(0.02)
                        n.cancel_scope.cancel()
            except (ConnectionError, ConnectionClosed, HandshakeError, OSError, trio.TooSlowError):
                pass
            except BaseExceptionGroup as eg:  # the connection's reader ended with the gateway
                if not eg.subgroup((ConnectionError, ConnectionClosed, HandshakeError, OSError, trio.TooSlowError)):
                    raise
            if not stop.is_set():
                at += 1
                self.moved = True
                await trio.sleep(0.2)

    async def _frames(self, c, after_move: bool) -> None:
        while True:
            await c.next_frame("account.orderUpdate", timeout=3600)
            if after_move:
                self.frames_after_move += 1


def _config(tmp: Path) -> Path:
    text = (Path(config.__file__).parent / "defaults.toml").read_text()
    path = tmp / "cluster.toml"
    path.write_text(text.replace("snapshot_blocks = 10000", "snapshot_blocks = 25"))
    return path


async def test_failover_drill(tmp_path):
    procs = Procs(tmp_path)
    cfg = str(_config(tmp_path))
    with nats_cluster(tmp_path / "nats", 3) as nats:
        urls = nats.urls
        try:
            gw_keys = []
            for g in ("gw1", "gw2"):
                out = subprocess.run([sys.executable, "-m", "satchel.tools.cli", "gateway", "--nats", urls, "--data",
                                      str(tmp_path / g), "--print-key"], capture_output=True, text=True, check=True)
                gw_keys.append(out.stdout.strip())
            for s in ("primary", "standby"):
                (tmp_path / s).mkdir()
                (tmp_path / s / "gateways").write_text("\n".join(gw_keys) + "\n")
            ports = {n: free_port() for n in ("primary", "standby", "gw1", "gw2")}
            seq_args = ["--nats", urls, "--durability", "stream", "--stream-replicas", "3", "--takeover-after", "2",
                        "--rest-port", "-1", "--replication-port", "-1", "--no-demo", "--no-oracle", "--config", cfg]
            procs.start("primary", "serve", "--data", str(tmp_path / "primary"), "--port", str(ports["primary"]), *seq_args)
            await until(lambda: procs.saw("primary", "cluster.primary"), 30, "the primary")
            for name in SECRETS + tuple(p.name for p in (tmp_path / "primary").glob("chain-*.key")):
                shutil.copy(tmp_path / "primary" / name, tmp_path / "standby" / name)
            procs.start("standby", "serve", "--data", str(tmp_path / "standby"), "--port", str(ports["standby"]), *seq_args)
            for g in ("gw1", "gw2"):
                procs.start(g, "gateway", "--nats", urls, "--data", str(tmp_path / g), "--port", str(ports[g]),
                            "--config", cfg)
            for v in ("v1", "v2"):
                procs.start(v, "validator", "--nats", urls, "--data", str(tmp_path / v), "--snapshot-blocks", "25")
            await until(lambda: procs.saw("standby", "cluster.following"), 30, "the standby")
            gw = [f"ws://127.0.0.1:{ports['gw1']}", f"ws://127.0.0.1:{ports['gw2']}"]
            await until(lambda: all(procs.saw(g, "gateway.serving") for g in ("gw1", "gw2")), 30, "the gateways")

            admin = Keypair.from_secret((tmp_path / "primary" / "admin.key").read_text().strip())
            traders = [Keypair.generate() for _ in range(4)]
            async with connect(gw[1], admin) as a:
                for t in traders:
                    await a.request("deposit", {"account": t.api_key, "asset": "USDC", "quantity": "1000000"})
            # the standby's own gateway forwards to the primary too (signed with the shared admin key)
            async with connect(f"ws://127.0.0.1:{ports['standby']}", admin) as a:
                for t in traders:
                    await a.request("deposit", {"account": t.api_key, "asset": "SOL", "quantity": "10000"})
            # two traders start on each gateway, each moving to the other when its own goes away
            runners = [Trader(t, gw if i % 2 == 0 else gw[::-1]) for i, t in enumerate(traders)]
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for r in runners:
                    nursery.start_soon(r.run, stop)
                await trio.sleep(3)
                nats.nodes[0].stop(kill=True)  # one NATS node: the R3 stream goes on on the other two
                await trio.sleep(4)
                procs.kill("gw1")  # its clients move to gw2
                await trio.sleep(4)
                acked_before = sum(len(r.acked) for r in runners)
                procs.kill("primary")
                await until(lambda: procs.saw("standby", "cluster.primary"), 30, "the standby's takeover")
                # the workload goes on through the new primary
                await until(lambda: sum(len(r.acked) for r in runners) > acked_before + 40, 30, "orders after takeover")
                stop.set()

            moved = [r for r in runners if r.urls[0] == gw[0]]
            assert all(r.moved for r in moved)
            assert all(r.frames_after_move > 0 for r in moved)  # private streams resumed on gw2
            assert all(len(r.acked) > 20 for r in runners)

            # every acknowledged order is in the history of the surviving gateway
            for r in runners:
                seen: set[int] = set()
                async with connect(gw[1], r.key) as c:
                    for offset in itertools.count(0, 1000):
                        page = await c.request("orderHistoryQueryAll", {"symbol": "SOL_USDC", "limit": "1000",
                                                                        "offset": str(offset)})
                        seen |= {int(o["id"]) for o in page}
                        if len(page) < 1000:
                            break
                lost = [cid for cid, oid in r.acked.items() if int(oid) not in seen]
                assert not lost, f"acknowledged orders missing: {lost[:10]}"

            # validators: alive, caught up with the stream (their signed reports on the bus), no divergence
            async with connect(gw[1]) as c:
                height = (await c.request("nodeStats", {}, sign=False))["height"]

                async def validators() -> list[dict]:
                    return (await c.request("nodeStats", {}, sign=False))["validators"]

                with trio.fail_after(30):
                    while len(rows := await validators()) < 2 or min(r["height"] for r in rows) < height:
                        await trio.sleep(0.2)
                stats = await c.request("nodeStats", {}, sign=False)
            assert {row["agrees"] for row in rows} == {True}
            for v in ("v1", "v2"):
                assert procs.procs[v].poll() is None, f"{v} stopped: {(tmp_path / f'{v}.log').read_text()[-2000:]}"
                assert not list((tmp_path / v).glob("divergence-*.json"))
                assert json.loads((tmp_path / v / "status.json").read_text())["height"] > 0
            async with connect(f"ws://127.0.0.1:{ports['standby']}") as c:
                assert (await c.request("nodeStats", {}, sign=False))["height"] == stats["height"]
        finally:
            procs.stop_all()
    # the new primary and the surviving gateway stopped at the same height with the same state
    final = {n: procs.saw(n, "node.stopped") for n in ("standby", "gw2")}
    assert final["standby"]["height"] == final["gw2"]["height"]
    assert final["standby"]["state"] == final["gw2"]["state"]
