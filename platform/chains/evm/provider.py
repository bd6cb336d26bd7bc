"""An EVM chain behind the ``Provider`` protocol: blocks read as transfers, custody transfers
signed here and never sent twice.

Like every chain adapter this is an edge (DESIGN §2): it observes the chain and signs chain
transactions; what it sees reaches the ledger only as transactions the adapter signs and
submits to the sequencer. Nothing here reads or writes ledger state.

Two classes:

* :class:`EvmCustody`, one per chain, shared by all of the chain's providers: the keys (the
  hot and cold wallets, every deposit address the ``AddressBook`` handed out, the gas tank),
  the sent-transactions journal and the per-sender nonce locks. It is shared because the
  provider pool fails over between URLs: a transaction broadcast through one provider must
  be found, and its nonce counted, through any other.
* :class:`EvmProvider`, one per JSON-RPC URL (:class:`~satchel.chains.evm.rpc.EvmRpc`). The
  rpc's failures become the pool's: ``ProviderDown`` (refused, reset, timeout, HTTP error,
  and a JSON-RPC error on a plain read, which a healthy node does not give) and
  ``RateLimited``; the pool fails over on both and the adapter's breaker counts them.

**Blocks.** ``block(n)`` reads the block with its transactions, then the Transfer logs of the
configured tokens *by the block's hash* (EIP-234), so the logs belong to exactly the block
whose hash and parent it reports, even if a reorg replaces block ``n`` between the two reads
(the second read then fails and the poll is retried). Reported: native-coin transfers (a
transaction with a value) to addresses of ours (deposit addresses, hot, cold) with ``ok``
from the receipt's status -- receipts are fetched only for those, not for every transaction
of the block -- and every Transfer log of a configured token (``ok``: a log exists only in a
successful transaction). The gas tank's top-ups are not reported: they are gas, not deposits.
A deposit is identified by (transaction hash, log index): an ERC-20
transfer by its log index in the block; a native transfer by ``NATIVE_LOG_INDEX`` (2**32).
Log indexes are positions among the block's logs and every log costs at least 375 gas, so a
block would need 1.6e12 gas to reach 2**32: the two can never collide, even for a transaction
that carries a value *and* emits a Transfer to the same address. (-1 would be simpler, but a
``depositConfirmed`` log index is an unsigned integer on the wire, ``core.instructions``.)
Value moved by a contract's internal call is not seen (it needs tracing): such a deposit is
on the address but not credited -- ``satchel reconcile`` shows it.

**Units.** The ledger counts an asset in its configured ``decimals`` (ETH: 8), the chain in
its own (ETH 18, a token's ``decimals()``). Chain to ledger rounds down (a deposit of
1.000000000123 ETH credits 1.00000000; the dust stays on the deposit address: the sweep
moves exactly what was credited); ledger to chain is exact (``units * 10**(chain - ledger)``).
Amounts below one ledger unit are not reported at all.

**Never sent twice.** ``send(asset, sender, to, amount, key)``, under the sender's lock:

1. a key already in the journal answers its transaction's hash (re-broadcast first, same raw
   bytes and hash, if the chain does not know it): the adapter asking again, after a crash or
   a failover, gets the same transaction, never a second one;
2. otherwise the gas tank tops the sender up (below), the transaction is signed with nonce
   ``max(the chain's pending nonce, the journal's last nonce for the sender + 1)``, one
   fsynced journal line (key, sender, nonce, raw tx, hash...) is written, and only then is it
   broadcast. A crash between the line and the broadcast leaves a journaled transaction the
   chain does not know: it is re-broadcast as the same bytes the first time the custody is
   used after a restart (``_recover``) or when its key is asked for. Same nonce, same hash:
   at most one of them can ever be mined.

A broadcast answered with an error while the chain does not have the transaction (not
"already known", not "nonce too low") is a refusal: it is voided
in the journal (a ``void`` line) and ``send`` raises :class:`Undeliverable`; the voided
nonce is handed out again, so the refused transaction, should it ever surface, shares its
nonce with the next one and cannot be mined beside it. ``find(key)`` answers from the
journal and the receipt: the transfer with its block and ``ok`` from the receipt's status,
None while unknown, pending or not mined.

**Gas.** Custody addresses hold what the ledger's books say (a deposit address only the
deposit, the hot wallet its book) and nothing for gas. Before a custody address sends, the
gas tank (one funded key per chain: ``gas_key`` in the config, or a funded wallet passed in)
sends it exactly ``gas limit * gas price`` in a transaction of its own (journaled under
``gas:<key>``, with the limit and price the send then uses, so that a restart between the two
reuses them) and waits for it to be mined. Transactions are *legacy-priced* (one gas price,
``2 * base fee + tip``): a legacy transaction costs exactly ``gas used * gas price``, so when
the limit is the node's estimate the top-up is spent to the wei. What can remain on a custody
address: ``(limit - used) * price`` when the estimate was above the gas used, or when the
estimate failed (a transfer that will revert is sent with a fixed limit -- 21,000 native,
100,000 token -- so that it fails *on chain*, where the adapter sees it and releases the
withdrawal); a whole top-up when the process stopped after it and the send was never asked
for again; and deposit dust below a ledger unit. All of it is surplus (custody >= books),
never a shortfall. The cost of exactness: legacy pricing pays the whole price, tip included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from satchel.chains import base
from satchel.chains.adapter import Undeliverable
from satchel.chains.addresses import AddressBook
from satchel.chains.evm import erc20
from satchel.chains.evm import transactions as txs
from satchel.chains.evm.rpc import EvmRpc, JsonRpcError, ProviderDown, RateLimited

log = structlog.get_logger()

NATIVE_DECIMALS = 18
NATIVE_LOG_INDEX = 2**32  # see the module docstring: above any log index a block can hold
RECEIPT_WAIT_S = 30.0  # a top-up not mined by then: the provider counts as failing, the send is retried
POLL_S = 0.05
DECIMALS_SELECTOR = bytes.fromhex("313ce567")  # decimals()


class SentTx(msgspec.Struct, frozen=True):
    """One journal line: a transaction signed for ``key``, before it was broadcast."""

    key: str
    sender: str
    nonce: int
    raw: str  # 0x hex, what eth_sendRawTransaction takes
    hash: str
    asset: str
    to: str  # the recipient of the value (for a token transfer, not the contract)
    amount: int  # chain units
    gas: int
    price: int  # wei per gas (legacy)
    void: bool = False  # the node refused it: its nonce is free again


class Journal:
    """The sent-transactions journal: ``evm-<chain>.sent.jsonl`` in the data directory, one
    fsynced line per signed transaction, written before the broadcast."""

    def __init__(self, path: Path):
        self.path = path
        self.by_key: dict[str, SentTx] = {}
        self.by_hash: dict[str, SentTx] = {}
        self.last_nonce: dict[str, int] = {}  # sender -> highest nonce of a live (not void) entry
        if path.exists():
            for line in path.read_bytes().splitlines():
                if line.strip():
                    self._apply(msgspec.json.decode(line, type=SentTx))

    def _apply(self, tx: SentTx) -> None:
        if tx.void:
            self.by_key.pop(tx.key, None)
            self.by_hash.pop(tx.hash, None)
            live = [t.nonce for t in self.by_hash.values() if t.sender == tx.sender]
            if live:
                self.last_nonce[tx.sender] = max(live)
            else:
                self.last_nonce.pop(tx.sender, None)
            return
        self.by_key[tx.key] = tx
        self.by_hash[tx.hash] = tx
        self.last_nonce[tx.sender] = max(tx.nonce, self.last_nonce.get(tx.sender, -1))

    async def append(self, tx: SentTx) -> None:
        line = msgspec.json.encode(tx) + b"\n"

        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

        await trio.to_thread.run_sync(write)  # an fsync takes milliseconds: off the event loop
        self._apply(tx)

    def next_nonce(self, sender: str) -> int:
        return self.last_nonce.get(sender, -1) + 1


def load_gas_key(directory: Path, chain: str, configured: str = "") -> txs.Wallet:
    """The chain's gas tank: the key in ``configured`` (relative to ``directory``), or
    ``chain-<name>-gas.key`` there, created (mode 0600) on first use."""
    path = Path(configured) if configured else Path(f"chain-{chain}-gas.key")
    path = path if path.is_absolute() else Path(directory) / path
    if not path.exists():
        key = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
    wallet = txs.Wallet(bytes.fromhex(path.read_text().strip().removeprefix("0x")))
    log.info("evm.gas_tank", chain=chain, address=wallet.address)
    return wallet


class EvmCustody:
    """A chain's keys, journal and nonce locks, shared by its providers (see the module docstring).

    ``tokens``: asset -> ERC-20 contract; ``decimals``: asset -> the ledger's decimals (the
    chain's assets; the one not in ``tokens`` is the native coin). ``chain_id`` 0: asked of
    the first provider that answers.
    """

    def __init__(self, chain: str, directory: Path, seed: bytes, book: AddressBook, tokens: dict[str, str],
                 decimals: dict[str, int], gas_tank: txs.Wallet, chain_id: int = 0):
        natives = sorted(a for a in decimals if a not in tokens)
        if len(natives) > 1:
            raise ValueError(f"chain {chain}: assets {natives} have no token contract; only one can be the native coin")
        self.chain = chain
        self.seed = seed
        self.book = book
        self.tokens = {a: t.lower() for a, t in tokens.items()}
        self.assets_by_token = {t: a for a, t in self.tokens.items()}
        self.native = natives[0] if natives else None
        self.decimals = dict(decimals)
        self.chain_decimals: dict[str, int] = {self.native: NATIVE_DECIMALS} if self.native else {}
        self.chain_id = chain_id
        self.tank = gas_tank
        self.hot = txs.deposit_wallet(seed, chain, "@hot")
        self.cold = txs.deposit_wallet(seed, chain, "@cold")
        self.journal = Journal(Path(directory) / f"evm-{chain}.sent.jsonl")
        self._wallets: dict[str, txs.Wallet] = {w.address: w for w in (self.hot, self.cold, gas_tank)}
        self._locks: dict[str, trio.Lock] = {}
        self.recovered = False  # journaled transactions re-broadcast after a restart (``EvmProvider._recover``)
        self.recovering = trio.Lock()

    def address(self, name: str) -> str:
        """A logical address (``<chain>-hot``, ``<chain>-cold``) or a 0x address, as the chain writes it."""
        if name == f"{self.chain}-hot":
            return self.hot.address
        if name == f"{self.chain}-cold":
            return self.cold.address
        return name.lower()

    def wallet(self, address: str) -> txs.Wallet | None:
        """The key of a custody address: hot, cold, the tank, or a deposit address handed out."""
        if (w := self._wallets.get(address)) is not None:
            return w
        account = self.book.owner(self.chain, address)
        if account is None:
            return None
        w = self._wallets[address] = txs.deposit_wallet(self.seed, self.chain, account)
        return w

    def ours(self, address: str) -> bool:
        return address in (self.hot.address, self.cold.address) or self.book.owner(self.chain, address) is not None

    def lock(self, address: str) -> trio.Lock:
        return self._locks.setdefault(address, trio.Lock())

    def factor(self, asset: str) -> int:
        """Chain units per ledger unit."""
        return 10 ** (self.chain_decimals[asset] - self.decimals[asset])


def _is_address(text: str) -> bool:
    return len(text) == 42 and text.startswith("0x") and all(c in "0123456789abcdef" for c in text[2:])


@contextlib.contextmanager
def _faults(name: str) -> Iterator[None]:
    """The rpc's failures as the provider pool's (a JSON-RPC error on a read: down too)."""
    try:
        yield
    except RateLimited as e:
        raise base.RateLimited(f"{name}: {e}") from e
    except (ProviderDown, trio.TooSlowError) as e:
        raise base.ProviderDown(f"{name}: {e}") from e
    except JsonRpcError as e:
        raise base.ProviderDown(f"{name}: an error answering a read: {e}") from e


class EvmProvider:
    """One JSON-RPC URL of an EVM chain, as a ``base.Provider``."""

    def __init__(self, url: str, custody: EvmCustody, *, timeout: float = 5.0):
        self.name = url
        self.custody = custody
        self.rpc = EvmRpc(url, timeout=timeout)

    async def aclose(self) -> None:
        await self.rpc.aclose()

    # ------------------------------------------------------------------ reads

    async def head(self) -> int:
        with _faults(self.name):
            return await self.rpc.block_number()

    async def block(self, number: int) -> base.ChainBlock | None:
        c = self.custody
        with _faults(self.name):
            await self._token_decimals()
            raw = await self.rpc.request("eth_getBlockByNumber", [hex(number), True])
            if raw is None:
                return None
            block_hash, parent = raw["hash"].lower(), raw["parentHash"].lower()
            transfers: list[base.ChainTransfer] = []
            if c.native is not None:
                for tx in raw["transactions"]:
                    to = (tx.get("to") or "").lower()
                    value = int(tx["value"], 16)
                    # the tank's top-ups go to deposit addresses too: gas, never a deposit
                    if value and to and c.ours(to) and tx["from"].lower() != c.tank.address:
                        units = value // c.factor(c.native)  # deposits round down
                        if units:
                            receipt = await self.rpc.get_receipt(tx["hash"].lower())
                            ok = receipt is not None and receipt.status == 1
                            transfers.append(self._transfer(tx["hash"].lower(), NATIVE_LOG_INDEX, tx["from"].lower(), to,
                                                            c.native, units, number, block_hash, ok))
            if c.tokens:
                for t in await erc20.get_transfers(self.rpc, list(c.tokens.values()), block_hash=block_hash):
                    asset = c.assets_by_token[t.token]
                    units = t.amount // c.factor(asset)
                    if units:
                        transfers.append(self._transfer(t.tx_hash, t.log_index, t.sender, t.recipient, asset, units,
                                                        number, block_hash, True))
        return base.ChainBlock(number, block_hash, parent, transfers)

    def _transfer(self, tx_hash: str, log_index: int, sender: str, to: str, asset: str, units: int, number: int,
                  block_hash: str, ok: bool) -> base.ChainTransfer:
        sent = self.custody.journal.by_hash.get(tx_hash)  # our own sends carry their key, as on the sim chain
        return base.ChainTransfer(tx_hash, log_index, sender, to, asset, units, number, block_hash,
                                  sent.key if sent else "", ok)

    async def balance(self, address: str, asset: str) -> int:
        """What ``address`` holds of ``asset``, in ledger units (rounded down)."""
        c = self.custody
        address = c.address(address)
        with _faults(self.name):
            await self._token_decimals()
            if asset in c.tokens:
                held = await erc20.balance_of(self.rpc, c.tokens[asset], address)
            else:
                held = await self.rpc.get_balance(address)
        return held // c.factor(asset)

    async def find(self, key: str) -> base.ChainTransfer | None:
        """The mined transaction sent for ``key`` (None: never sent, pending, or unknown --
        re-broadcast then if the chain has lost it)."""
        with _faults(self.name):
            await self._recover()
            sent = self.custody.journal.by_key.get(key)
            if sent is None:
                return None
            receipt = await self.rpc.get_receipt(sent.hash)
            if receipt is None:
                await self._ensure_broadcast(sent)
                return None
        c = self.custody
        index = NATIVE_LOG_INDEX
        if sent.asset in c.tokens:
            index = receipt.logs[0].log_index if receipt.logs else 0
        return base.ChainTransfer(sent.hash, index, sent.sender, sent.to, sent.asset, sent.amount // c.factor(sent.asset),
                                  receipt.block_number, receipt.block_hash, key, receipt.status == 1)

    # ------------------------------------------------------------------ sending

    async def send(self, asset: str, sender: str, to: str, amount: int, key: str) -> str:
        """Send ``amount`` ledger units of ``asset`` from custody address ``sender`` to ``to``,
        once per ``key``; returns the transaction's hash (see the module docstring)."""
        c = self.custody
        with _faults(self.name):
            await self._recover()
            if (sent := c.journal.by_key.get(key)) is not None:
                await self._ensure_broadcast(sent)
                return sent.hash
            frm, dest = c.address(sender), c.address(to)
            wallet = c.wallet(frm)
            if wallet is None:
                raise ValueError(f"{sender} is not a custody address of chain {c.chain}: no key to sign with")
            if not _is_address(dest):
                raise Undeliverable(f"not an address on {c.chain}: {to!r}")
            await self._token_decimals()
            async with c.lock(frm):
                if (sent := c.journal.by_key.get(key)) is not None:  # sent while this call waited for the lock
                    await self._ensure_broadcast(sent)
                    return sent.hash
                value = amount * c.factor(asset)  # exact
                if asset in c.tokens:
                    target, native_value, data = c.tokens[asset], 0, erc20.encode_transfer(dest, value)
                else:
                    target, native_value, data = dest, value, b""
                gas, price = await self._top_up(wallet.address, target, native_value, data, key)
                tx = txs.transaction(chain_id=await self._chain_id(), nonce=await self._nonce(wallet.address),
                                     to=target, pricing=txs.Legacy(price), gas=gas, value=native_value, data=data)
                signed = wallet.sign(tx)
                sent = SentTx(key, wallet.address, signed.nonce, "0x" + signed.raw.hex(), signed.hash, asset, dest, value,
                              gas, price)
                await c.journal.append(sent)  # before the broadcast: a crash after it re-broadcasts, never re-signs
                await self._broadcast(sent)
        log.info("evm.sent", chain=c.chain, key=key, tx=sent.hash, sender=sent.sender, nonce=sent.nonce)
        return sent.hash

    async def _top_up(self, sender: str, target: str, value: int, data: bytes, key: str) -> tuple[int, int]:
        """The tank sends ``sender`` exactly the gas its transaction for ``key`` costs, once;
        returns the (limit, price) that transaction must use."""
        c = self.custody
        gas_key = f"gas:{key}"
        if (topup := c.journal.by_key.get(gas_key)) is None:
            try:
                if not data and await self.rpc.request("eth_getCode", [target, "latest"]) in ("0x", "0x0"):
                    gas = txs.ETH_TRANSFER_GAS  # exactly what a plain transfer to a code-less address uses
                else:  # (a node's estimate may be above the gas used: hardhat's is 21,001 for a plain transfer)
                    estimate = {"from": sender, "to": target, "value": hex(value), "data": "0x" + data.hex()}
                    gas = await self.rpc.estimate_gas(estimate)
            except JsonRpcError:
                # it would revert: send it anyway with a fixed limit, to fail on chain where the adapter sees it
                gas = txs.ERC20_GAS if data else txs.ETH_TRANSFER_GAS
            quote = await self.rpc.fees()
            price = 2 * quote.base_fee + quote.priority_fee if quote.base_fee is not None else quote.gas_price
            async with c.lock(c.tank.address):
                tx = txs.eth_transfer(chain_id=await self._chain_id(), nonce=await self._nonce(c.tank.address),
                                      to=sender, value=gas * price, pricing=txs.Legacy(price))
                signed = c.tank.sign(tx)
                topup = SentTx(gas_key, c.tank.address, signed.nonce, "0x" + signed.raw.hex(), signed.hash, "gas",
                               sender, gas * price, gas, price)
                await c.journal.append(topup)
                await self._broadcast(topup)
        else:
            await self._ensure_broadcast(topup)
        with trio.fail_after(RECEIPT_WAIT_S):  # TooSlowError: counted as this provider failing; the retry resumes here
            while await self.rpc.get_receipt(topup.hash) is None:
                await trio.sleep(POLL_S)
        return topup.gas, topup.price

    async def _nonce(self, sender: str) -> int:
        return max(await self.rpc.nonce(sender, "pending"), self.custody.journal.next_nonce(sender))

    async def _chain_id(self) -> int:
        if not self.custody.chain_id:
            self.custody.chain_id = await self.rpc.chain_id()
        return self.custody.chain_id

    async def _token_decimals(self) -> None:
        c = self.custody
        for asset, token in c.tokens.items():
            if asset not in c.chain_decimals:
                c.chain_decimals[asset] = int.from_bytes(await self.rpc.call(token, DECIMALS_SELECTOR), "big")
                if c.chain_decimals[asset] < c.decimals[asset]:
                    raise ValueError(f"{asset} has {c.chain_decimals[asset]} decimals on {c.chain}, fewer than the "
                                     f"ledger's {c.decimals[asset]}")

    async def _broadcast(self, sent: SentTx) -> None:
        try:
            await self.rpc.send_raw_transaction(sent.raw)
        except JsonRpcError as e:
            # an error is not a refusal when the chain has the transaction: "already known", or
            # a dev node that mines at once and answers a reverted transaction with an error
            if await self._known(sent.hash):
                return
            if "nonce too low" in str(e).lower():
                # the nonce went to another transaction: this one can never be mined
                log.error("evm.nonce_taken", chain=self.custody.chain, key=sent.key, tx=sent.hash, nonce=sent.nonce)
                return
            log.error("evm.refused", chain=self.custody.chain, key=sent.key, tx=sent.hash, why=str(e))
            await self.custody.journal.append(msgspec.structs.replace(sent, void=True))
            raise Undeliverable(f"the node refused the transaction for {sent.key}: {e}") from e

    async def _known(self, tx_hash: str) -> bool:
        """Whether the chain has the transaction, mined or pending."""
        return await self.rpc.request("eth_getTransactionByHash", [tx_hash]) is not None

    async def _ensure_broadcast(self, sent: SentTx) -> None:
        """Re-broadcast ``sent`` (the same bytes) unless the chain knows it, mined or pending."""
        if await self._known(sent.hash):
            return
        log.warning("evm.rebroadcast", chain=self.custody.chain, key=sent.key, tx=sent.hash, nonce=sent.nonce)
        await self._broadcast(sent)

    async def _recover(self) -> None:
        """Once per process: re-broadcast every journaled transaction the chain has neither
        mined nor in its mempool, in nonce order (a later nonce waits for the earlier one)."""
        c = self.custody
        if c.recovered:
            return
        async with c.recovering:
            if c.recovered:
                return
            senders = sorted({t.sender for t in c.journal.by_hash.values()})
            for sender in senders:
                mined = await self.rpc.nonce(sender, "latest")
                waiting = sorted((t for t in c.journal.by_hash.values() if t.sender == sender and t.nonce >= mined),
                                 key=lambda t: t.nonce)
                for sent in waiting:
                    try:
                        await self._ensure_broadcast(sent)
                    except Undeliverable:
                        pass  # voided and logged; its key is signed afresh if it is asked for again
            c.recovered = True


def providers_for(urls: list[str], custody: EvmCustody, **kwargs: Any) -> list[EvmProvider]:
    """One provider per URL over the chain's shared custody."""
    return [EvmProvider(url, custody, **kwargs) for url in urls]
