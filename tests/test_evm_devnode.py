"""The EVM edge's groundwork against a real chain: hardhat's dev node from npm (installed on
first use into .cache/evm/), the offline-compiled USDC, the trio JSON-RPC client and its
failure categories, local signing.

One node serves the module; each test runs between evm_snapshot and evm_revert, so tests
see a fresh chain (the dev accounts funded, nothing deployed) whatever ran before. Without
npm the node tests are skipped with the reason; SATCHEL_REQUIRE_EVM=1 (for CI) makes that a
failure instead.
"""

from __future__ import annotations

import functools
import shutil
import socket

import orjson
import pytest
import sniffio
import trio

from satchel.chains.evm import compile as evm_compile
from satchel.chains.evm import devnode, erc20
from satchel.chains.evm import transactions as txs
from satchel.chains.evm.rpc import EvmRpc, Fault, JsonRpcError, ProviderDown, RateLimited, RpcFailure

USDC_UNIT = 10**6
ETH = 10**18


@pytest.fixture(scope="module")
def node(installed):
    with devnode.start_devnode() as dev:
        yield dev


@pytest.fixture
async def rpc(node):
    async with EvmRpc(node.url, timeout=10.0) as client:
        snapshot = await client.snapshot()
        yield client
        assert await client.revert(snapshot)


@pytest.fixture(scope="module")
def wallets():
    return txs.dev_wallets(devnode.MNEMONIC, devnode.ACCOUNTS)


class Chain:
    """What a test does on the chain, one call per step."""

    def __init__(self, rpc: EvmRpc, chain_id: int):
        self.rpc = rpc
        self.chain_id = chain_id

    async def pricing(self) -> txs.Eip1559:
        return txs.Eip1559.from_quote(await self.rpc.fees())

    async def deploy_usdc(self, owner: txs.Wallet) -> str:
        nonce = await self.rpc.nonce(owner.address)
        tx = txs.deploy(chain_id=self.chain_id, nonce=nonce, bytecode=erc20.load_artifact("USDC").bytecode,
                        pricing=await self.pricing())
        receipt = await txs.transact(self.rpc, owner, tx)
        assert receipt.status == 1
        assert receipt.contract_address == txs.contract_address(owner.address, nonce)
        return receipt.contract_address

    async def mint(self, owner: txs.Wallet, token: str, to: str, amount: int):
        tx = txs.erc20_mint(chain_id=self.chain_id, nonce=await self.rpc.nonce(owner.address), token=token, to=to,
                            amount=amount, pricing=await self.pricing())
        return await txs.transact(self.rpc, owner, tx)

    async def transfer(self, sender: txs.Wallet, token: str, to: str, amount: int):
        tx = txs.erc20_transfer(chain_id=self.chain_id, nonce=await self.rpc.nonce(sender.address), token=token,
                                to=to, amount=amount, pricing=await self.pricing())
        return await txs.transact(self.rpc, sender, tx)


@pytest.fixture
def chain(rpc, node):
    return Chain(rpc, node.chain_id)


# -- the node -------------------------------------------------------------------------------------------

async def test_node_has_the_deterministic_accounts(rpc, node, wallets):
    assert node.url.startswith("http://127.0.0.1:")
    assert await rpc.chain_id() == devnode.CHAIN_ID == node.chain_id
    # the Python side derives the same keys from the mnemonic as hardhat does
    assert await rpc.accounts() == [w.address for w in wallets]
    assert wallets[0].address == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"  # hardhat's well-known account #0
    assert await rpc.get_balance(wallets[9].address) == 10_000 * ETH
    genesis = await rpc.get_block(0)
    assert genesis.number == 0 and genesis.base_fee is not None
    assert await rpc.get_block(10**9) is None


async def test_httpx_runs_under_trio_with_bounded_concurrency(node):
    assert sniffio.current_async_library() == "trio"
    async with EvmRpc(node.url, max_connections=3) as client:
        answers = []

        async def ask():
            answers.append(await client.block_number())

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(ask)
        assert len(answers) == 30 and len(set(answers)) == 1


