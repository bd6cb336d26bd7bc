"""The embedded simulated chain: what ``satchel serve`` talks to when no real chain is
configured, and what tests and the load tester break on purpose.

``SimChain`` is a ledger of transfers cut into blocks: ``mine`` seals what was
submitted since the last block, ``reorg(depth)`` throws the newest blocks away (their
transfers are gone, as in a reorg that drops them), ``run`` mines every ``block_ms``.
Each transfer has a hash; a transfer submitted with an idempotency ``key`` is never
accepted twice (the second submission answers the first one's hash), as a real chain
does when the same signed transaction is broadcast again. A transfer to an address
starting with ``fail`` is mined as failed (funds not moved), for withdrawal failures.

``SimProvider`` is one RPC provider in front of the chain, with fault injection: a
latency, a share of calls that fail, a rate limit (calls per second beyond which it
answers "rate limited"), or down altogether -- the article's overloaded provider.
"""

from __future__ import annotations

import hashlib
import random

import trio

from satchel.chains.base import ChainBlock, ChainTransfer, ProviderDown, RateLimited


class SimChain:
    def __init__(self, name: str, block_ms: int = 500):
        self.name = name
        self.block_ms = block_ms
        self.blocks: list[ChainBlock] = [ChainBlock(0, _hash(name, "genesis"), "", [])]
        self.mempool: list[ChainTransfer] = []
        self.keys: dict[str, str] = {}  # idempotency key -> tx hash (mined or pending)
        self.balances: dict[tuple[str, str], int] = {}  # (address, asset) -> units
        self._n = 0

    @property
    def head(self) -> int:
        return self.blocks[-1].number

    def fund(self, address: str, asset: str, amount: int) -> None:
        """Units out of thin air (a user's wallet before it deposits)."""
        self.balances[(address, asset)] = self.balances.get((address, asset), 0) + amount

    def transfer(self, asset: str, sender: str, to: str, amount: int, key: str = "") -> str:
        """Submit a transfer; answers its hash (the first one's, for a key seen before)."""
        if key and key in self.keys:
            return self.keys[key]
        self._n += 1
        tx_hash = _hash(self.name, f"{self._n}/{sender}/{to}/{asset}/{amount}/{key}")
        self.mempool.append(ChainTransfer(tx_hash, 0, sender, to, asset, amount, -1, "", key, True))
        if key:
            self.keys[key] = tx_hash
        return tx_hash

    def mine(self) -> ChainBlock:
        parent = self.blocks[-1]
        number = parent.number + 1
        block_hash = _hash(self.name, f"block/{number}/{parent.hash}/{len(self.mempool)}/{self._n}")
        sealed = []
        for i, t in enumerate(self.mempool):
            ok = not t.to.startswith("fail") and self.balances.get((t.sender, t.asset), 0) >= t.amount
            if ok:
                self.balances[(t.sender, t.asset)] -= t.amount
                self.balances[(t.to, t.asset)] = self.balances.get((t.to, t.asset), 0) + t.amount
            sealed.append(ChainTransfer(t.tx_hash, i, t.sender, t.to, t.asset, t.amount, number, block_hash, t.key, ok))
        self.mempool = []
        block = ChainBlock(number, block_hash, parent.hash, sealed)
        self.blocks.append(block)
        return block

    def reorg(self, depth: int) -> None:
        """Drop the newest ``depth`` blocks and everything in them (moves undone)."""
        for block in self.blocks[-depth:]:
            for t in block.transfers:
                if t.ok:
                    self.balances[(t.to, t.asset)] -= t.amount
                    self.balances[(t.sender, t.asset)] += t.amount
                if t.key:
                    self.keys.pop(t.key, None)
        del self.blocks[-depth:]

    def find(self, key: str) -> ChainTransfer | None:
        """The mined transfer carrying ``key``, if any."""
        tx_hash = self.keys.get(key)
        if tx_hash is None:
            return None
        for block in reversed(self.blocks):
            for t in block.transfers:
                if t.tx_hash == tx_hash:
                    return t
        return None

    async def run(self) -> None:
        while True:
            await trio.sleep(self.block_ms / 1000)
            self.mine()


class SimProvider:
    """One provider of a ``SimChain``, with injectable faults."""

    def __init__(self, chain: SimChain, name: str, seed: int = 0):
        self.chain = chain
        self.name = name
        self.latency = 0.0  # seconds per call
        self.error_rate = 0.0  # share of calls that fail as if the provider were down
        self.rate_limit = 0  # calls per second it answers; 0 = no limit
        self.down = False
        self.calls = 0
        self._window = (0, 0)  # (second, calls in it)
        self._random = random.Random(seed)

    async def _call(self) -> None:
        self.calls += 1
        if self.latency:
            await trio.sleep(self.latency)
        if self.down or (self.error_rate and self._random.random() < self.error_rate):
            raise ProviderDown(f"{self.name}: connection refused")
        if self.rate_limit:
            second = int(trio.current_time())
            start, n = self._window
            n = n + 1 if start == second else 1
            self._window = (second, n)
            if n > self.rate_limit:
                raise RateLimited(f"{self.name}: 429 Too Many Requests")

    async def head(self) -> int:
        await self._call()
        return self.chain.head

    async def block(self, number: int) -> ChainBlock | None:
        await self._call()
        return self.chain.blocks[number] if number <= self.chain.head else None

    async def send(self, asset: str, sender: str, to: str, amount: int, key: str) -> str:
        await self._call()
        return self.chain.transfer(asset, sender, to, amount, key)

    async def find(self, key: str) -> ChainTransfer | None:
        await self._call()
        return self.chain.find(key)

    async def balance(self, address: str, asset: str) -> int:
        await self._call()
        return self.chain.balances.get((address, asset), 0)


def _hash(*parts: str) -> str:
    return "0x" + hashlib.sha256("/".join(parts).encode()).hexdigest()
