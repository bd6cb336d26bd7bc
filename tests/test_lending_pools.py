"""The lending pools in the engine: listed at genesis from ``[lending]``, accrued every
block, changed by admin transaction, kept in snapshots, shown as Backpack's
``borrowLend/markets``."""

from __future__ import annotations

import httpx
import msgspec
import trio

from conftest import ADMIN
from satchel import config
from satchel.core.engine import Engine
from satchel.core.messages import ConfigChanged, PoolUpdate, PoolsOf, SetLending, TxRejected
from satchel.rest import serve


async def test_pools_listed_accrued_changed_and_restored(ex):
    pools = await ex.engine.lending.call(PoolsOf())
    assert [p.spec.asset for p in pools] == sorted(spec.asset for spec in config.load().lending_specs())
    await ex.block([])
    assert {p.last_us for p in await ex.engine.lending.call(PoolsOf())} == {ex.ts}
    sol = next(s for s in config.load().lending_specs() if s.asset == "SOL")
    steeper = msgspec.structs.replace(sol, slope1=sol.slope1 * 2)
    events = await ex.block([SetLending(ADMIN, steeper), SetLending(ADMIN, msgspec.structs.replace(sol, asset="NOPE"))])
    updates = [e for e in events if e.__class__ is PoolUpdate]
    events = [e for e in events if e.__class__ is not PoolUpdate]
    assert [e.__class__ for e in events] == [ConfigChanged, TxRejected]
    assert events[0].lending == steeper and events[1].code == "INVALID_ASSET"
    assert "SOL" in {u.asset for u in updates if u.seq == events[0].seq}  # the new curve's figures at once
    assert next(p for p in await ex.engine.lending.call(PoolsOf()) if p.spec.asset == "SOL").spec == steeper
    state = await ex.engine.canonical()
    async with trio.open_nursery() as nursery:
        copy = Engine(nursery)
        await copy.restore(state)
        assert await copy.state_hash() == await ex.engine.state_hash()
        assert await copy.lending.call(PoolsOf()) == await ex.engine.lending.call(PoolsOf())
        nursery.cancel_scope.cancel()


async def test_borrow_lend_markets_over_rest(nursery, server):
    rest = await nursery.start(serve, server.gateway, "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=rest) as c:
        markets = {m["symbol"]: m for m in (await c.get("/api/v1/borrowLend/markets")).json()}
    assert set(markets) >= {"USDC", "SOL", "BTC", "ETH"}
    sol = markets["SOL"]
    assert (sol["state"], sol["utilization"], sol["lentQuantity"], sol["borrowInterestRate"]) == ("Open", "0", "0", "0")
    assert sol["optimalUtilization"] == "0.8" and sol["fee"] == "0.05"
