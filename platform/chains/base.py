"""What every chain adapter speaks: blocks of transfers, and the ways a provider fails.

A provider is one RPC endpoint in front of a chain (``sim.SimProvider``; the EVM one
wraps ``evm.rpc``). Its calls raise ``ProviderDown`` (connection refused, timeout, a
server error) or ``RateLimited`` (HTTP 429): the provider pool fails over on both and the
adapter's circuit breaker opens when every provider of a chain is failing.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class ProviderError(Exception):
    """A provider could not answer; the call may be retried on another."""


class ProviderDown(ProviderError):
    pass


class RateLimited(ProviderError):
    pass


class ChainTransfer(NamedTuple):
    tx_hash: str
    log_index: int  # the transfer's place in its transaction (an ERC-20 log index; 0 on the simulated chain)
    sender: str
    to: str
    asset: str
    amount: int  # the asset's units, as the ledger counts them
    block: int  # -1 while pending
    block_hash: str
    key: str  # the idempotency key it carries ("" for deposits)
    ok: bool  # False: mined but failed (nothing moved)


class ChainBlock(NamedTuple):
    number: int
    hash: str
    parent: str
    transfers: list[ChainTransfer]


class Provider(Protocol):
    name: str

    async def head(self) -> int: ...

    async def block(self, number: int) -> ChainBlock | None: ...

    async def send(self, asset: str, sender: str, to: str, amount: int, key: str) -> str: ...

    async def find(self, key: str) -> ChainTransfer | None: ...

    async def balance(self, address: str, asset: str) -> int: ...
