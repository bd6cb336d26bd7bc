from __future__ import annotations

import pytest

from satchel import config
from satchel.engine import Engine
from satchel.messages import (
    ASK, BID, GTC, LIMIT, MARKET, REJECT_TAKER, CancelAll, CancelOrder, Deposit, PlaceOrder,
)

ADMIN = "ADMIN"


class Exchange:
    """The engine driven directly, block by block (no journal, no network)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.seq = 1
        self.ts = 1_700_000_000_000_000
        self.events: list = []

    async def block(self, txs: list) -> list:
        self.ts += 1000
        events = await self.engine.apply(self.seq, self.ts, txs)
        self.seq += len(txs)
        self.events.extend(events)
        return events

    async def deposit(self, account: str, asset: str, amount: int) -> None:
        await self.block([Deposit(ADMIN, account, asset, amount)])

    async def balance(self, account: str, asset: str) -> tuple[int, int]:
        return await self.engine.risk.call("balance", account, asset)

    async def totals(self) -> dict[str, int]:
        return await self.engine.risk.call("totals")

    async def deposits(self) -> dict[str, int]:
        return dict((await self.engine.risk.call("canonical"))[3])

    async def depth(self, symbol: str):
        return await self.engine.books[symbol].call("depth")


def order(account: str, side: int, price: int = 0, qty: int = 0, *, symbol: str = "SOL_USDC", type: int = LIMIT,
          tif: int = GTC, post_only: bool = False, quote_qty: int = 0, client_id: int | None = None,
          stp: int = REJECT_TAKER) -> PlaceOrder:
    return PlaceOrder(account, symbol, side, type if price or type == MARKET else MARKET, tif, post_only, price, qty,
                      quote_qty, client_id, stp)


def cancel(account: str, order_id: int | None = None, client_id: int | None = None, symbol: str = "SOL_USDC") -> CancelOrder:
    return CancelOrder(account, symbol, order_id, client_id)


def cancel_all(account: str, symbol: str = "SOL_USDC") -> CancelAll:
    return CancelAll(account, symbol)


@pytest.fixture
async def ex(nursery):
    engine = Engine(nursery)
    x = Exchange(engine)
    await x.block(config.genesis(config.load(), ADMIN))
    return x


__all__ = ["ASK", "BID", "order", "cancel", "cancel_all"]


# ---------------------------------------------------------------- a real node on 127.0.0.1


class Server:
    def __init__(self, node, gateway):
        self.node = node
        self.gateway = gateway
        self.url = gateway.url

    async def fund(self, key, **amounts: int) -> None:
        from satchel.messages import Deposit as _Deposit

        for asset, units in amounts.items():
            await self.node.submit_wait(_Deposit(self.node.admin.api_key, key.api_key, asset, units))

    async def balances(self, key) -> dict:
        return await self.node.read(lambda e: e.risk.call("balances", key.api_key))

    async def open_orders(self, key, symbol: str = "SOL_USDC") -> list:
        return await self.node.read(lambda e: e.books[symbol].call("open_orders", key.api_key))


async def start_server(nursery, tmp_path, **gateway_settings) -> Server:
    import msgspec
    from satchel.gateway import Gateway
    from satchel.node import Node

    cfg = config.load()
    if gateway_settings:
        cfg = msgspec.structs.replace(cfg, gateway=msgspec.structs.replace(cfg.gateway, **gateway_settings))
    node = await nursery.start(Node(tmp_path / "data", cfg).run)
    gateway = await nursery.start(Gateway(node, "127.0.0.1", 0).run)
    return Server(node, gateway)


@pytest.fixture
async def server(nursery, tmp_path):
    return await start_server(nursery, tmp_path)


@pytest.fixture
async def traders(server):
    """Alice with 100,000 USDC and Bob with 1,000 SOL on the live server."""
    from satchel.signing import Keypair

    alice, bob = Keypair.generate(), Keypair.generate()
    await server.fund(alice, USDC=100_000 * 10**6)
    await server.fund(bob, SOL=1_000 * 10**9)
    return alice, bob
