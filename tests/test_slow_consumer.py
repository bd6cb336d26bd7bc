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
        assert_whole_frames(await read_to_the_end(stalled))
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


async def read_to_the_end(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        try:
            while chunk := await stream.receive_some(1 << 20):
                data += chunk
        except trio.BrokenResourceError:  # reset: what was sent before is still read
            pass
    return data


def assert_whole_frames(data: bytes) -> None:
    """What the dropped subscriber read parses as whole WebSocket frames, the last possibly
    cut short (the connection dropped), each text frame valid UTF-8. An outside test saw the
    node's close frame written into the middle of a text frame when it dropped a slow
    consumer: the client read a torn frame (1007, invalid UTF-8)."""
    at = 0
    while at + 2 <= len(data):
        opcode, n = data[at] & 0x0F, data[at + 1] & 0x7F
        head = 2
        if n == 126:
            n, head = int.from_bytes(data[at + 2:at + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[at + 2:at + 10], "big"), 10
        assert opcode in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA), (at, data[at:at + 16])
        payload = data[at + head:at + head + n]
        if len(payload) < n:
            return  # the last frame, cut short by the drop
        if opcode == 0x1:
            payload.decode()
        at += head + n
