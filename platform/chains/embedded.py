"""The chains a node runs beside itself: for each ``[chains.<name>]`` of kind "sim", an
in-process simulated chain with two providers and its adapter (``satchel serve`` starts
them as edges). EVM chains get their adapter from ``satchel.chains.evm``."""

from __future__ import annotations

from typing import Any

import structlog
import trio

from satchel.chains.adapter import Adapter
from satchel.chains.providers import Providers
from satchel.chains.sim import SimChain, SimProvider

log = structlog.get_logger()


class SimChains:
    """The node's simulated chains and their adapters (``sims`` and ``adapters`` by name:
    tests and the load tester reach in to deposit and to break providers)."""

    def __init__(self, node: Any):
        self.node = node
        decimals = {a.symbol: a.decimals for a in node.cfg.asset_specs()}
        self.sims: dict[str, SimChain] = {}
        self.providers: dict[str, list[SimProvider]] = {}
        self.adapters: dict[str, Adapter] = {}
        for name, c in sorted(node.cfg.chains.items()):
            if c.kind != "sim":
                continue
            sim = self.sims[name] = SimChain(name, c.block_ms)
            providers = self.providers[name] = [SimProvider(sim, f"{name}-rpc-{i}", seed=i) for i in range(2)]
            self.adapters[name] = Adapter(node, name, c.confirmations, Providers(providers), node.addresses,
                                          node.chain_keys[name], {a: decimals[a] for a in c.assets}, node.data)

    def deposit(self, chain: str, account: str, asset: str, amount: int) -> str:
        """A user's transfer to the account's deposit address (funded from nowhere)."""
        sim = self.sims[chain]
        address = self.node.addresses.issue(chain, account)
        sender = f"user:{account}"
        sim.fund(sender, asset, amount)
        return sim.transfer(asset, sender, address, amount)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for name, sim in self.sims.items():
                nursery.start_soon(sim.run)
                nursery.start_soon(self.adapters[name].run)
                log.info("chain.started", chain=name, kind="sim", confirmations=self.adapters[name].confirmations,
                         block_ms=sim.block_ms)
            task_status.started(self)
