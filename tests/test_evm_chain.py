"""The EVM chain adapter against a real chain: hardhat's dev node (npm, installed on first use
into .cache/evm/), the committed USDC, a real ``Node`` with one chain of kind "evm" (ETH and
USDC, 2 confirmations) and its ``Adapter`` over ``EvmProvider``s -- the scenarios of
test_chain_adapter.py on the simulated chain, on a real one.

One dev node serves the module; USDC is deployed and minted to the users once, and each test
runs between evm_snapshot and evm_revert, with a block every 100 ms besides automine. Without
npm the tests are skipped with the reason; SATCHEL_REQUIRE_EVM=1 (for CI) makes that a failure.
"""

from __future__ import annotations


import msgspec
import pytest
import trio

from conftest import admin_deposit, balance, equals, falsy, order, until
from satchel import config
from satchel.chains.adapter import Adapter
from satchel.chains.embedded import Chains
from satchel.chains.link import LocalLink
from satchel.chains.evm import devnode, erc20
from satchel.chains.evm import transactions as txs
from satchel.chains.evm.rpc import EvmRpc
from satchel.core.amounts import format_units
from satchel.core.messages import (
    ASK, BID, IOC, BalanceOf, ChainsOf, SetLeverage, Withdraw, WithdrawalsOf, WithdrawalUpdate,
)
from satchel.node import Node
from satchel.signing import Keypair, auth_for

CHAIN = "hh"
USDC = 10**6  # ledger and chain units alike (6 decimals)
ETH = 10**18  # chain units; the ledger counts ETH in 8 decimals
ETH_LEDGER = 10**8
MINTED = 1_000_000 * USDC


# -- the dev node, once per module -----------------------------------------------------------------

@pytest.fixture(scope="module")
def dev(installed):
    with devnode.start_devnode() as node:
        yield node


@pytest.fixture(scope="module")
def wallets():
    return txs.dev_wallets(devnode.MNEMONIC, devnode.ACCOUNTS)


@pytest.fixture(scope="module")
def usdc(dev, wallets) -> str:
    """USDC deployed from the committed artifact by account 0, minted to accounts 1-4."""

    async def deploy() -> str:
        async with EvmRpc(dev.url) as rpc:
            user = User(rpc, dev.chain_id)
            owner = wallets[0]
            tx = txs.deploy(chain_id=dev.chain_id, nonce=await rpc.nonce(owner.address),
                            bytecode=erc20.load_artifact("USDC").bytecode, pricing=await user.pricing())
            token = (await txs.transact(rpc, owner, tx)).contract_address
            for w in wallets[1:5]:
                tx = txs.erc20_mint(chain_id=dev.chain_id, nonce=await rpc.nonce(owner.address), token=token,
                                    to=w.address, amount=MINTED, pricing=await user.pricing())
                assert (await txs.transact(rpc, owner, tx)).status == 1
            return token

    return trio.run(deploy)


@pytest.fixture
async def rpc(dev, usdc):
    """The test's own connection (straight to the node, never through a proxy), between a
    snapshot and its revert, with a block every 100 ms."""
    async with EvmRpc(dev.url) as client:
        snapshot = await client.snapshot()
        await client.set_interval_mining(100)
        yield client
        await client.set_interval_mining(0)
        assert await client.revert(snapshot)


class User:
    """A user's wallet on the chain: what a test does, one call per step (each mined at once)."""

    def __init__(self, rpc: EvmRpc, chain_id: int):
        self.rpc = rpc
        self.chain_id = chain_id

    async def pricing(self) -> txs.Eip1559:
        return txs.Eip1559.from_quote(await self.rpc.fees())

    async def send_usdc(self, sender: txs.Wallet, token: str, to: str, amount: int):
        tx = txs.erc20_transfer(chain_id=self.chain_id, nonce=await self.rpc.nonce(sender.address, "pending"),
                                token=token, to=to, amount=amount, pricing=await self.pricing())
        return await txs.transact(self.rpc, sender, tx)

    async def send_eth(self, sender: txs.Wallet, to: str, value: int):
        tx = txs.eth_transfer(chain_id=self.chain_id, nonce=await self.rpc.nonce(sender.address, "pending"), to=to,
                              value=value, pricing=await self.pricing())
        return await txs.transact(self.rpc, sender, tx)


