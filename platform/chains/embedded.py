"""The chains a node runs beside itself, one adapter each (``satchel serve`` starts them as edges).

* ``[chains.<name>]`` of kind "sim": an in-process simulated chain with two providers, its
  state kept in the data directory (``sim-chain-<name>.bin``) so a restart carries on with
  the same chain;
* of kind "evm": a real EVM chain behind its ``providers`` URLs, one
  ``evm.provider.EvmProvider`` per URL over the chain's shared ``EvmCustody`` (keys,
  sent-transactions journal, gas tank).

Every adapter is the same chain-agnostic ``Adapter``: an edge that reports what it sees as
signed transactions and never touches ledger state (DESIGN §2). The EVM modules (and
eth-account, a heavy import) are imported only when an EVM chain is configured, so the
default node, with its simulated chain, needs nothing but its pip dependencies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from satchel.chains.adapter import Adapter
from satchel.chains.addresses import SEED_FILE, AddressBook, load_seed
from satchel.chains.link import LocalLink
from satchel.chains.providers import Providers
from satchel.chains.sim import SimChain, SimProvider
from satchel.signing import load_key

log = structlog.get_logger()


class Chains:
    """The node's chains and their adapters (``sims``, ``providers`` and ``adapters`` by
    name: tests and the load tester reach in to deposit and to break providers).

    ``host``: what the chains need of the node -- ``cfg``, ``data``, ``addresses``,
    ``chain_keys``, ``custody_seed``, ``turn`` -- the ``Node`` itself when they run in its process,
    an ``EdgeHost`` in ``satchel chains``. ``link``: how an adapter reaches the node
    (default ``LocalLink(host)``: in its process).

    ``gas_tanks``: chain name -> a funded ``evm.transactions.Wallet`` that pays the gas of
    custody transfers (tests pass a dev account); a chain not named uses the key file of its
    ``gas_key`` setting (``evm.provider.load_gas_key``).
    """

    def __init__(self, node: Any, *, gas_tanks: dict[str, Any] | None = None,
                 link: Callable[[dict[str, int]], Any] | None = None):
        self.node = node
        link = link or (lambda decimals: LocalLink(node))
        decimals = node.cfg.decimals()
        self.sims: dict[str, SimChain] = {}
        self.providers: dict[str, list[Any]] = {}
        self.adapters: dict[str, Adapter] = {}
        for name, c in sorted(node.cfg.chains.items()):
            chain_decimals = {a: decimals[a] for a in c.assets}
            if c.kind == "sim":
                sim = self.sims[name] = SimChain(name, c.block_ms, node.data / f"sim-chain-{name}.bin")
                self.providers[name] = [SimProvider(sim, f"{name}-rpc-{i}", seed=i) for i in range(2)]
            elif c.kind == "evm":
                self.providers[name] = self._evm_providers(name, c, chain_decimals, (gas_tanks or {}).get(name))
            else:
                log.warning("chain.unknown_kind", chain=name, kind=c.kind)
                continue
            self.adapters[name] = Adapter(link(chain_decimals), name, c.confirmations, Providers(self.providers[name]), node.addresses,
                                          node.chain_keys[name], chain_decimals, node.data)

    def _evm_providers(self, name: str, c: Any, decimals: dict[str, int], tank: Any) -> list[Any]:
        from satchel.chains.evm.provider import EvmCustody, load_gas_key, providers_for

        if not c.providers:
            raise ValueError(f"chains.{name}: an evm chain needs at least one provider URL")
        tank = tank if tank is not None else load_gas_key(self.node.data, name, c.gas_key)
        custody = EvmCustody(name, self.node.data, self.node.custody_seed, self.node.addresses, c.tokens, decimals,
                             tank, c.chain_id)
        return providers_for(c.providers, custody)

    def deposit(self, chain: str, account: str, asset: str, amount: int) -> str:
        """A user's transfer to the account's deposit address on a simulated chain (funded from nowhere)."""
        sim = self.sims[chain]
        address = self.node.addresses.issue(chain, account)
        sender = f"user:{account}"
        sim.fund(sender, asset, amount)
        return sim.transfer(asset, sender, address, amount)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for name, adapter in self.adapters.items():
                    if name in self.sims:
                        nursery.start_soon(self.sims[name].run, self.node.turn)
                    nursery.start_soon(adapter.run)
                    log.info("chain.started", chain=name, kind=self.node.cfg.chains[name].kind,
                             confirmations=adapter.confirmations, providers=len(self.providers[name]))
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):  # the providers' HTTP connections end with the chains
                for providers in self.providers.values():
                    for p in providers:
                        if hasattr(p, "aclose"):
                            await p.aclose()


class EdgeHost:
    """What the chains need of a node, for ``satchel chains``: a process of its own beside
    the node, on the node's data directory (its configuration, the chains' adapter keys
    and the custody seed the node created, and the deposit-address book the node appends
    to as it hands addresses out). Raises ``FileNotFoundError`` for a key the node has
    not created yet: an adapter's key is the one the node's genesis registered."""

    def __init__(self, data: Path | str, cfg: Any):
        self.data = Path(data)
        self.cfg = cfg
        missing = [f"chain-{n}.key" for n in cfg.chains if not (self.data / f"chain-{n}.key").exists()]
        if missing or not (self.data / SEED_FILE).exists():
            raise FileNotFoundError(f"{self.data}: no {', '.join(missing) or SEED_FILE} (start the node on it first)")
        self.chain_keys = {name: load_key(self.data, f"chain-{name}.key") for name in cfg.chains}
        self.custody_seed = load_seed(self.data)
        self.addresses = AddressBook(self.data, self.custody_seed, {n: c.kind for n, c in cfg.chains.items()})

    def turn(self) -> contextlib.nullcontext:
        """A step of work: at once (in a process of their own the chains have its loop to themselves)."""
        return contextlib.nullcontext()


SimChains = Chains  # the name its first callers know (satchel serve, the deposit benchmark, tests)
