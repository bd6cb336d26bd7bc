"""The embedded simulated chain: what ``satchel serve`` talks to when no real chain is
configured, and what tests and the load tester break on purpose.

``SimChain`` is a ledger of transfers cut into blocks: ``mine`` seals what was
submitted since the last block, ``reorg(depth)`` throws the newest blocks away (their
transfers are gone, as in a reorg that drops them), ``run`` mines every ``block_ms``.
A chain does not vanish when the node restarts: given a ``path`` (``satchel serve`` puts
it in the data directory), its state -- balances, the newest blocks -- is saved once a
second and when it stops, and the transfers carrying an idempotency key are appended to a
log beside it, so a restarted node carries on with the same chain: deposit addresses,
custody wallets and sent withdrawals are still there.
Each transfer has a hash; a transfer submitted with an idempotency ``key`` is never
accepted twice (the second submission answers the first one's hash), as a real chain
does when the same signed transaction is broadcast again. A transfer to an address
starting with ``fail`` is mined as failed (funds not moved), for withdrawal failures.

``SimProvider`` is one RPC provider in front of the chain, with fault injection: a
latency, a share of calls that fail, a rate limit (calls per second beyond which it
answers "rate limited"), or down altogether -- the article's overloaded provider.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from satchel.chains.base import ChainBlock, ChainTransfer, ProviderDown, RateLimited

log = structlog.get_logger("satchel.chains.sim")

KEEP_BLOCKS = 100_000  # blocks kept in memory (~14 h at 500 ms); an adapter further behind reads None
SAVE_S = 1.0  # the chain's state is written at most this often (and when it stops)
SAVED_BLOCKS = 64  # the newest blocks kept in the saved state, for an adapter a few blocks behind
SEAL_STEP = 16  # transfers sealed per step of the event loop while ``run`` mines


class _Saved(msgspec.Struct, array_like=True):
    """A simulated chain's state on disk: what a restarted node needs to carry on with the
    same chain (balances, the newest blocks). The transfers that carry an idempotency key
    are in a log beside it (``<path>.keyed``), appended at each save with those mined since:
    they are kept for good, as a chain keeps every transaction, so rewriting them all every
    second would grow without bound (measured: 3 ms a save after 10,000 deposits' sweeps,
    15 after 30,000, the event loop waiting on the GIL meanwhile)."""

    n: int
    blocks: list[ChainBlock]
    balances: list[tuple[str, str, int]]


class _SavedOut(_Saved, array_like=True):
    """``_Saved`` as written: each block already encoded (when it was mined)."""

    blocks: list[msgspec.Raw]


_encode = msgspec.msgpack.Encoder().encode


def _framed(t: ChainTransfer) -> bytes:
    """A keyed transfer as a record of the log: u32 length (little endian), msgpack."""
    record = _encode(t)
    return len(record).to_bytes(4, "little") + record


class SimChain:
    def __init__(self, name: str, block_ms: int = 500, path: Path | None = None):
        self.name = name
        self.block_ms = block_ms
        self.path = path  # where its state is saved; None: in memory only
        self.blocks: list[ChainBlock] = [ChainBlock(0, _hash(name, "genesis"), "", [])]
        self.mempool: list[ChainTransfer] = []
        self.keys: dict[str, str] = {}  # idempotency key -> tx hash (mined or pending)
        self.keyed: dict[str, ChainTransfer] = {}  # tx hash -> the mined transfer carrying a key
        self.balances: dict[tuple[str, str], int] = {}  # (address, asset) -> units
        self._n = 0
        # the newest blocks' msgpack bytes, encoded once as each is mined: a save then writes
        # them as they are, instead of encoding thousands of transfers at once (a stall of the
        # event loop of milliseconds every second, measured beside trading)
        self._encoded: dict[int, bytes] = {}
        self._keyed_new: list[bytes] = []  # keyed transfers mined since the last save, framed for the log
        self._sealing: Iterator[None] | None = None  # the block ``run`` is sealing, step by step
        if path is not None and path.exists():
            self._restore(msgspec.msgpack.decode(path.read_bytes(), type=_Saved))

    @property
    def head(self) -> int:
        return self.blocks[-1].number

    def block(self, number: int) -> ChainBlock | None:
        """Block ``number`` if it is mined and still kept."""
        first = self.blocks[0].number
        return self.blocks[number - first] if first <= number <= self.head else None

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
        """Seal everything submitted since the last block into the next one, at once."""
        self._finish_sealing()
        for _ in self._seal():
            pass
        return self.blocks[-1]

    def _seal(self) -> Iterator[None]:
        """Seal the mempool into the next block, pausing every ``SEAL_STEP`` transfers;
        the block appears whole at the end (``run`` gives the event loop a step between)."""
        parent = self.blocks[-1]
        pending, self.mempool = self.mempool, []
        number = parent.number + 1
        block_hash = _hash(self.name, f"block/{number}/{parent.hash}/{len(pending)}/{self._n}")
        sealed = []
        balances = self.balances
        for i, t in enumerate(pending):
            ok = not t.to.startswith("fail") and balances.get((t.sender, t.asset), 0) >= t.amount
            if ok:
                balances[(t.sender, t.asset)] -= t.amount
                balances[(t.to, t.asset)] = balances.get((t.to, t.asset), 0) + t.amount
            mined = ChainTransfer(t.tx_hash, i, t.sender, t.to, t.asset, t.amount, number, block_hash, t.key, ok)
            sealed.append(mined)
            if t.key:
                self.keyed[t.tx_hash] = mined
                if self.path is not None:
                    self._keyed_new.append(_framed(mined))
            if i % SEAL_STEP == SEAL_STEP - 1:
                yield
        block = ChainBlock(number, block_hash, parent.hash, sealed)
        self.blocks.append(block)
        if self.path is not None:
            self._encoded[number] = _encode(block)
            self._encoded.pop(number - SAVED_BLOCKS, None)
        if len(self.blocks) > KEEP_BLOCKS:
            del self.blocks[: len(self.blocks) - KEEP_BLOCKS]

    def _finish_sealing(self) -> None:
        """A block ``run`` is sealing step by step is finished first, at once: blocks are
        mined and reorganised whole, one after another."""
        sealing, self._sealing = self._sealing, None
        if sealing is not None:
            for _ in sealing:
                pass

    def reorg(self, depth: int) -> None:
        """Drop the newest ``depth`` blocks and everything in them (moves undone)."""
        self._finish_sealing()
        for block in self.blocks[-depth:]:
            for t in block.transfers:
                if t.ok:
                    self.balances[(t.to, t.asset)] -= t.amount
                    self.balances[(t.sender, t.asset)] += t.amount
                if t.key:
                    self.keys.pop(t.key, None)
                    self.keyed.pop(t.tx_hash, None)
                    if self.path is not None:  # the log forgets it too (block -1: gone)
                        self._keyed_new.append(_framed(t._replace(block=-1)))
            self._encoded.pop(block.number, None)
        del self.blocks[-depth:]

    def find(self, key: str) -> ChainTransfer | None:
        """The mined transfer carrying ``key``, if any."""
        tx_hash = self.keys.get(key)
        return None if tx_hash is None else self.keyed.get(tx_hash)

    async def run(self, turn: Callable[[], contextlib.AbstractAsyncContextManager] = contextlib.nullcontext) -> None:
        """Mine every ``block_ms``; save the state at most once a second, in a worker thread,
        and once more when stopped. A crash loses at most that second of the chain, as a
        reorg deeper than any confirmations would (``satchel reconcile`` shows what it took).
        ``turn``: where the step that seals a few transfers runs (``Node.turn`` in the
        node's process: a chain stands for another machine, and yields to the exchange)."""
        saved_at = trio.current_time()
        try:
            while True:
                await trio.sleep(self.block_ms / 1000)
                # sealed a few transfers a step: a block of a busy second's deposits sealed
                # at once held the event loop ~0.5 ms, and an order in flight with it
                self._sealing = sealing = self._seal()
                while self._sealing is sealing:
                    async with turn():
                        if next(sealing, True):  # sealed, or finished at once by ``mine``/``reorg``
                            self._sealing = None
                if self.path is not None and trio.current_time() - saved_at >= SAVE_S:
                    saved_at = trio.current_time()
                    # copied here (shallow: blocks and transfers are immutable), encoded and
                    # written in a worker thread: encoding thousands of transfers on the loop
                    # would stall every other task for milliseconds once a second
                    await trio.to_thread.run_sync(self._save, self._state())
        finally:
            if self.path is not None:
                self._save(self._state())

    def _save(self, state: tuple[Any, ...]) -> None:
        """Write ``state``. One that cannot be written (out of file descriptors or disk
        space) is logged and the chain goes on: the next save writes this one's keyed
        transfers too (some maybe twice: the log is replayed in order into a map, so they
        restore once). A crash before then loses what a crash loses between two saves."""
        try:
            self._write(state)
        except OSError as exc:
            self._keyed_new.insert(0, state[3])
            log.warning("sim.save_failed", chain=self.path.name, error=str(exc))

    def _state(self) -> tuple[Any, ...]:
        # pending transfers are not saved: like a node's mempool, they are gone after a restart
        encoded = self._encoded
        blocks = [msgspec.Raw(encoded.get(b.number) or _encode(b)) for b in self.blocks[-SAVED_BLOCKS:]]
        keyed, self._keyed_new = self._keyed_new, []
        return self._n, blocks, self.balances.copy(), b"".join(keyed)

    @property
    def _keyed_log(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".keyed")

    def _write(self, state: tuple[Any, ...]) -> None:
        assert self.path is not None
        n, blocks, balances, keyed = state
        if keyed:  # the log first: a crash before the state is written leaves entries past its head, dropped on restore
            with open(self._keyed_log, "ab") as f:
                f.write(keyed)
        saved = _SavedOut(n, blocks, [(a, s, v) for (a, s), v in balances.items()])
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.msgpack.encode(saved))
        tmp.replace(self.path)

    def _restore(self, saved: _Saved) -> None:
        self._n = saved.n
        self.blocks = list(saved.blocks)
        self.balances = {(a, s): v for a, s, v in saved.balances}
        kept = {b.number: b.hash for b in self.blocks}
        first, head = self.blocks[0].number, self.blocks[-1].number
        log = self._keyed_log.read_bytes() if self._keyed_log.exists() else b""
        decode = msgspec.msgpack.Decoder(ChainTransfer).decode
        at = 0
        while at + 4 <= len(log):
            size = int.from_bytes(log[at:at + 4], "little")
            if at + 4 + size > len(log):
                break  # a write cut short by a crash: the rest is gone, like the second it belonged to
            t = decode(log[at + 4:at + 4 + size])
            at += 4 + size
            if t.block == -1:  # dropped by a reorg
                self.keyed.pop(t.tx_hash, None)
                if self.keys.get(t.key) == t.tx_hash:
                    del self.keys[t.key]
                continue
            # a transfer of a block past the saved head, or of a block a reorg replaced, is not on this chain
            if t.block > head or (t.block >= first and kept.get(t.block) != t.block_hash):
                continue
            self.keyed[t.tx_hash] = t
            self.keys[t.key] = t.tx_hash


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
        return self.chain.block(number)

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