class Proxy:
    """A loopback TCP proxy in front of the dev node that a test can stop (every connection
    cut, nothing listening) and start again on the same port: a provider killed mid-stream."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.port = devnode.free_port()
        self.scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self.scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._pipe, listeners)
                task_status.started()

    def stop(self) -> None:
        self.scope.cancel()

    async def _pipe(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                try:
                    async for chunk in src:
                        await dst.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


class Updates:
    """Every withdrawal's last status and reason, from the durable blocks (a node subscriber)."""

    def __init__(self):
        self.status: dict[int, tuple[str, str]] = {}

    def publish(self, header, events: list) -> None:
        for e in events:
            if e.__class__ is WithdrawalUpdate:
                self.status[e.withdrawal_id] = (e.status, e.reason)


def chain_config(usdc: str, providers: list[str], confirmations: int = 2) -> config.Config:
    cfg = config.load()
    evm = config.ChainConfig(kind="evm", assets=["ETH", "USDC"], confirmations=confirmations, providers=providers,
                             tokens={"USDC": usdc})
    return msgspec.structs.replace(cfg, chains={CHAIN: evm})


async def start(nursery, tmp_path, dev, usdc, wallets, providers: list[str] | None = None,
                confirmations: int = 2) -> tuple[Node, Chains, Updates]:
    node = await nursery.start(Node(tmp_path / "data", chain_config(usdc, providers or [dev.url], confirmations)).run)
    updates = Updates()
    node.subscribers.append(updates)
    chains = await nursery.start(Chains(node, gas_tanks={CHAIN: wallets[9]}).run)
    return node, chains, updates




async def paused(node: Node) -> bool:
    return (await node.ask("risk", ChainsOf()))[0].paused


async def withdraw(node: Node, user: Keypair, asset: str, amount: int, address: str) -> int:
    """A signed withdrawal request; returns its id."""
    decimals = {"USDC": 6, "ETH": 8}[asset]
    params = {"blockchain": CHAIN, "symbol": asset, "quantity": format_units(amount, decimals), "address": address}
    events = await node.submit_wait(Withdraw(user.api_key, CHAIN, asset, amount, address, None,
                                             auth_for(user, "withdraw", params)))
    return next(e.withdrawal_id for e in events if e.__class__ is WithdrawalUpdate)


async def no_open_withdrawals(node: Node) -> bool:
    return not await node.ask("risk", WithdrawalsOf(None))


def becomes(coro_fn, expected):
    async def check() -> bool:
        return await coro_fn() == expected
    return check


# -- a: deposits credited once ---------------------------------------------------------------------

