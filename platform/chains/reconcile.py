"""Reconciliation: what the chains hold against what the ledger owes, per asset and chain.

Three figures per asset and chain, in the asset's units:

* ``on_chain`` -- what the adapter reads on the chain: the hot and cold wallets plus the
  deposit addresses whose credited deposits are not swept to the hot wallet yet;
* ``books`` -- the custody books the engine keeps for the chain (hot + cold: credited
  deposits less confirmed withdrawals);
* the difference ``on_chain - books``: zero when chain and ledger agree; a withdrawal
  broadcast but not yet confirmed shows here for a few blocks, anything else is for an
  operator to explain.

Per asset, ``liabilities`` are the ledger's deposits - withdrawals (what every account,
the fee account, the pools and the insurance fund hold together); ``unbacked`` is what of
them no chain's books cover -- deposits credited by the admin faucet, not by a chain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from satchel.core.messages import ChainsOf, LedgerOf


class Line(NamedTuple):
    asset: str
    chain: str
    on_chain: int
    books: int
    difference: int


class AssetLine(NamedTuple):
    asset: str
    liabilities: int
    books: int  # over every chain
    unbacked: int


def reconcile(on_chain: dict[tuple[str, str], int], books: dict[tuple[str, str], int],
              ledger: dict[str, tuple[int, int, int, int]], read: set[str] | None = None) -> tuple[list[Line], list[AssetLine]]:
    """``on_chain`` and ``books`` by (chain, asset); ``ledger`` as ``LedgerOf`` answers it
    (deposits, withdrawals, fees, balances) by asset; ``read``: the chains whose holdings
    were read (None: all), the only ones with a line (a chain whose adapter runs in
    ``satchel chains`` is not read by the node: no line rather than a false difference)."""
    keys = set(on_chain) | {k for k in books if read is None or k[0] in read}
    lines = [Line(asset, chain, on_chain.get((chain, asset), 0), books.get((chain, asset), 0),
                  on_chain.get((chain, asset), 0) - books.get((chain, asset), 0))
             for chain, asset in sorted(keys, key=lambda k: (k[1], k[0]))]
    assets = []
    for asset, (deposits, withdrawals, _fees, _balances) in sorted(ledger.items()):
        covered = sum(v for (_, a), v in books.items() if a == asset)
        assets.append(AssetLine(asset, deposits - withdrawals, covered, deposits - withdrawals - covered))
    return lines, assets


async def gather(node: Any) -> tuple[list[Line], list[AssetLine]]:
    """Reconcile the node's running chains now: each adapter reads its chain
    (``Adapter.custody``), the engine answers the custody books (``ChainsOf``) and the
    ledger (``LedgerOf``). The chain is read first and the books after, so a deposit
    credited in between shows for a moment as books above the chain, never the other way
    round for long; a chain whose every provider fails raises ``AllProvidersFailing``."""
    on_chain: dict[tuple[str, str], int] = {}
    for name, adapter in sorted(node.chain_adapters.items()):
        for asset, amount in (await adapter.custody()).items():
            on_chain[(name, asset)] = amount
    books: dict[tuple[str, str], int] = {}
    for view in await node.ask("risk", ChainsOf()):
        for asset, amount in (*view.hot, *view.cold):
            key = (view.spec.name, asset)
            books[key] = books.get(key, 0) + amount
    return reconcile(on_chain, books, await node.ask("risk", LedgerOf()), set(node.chain_adapters))
