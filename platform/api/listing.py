"""The markets, assets and chains the edges know, learned from durable events.

The engine changes its configuration while it applies a block, before the block is
durable; the edges must not see a market (or a fee change) a crash could lose. So
``Listing`` is seeded once from the recovered engine at start-up, before any block is
published, and from then on follows the ``ConfigChanged`` events of published blocks,
which carry the spec now in force. Its dicts are updated in place: a ``Formatter``
built on them sees new markets too.
"""

from __future__ import annotations

from collections.abc import Mapping

from satchel.core.errors import INVALID_SYMBOL, RequestError
from satchel.core.messages import AssetSpec, BlockHeader, ChainSpec, ConfigChanged, MarketSpec


class Listing:
    """Market and asset specs by symbol (``core.instructions.Listing``) and chain specs by
    name, kept by ``publish``."""

    def __init__(self, markets: Mapping[str, MarketSpec], assets: Mapping[str, AssetSpec],
                 chains: Mapping[str, ChainSpec] | None = None):
        self.markets: dict[str, MarketSpec] = dict(markets)
        self.assets: dict[str, AssetSpec] = dict(assets)
        self.chains: dict[str, ChainSpec] = dict(chains or {})

    def publish(self, header: BlockHeader, events: list) -> None:
        """A durable block's events (a node subscriber): take the listings and fee changes."""
        for ev in events:
            if ev.__class__ is ConfigChanged:
                if ev.asset is not None:
                    self.assets[ev.asset.symbol] = ev.asset
                if ev.market is not None:
                    self.markets[ev.market.symbol] = ev.market
                if ev.chain is not None:
                    self.chains[ev.chain.name] = ev.chain

    def check_symbol(self, symbol: str) -> None:
        if symbol not in self.markets:
            raise RequestError(INVALID_SYMBOL, f"Unknown symbol {symbol}")

    def decimals(self, asset: str) -> int | None:
        spec = self.assets.get(asset)
        return spec.decimals if spec else None

    def quote_decimals(self, symbol: str) -> int | None:
        spec = self.markets.get(symbol)
        return self.decimals(spec.quote) if spec else None
