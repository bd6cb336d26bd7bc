"""A worker process of traders: each with its own key and connection.

Open loop (``rate`` set): every trader sends on a fixed schedule and latency is taken
from the *intended* send time, so a slow server cannot hide its queueing by slowing the
client down (no coordinated omission). Closed loop (``rate`` None): each trader keeps
``inflight`` requests outstanding and sends as fast as acks return.

Each trader also subscribes to its own ``account.orderUpdate`` stream: at the end every
order the server acknowledged must have appeared there. The fees its fills report are
tallied for information only: a trader stops reading once its own orders are settled, so a
maker fill that lands later is missing, and the runner's conservation check takes the fees
from the node (``ledgerTotals``) instead. A trader of perps also follows the
``markPrice`` streams of its markets: its orders center on their index prices.
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import trio
from hdrh.histogram import HdrHistogram
from trio_websocket import ConnectionClosed, open_websocket_url

from satchel.tools.loadtest.plan import Flow, LendPlan, MarketPlan
from satchel.signing import Keypair, sign_request

MAX_US = 60_000_000


def new_hist() -> HdrHistogram:
    return HdrHistogram(1, MAX_US, 3)


class _Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.errors: Counter[str] = Counter()
        self.hist = new_hist()
        self.window = new_hist()
        self.lost = 0
        self.acked_orders = 0
        self.fees: dict[str, Decimal] = {}
        self.disconnects = 0
        self.cancel_races = 0
        self.lending: Counter[str] = Counter()  # borrowLendExecute accepted, by side


async def _trader(url: str, key: Keypair, flow: Flow, cfg: dict, stats: _Stats, t0: float) -> None:
    rate = cfg["rate"]
    warm_end = t0 + cfg["warmup"]
    end = t0 + cfg["warmup"] + cfg["duration"]
    pending: dict[int, tuple[float, str, dict]] = {}
    acked_ids: set[str] = set()
    seen_ids: set[str] = set()
    slots = trio.Semaphore(cfg["inflight"])
    next_id = 0

    async with open_websocket_url(url, max_message_size=1 << 24) as ws:
        _, sig = sign_request(key, "subscribe", {})
        await ws.send_message(orjson.dumps({"method": "SUBSCRIBE", "params": ["account.orderUpdate"], "signature": sig}).decode())
        marks = [f"markPrice.{m.symbol}" for m in flow.markets if m.perp]
        if marks:  # perp orders center on the index, which moves (and crashes)
            await ws.send_message(orjson.dumps({"method": "SUBSCRIBE", "params": marks}).decode())

        async def reader() -> None:
            while True:
                msg = orjson.loads(await ws.get_message())
                now = trio.current_time()
                if msg.get("stream", "").startswith("markPrice."):
                    flow.index(msg["data"]["s"], msg["data"]["i"])
                    continue
                if "stream" in msg:
                    d = msg["data"]
                    seen_ids.add(d.get("i"))
                    e = d.get("e")
                    if e == "orderFill":
                        stats.fees[d["N"]] = stats.fees.get(d["N"], Decimal(0)) + Decimal(d["n"])
                        if d["X"] == "Filled" and d["m"]:
                            flow.gone(d["i"])
                    elif e == "orderCancelled" or e == "orderExpired":
                        flow.gone(d["i"])
                    continue
                entry = pending.pop(msg.get("id"), None)
                if entry is None:
                    continue
                intended, method, params = entry
                if rate is None:
                    slots.release()
                if intended >= warm_end:
                    us = max(1, int((now - intended) * 1e6))
                    stats.hist.record_value(min(us, MAX_US))
                    stats.window.record_value(min(us, MAX_US))
                if "error" in msg:
                    code = str(msg["error"]["code"])
                    if code == "RESOURCE_NOT_FOUND" and method == "orderCancel":
                        stats.cancel_races += 1  # the quote filled while the cancel was in flight
                    else:
                        stats.errors[code] += 1
                    flow.refused(method, params)
                    continue
                stats.acked += 1
                result = msg["result"]
                if method == "orderExecute":
                    acked_ids.add(result["id"])
                elif method == "borrowLendExecute":
                    stats.lending[params["side"]] += 1
                flow.acked(method, params, result)

        async def send(intended: float) -> None:
            nonlocal next_id
            method, params = flow.next()
            next_id += 1
            _, sig = sign_request(key, method, params, window=60_000)
            pending[next_id] = (intended, method, params)
            stats.sent += 1
            await ws.send_message(orjson.dumps({"id": next_id, "method": method, "params": params, "signature": sig}).decode())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep_until(t0)
            if rate:
                interval = 1.0 / rate
                t = t0 + flow.rng.random() * interval  # spread the traders' phases
                while t < end:
                    if trio.current_time() < t:
                        await trio.sleep_until(t)
                    await send(t)
                    t += interval
            else:
                while trio.current_time() < end:
                    await slots.acquire()
                    await send(trio.current_time())
            with trio.move_on_after(10):
                while pending:
                    await trio.sleep(0.01)
            with trio.move_on_after(3):  # order updates trail the acks by at most a block
                while not acked_ids <= seen_ids:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    stats.lost += len(acked_ids - seen_ids)
    stats.acked_orders += len(acked_ids)


def run_worker(worker: int, url: str, secrets: list[str], roles: list[str], markets: list[dict], cfg: dict, queue: Any,
               lending: list[dict | None] | None = None) -> None:
    """Process entry point: run these traders, report progress and the final tallies.
    ``lending``: each trader's ``LendPlan`` as a dict (None: it neither lends nor borrows)."""
    plans = [MarketPlan(**m) for m in markets]
    lend_plans = [LendPlan(**p) if p else None for p in lending or [None] * len(secrets)]
    stats = _Stats()

    async def main() -> None:
        # all workers start their clocks at the same wall-clock instant
        t0 = trio.current_time() + max(0.0, cfg["start_at"] - time.time())

        async def progress() -> None:
            while True:
                await trio.sleep(0.5)
                queue.put({"type": "progress", "worker": worker, "sent": stats.sent, "acked": stats.acked,
                           "errors": sum(stats.errors.values()), "window": stats.window.encode()})
                stats.window.reset()

        async def guarded(key: Keypair, flow: Flow) -> None:
            try:
                await _trader(url, key, flow, cfg, stats, t0)
            except* (ConnectionClosed, OSError):
                stats.disconnects += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress)
            async with trio.open_nursery() as traders:
                for i, (secret, role) in enumerate(zip(secrets, roles)):
                    flow = Flow(role, plans, seed=cfg["seed"] * 1000 + worker * 100 + i, lending=lend_plans[i])
                    traders.start_soon(guarded, Keypair.from_secret(secret), flow)
            nursery.cancel_scope.cancel()

    trio.run(main)
    queue.put({
        "type": "traders", "worker": worker, "sent": stats.sent, "acked": stats.acked, "errors": dict(stats.errors),
        "hist": stats.hist.encode(), "lost_acks": stats.lost, "acked_orders": stats.acked_orders,
        "fees": {k: str(v) for k, v in stats.fees.items()}, "disconnects": stats.disconnects,
        "cancel_races": stats.cancel_races, "lending": dict(stats.lending),
    })