# -- the contract -----------------------------------------------------------------------------------------

def test_usdc_artifact_matches_a_fresh_compile(installed):  # solc-js comes with the dev node's npm project
    fresh = evm_compile.compile_contract("USDC")
    committed = (evm_compile.CONTRACTS / "USDC.json").read_text()
    assert evm_compile.artifact_text(fresh) == committed, "run: python -m satchel.chains.evm.compile"


def test_erc20_constants_are_the_abis():
    from eth_utils import keccak

    artifact = erc20.load_artifact("USDC")
    assert artifact.compiler["version"].startswith("0.8.37+")
    functions = {f"{e['name']}({','.join(i['type'] for i in e['inputs'])})" for e in artifact.abi if e["type"] == "function"}
    for signature, selector in erc20.SELECTORS.items():
        assert signature in functions
        assert keccak(text=signature)[:4] == selector
    events = {e["name"]: e for e in artifact.abi if e["type"] == "event"}
    assert [i["indexed"] for i in events["Transfer"]["inputs"]] == [True, True, False]
    assert "0x" + keccak(text="Transfer(address,address,uint256)").hex() == erc20.TRANSFER_TOPIC


async def test_deploy_mint_transfer_and_read_it_back(rpc, chain, wallets):
    owner, alice, bob = wallets[0], wallets[1], wallets[2]
    usdc = await chain.deploy_usdc(owner)
    assert int.from_bytes(await rpc.call(usdc, bytes.fromhex("313ce567")), "big") == 6  # decimals()

    minted = await chain.mint(owner, usdc, alice.address, 1_000 * USDC_UNIT)
    sent = await chain.transfer(alice, usdc, bob.address, 250 * USDC_UNIT)
    assert minted.status == sent.status == 1

    transfers = await erc20.get_transfers(rpc, usdc)
    assert [(t.sender, t.recipient, t.amount) for t in transfers] == [
        ("0x" + "00" * 20, alice.address, 1_000 * USDC_UNIT),
        (alice.address, bob.address, 250 * USDC_UNIT),
    ]
    deposit = transfers[1]
    assert (deposit.tx_hash, deposit.block_number, deposit.block_hash, deposit.log_index) == (
        sent.tx_hash, sent.block_number, sent.block_hash, 0)
    assert deposit.token == usdc and not deposit.removed
    # the node filters by recipient (how an adapter watches its deposit addresses)
    to_bob = await erc20.get_transfers(rpc, [usdc], recipients=[bob.address], from_block=minted.block_number)
    assert to_bob == [deposit]
    assert await erc20.get_transfers(rpc, usdc, block_hash=sent.block_hash) == [deposit]
    assert await erc20.get_transfers(rpc, usdc, senders=[bob.address]) == []

    assert await erc20.balance_of(rpc, usdc, alice.address) == 750 * USDC_UNIT
    assert await erc20.balance_of(rpc, usdc, bob.address) == 250 * USDC_UNIT
    # the receipt's own log decodes to the same Transfer
    assert erc20.decode_transfer(sent.logs[0]) == deposit
    # alice paid for her gas in ETH
    assert await rpc.get_balance(alice.address) == 10_000 * ETH - sent.gas_used * sent.effective_gas_price