async def test_usdc_and_eth_deposits_credited_once_and_swept_with_exact_gas(nursery, tmp_path, dev, usdc, wallets, rpc):
    node, chains, _ = await start(nursery, tmp_path, dev, usdc, wallets)
    user = User(rpc, dev.chain_id)
    alice = Keypair.generate().api_key
    address = node.addresses.issue(CHAIN, alice)
    assert address == txs.deposit_wallet(node.custody_seed, CHAIN, alice).address  # lowercase 0x hex
    dust = 123  # wei below the ledger's 8 decimals: not credited, left on the deposit address
    await user.send_usdc(wallets[1], usdc, address, 250 * USDC)
    sent_eth = await user.send_eth(wallets[2], address, 3 * ETH // 2 + dust)

    await until(becomes(lambda: balance(node, alice), 250 * USDC))
    await until(becomes(lambda: balance(node, alice, "ETH"), 150_000_000))
    adapter = chains.adapters[CHAIN]
    assert adapter.credited == 2

    # both swept to the hot wallet, their gas topped up by the tank: the hot wallet holds
    # exactly the books, the deposit address only the dust and the token send's unused gas
    custody = adapter.providers.slots[0].provider.custody
    hot = custody.hot.address
    await until(lambda: equals(erc20.balance_of(rpc, usdc, hot), 250 * USDC))
    await until(lambda: equals(rpc.get_balance(hot), 3 * ETH // 2))
    assert await erc20.balance_of(rpc, usdc, address) == 0
    residue = await rpc.get_balance(address) - dust
    # one sweep per address and asset, of what the address held
    sweeps = {e.asset: e for key, e in custody.journal.by_key.items() if key.startswith("sweep:") and e.sender == address}
    assert sorted(sweeps) == ["ETH", "USDC"] and sweeps["ETH"].amount == 3 * ETH // 2
    receipt = await rpc.get_receipt(sweeps["USDC"].hash)
    assert residue == (sweeps["USDC"].gas - receipt.gas_used) * sweeps["USDC"].price >= 0  # the documented residue

    # the adapter forgets where it was (a crash before it saved): the re-report is refused
    adapter.cursor = 0
    await trio.sleep(1.0)
    assert adapter.cursor > sent_eth.block_number
    assert await balance(node, alice) == 250 * USDC and await balance(node, alice, "ETH") == 150_000_000
    assert adapter.credited == 2
    node.shutdown()


# -- b: a reorg before the confirmations -----------------------------------------------------------

async def test_a_reorg_before_the_confirmations_credits_nothing(nursery, tmp_path, dev, usdc, wallets, rpc):
    node, chains, _ = await start(nursery, tmp_path, dev, usdc, wallets, confirmations=3)
    user = User(rpc, dev.chain_id)
    bob = Keypair.generate().api_key
    address = node.addresses.issue(CHAIN, bob)
    adapter = chains.adapters[CHAIN]
    await rpc.set_interval_mining(0)  # mine by hand
    await until(lambda: _gt(_value(adapter.cursor + 3), _head_minus(rpc, 0)))  # caught up: cursor = head - 2

    fork = await rpc.snapshot()
    sent = await user.send_usdc(wallets[1], usdc, address, 70 * USDC)
    await rpc.mine(1)  # two of the three confirmations
    await trio.sleep(0.6)
    assert adapter.cursor == sent.block_number - 1 and await balance(node, bob) == 0
    assert await rpc.revert(fork)  # the deposit's blocks are gone
    await rpc.set_interval_mining(100)
    await until(lambda: _gt(_value(adapter.cursor), _value(sent.block_number + 3)))
    await trio.sleep(0.3)
    assert await balance(node, bob) == 0 and adapter.credited == 0
    assert await rpc.get_receipt(sent.tx_hash) is None
    node.shutdown()


async def test_a_reorg_below_the_confirmations_is_seen_and_credits_stay_once(nursery, tmp_path, dev, usdc, wallets,
                                                                          rpc):
    node, chains, _ = await start(nursery, tmp_path, dev, usdc, wallets)
    user = User(rpc, dev.chain_id)
    carol = Keypair.generate().api_key
    address = node.addresses.issue(CHAIN, carol)
    adapter = chains.adapters[CHAIN]
    fork = await rpc.snapshot()
    pay = wallets[1].sign(txs.erc20_transfer(chain_id=dev.chain_id, nonce=await rpc.nonce(wallets[1].address),
                                             token=usdc, to=address, amount=10 * USDC, pricing=await user.pricing()))
    await txs.send(rpc, pay)
    await until(becomes(lambda: balance(node, carol), 10 * USDC))
    await rpc.set_interval_mining(0)
    await trio.sleep(0.3)
    scanned = adapter.cursor
    # deeper than the confirmations: the credited deposit's block and those after it are
    # replaced; the same transaction is mined again, one block later, in the new branch
    assert await rpc.revert(fork)
    # the branch's first block must differ from the one it replaces: with interval mining an
    # empty block may have followed the fork, and an empty block with the same parent and
    # second is the same block; an hour later it cannot be
    fork_block = await rpc.get_block("latest")
    await rpc.request("evm_mine", [fork_block.timestamp + 3600])
    await txs.send(rpc, pay)
    await rpc.mine(scanned - await rpc.block_number() + 3)
    await rpc.set_interval_mining(100)
    await until(lambda: _gt(_value(adapter.cursor), _value(scanned + 2)))
    await trio.sleep(0.5)
    # seen (the parent changed under the last scanned block) and rescanned; the re-mined
    # deposit, the same (transaction hash, log index), is refused as credited before
    assert adapter.reorgs == 1
    assert await balance(node, carol) == 10 * USDC and adapter.credited == 1
    node.shutdown()


# -- c: every provider killed mid-stream -------------------------------------------------------------

async def test_providers_killed_pause_the_chain_while_trading_goes_on(nursery, tmp_path, dev, usdc, wallets, rpc):
    proxies = [Proxy(dev.port), Proxy(dev.port)]
    for proxy in proxies:
        await nursery.start(proxy.run)
    node, chains, _ = await start(nursery, tmp_path, dev, usdc, wallets, providers=[p.url for p in proxies])
    for account, asset, amount in (("seller", "SOL", 10**10), ("buyer", "USDC", 10_000 * USDC)):
        await admin_deposit(node, account, asset, amount)
    user = User(rpc, dev.chain_id)
    dora = Keypair.generate().api_key
    address = node.addresses.issue(CHAIN, dora)

    await user.send_usdc(wallets[1], usdc, address, 1 * USDC)
    await user.send_usdc(wallets[2], usdc, address, 2 * USDC)
    for proxy in proxies:  # while deposits are being made
        proxy.stop()
    await user.send_usdc(wallets[3], usdc, address, 4 * USDC)
    await until(lambda: paused(node))
    await user.send_usdc(wallets[4], usdc, address, 8 * USDC)
    # deposits and withdrawals of this chain stop; trading does not
    events = await node.submit_wait(Withdraw("buyer", CHAIN, "USDC", 5 * USDC, wallets[5].address))
    assert [e.code for e in events if hasattr(e, "code")] == ["CHAIN_PAUSED"]
    await node.submit_wait(order("seller", ASK, 10_000, 100))
    events = await node.submit_wait(order("buyer", BID, 10_000, 100, tif=IOC))
    assert any(e.__class__.__name__ == "Fill" for e in events)
    assert await balance(node, dora) < 15 * USDC

    for proxy in proxies:
        await nursery.start(proxy.run)
    await until(lambda: falsy(paused(node)), timeout=40)
    await until(becomes(lambda: balance(node, dora), 15 * USDC))
    await trio.sleep(0.5)
    assert await balance(node, dora) == 15 * USDC and chains.adapters[CHAIN].credited == 4
    node.shutdown()


# -- d, e: withdrawals --------------------------------------------------------------------------------

async def _funded(node: Node, rpc: EvmRpc, dev, usdc: str, wallets, asset: str, amount: int) -> Keypair:
    """A user whose deposit of ``amount`` chain units is credited and swept to the hot wallet."""
    user = Keypair.generate()
    await node.submit_wait(SetLeverage(user.api_key, 0, auto_lend=0))
    address = node.addresses.issue(CHAIN, user.api_key)
    chain_user = User(rpc, dev.chain_id)
    if asset == "USDC":
        await chain_user.send_usdc(wallets[1], usdc, address, amount)
        await until(becomes(lambda: balance(node, user.api_key), amount))
    else:
        await chain_user.send_eth(wallets[1], address, amount)
        await until(becomes(lambda: balance(node, user.api_key, "ETH"), amount // 10**10))
    return user


async def test_a_withdrawal_is_sent_and_confirmed(nursery, tmp_path, dev, usdc, wallets, rpc):
    node, chains, updates = await start(nursery, tmp_path, dev, usdc, wallets)
    dave = await _funded(node, rpc, dev, usdc, wallets, "USDC", 500 * USDC)
    friend = wallets[5].address
    before = await erc20.balance_of(rpc, usdc, friend)
    wid = await withdraw(node, dave, "USDC", 120 * USDC, friend)
    await until(lambda: no_open_withdrawals(node), timeout=20)
    assert updates.status[wid] == ("Confirmed", "")
    assert await erc20.balance_of(rpc, usdc, friend) == before + 120 * USDC
    assert await balance(node, dave.api_key) == 380 * USDC
    custody = chains.adapters[CHAIN].providers.slots[0].provider.custody
    assert await erc20.balance_of(rpc, usdc, custody.hot.address) == 380 * USDC  # the books, on chain
    node.shutdown()


async def test_a_withdrawal_that_fails_on_chain_is_released(nursery, tmp_path, dev, usdc, wallets, rpc):
    node, chains, updates = await start(nursery, tmp_path, dev, usdc, wallets)
    erin = await _funded(node, rpc, dev, usdc, wallets, "ETH", 2 * ETH)
    custody = chains.adapters[CHAIN].providers.slots[0].provider.custody
    await until(lambda: equals(rpc.get_balance(custody.hot.address), 2 * ETH))
    # ETH to the USDC contract: it has no receive function, the transaction reverts on chain
    wid = await withdraw(node, erin, "ETH", ETH_LEDGER // 2, usdc)
    await until(lambda: no_open_withdrawals(node), timeout=20)
    assert updates.status[wid] == ("Failed", "failed on chain")
    sent = custody.journal.by_key[f"{CHAIN}:{wid}"]
    assert (await rpc.get_receipt(sent.hash)).status == 0
    assert await node.ask("risk", BalanceOf(erin.api_key, "ETH")) == (2 * ETH_LEDGER, 0)  # back to free
    assert await rpc.get_balance(custody.hot.address) == 2 * ETH  # the tank paid the gas, to the wei
    # an address the chain cannot have: refused before signing, failed at once
    wid = await withdraw(node, erin, "ETH", ETH_LEDGER // 2, "not-an-address")
    await until(lambda: no_open_withdrawals(node), timeout=20)
    assert updates.status[wid][0] == "Failed" and "not an address" in updates.status[wid][1]
    assert await node.ask("risk", BalanceOf(erin.api_key, "ETH")) == (2 * ETH_LEDGER, 0)
    node.shutdown()


# -- f: killed between broadcast and report ---------------------------------------------------------

async def test_an_adapter_killed_mid_send_does_not_send_twice(nursery, tmp_path, dev, usdc, wallets, rpc):
    node = await nursery.start(Node(tmp_path / "data", chain_config(usdc, [dev.url])).run)
    updates = Updates()
    node.subscribers.append(updates)
    dest = wallets[6].address
    before = await erc20.balance_of(rpc, usdc, dest)
    journaled = trio.Event()
    async with trio.open_nursery() as first:  # the first run of the chain's adapter, killed mid-send
        chains = await first.start(Chains(node, gas_tanks={CHAIN: wallets[9]}).run)
        frank = await _funded(node, rpc, dev, usdc, wallets, "USDC", 300 * USDC)
        custody = chains.adapters[CHAIN].providers.slots[0].provider.custody
        await until(lambda: equals(erc20.balance_of(rpc, usdc, custody.hot.address), 300 * USDC))
        # the process dies after journaling the withdrawal's transaction, before the node got it
        for slot in chains.adapters[CHAIN].providers.slots:
            broadcast = slot.provider.rpc.send_raw_transaction

            async def dying(raw, broadcast=broadcast):
                if any(t.raw == raw and t.key.startswith(f"{CHAIN}:") for t in custody.journal.by_key.values()):
                    journaled.set()
                    await trio.sleep_forever()
                return await broadcast(raw)

            slot.provider.rpc.send_raw_transaction = dying
        wid = await withdraw(node, frank, "USDC", 50 * USDC, dest)
        with trio.fail_after(15):
            await journaled.wait()
        first.cancel_scope.cancel()
    node.subscribers.remove(chains.adapters[CHAIN])
    sent = custody.journal.by_key[f"{CHAIN}:{wid}"]
    assert await rpc.request("eth_getTransactionByHash", [sent.hash]) is None  # never broadcast
    assert updates.status[wid] == ("Pending", "")

    # a new adapter and providers on the same data directory: the journaled bytes are
    # re-broadcast (same nonce, same hash), found, reported sent, then confirmed
    restarted = await nursery.start(Chains(node, gas_tanks={CHAIN: wallets[9]}).run)
    await until(lambda: no_open_withdrawals(node), timeout=20)
    assert updates.status[wid] == ("Confirmed", "")
    journal = restarted.adapters[CHAIN].providers.slots[0].provider.custody.journal
    assert journal is not custody.journal and journal.by_key[f"{CHAIN}:{wid}"] == sent
    assert (await rpc.get_receipt(sent.hash)).status == 1
    transfers = await erc20.get_transfers(rpc, usdc, senders=[custody.hot.address], recipients=[dest])
    assert [t.tx_hash for t in transfers] == [sent.hash]  # exactly one transfer on chain
    assert await erc20.balance_of(rpc, usdc, dest) == before + 50 * USDC
    assert await balance(node, frank.api_key) == 250 * USDC

    # broadcast, then killed before reporting: another adapter (as after a restart) runs the
    # same withdrawal twice beside the running one; the key finds the one transaction
    running = restarted.adapters[CHAIN]
    wid = await withdraw(node, frank, "USDC", 30 * USDC, dest)
    other = Adapter(LocalLink(node), CHAIN, 2, running.providers, node.addresses, running.key, running.decimals, tmp_path / "data")
    await other._withdraw(wid, "USDC", 30 * USDC, dest, "Pending")
    await other._withdraw(wid, "USDC", 30 * USDC, dest, "Pending")
    await until(lambda: no_open_withdrawals(node), timeout=20)
    assert updates.status[wid] == ("Confirmed", "")
    transfers = await erc20.get_transfers(rpc, usdc, senders=[custody.hot.address], recipients=[dest])
    assert [t.tx_hash for t in transfers] == [sent.hash, journal.by_key[f"{CHAIN}:{wid}"].hash]
    assert await erc20.balance_of(rpc, usdc, dest) == before + 80 * USDC
    node.shutdown()


# -- helpers --------------------------------------------------------------------------------------------


async def _gt(value, than) -> bool:
    return await value > await than



async def _value(v):
    return v


async def _head_minus(rpc: EvmRpc, n: int) -> int:
    return await rpc.block_number() - n
