"""A subscriber that stops reading is disconnected; the others keep a gap-free feed."""

from __future__ import annotations

import trio

from conftest import start_server
from satchel.tools.client import connect
from satchel.tools.loadtest.feed import stalled_subscription
from satchel.core.messages import ASK, BID, GTC, LIMIT, REJECT_TAKER, CancelAll, Deposit, PlaceOrder


async def test_slow_subscriber_is_dropped(nursery, tmp_path):
    server = await start_server(nursery, tmp_path, send_buffer_frames=64)
    node, gw = server.node, server.gateway
    stalled = await stalled_subscription(gw.port, ["depth.SOL_USDC", "trade.SOL_USDC", "bookTicker.SOL_USDC"])
    await node.submit_wait(Deposit(node.admin.api_key, "mm", "USDC", 10**15))
    await node.submit_wait(Deposit(node.admin.api_key, "mm", "SOL", 10**15))
    async with connect(server.url) as healthy:
        await healthy.subscribe(["depth.SOL_USDC"])
        snap = await healthy.next_frame("depth.")
        last = int(snap["data"]["lastUpdateId"])
        with trio.fail_after(60):
            i = 0
            while gw.slow_consumers == 0:
                i += 1
                node.submit(CancelAll("mm", "SOL_USDC"))
                for k in range(10):
                    node.submit(PlaceOrder("mm", "SOL_USDC", BID, LIMIT, GTC, False, 14_000 + (i + k) % 500, 100 + k, 0, None, REJECT_TAKER))
                    node.submit(PlaceOrder("mm", "SOL_USDC", ASK, LIMIT, GTC, False, 16_000 + (i + k) % 500, 100 + k, 0, None, REJECT_TAKER))
                await node.submit_wait(CancelAll("mm", "BTC_USDC"))
                # the healthy subscriber reads everything, with no gap in update ids
                while True:
                    try:
                        f = healthy.frames.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if f["data"]["U"] == last and not f["data"]["b"]:
                        continue  # a heartbeat: U == u == the last id, nothing changed
                    assert f["data"]["U"] == last + 1
                    last = f["data"]["u"]
        assert gw.slow_consumers == 1
        assert gw.marketdata.subscriber_count() == 1  # only the healthy one is left
        await node.submit_wait(PlaceOrder("mm", "SOL_USDC", BID, LIMIT, GTC, False, 13_000, 1, 0, None, REJECT_TAKER))
        while True:
            f = await healthy.next_frame("depth.")
            if f["data"]["U"] == last and not f["data"]["b"]:
                continue  # a heartbeat
            assert f["data"]["U"] == last + 1
            last = f["data"]["u"]
            if ["130", "0.01"] in f["data"]["b"]:
                break
    await stalled.aclose()