async def test_eth_transfer_legacy_and_eip1559_and_a_deposit_wallet(rpc, chain, wallets):
    funder = wallets[0]
    seed = bytes(range(32))
    deposit = txs.deposit_wallet(seed, "evm", "alice-account-key")
    assert deposit.address == txs.deposit_wallet(seed, "evm", "alice-account-key").address
    assert deposit.address not in {txs.deposit_wallet(seed, "evm", "bob-account-key").address,
                                   txs.deposit_wallet(seed, "sim", "alice-account-key").address,
                                   txs.deposit_wallet(bytes(32), "evm", "alice-account-key").address}
    quote = await rpc.fees()
    legacy = txs.eth_transfer(chain_id=chain.chain_id, nonce=await rpc.nonce(funder.address), to=deposit.address,
                              value=ETH, pricing=txs.Legacy.from_quote(quote))
    receipt = await txs.transact(rpc, funder, legacy)
    assert receipt.status == 1 and receipt.to == deposit.address and receipt.gas_used == 21_000
    assert await rpc.get_balance(deposit.address) == ETH
    # the derived key spends from the derived address (a sweep), type-2 this time
    pricing = txs.Eip1559.from_quote(await rpc.fees())
    sweep = txs.eth_transfer(chain_id=chain.chain_id, nonce=0, to=funder.address,
                             value=ETH - 21_000 * pricing.max_fee, pricing=pricing)
    signed = deposit.sign(sweep)
    assert await txs.send(rpc, signed) == signed.hash
    swept = await rpc.wait_for_receipt(signed.hash)
    assert swept.status == 1 and swept.sender == deposit.address
    assert await rpc.get_balance(deposit.address) == 21_000 * (pricing.max_fee - swept.effective_gas_price)


# -- reorg-like rollback --------------------------------------------------------------------------------

async def test_snapshot_mine_revert_drops_a_mined_transfer(rpc, chain, wallets):
    owner, alice, bob, carol = wallets[0], wallets[1], wallets[2], wallets[3]
    usdc = await chain.deploy_usdc(owner)
    await chain.mint(owner, usdc, alice.address, 100 * USDC_UNIT)
    before = await rpc.block_number()

    snapshot = await rpc.snapshot()
    sent = await chain.transfer(alice, usdc, bob.address, 40 * USDC_UNIT)
    await rpc.mine(2)  # two confirmations on top
    assert await rpc.block_number() == before + 3
    assert [t.tx_hash for t in await erc20.get_transfers(rpc, usdc, recipients=[bob.address])] == [sent.tx_hash]

    assert await rpc.revert(snapshot)
    assert await rpc.block_number() == before
    assert await rpc.get_receipt(sent.tx_hash) is None
    assert await erc20.get_transfers(rpc, usdc, recipients=[bob.address]) == []
    assert await erc20.balance_of(rpc, usdc, bob.address) == 0
    assert await erc20.balance_of(rpc, usdc, alice.address) == 100 * USDC_UNIT

    # the other branch: the same height now holds another block, with another transfer in it
    other = await chain.transfer(alice, usdc, carol.address, 40 * USDC_UNIT)
    assert other.block_number == sent.block_number and other.block_hash != sent.block_hash
    assert (await rpc.get_block(sent.block_number)).hash == other.block_hash
    # asking for the orphaned block by hash (EIP-234) fails instead of answering from the new branch
    with pytest.raises(JsonRpcError, match="blockHash"):
        await erc20.get_transfers(rpc, usdc, block_hash=sent.block_hash)


# -- mining modes and the trio-side node ----------------------------------------------------------------

async def test_interval_mining_with_the_async_devnode(installed, wallets):
    async with devnode.open_devnode(block_time=0.25) as dev, EvmRpc(dev.url) as client:
        assert dev.block_time == 0.25
        funder, target = wallets[0], wallets[5]
        tx = txs.eth_transfer(chain_id=dev.chain_id, nonce=0, to=target.address, value=7,
                              pricing=txs.Eip1559.from_quote(await client.fees()))
        signed = funder.sign(tx)
        await txs.send(client, signed)
        assert await client.nonce(funder.address, "pending") == 1  # waiting in the mempool
        receipt = await client.wait_for_receipt(signed.hash, timeout=5)
        assert receipt.status == 1
        start = await client.block_number()
        await trio.sleep(0.8)
        assert await client.block_number() >= start + 2  # blocks keep coming with no transactions
        # switch to automine at run time: the next transaction is mined at once
        await client.set_interval_mining(0)
        await client.set_automine(True)
        signed = funder.sign({**tx, "nonce": 1})
        await txs.send(client, signed)
        assert await client.get_receipt(signed.hash) is not None
    with pytest.raises(ProviderDown):  # stopped with the block
        async with EvmRpc(dev.url, timeout=2) as client:
            await client.chain_id()


