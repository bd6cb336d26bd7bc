"""A client that goes away mid-handshake ends only its own connection.

An outside test stopped nodes with a valid WebSocket upgrade request followed at once by a
close (or a reset): trio-websocket runs every connection's handler in the server's
nursery, so ``accept`` raising ``ConnectionClosed``, or the peer's address read after it
raising ``OSError``, ended the server and the node, on the gateway and the block-stream
port alike, within a few attempts and with no key.
"""

from __future__ import annotations

import base64
import os
import socket
import struct

import trio

from satchel.ledger.replication import Replicator
from satchel.tools.client import connect

UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def upgrade_then_go(port: int, attempts: int) -> None:
    """Send the upgrade request and close at once, half the time with a reset."""
    for i in range(attempts):
        sock = trio.socket.socket()
        if i % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.connect(("127.0.0.1", port))
        await sock.send(UPGRADE)
        sock.close()
        await trio.sleep(0.01)


async def test_the_gateway_outlives_clients_leaving_mid_handshake(server):
    await upgrade_then_go(server.gateway.port, 40)
    await trio.sleep(0.2)
    async with connect(server.url) as c:  # still serving
        assert (await c.request("depth", {"symbol": "SOL_USDC"}, sign=False)) is not None


async def test_the_block_stream_outlives_clients_leaving_mid_handshake(nursery, tmp_path):
    from types import SimpleNamespace

    node = SimpleNamespace(data=tmp_path, chain=SimpleNamespace(height=0), block_listeners=[])
    replicator = await nursery.start(Replicator(node, "127.0.0.1", 0).run)
    await upgrade_then_go(replicator.port, 40)
    await trio.sleep(0.2)
    stream = await trio.open_tcp_stream("127.0.0.1", replicator.port)  # still listening and answering
    async with stream:
        await stream.send_all(UPGRADE)
        with trio.fail_after(5):
            assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 101")


def _frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """A client frame (masked, as clients must)."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 1 << 16 else \
        bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_an_unfinished_message_is_held_up_to_four_frames_and_connections_are_counted(nursery, tmp_path):
    """An outside test held 1.1 MB per connection with messages left unfinished (continuation
    frames, never the last), with no cap on connections: 300 of them took a node from 80 to
    418 MB. A message is now held up to 4 x ``max_frame_bytes`` and then the connection is
    closed (1009); past ``max_connections`` an upgrade is answered 503."""
    from conftest import start_server

    server = await start_server(nursery, tmp_path, max_frame_bytes=1024, max_connections=2)
    port = server.gateway.port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(UPGRADE)
    assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 101")
    await stream.send_all(_frame(0x1, b"x" * 1000, fin=False))
    closed = b""
    with trio.fail_after(5):
        for _ in range(10):  # 10 KB of continuation: past 4 KB it is closed
            try:
                await stream.send_all(_frame(0x0, b"x" * 1000, fin=False))
            except trio.BrokenResourceError:
                break
            with trio.move_on_after(0.05):
                closed += await stream.receive_some(100)
            if closed:
                break
    assert closed[:1] == b"\x88" and int.from_bytes(closed[2:4], "big") == 1009, closed
    await stream.aclose()
    async with connect(server.url), connect(server.url):  # two open: the third is refused
        third = await trio.open_tcp_stream("127.0.0.1", port)
        async with third:
            await third.send_all(UPGRADE)
            with trio.fail_after(5):
                assert (await third.receive_some(100)).startswith(b"HTTP/1.1 503")
        assert server.gateway._stats()["refusedConnections"] == 1
    await trio.sleep(0.1)
    async with connect(server.url) as c:  # and once they closed, a new one is served
        assert (await c.request("depth", {"symbol": "SOL_USDC"}, sign=False)) is not None
