"""Perp orders over a real WebSocket connection: signed reduce-only and trigger params
are built by the same declaration the validator replays."""

from __future__ import annotations

import pytest

from satchel.core.messages import PositionsOf, SetIndex
from satchel.signing import Keypair
from satchel.tools.client import ReplyError, connect

USDC = 10**6


def perp(side: str, price: str, qty: str, **extra) -> dict:
    return {"symbol": "SOL_USDC_PERP", "side": side, "orderType": "Limit", "price": price, "quantity": qty, **extra}


async def positions(server, key: Keypair) -> dict[str, int]:
    view = await server.node.ask("risk", PositionsOf(key.api_key))
    return {p.symbol: p.size for p in view.positions}


async def test_perp_orders_over_websocket(server):
    alice, bob = Keypair.generate(), Keypair.generate()
    await server.fund(alice, USDC=1_000 * USDC)
    await server.fund(bob, USDC=1_000 * USDC)
    admin = server.node.admin.api_key
    await server.node.submit_wait(SetIndex(admin, "SOL_USDC_PERP", 15_000))
    await server.node.submit_wait(SetIndex(admin, "SOL_USDC_PERP", 15_000))  # the mark is set by the periodic phase
    async with connect(server.url, alice) as a, connect(server.url, bob) as b:
        rest = await b.request("orderExecute", perp("Ask", "150", "2"))
        assert rest["status"] == "New"
        taken = await a.request("orderExecute", perp("Bid", "150", "2"))
        assert taken["status"] == "Filled"
        assert await positions(server, alice) == {"SOL_USDC_PERP": 200}
        assert await positions(server, bob) == {"SOL_USDC_PERP": -200}
        # growing a long with reduceOnly: expires with a reason
        r = await a.request("orderExecute", perp("Bid", "150", "1", reduceOnly=True))
        assert (r["status"], r["reason"]) == ("Expired", "ReduceOnly")
        # far beyond the margin 1,000 USDC carries
        r = await a.request("orderExecute", perp("Bid", "149", "400"))
        assert (r["status"], r["reason"]) == ("Rejected", "InsufficientMargin")
        # a stop-loss waits for the mark
        stop = await a.request("orderExecute", {"symbol": "SOL_USDC_PERP", "side": "Ask", "orderType": "Market",
                                               "triggerPrice": "140", "triggerQuantity": "2", "reduceOnly": True})
        assert stop["status"] == "TriggerPending"
        cancelled = await a.request("orderCancel", {"symbol": "SOL_USDC_PERP", "orderId": stop["id"]})
        assert cancelled["status"] == "Cancelled"
        with pytest.raises(ReplyError) as e:
            await a.request("orderExecute", perp("Bid", "150", "1", reduceOnly=True, symbol="SOL_USDC"))
        assert e.value.code == "INVALID_CLIENT_REQUEST"
        with pytest.raises(ReplyError) as e:
            await a.request("accountUpdate", {"leverageLimit": "100"})
        assert e.value.code == "INVALID_LEVERAGE"