def test_devnode_refuses_a_busy_port_and_names_a_missing_npm(tmp_path, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if shutil.which("npm"):
            with pytest.raises(devnode.DevNodeError, match="already in use"):
                with devnode.start_devnode(busy.getsockname()[1]):
                    pass
    monkeypatch.setenv("SATCHEL_EVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(devnode.NpmMissing, match="npm is not on PATH"):
        devnode.ensure_installed()
    assert not (tmp_path / "cache").exists()


# -- failure categories (for the circuit breaker) --------------------------------------------------------

async def test_nothing_listening_is_provider_down():
    port = devnode.free_port()
    async with EvmRpc(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(ProviderDown) as caught:
            await client.block_number()
    assert caught.value.fault is Fault.DOWN and caught.value.method == "eth_blockNumber"


async def test_a_silent_provider_times_out_as_down():
    async def silent(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with EvmRpc(f"http://127.0.0.1:{port}", timeout=0.3) as client:
            with pytest.raises(ProviderDown, match="within 0.3 s") as caught:
                await client.chain_id()
        assert caught.value.fault is Fault.DOWN
        nursery.cancel_scope.cancel()


async def _canned_http(status: int, body: bytes, headers: dict[str, str], task_status=trio.TASK_STATUS_IGNORED):
    """A tiny HTTP/1.1 server on loopback answering every request with the same response."""

    async def answer(stream):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n"
                              f"{extra}Connection: close\r\n\r\n".encode() + body)
        await stream.aclose()

    await trio.serve_tcp(answer, 0, host="127.0.0.1", task_status=task_status)


async def _failure_from(status: int, body: bytes, headers: dict[str, str] | None = None) -> RpcFailure:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(_canned_http, status, body, headers or {})
        port = listeners[0].socket.getsockname()[1]
        async with EvmRpc(f"http://127.0.0.1:{port}", timeout=2) as client:
            try:
                await client.block_number()
            except RpcFailure as e:
                failure = e
            else:
                raise AssertionError("the call succeeded")
        nursery.cancel_scope.cancel()
    return failure


async def test_http_429_is_rate_limited():
    failure = await _failure_from(429, b'{"error":"too many requests"}', {"Retry-After": "2"})
    assert isinstance(failure, RateLimited) and failure.fault is Fault.RATE_LIMITED
    assert failure.retry_after == 2.0


async def test_other_answers_are_sorted_into_categories():
    limit = orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "limit exceeded"}})
    failure = await _failure_from(200, limit)
    assert isinstance(failure, RateLimited) and failure.retry_after is None

    failure = await _failure_from(503, b"overloaded")
    assert isinstance(failure, ProviderDown) and failure.status == 503

    failure = await _failure_from(200, b"<html>not json</html>")
    assert isinstance(failure, ProviderDown) and failure.fault is Fault.DOWN

    rejected = orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no such method"}})
    failure = await _failure_from(200, rejected)
    assert isinstance(failure, JsonRpcError) and failure.code == -32601 and failure.fault is Fault.REJECTED


async def test_the_node_rejects_with_json_rpc_errors(rpc, chain, wallets):
    with pytest.raises(JsonRpcError) as caught:
        await rpc.request("eth_noSuchMethod")
    assert caught.value.fault is Fault.REJECTED

    owner, stranger = wallets[0], wallets[4]
    usdc = await chain.deploy_usdc(owner)
    with pytest.raises(JsonRpcError, match="caller is not the owner"):
        await rpc.estimate_gas({"from": stranger.address, "to": usdc,
                                "data": "0x" + erc20.encode_mint(stranger.address, 1).hex()})
    # the same signed transaction twice: the second is refused, never executed again
    pay = owner.sign(txs.eth_transfer(chain_id=chain.chain_id, nonce=await rpc.nonce(owner.address),
                                      to=stranger.address, value=1, pricing=await chain.pricing()))
    await txs.send(rpc, pay)
    with pytest.raises(JsonRpcError, match="(?i)nonce too low"):
        await txs.send(rpc, pay)
    assert await rpc.get_balance(stranger.address) == 10_000 * ETH + 1
